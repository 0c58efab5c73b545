"""The decision core: observations in, per-role replica targets with reasons out.

Pure and clock-injected, like Knative's `Scale(now)`: the Engine never reads a clock, a network or
a file after construction. The server's background loop, the demo and the replay simulator all drive
this same class:

    engine = Engine.from_file("pdscaler.yaml")          # or Engine(ScalerConfig(...))
    engine.observe(Observation(graph="example", at=t, signals={...}, roles={...}))
    decision = engine.decide(now=t, graph="example")
    decision.replicas   # {"prefill": 3, "decode": 2}
    decision.reasons    # {"prefill": Reason(rule="forecast", ...), ...}

The pipeline, per prefill/decode role (each rule in its own module under scaler/policy/):

1. untrusted data (none, stale, or the inputs missing) -> hold the last target, never lower;
2. reactive need = the capacity rule on the observed demand (scaler/capacity.py);
   predictive need = the same rule on the forecast demand (quantile `forecast.quantile`) over
   [now + lead, now + lead + decision_window], lead = the role's (learned) warm start-up time;
   need = the larger: the forecast only ever adds capacity above the reactive need;
3. reactive safety net: an observed breach (queue, TTFT, KV usage, ITL) asks for at least
   current + max(1, step_ratio x current) at once, bypassing stabilisation and no-cascade;
4. warm-pool floors: min_replicas, the schedule, and the lead-time floor (what the forecast needs
   within the cold start-up time; within the warm one when the graph has a `warm` role);
5. stabilisation windows (HPA semantics), then the max step, then no cascade;
then per graph: the prefill:decode ratio, the GPU budget, min/max bounds, the `warm` role (balloon
pods for the GPUs the forecast needs within the cold start-up time beyond the serving targets),
and advisory mode (answer the current replicas, export what would have been asked for).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import time as dtime
from pathlib import Path
from typing import Mapping

import numpy as np

from forecasting.demand import DemandForecast, DemandForecaster

from scaler.capacity import (
    DecodeDemand,
    MissingInput,
    Need,
    PrefillDemand,
    context,
    decode_need,
    observed_decode_demand,
    observed_prefill_demand,
    prefill_need,
)
from scaler.capacity_profile import CapacityProfile, flat_profile, load_profile
from scaler.config import GraphConfig, RoleConfig, ScalerConfig, load_config
from scaler.correction import CapacityCorrection
from scaler.decision import Decision, Reason, RoleDecision
from scaler.observation import Observation, sanitize
from scaler.policy.bounds import bound
from scaler.policy.budget import fit_budget
from scaler.policy.cascade import hold_while_starting
from scaler.policy.missing_data import hold, staleness
from scaler.policy.ratio import keep_ratio
from scaler.policy.safety_net import Limits, breaches, emergency_target
from scaler.policy.stabilisation import Stabiliser
from scaler.policy.step_limit import limit_step
from scaler.policy.warm_pool import ScheduledFloor, lead_time_floor, scheduled_floor
from scaler.startup import StartupTracker


class UnknownGraph(KeyError):
    def __init__(self, graph: str, known: list[str]) -> None:
        super().__init__(graph)
        self.graph, self.known = graph, known

    def __str__(self) -> str:
        return f"unknown graph {self.graph!r}; configured graphs: {', '.join(self.known)}"


@dataclass
class _RoleState:
    """What the engine remembers of a role between decisions."""

    stabiliser: Stabiliser
    startup: StartupTracker
    correction: CapacityCorrection = field(default_factory=CapacityCorrection)
    target: int | None = None  # the last target computed (advised, in advisory mode)
    floor_only: bool = True  # every target so far was the floor held for want of data (adopt_replicas may replace it)
    observed_needs: deque = field(default_factory=deque)  # (t, reactive need): the forecast cap's window
    emergency_at: float | None = None  # when the safety net last stepped


@dataclass
class _Sized:
    """A role's target as it moves through the pipeline, with the steps that moved it."""

    role: str
    kind: str
    value: int
    rule: str
    message: str
    inputs: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    held: bool = False  # untrusted data: no later rule may lower it
    emergency: bool = False

    def bind(self, value: int, rule: str, note: str) -> None:
        if value != self.value:
            self.steps.append(f"{rule}: {self.value} -> {value} ({note})")
            self.value, self.rule, self.message = value, rule, note


