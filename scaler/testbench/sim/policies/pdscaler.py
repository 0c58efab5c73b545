"""`pdscaler`: the real decision core (scaler.engine.Engine) driven through its embedding API.

Every poll interval (15 s) it observes what the server would read from Prometheus (the telemetry
window over the source's rate window, 60 s: the signals of scaler/signals.py) and decides; KEDA +
the HPA (target 1, no stabilisation or rate limits: the engine owns those; 10 % tolerance) apply
the per-role targets at each HPA sync. A `warm` role in the decision is the number of balloon pods.

Warm start: when the workload has history (the first day of a multi-day curve) and the Engine has
`warm_start`, the forecasters are fitted on it at 60 s resolution, as the server does from
Prometheus range queries at start-up.
"""

from __future__ import annotations

import time
from collections import Counter

from scaler.signals import GRAPH_SIGNALS, role_signals
from scaler.testbench.sim.engine_config import GRAPH, engine_config
from scaler.testbench.sim.policies.base import Policy

RATE_WINDOW_S = 60.0
WARM_START_STEP_S = 60.0
# Telemetry columns named otherwise than the product's signals (scaler/signals.py) they stand for.
ROLE_COLUMNS = {"prefill": {"ready_workers": "ready_prefill"}, "decode": {"ready_workers": "ready_decode"}}


def observation(now: float, window: dict[str, float], cluster=None):
    """What the server would read from Prometheus, from the telemetry window (None when empty), and
    with `cluster` what its cluster reads would give: each serving role's scale subresource
    (desired_replicas) and ready replicas."""
    from scaler.observation import Observation

    if not window:
        return None
    signals = {s.name: window[s.name] for s in GRAPH_SIGNALS if s.name in window}
    roles = {}
    for role, columns in ROLE_COLUMNS.items():
        names = (s.name for s in role_signals(role))
        roles[role] = {n: window[columns.get(n, n)] for n in names if columns.get(n, n) in window}
        if cluster is not None:
            desired, ready = cluster.replicas(role)
            roles[role] |= {"desired_replicas": float(desired), "ready_replicas": float(ready)}
    return Observation(graph=GRAPH, at=now, signals=signals, roles=roles)


class Pdscaler(Policy):
    name = "pdscaler"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        from scaler.engine import Engine

        self.config = engine_config(ctx)
        self.engine = Engine(self.config)
        self.interval_s = float(self.engine.config.poll_interval)
        self.calls = 0
        self.seconds = 0.0
        self.rules: Counter[str] = Counter()
        self.warm_started: list[str] = []
        history = ctx.workload.history(WARM_START_STEP_S)
        if history and hasattr(self.engine, "warm_start"):
            t0 = time.perf_counter()
            self.warm_started = list(self.engine.warm_start(GRAPH, history) or [])
            self.warm_start_s = time.perf_counter() - t0

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        obs = observation(now, telemetry.window(RATE_WINDOW_S), cluster)
        if obs is None:
            return {}
        t0 = time.perf_counter()
        self.engine.observe(obs)
        decision = self.engine.decide(now=now, graph=GRAPH)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        for role, reason in decision.reasons.items():
            self.rules[f"{role}:{reason.rule}"] += 1
        return {role: float(n) for role, n in decision.replicas.items()}

    def stats(self) -> dict:
        out = {
            "engine_calls": self.calls,
            "engine_ms_per_call": 1000 * self.seconds / self.calls if self.calls else 0.0,
            "decision_rules": dict(self.rules.most_common()),
            "warm_started_series": self.warm_started,
        }
        if hasattr(self, "warm_start_s"):
            out["warm_start_s"] = self.warm_start_s
        return out
