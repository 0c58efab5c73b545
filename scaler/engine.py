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
from pathlib import Path

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
        if latest is not None and obs.at < latest.at:
            return
        self._latest[obs.graph] = sanitize(obs)

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
        roles = {}
        for role, rcfg in gcfg.roles.items():
            prev = previous.roles[role].replicas if previous and role in previous.roles else None
            if untrusted:
                roles[role] = _held(role, rcfg, prev, "no-data" if obs is None else "stale-data", untrusted)
            else:
                roles[role] = _sized(role, rcfg, obs, prev)
        decision = Decision(
            graph=graph,
            at=now,
            roles=roles,
            data_at=obs.at if obs else None,
            notes=obs.errors if obs else (),
        )
        self._last[graph] = decision
        return decision

    def decide_all(self, now: float) -> dict[str, Decision]:
        return {g: self.decide(now, g) for g in self.config.graphs}


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
