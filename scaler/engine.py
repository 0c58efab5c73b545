"""The decision core: observations in, per-role replica targets with reasons out.

Pure and clock-injected, like Knative's `Scale(now)`: the Engine never reads a clock, a network or
a file after construction. The server's background loop, the demo and the replay simulator all drive
this same class:

    engine = Engine.from_file("pdscaler.yaml")          # or Engine(ScalerConfig(...))
    engine.observe(Observation(graph="example", at=t, signals={...}, roles={...}))
    decision = engine.decide(now=t, graph="example")
    decision.replicas   # {"prefill": 3, "decode": 2}
    decision.reasons    # {"prefill": Reason(rule=Rule.FORECAST, ...), ...}

`decide` is the pipeline of rules, in order, each in its own module under scaler/policy/ (its name
is the rule's, `scaler.policy.rule.Rule`); a rule that keeps state between decisions owns it, one
instance per role (`scaler/policy/role_rules.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from forecasting.demand import DemandForecast, DemandForecaster

from scaler.capacity import MissingInput, demand_values
from scaler.capacity_profile import CapacityProfile
from scaler.config import GraphConfig, RoleConfig, ScalerConfig, UnknownGraph, load_config
from scaler.decision import Decision, Reason, RoleDecision
from scaler.observation import Observation, sanitize
from scaler.policy import advisory, missing_data
from scaler.policy.bounds import apply_bounds
from scaler.policy.budget import apply_budget
from scaler.policy.context import RoleContext, Target, ready_of, replicas_now
from scaler.policy.need import forecast_figures
from scaler.policy.outlier import OutlierFilter
from scaler.policy.ratio import apply_ratio
from scaler.policy.role_rules import RoleRules
from scaler.policy.rule import Rule
from scaler.policy.warm_pool import warm_roles


class Engine:
    def __init__(self, config: ScalerConfig, live: bool = False) -> None:
        """`live=True` (the server): models that fit slowly get their live parameters (Prophet refits
        in a background worker process instead of inline). Replays and tests keep the synchronous,
        reproducible default."""
        from forecasting.registry import MODELS

        self.config = config
        self._latest: dict[str, Observation] = {}
        self._forecast_errors: dict[str, str] = {}  # graph -> why its forecast models failed
        # Built at a graph's first observation or warm start (_forecaster): an Engine that only answers
        # the floors (the serving process's first answers) or checks a reloaded config does not hold
        # a fleet's models (~270 MB at 1,000 graphs).
        self._model_params = MODELS[config.forecast.model].live_params if live else None
        self._forecasters: dict[str, DemandForecaster] = {}
        self._profiles = {g: gcfg.capacity_profile() for g, gcfg in config.graphs.items()}
        self._rules = {g: {r: RoleRules.of(config, gcfg, rc) for r, rc in gcfg.roles.items()}
                       for g, gcfg in config.graphs.items()}
        self._outliers = {g: OutlierFilter(config.outlier_factor, p) for g, p in self._profiles.items()}

    @classmethod
    def from_file(cls, path: str | Path) -> "Engine":
        return cls(load_config(path))

    @property
    def graphs(self) -> list[str]:
        return list(self.config.graphs)

    def graph_config(self, graph: str) -> GraphConfig:
        try:
            return self.config.graphs[graph]
        except KeyError:
            raise UnknownGraph(graph, self.graphs) from None

    def profile(self, graph: str) -> CapacityProfile:
        self.graph_config(graph)
        return self._profiles[graph]

    def observe(self, obs: Observation) -> None:
        """Record an observation. Older-than-latest observations are ignored; bad values dropped."""
        self.graph_config(obs.graph)
        latest = self._latest.get(obs.graph)
        if latest is not None and obs.at <= latest.at:
            return
        clean = self._outliers[obs.graph].apply(sanitize(obs))
        self._latest[obs.graph] = clean
        kv_per_replica = self._profiles[obs.graph].decode.kv_tokens
        values, kv = demand_values(clean, self.config.graphs[obs.graph], kv_per_replica)
        try:
            self._forecaster(obs.graph).observe(clean.at, values, kv)
            self._forecast_errors.pop(obs.graph, None)
        except Exception as e:  # a broken model must not lose the observation: decisions go reactive
            self._forecast_errors[obs.graph] = f"forecast model failed to update ({_brief(e)})"

    def targets(self, graph: str) -> dict[str, int | None]:
        """Each role's last target (None before the first decision)."""
        self.graph_config(graph)
        return {r: st.target for r, st in self._rules[graph].items()}

    def adopt_replicas(self, graph: str, replicas: Mapping[str, int], at: float | None = None) -> list[str]:
        """Take the cluster's current replicas (role -> spec.replicas) as the last target of roles that
        have none yet, or only the floor held for want of data: a restarted scaler then holds what runs
        instead of answering the floor while its data is missing. With `at`, the adopted count enters the
        stabilisation history, so a restart does not shorten the scale-down window. Returns the roles adopted."""
        gcfg = self.graph_config(graph)
        adopted = []
        for role, n in replicas.items():
            st = self._rules[graph].get(role)
            if st is not None and (st.target is None or st.floor_only):
                rcfg = gcfg.roles[role]
                st.target = max(rcfg.min_replicas, min(rcfg.max_replicas, int(n)))
                st.floor_only = False
                if at is not None:  # as if recommended then: a fall waits for the scale-down window
                    st.stabilisation.remember(at, st.target)
                adopted.append(role)
        return adopted

    def warm_start(self, graph: str, history: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, *,
                   fitted: tuple[Mapping, float | None] | None = None, pending: bool = False) -> list[str]:
        """Fit the graph's forecasts on history (series name -> (timestamps, values)); returns what was fitted.
        A fleet's warm start fits in worker processes (scaler/warm_fleet.py): `pending=True` when the
        graph's fit starts there (the points observed meanwhile are kept), `fitted=(models, last_t)` to
        adopt its models (those points replayed into them)."""
        self.graph_config(graph)
        forecaster = self._forecaster(graph)
        if pending:
            forecaster.begin_warm_start()
            return []
        if fitted is not None:
            return forecaster.adopt(*fitted)
        return forecaster.warm_start(history or {})

    def forecast(self, now: float, graph: str, horizons: list[float] | None = None) -> DemandForecast:
        return self._forecaster(graph).forecast(now, horizons or [self.config.forecast.horizon])

    def _forecaster(self, graph: str) -> DemandForecaster:
        f = self._forecasters.get(graph)
        if f is None:
            self.graph_config(graph)  # UnknownGraph
            fc = self.config.forecast
            f = self._forecasters[graph] = DemandForecaster(
                fc.model, step_s=self.config.poll_interval, seed=fc.seed, quantiles=fc.quantiles,
                model_params=self._model_params)
        return f

    def latest(self, graph: str) -> Observation | None:
        return self._latest.get(graph)

    def lead_times(self, graph: str) -> dict[str, tuple[float, float]]:
        """Per role, the (warm, cold) start-up times in use (learned from rollouts when enabled)."""
        return {r: (s.startup.warm_s, s.startup.cold_s) for r, s in self._rules[graph].items()}

    def decide(self, now: float, graph: str | None = None) -> Decision:
        """The decision for `graph` (optional when only one graph is configured) at time `now`."""
        graph = self._name(graph)
        gcfg, rules, obs = self.graph_config(graph), self._rules[graph], self._latest.get(graph)
        untrusted = missing_data.untrusted(now, obs, self.config.stale_after)
        if not untrusted:
            self._adopt_running(now, graph, obs)  # the first decision never cuts what runs at once
        for role, r in rules.items():  # start-up times learned from the rollouts observed
            r.startup.observe(now, r.target, ready_of(obs.roles.get(role, {})) if obs else None)
        horizons = self._horizons(graph)
        forecast, forecast_note = self._forecast(now, graph, horizons)
        contexts = self._contexts(now, graph, obs, forecast, horizons)
        targets: dict[str, Target] = {}
        for role, ctx in contexts.items():  # per serving role, in order:
            r = rules[role]
            if untrusted:
                targets[role] = missing_data.held(role, ctx.config, r.target, *untrusted)
                continue
            try:
                t = r.need.size(ctx)  # reactive and predictive need (with the forecast cap)
            except MissingInput as e:
                why = str(e) + (f" ({obs.errors[-1]})" if obs.errors else "")
                targets[role] = missing_data.held(role, ctx.config, r.target, Rule.MISSING_DATA, why)
                continue
            for rule in (r.safety_net, r.floors, r.stabilisation, r.step_limit, r.no_cascade, r.hpa_tolerance,
                         r.never_lower):
                rule.apply(ctx, t)
            targets[role] = t
        apply_ratio(gcfg, targets)  # per graph, in order
        for role, t in targets.items():
            apply_bounds(gcfg.roles[role], t)
        apply_budget(gcfg, targets)
        last = {r: rules[r].target for r in rules}
        targets |= warm_roles(gcfg, untrusted, targets, last, horizons)
        return self._decision(now, graph, obs, targets, forecast, forecast_note)

    def decide_all(self, now: float) -> dict[str, Decision]:
        return {g: self.decide(now, g) for g in self.config.graphs}

    # --- the pipeline's pieces -----------------------------------------------------------------

    def _name(self, graph: str | None) -> str:
        if graph is not None:
            return graph
        if len(self.config.graphs) != 1:
            raise ValueError(f"several graphs configured ({', '.join(self.graphs)}): name one")
        return self.graphs[0]

    def _adopt_running(self, now: float, graph: str, obs: Observation) -> None:
        """Roles without a target yet adopt the replicas the (fresh) observation says are running (the
        scale subresource's count, else the ready ones), as adopt_replicas(at=now) would: a fall from
        them waits for the scale-down window like any other."""
        running = {}
        for role, r in self._rules[graph].items():
            values = obs.roles.get(role, {})
            if r.target is None and (values.get("desired_replicas") is not None or ready_of(values) is not None):
                running[role] = replicas_now(values, 0)
        if running:  # as recommended when observed (before now: a rise now is not held back by it)
            self.adopt_replicas(graph, running, at=min(obs.at, now - 1e-3))

    def _horizons(self, graph: str) -> np.ndarray:
        """Forecast horizons: a grid from now to the longest look-ahead any role needs, and at least to
        the horizon reasons and explain show (forecast.horizon)."""
        gcfg = self.config.graphs[graph]
        far = max(max(max(w, c) for w, c in self.lead_times(graph).values()) + gcfg.decision_window,
                  self.config.forecast.horizon)
        step = max(self.config.poll_interval, 15.0)
        return np.arange(0.0, far + step, step, dtype=float)

    def _forecast(self, now: float, graph: str, horizons: np.ndarray) -> tuple[DemandForecast | None, str | None]:
        """The graph's forecast over the horizon grid, or None with a note saying why there is none."""
        if not self.config.forecast.enabled or graph not in self._forecasters:
            return None, None  # off, or nothing observed nor warm-started yet: nothing to forecast from
        try:
            forecast, note = self.forecast(now, graph, [float(h) for h in horizons]), None
        except Exception as e:  # size on observed demand alone; the reason says why
            forecast, note = None, f"forecast failed ({_brief(e)}): sized on observed demand only"
        note = note or self._forecast_errors.get(graph)
        if note is None and forecast is not None and forecast.notes and any(
                rc.kind == "decode" for rc in self.config.graphs[graph].roles.values()):
            note = "; ".join(forecast.notes)
        return forecast, note

    def _contexts(self, now: float, graph: str, obs: Observation | None,
                  forecast: DemandForecast | None, horizons: np.ndarray) -> dict[str, RoleContext]:
        """The context of every serving role (not `warm`) for this decision."""
        gcfg, rules = self.config.graphs[graph], self._rules[graph]
        has_warm = any(rc.kind == "warm" for rc in gcfg.roles.values())
        out = {}
        for role, rcfg in gcfg.roles.items():
            if rcfg.kind == "warm":
                continue
            r = rules[role]
            role_signals = obs.roles.get(role, {}) if obs else {}
            current = r.target if r.target is not None else replicas_now(role_signals, rcfg.min_replicas)
            out[role] = RoleContext(
                now=now, role=role, config=rcfg, graph=gcfg, profile=self._profiles[graph],
                signals=obs.signals if obs else {}, role_signals=role_signals, forecast=forecast,
                horizons=horizons, quantile=self.config.forecast.quantile, current=current, previous=r.target,
                lead_s=r.startup.lead_s(r.startup.warm_s if has_warm else r.startup.cold_s),
                warm_s=r.startup.warm_s, cold_s=r.startup.cold_s, has_warm_role=has_warm)
        return out

    def _decision(self, now: float, graph: str, obs: Observation | None, targets: dict[str, Target],
                  forecast: DemandForecast | None, forecast_note: str | None) -> Decision:
        """Remember the targets; answer them (advisory mode: the current replicas) with their reasons."""
        gcfg, fc = self.config.graphs[graph], self.config.forecast
        roles = {}
        for role, t in targets.items():  # serving roles first, then the warm pool
            r = self._rules[graph][role]
            r.floor_only = r.floor_only and t.held and (r.target is None or r.floor_only)
            r.target = t.value
            figures = dict(t.figures)
            if forecast is not None and t.kind != "warm" and not t.held:
                figures |= forecast_figures(t.kind, forecast, fc.quantiles, fc.horizon)
            answer, advised = advisory.answer(gcfg, role, t.value, obs.roles.get(role, {}) if obs else {})
            roles[role] = RoleDecision(role, t.kind, answer, Reason(t.rule, t.message, t.inputs, figures),
                                       advised=advised, steps=tuple(t.steps))
        notes = (obs.errors if obs else ()) + ((forecast_note,) if forecast_note else ())
        return Decision(graph=graph, at=now, roles=roles, data_at=obs.at if obs else None, notes=notes,
                        forecast=forecast)


def _brief(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."
