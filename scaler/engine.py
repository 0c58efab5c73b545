"""The decision core: observations in, per-role replica targets with reasons out.

Pure and clock-injected, like Knative's `Scale(now)`: the Engine never reads a clock, a network or
a file after construction. The server's background loop, the demo and the replay simulator all drive
this same class:

    engine = Engine.from_file("pdscaler.yaml")          # or Engine(ScalerConfig(...))
    engine.observe(Observation(graph="example", at=t, signals={...}, roles={...}))
    decision = engine.decide(now=t, graph="example")
    decision.replicas   # {"prefill": 3, "decode": 2}
    decision.reasons    # {"prefill": Reason(rule="capacity", ...), ...}
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np

from forecasting.demand import DemandForecast, DemandForecaster

from scaler.capacity import MissingInput, Need, decode_need, prefill_need
from scaler.config import GraphConfig, RoleConfig, ScalerConfig, load_config
from scaler.decision import Decision, Reason, RoleDecision
from scaler.observation import Observation, sanitize
from scaler.policy.bounds import bound
from scaler.policy.missing_data import hold, staleness


class UnknownGraph(KeyError):
    def __init__(self, graph: str, known: list[str]) -> None:
        super().__init__(graph)
        self.graph, self.known = graph, known

    def __str__(self) -> str:
        return f"unknown graph {self.graph!r}; configured graphs: {', '.join(self.known)}"


class Engine:
    def __init__(self, config: ScalerConfig) -> None:
        self.config = config
        self._latest: dict[str, Observation] = {}
        self._last: dict[str, Decision] = {}
        fc = config.forecast
        self._forecasters = {
            g: DemandForecaster(fc.model, step_s=config.poll_interval, seed=fc.seed, quantiles=fc.quantiles)
            for g in config.graphs
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

    def observe(self, obs: Observation) -> None:
        """Record an observation. Older-than-latest observations are ignored; bad values dropped."""
        self.graph_config(obs.graph)
        latest = self._latest.get(obs.graph)
        if latest is not None and obs.at <= latest.at:
            return
        clean = sanitize(obs)
        self._latest[obs.graph] = clean
        values, kv = demand_values(clean, self.config.graphs[obs.graph])
        self._forecasters[obs.graph].observe(clean.at, values, kv)

    def warm_start(self, graph: str, history: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """Fit the graph's forecasts on history (series name -> (timestamps, values)); returns what was fitted."""
        self.graph_config(graph)
        return self._forecasters[graph].warm_start(history)

    def forecast(self, now: float, graph: str, horizons: list[float] | None = None) -> DemandForecast:
        return self._forecasters[graph].forecast(now, horizons or [self.config.forecast.horizon])

    def latest(self, graph: str) -> Observation | None:
        return self._latest.get(graph)

    def decide(self, now: float, graph: str | None = None) -> Decision:
        """The decision for `graph` (optional when only one graph is configured) at time `now`."""
        if graph is None:
            if len(self.config.graphs) != 1:
                raise ValueError(f"several graphs configured ({', '.join(self.graphs)}): name one")
            graph = self.graphs[0]
        gcfg = self.graph_config(graph)
        obs = self._latest.get(graph)
        previous = self._last.get(graph)
        untrusted = staleness(now, obs.at if obs else None, self.config.stale_after)
        forecast = self.forecast(now, graph)
        roles = {}
        for role, rcfg in gcfg.roles.items():
            prev = previous.roles[role].replicas if previous and role in previous.roles else None
            if untrusted:
                rd = _held(role, rcfg, prev, "no-data" if obs is None else "stale-data", untrusted)
            else:
                rd = _sized(role, rcfg, obs, prev)
            roles[role] = _with_forecast(rd, forecast, self.config.forecast.quantiles)
        decision = Decision(
            graph=graph,
            at=now,
            roles=roles,
            data_at=obs.at if obs else None,
            notes=obs.errors if obs else (),
            forecast=forecast,
        )
        self._last[graph] = decision
        return decision

    def decide_all(self, now: float) -> dict[str, Decision]:
        return {g: self.decide(now, g) for g in self.config.graphs}


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


def _with_forecast(rd: RoleDecision, forecast: DemandForecast, quantiles: list[float]) -> RoleDecision:
    wanted = _FORECAST_SERIES_BY_KIND[rd.kind]
    all_figures = {k: v for q in quantiles for k, v in forecast.figures(q).items()}
    figures = {k: v for k, v in all_figures.items() if any(f"forecast_{w}_" in k for w in wanted)}
    if not figures:
        return rd
    reason = replace(rd.reason, figures={**rd.reason.figures, **figures})
    return replace(rd, reason=reason)


def _held(role: str, rcfg: RoleConfig, prev: int | None, rule: str, why: str) -> RoleDecision:
    n = hold(prev, rcfg.min_replicas, rcfg.max_replicas)
    what = f"holding {n}" + (" (the floor)" if prev is None else " (never scale down on missing data)")
    return RoleDecision(role, rcfg.kind, n, Reason(rule, f"{why}; {what}"))


def _sized(role: str, rcfg: RoleConfig, obs: Observation, prev: int | None) -> RoleDecision:
    role_signals = obs.roles.get(role, {})
    try:
        need = _need(rcfg, obs, role_signals)
    except MissingInput as e:
        why = str(e) + (f" ({obs.errors[-1]})" if obs.errors else "")
        return _held(role, rcfg, prev, "missing-data", why)
    raw = max(0, math.ceil(need.replicas - 1e-9))
    n, limit = bound(raw, rcfg.min_replicas, rcfg.max_replicas)
    inputs = {**obs.signals, **role_signals}
    figures = {**need.figures, "replicas_needed": need.replicas}
    if limit:
        message = f"capacity rule asks for {raw} ({need.term}); bounded to {limit}={n}"
    else:
        message = f"capacity rule: {need.replicas:.2f} replicas needed for {need.term}"
    return RoleDecision(role, rcfg.kind, n, Reason(limit or "capacity", message, inputs, figures))


def _need(rcfg: RoleConfig, obs: Observation, role_signals) -> Need:
    if rcfg.kind == "prefill":
        return prefill_need(rcfg.prefill, obs.signals, role_signals)
    return decode_need(rcfg.decode, obs.signals, role_signals)