class Engine:
    def __init__(self, config: ScalerConfig, live: bool = False) -> None:
        """`live=True` (the server): models that fit slowly get their live parameters (Prophet refits
        in a background worker process instead of inline). Replays and tests keep the synchronous,
        reproducible default."""
        from forecasting.registry import MODELS

        self.config = config
        self._latest: dict[str, Observation] = {}
        self._forecast_errors: dict[str, str] = {}  # graph -> why its forecast models failed
        fc = config.forecast
        params = MODELS[fc.model].live_params if live else None
        self._forecasters = {
            g: DemandForecaster(fc.model, step_s=config.poll_interval, seed=fc.seed, quantiles=fc.quantiles,
                                model_params=params)
            for g in config.graphs
        }
        self._profiles = {g: _profile(gcfg) for g, gcfg in config.graphs.items()}
        self._state = {
            g: {
                r: _RoleState(
                    stabiliser=Stabiliser(rc.stabilisation.scale_up, rc.stabilisation.scale_down),
                    startup=StartupTracker(rc.startup.warm, rc.startup.cold, rc.startup.learn),
                )
                for r, rc in gcfg.roles.items()
            }
            for g, gcfg in config.graphs.items()
        }

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
        clean = sanitize(obs)
        self._latest[obs.graph] = clean
        values, kv = demand_values(clean, self.config.graphs[obs.graph])
        try:
            self._forecasters[obs.graph].observe(clean.at, values, kv)
            self._forecast_errors.pop(obs.graph, None)
        except Exception as e:  # a broken model must not lose the observation: decisions go reactive
            self._forecast_errors[obs.graph] = f"forecast model failed to update ({_brief(e)})"

    def targets(self, graph: str) -> dict[str, int | None]:
        """Each role's last target (None before the first decision)."""
        self.graph_config(graph)
        return {r: st.target for r, st in self._state[graph].items()}

    def adopt_replicas(self, graph: str, replicas: Mapping[str, int], at: float | None = None) -> list[str]:
        """Take the cluster's current replicas (role -> spec.replicas) as the last target of roles that
        have none yet, or only the floor held for want of data: a restarted scaler then holds what runs
        instead of answering the floor while its data is missing. With `at`, the adopted count enters the
        stabilisation history, so a restart does not shorten the scale-down window. Returns the roles adopted."""
        gcfg = self.graph_config(graph)
        states = self._state[graph]
        adopted = []
        for role, n in replicas.items():
            st = states.get(role)
            if st is not None and (st.target is None or st.floor_only):
                rcfg = gcfg.roles[role]
                st.target = max(rcfg.min_replicas, min(rcfg.max_replicas, int(n)))
                st.floor_only = False
                if at is not None:  # as if recommended then: a fall waits for the scale-down window
                    st.stabiliser.apply(at, st.target, st.target)
                adopted.append(role)
        return adopted

    def warm_start(self, graph: str, history: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """Fit the graph's forecasts on history (series name -> (timestamps, values)); returns what was fitted."""
        self.graph_config(graph)
        return self._forecasters[graph].warm_start(history)

    def forecast(self, now: float, graph: str, horizons: list[float] | None = None) -> DemandForecast:
        return self._forecasters[graph].forecast(now, horizons or [self.config.forecast.horizon])

    def latest(self, graph: str) -> Observation | None:
        return self._latest.get(graph)

    def lead_times(self, graph: str) -> dict[str, tuple[float, float]]:
        """Per role, the (warm, cold) start-up times in use (learned from rollouts when enabled)."""
        return {r: (s.startup.warm_s, s.startup.cold_s) for r, s in self._state[graph].items()}

    def decide(self, now: float, graph: str | None = None) -> Decision:
        """The decision for `graph` (optional when only one graph is configured) at time `now`."""
        if graph is None:
            if len(self.config.graphs) != 1:
                raise ValueError(f"several graphs configured ({', '.join(self.graphs)}): name one")
            graph = self.graphs[0]
        gcfg = self.graph_config(graph)
        obs = self._latest.get(graph)
        untrusted = staleness(now, obs.at if obs else None, self.config.stale_after)
        held_rule = "no-data" if obs is None else "stale-data"
        states = self._state[graph]
        has_warm = any(rc.kind == "warm" for rc in gcfg.roles.values())
        for role, rcfg in gcfg.roles.items():
            ready = ready_of(obs.roles.get(role, {})) if obs else None
            states[role].startup.observe(now, states[role].target, ready)
        horizons = self._horizons(graph)
        forecast, forecast_note = None, None
        if self.config.forecast.enabled:
            try:
                forecast = self.forecast(now, graph, horizons)
            except Exception as e:  # size on observed demand alone; the reason says why
                forecast_note = f"forecast failed ({_brief(e)}): sized on observed demand only"
            forecast_note = forecast_note or self._forecast_errors.get(graph)
        q = self.config.forecast.quantile

        sized: dict[str, _Sized] = {}
        needs_by_h: dict[str, np.ndarray] = {}  # predicted replicas per horizon, for the warm role
        for role, rcfg in gcfg.roles.items():
            if rcfg.kind == "warm":
                continue
            st = states[role]
            current = self._current(st, rcfg, obs, role)
            if untrusted:
                sized[role] = _held(role, rcfg, st.target, held_rule, untrusted)
                continue
            try:
                s, per_h = self._need(now, graph, gcfg, role, rcfg, obs, forecast, horizons, q, current, has_warm)
            except MissingInput as e:
                why = str(e) + (f" ({obs.errors[-1]})" if obs.errors else "")
                sized[role] = _held(role, rcfg, st.target, "missing-data", why)
                continue
            needs_by_h[role] = per_h
            self._stabilise(now, s, rcfg, st, current, obs.roles.get(role, {}))
            sized[role] = s

        self._graph_rules(gcfg, sized)
        for role, rcfg in gcfg.roles.items():
            if rcfg.kind == "warm":
                blind = [r for r, x in sized.items() if x.held and x.kind != "warm"]
                if untrusted:
                    sized[role] = _held(role, rcfg, states[role].target, held_rule, untrusted)
                elif blind:  # the placeholders cover forecasts the held roles do not have now
                    sized[role] = _held(role, rcfg, states[role].target, "missing-data",
                                        f"{', '.join(blind)} held for missing data")
                else:
                    sized[role] = self._warm_role(role, rcfg, gcfg, sized, needs_by_h, horizons)
        roles = {}
        for role, s in sized.items():
            st = states[role]
            st.floor_only = st.floor_only and s.held and (st.target is None or st.floor_only)
            st.target = s.value
            roles[role] = self._finish(s, gcfg, obs, role, forecast)
        notes = (obs.errors if obs else ()) + ((forecast_note,) if forecast_note else ())
        decision = Decision(graph=graph, at=now, roles=roles, data_at=obs.at if obs else None,
                            notes=notes, forecast=forecast)
        return decision

    def decide_all(self, now: float) -> dict[str, Decision]:
        return {g: self.decide(now, g) for g in self.config.graphs}

    # --- the pipeline's pieces -----------------------------------------------------------------

    def _horizons(self, graph: str) -> list[float]:
        """Forecast horizons: a grid from now to the longest look-ahead any role needs."""
        gcfg = self.config.graphs[graph]
        far = max(max(w, c) for w, c in self.lead_times(graph).values()) + gcfg.decision_window
        step = max(self.config.poll_interval, 15.0)
        return [float(h) for h in np.arange(0.0, far + step, step)]

    @staticmethod
    def _current(st: _RoleState, rcfg: RoleConfig, obs: Observation | None, role: str) -> int:
        if st.target is not None:
            return st.target
        return replicas_now(obs.roles.get(role, {}) if obs else {}, rcfg.min_replicas)

    def _need(self, now: float, graph: str, gcfg: GraphConfig, role: str, rcfg: RoleConfig, obs: Observation,
              forecast: DemandForecast | None, horizons: list[float], q: float, current: int, has_warm: bool
              ) -> tuple[_Sized, np.ndarray]:
        st = self._state[graph][role]
        profile = self._profiles[graph]
        g, r = obs.signals, obs.roles.get(role, {})
        if rcfg.kind == "prefill":
            demand = observed_prefill_demand(g, r)
            reactive = prefill_need(demand, profile.prefill, rcfg.prefill, st.correction.factor)
            load = load_of(reactive.figures.get("arrival_tokens_per_s"), reactive.figures.get("tokens_per_s_per_replica"),
                         r.get("ready_workers"))
            st.correction.update(now, g.get("ttft_p99"), gcfg.slo.ttft_s, load)
            per_h = (self._forecast_need_prefill(forecast, q, demand.isl, profile, rcfg, st.correction.factor)
                     if forecast else np.full(len(horizons), np.nan))
        else:
            demand = observed_decode_demand(g, r, profile.decode.kv_tokens)
            reactive = decode_need(demand, profile.decode, rcfg.decode, st.correction.factor)
            load = load_of(reactive.figures.get("decode_tokens_per_s"), reactive.figures.get("tokens_per_s_per_replica"),
                         r.get("ready_workers"))
            st.correction.update(now, g.get("itl_p99"), gcfg.slo.itl_s, load)
            per_h = (self._forecast_need_decode(forecast, q, context(g), profile, rcfg, st.correction.factor)
                     if forecast else np.full(len(horizons), np.nan))
        # The cap's reference is the need of the ARRIVING demand: a backlog being drained is not
        # traffic a forecast should extrapolate from.
        arriving = reactive.replicas - reactive.figures.get("backlog_tokens_per_s", 0.0) / max(
            reactive.figures.get("usable_tokens_per_s_per_replica", 1.0), 1e-9)
        cap = self._forecast_cap(now, st, max(0.0, arriving))
        capped = bool(cap is not None and np.nanmax(per_h, initial=0.0) > cap)
        if capped:
            per_h = np.minimum(per_h, cap)
        warm_s, cold_s = st.startup.warm_s, st.startup.cold_s
        h = np.asarray(horizons)
        window = (h >= warm_s - 1e-9) & (h <= warm_s + gcfg.decision_window + 1e-9)
        if not window.any():
            window = h >= h[-1]
        finite = per_h[window][np.isfinite(per_h[window])]
        predictive = float(finite.max()) if finite.size else None

        inputs = {**g, **r}
        figures = {**reactive.figures, "reactive_replicas": reactive.replicas, "lead_time_s": warm_s,
                   "capacity_correction": st.correction.factor}
        if predictive is not None and predictive > reactive.replicas:
            raw, rule = predictive, "forecast"
            message = (f"forecast p{round(q * 100)} demand over [now+{warm_s:.0f}s, +{gcfg.decision_window:.0f}s] needs "
                       f"{predictive:.2f} replicas (observed demand: {reactive.replicas:.2f}, {reactive.term})")
        else:
            raw, rule = reactive.replicas, "capacity"
            message = f"observed demand needs {reactive.replicas:.2f} replicas ({reactive.term})"
            if predictive is not None:
                message += f"; forecast needs no more ({predictive:.2f})"
        if predictive is not None:
            figures["predictive_replicas"] = predictive
        if capped:
            figures["forecast_cap_replicas"] = cap
            message += (f"; forecast capped at {cap:.2f} = {self.config.forecast.max_growth:g} x the highest observed "
                        f"need of the last {self.config.forecast.growth_window:.0f}s")
        s = _Sized(role, rcfg.kind, max(0, math.ceil(raw - 1e-9)), rule, message, inputs, figures)
        s.steps.append(f"{rule}: {s.value} ({message})")

        # Reactive safety net.
        net = rcfg.safety_net
        if net.enabled:
            limits = Limits(
                queued_requests=net.queued_requests,
                ttft_p99_s=net.ttft_p99_s or gcfg.slo.ttft_s,
                kv_usage=net.kv_usage,
                itl_p99_s=net.itl_p99_s or gcfg.slo.itl_s,
            )
            ready = ready_of(r)
            total = reactive.figures.get("demand_tokens_per_s", reactive.figures.get("decode_tokens_per_s"))
            loaded = load_of(total, reactive.figures.get("tokens_per_s_per_replica"), ready)
            breached = breaches(rcfg.kind, limits, g, r, loaded=loaded is None or loaded >= net.min_load)
            base = int(ready) if ready is not None else current
            # One step at a time: the next only once the last one's replicas had time to start and to
            # serve a latency window (the p99 lingers for a window after the backlog drains).
            wait = st.startup.warm_s + net.cooldown
            settled = st.emergency_at is None or now - st.emergency_at >= wait
            if breached and settled:
                want = emergency_target(base, net.step_ratio)
                if want > s.value:
                    s.bind(want, "safety-net", "observed " + ", ".join(breached) + f": scale up at once from {base} ready")
                if want > current:
                    s.emergency = True
                    st.emergency_at = now
            elif breached:
                s.steps.append(f"safety-net: {', '.join(breached)}, but the last emergency step "
                               f"({now - st.emergency_at:.0f}s ago) is still starting or settling ({wait:.0f}s)")

        # Warm-pool floors: scheduled and lead-time (min_replicas comes with the bounds).
        sched, entry = scheduled_floor(now, _schedule(rcfg), gcfg.timezone)
        if sched > s.value:
            s.bind(sched, "scheduled-floor", f"{entry.start:%H:%M}-{entry.end:%H:%M} {','.join(entry.days)} floor {sched}")
        if rcfg.lead_time_floor:
            reach = warm_s if has_warm else cold_s
            ahead = per_h[(h <= reach + 1e-9) & np.isfinite(per_h)]
            floor = lead_time_floor(ahead.tolist())
            if floor > s.value:
                s.bind(floor, "lead-time-floor",
                       f"the forecast needs {floor} within the {'warm' if has_warm else 'cold'} start-up time ({reach:.0f}s)")
        return s, per_h

    def _forecast_cap(self, now: float, st: _RoleState, observed: float) -> float | None:
        """max_growth x the highest observed need of the last growth_window (at least one replica's
        worth): a forecast far beyond anything recently seen is an extrapolation artefact, not a plan."""
        fc = self.config.forecast
        st.observed_needs.append((now, observed))
        while st.observed_needs and st.observed_needs[0][0] < now - fc.growth_window:
            st.observed_needs.popleft()
        if fc.max_growth is None:
            return None
        return fc.max_growth * max(1.0, max(n for _, n in st.observed_needs))

    @staticmethod
    def _forecast_need_prefill(forecast: DemandForecast, q: float, isl: float | None, profile: CapacityProfile,
                               rcfg: RoleConfig, factor: float) -> np.ndarray:
        if "prefill_tokens_per_s" not in forecast.series:
            return np.full(len(forecast.horizons), np.nan)
        d = forecast.at("prefill_tokens_per_s", q)
        return np.array([prefill_need(PrefillDemand(float(x), 0.0, isl), profile.prefill, rcfg.prefill, factor).replicas
                         if math.isfinite(x) else math.nan for x in d])

    @staticmethod
    def _forecast_need_decode(forecast: DemandForecast, q: float, ctx: float | None, profile: CapacityProfile,
                              rcfg: RoleConfig, factor: float) -> np.ndarray:
        rate = forecast.at("decode_tokens_per_s", q) if "decode_tokens_per_s" in forecast.series else None
        kv = forecast.kv_tokens.get(q)
        out = np.full(len(forecast.horizons), np.nan)
        for i in range(len(out)):
            tr = float(rate[i]) if rate is not None and math.isfinite(rate[i]) else None
            kt = float(kv[i]) if kv is not None and math.isfinite(kv[i]) else None
            if tr is None and kt is None:
                continue
            out[i] = decode_need(DecodeDemand(kt, tr, ctx), profile.decode, rcfg.decode, factor).replicas
        return out

    @staticmethod
    def _stabilise(now: float, s: _Sized, rcfg: RoleConfig, st: _RoleState, current: int,
                   role_signals: Mapping[str, float]) -> None:
        if s.emergency:
            st.stabiliser.apply(now, s.value, current)  # remembered, but an emergency is not delayed
        else:
            v, note = st.stabiliser.apply(now, s.value, current)
            if note:
                s.bind(v, "stabilisation", note)
        ms = rcfg.max_step
        v, note = limit_step(s.value, current, ms.up, ms.down, ms.up_ratio)
        if note:
            s.bind(v, "max-step", note)
        if rcfg.no_cascade and not s.emergency:
            ready = ready_of(role_signals)
            v, note = hold_while_starting(s.value, current, int(ready) if ready is not None else None)
            if note:
                s.bind(v, "no-cascade", note)

    @staticmethod
    def _graph_rules(gcfg: GraphConfig, sized: dict[str, _Sized]) -> None:
        roles = gcfg.roles
        live = {r: s for r, s in sized.items() if not s.held}
        # Prefill:decode ratio (raises only).
        pre = [r for r in live if roles[r].kind == "prefill"]
        dec = [r for r in live if roles[r].kind == "decode"]
        ratio = gcfg.prefill_decode_ratio
        if len(pre) == 1 and len(dec) == 1 and (ratio.min or ratio.max):
            p, d = live[pre[0]], live[dec[0]]
            np_, nd, note = keep_ratio(p.value, d.value, ratio.min, ratio.max)
            if note:
                p.bind(np_, "ratio", note)
                d.bind(nd, "ratio", note)
        # min/max bounds.
        for r, s in sized.items():
            v, which = bound(s.value, roles[r].min_replicas, roles[r].max_replicas)
            if which:
                s.bind(v, which, f"bounded to {which}={v}")
        # GPU budget (shared by the serving roles; floors are min_replicas, and a held role's floor is
        # the target it holds: the budget trims the live roles, never a role held for want of data).
        if gcfg.gpu_budget is not None:
            serving = {r: s for r, s in sized.items() if roles[r].kind != "warm"}
            fitted, note = fit_budget({r: s.value for r, s in serving.items()},
                                      {r: roles[r].gpus_per_replica for r in serving},
                                      {r: s.value if s.held else roles[r].min_replicas for r, s in serving.items()},
                                      gcfg.gpu_budget)
            if note:
                for r, s in serving.items():
                    s.bind(fitted[r], "gpu-budget", note)

    @staticmethod
    def _warm_role(role: str, rcfg: RoleConfig, gcfg: GraphConfig, sized: dict[str, _Sized],
                   needs_by_h: dict[str, np.ndarray], horizons: list[float]) -> _Sized:
        """Balloon pods for the GPUs the forecast needs within the cold start-up time (plus the
        decision window) beyond what the serving roles' targets already hold."""
        roles = gcfg.roles
        held_gpus = sum(s.value * roles[r].gpus_per_replica for r, s in sized.items())
        cold = max(rc.startup.cold for rc in roles.values() if rc.kind != "warm") if needs_by_h else 0.0
        h = np.asarray(horizons)
        mask = h <= cold + gcfg.decision_window + 1e-9
        need_gpus = 0.0
        for r, per_h in needs_by_h.items():
            vals = per_h[mask]
            vals = vals[np.isfinite(vals)]
            if vals.size:
                need_gpus += math.ceil(float(vals.max()) - 1e-9) * roles[r].gpus_per_replica
        spare = max(0.0, need_gpus - held_gpus)
        pods = math.ceil(spare / rcfg.gpus_per_replica - 1e-9)
        message = (f"forecast needs {need_gpus:.0f} GPUs within {cold + gcfg.decision_window:.0f}s, "
                   f"serving targets hold {held_gpus}: keep {pods} placeholder pod(s) warm")
        s = _Sized(role, "warm", pods, "warm-pool", message,
                   figures={"forecast_gpus": need_gpus, "serving_gpus": float(held_gpus)})
        v, which = bound(s.value, rcfg.min_replicas, rcfg.max_replicas)
        if which:
            s.bind(v, which, f"bounded to {which}={v}")
        return s

    def _finish(self, s: _Sized, gcfg: GraphConfig, obs: Observation | None, role: str,
                forecast: DemandForecast | None) -> RoleDecision:
        figures = dict(s.figures)
        if forecast is not None and s.kind != "warm" and not s.held:
            figures |= _forecast_figures(s.kind, forecast, self.config.forecast.quantiles,
                                         self.config.forecast.horizon)
        reason = Reason(s.rule, s.message, s.inputs, figures)
        if gcfg.mode == "advisory":
            answer = replicas_now(obs.roles.get(role, {}) if obs else {}, gcfg.roles[role].min_replicas)
            return RoleDecision(role, s.kind, answer, reason, advised=s.value, steps=tuple(s.steps))
        return RoleDecision(role, s.kind, s.value, reason, steps=tuple(s.steps))


def _brief(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


def ready_of(values: Mapping[str, float]) -> float | None:
    """Ready replicas of a role: the cluster's count when read (scaler/kube), else the workers that
    report to Dynamo's router."""
    ready = values.get("ready_replicas")
    return ready if ready is not None else values.get("ready_workers")


def replicas_now(values: Mapping[str, float], default: int) -> int:
    """The role's replicas as they stand: the scale subresource's spec.replicas when read, else the
    ready count, else `default`."""
    for v in (values.get("desired_replicas"), ready_of(values)):
        if v is not None:
            return int(v)
    return default


def load_of(demand: float | None, per_replica: float | None, ready: float | None) -> float | None:
    """Demand as a share of the ready replicas' capacity (None when unknown)."""
    if demand is None or per_replica is None or not ready:
        return None
    return demand / (per_replica * ready)


def _schedule(rcfg: RoleConfig) -> list[ScheduledFloor]:
    def t(hhmm: str) -> dtime:
        h, m = map(int, hhmm.split(":"))
        return dtime(23, 59, 59) if h == 24 else dtime(h, m)

    return [ScheduledFloor(tuple(e.days), t(e.start), t(e.end), e.min_replicas) for e in rcfg.schedule]


def _profile(gcfg: GraphConfig) -> CapacityProfile:
    if isinstance(gcfg.profile, CapacityProfile):
        return gcfg.profile
    if isinstance(gcfg.profile, str):
        return load_profile(gcfg.profile)
    pre = next((rc for rc in gcfg.roles.values() if rc.kind == "prefill"), None)
    dec = next((rc for rc in gcfg.roles.values() if rc.kind == "decode"), None)
    pre = pre or RoleConfig(kind="prefill")
    dec = dec or RoleConfig(kind="decode")
    return flat_profile(pre.prefill.tokens_per_s, dec.decode.tokens_per_s, dec.decode.kv_tokens,
                        pre.gpus_per_replica, dec.gpus_per_replica)


def demand_values(obs: Observation, gcfg: GraphConfig) -> tuple[dict[str, float], float | None]:
    """The forecast inputs in an observation: the demand series (token rates from rate(ISL_sum) or
    else rate x mean ISL), the means the derivations use, and the KV tokens in use on decode roles."""
    sig = obs.signals
    values = {k: sig[k] for k in ("request_rate", "isl_mean", "osl_mean", "itl_mean") if k in sig}
    for name, mean in (("prefill_tokens_per_s", "isl_mean"), ("decode_tokens_per_s", "osl_mean")):
        if name in sig:
            values[name] = sig[name]
        elif "request_rate" in sig and (sig["request_rate"] == 0 or mean in sig):
            values[name] = 0.0 if sig["request_rate"] == 0 else sig["request_rate"] * sig[mean]
    kv = None
    block = sig.get("kv_block_size")
    for role, rcfg in gcfg.roles.items():
        blocks = obs.roles.get(role, {}).get("kv_active_blocks")
        if rcfg.kind == "decode" and blocks is not None and block is not None:
            kv = (kv or 0.0) + blocks * block
    return values, kv


# What each role kind's reasons show of the forecast.
_FORECAST_SERIES_BY_KIND = {"prefill": ("prefill_tokens_per_s",), "decode": ("decode_tokens_per_s", "kv_tokens")}


def _forecast_figures(kind: str, forecast: DemandForecast, quantiles: list[float], horizon: float
                      ) -> dict[str, float]:
    """The forecast at the grid horizon nearest `horizon` (keys like forecast_<series>_p90@300s)."""
    wanted = _FORECAST_SERIES_BY_KIND[kind]
    h = float(forecast.horizons[np.argmin(np.abs(forecast.horizons - horizon))])
    tag = f"@{h:g}s"
    out = {}
    for q in quantiles:
        for k, v in forecast.figures(q).items():
            if k.endswith(tag) and any(f"forecast_{w}_" in k for w in wanted):
                out[k] = v
    return out


def _held(role: str, rcfg: RoleConfig, prev: int | None, rule: str, why: str) -> _Sized:
    n = hold(prev, rcfg.min_replicas, rcfg.max_replicas)
    what = f"holding {n}" + (" (the floor)" if prev is None else " (never scale down on missing data)")
    s = _Sized(role, rcfg.kind, n, rule, f"{why}; {what}", held=True)
    s.steps.append(f"{rule}: {s.message}")
    return s

