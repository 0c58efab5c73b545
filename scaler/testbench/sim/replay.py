"""One policy replayed over a workload: the fluid graph, the GPU nodes, KEDA + HPA, and the score.

Each step of `dt` seconds, in this order: the policy acts if its interval is due (it sees the
telemetry up to the start of the step), then the HPAs sync if due (every 15 s; direct policies
apply their counts at once), then the fluid graph advances with the step's demand and the step is
recorded. Replicas start on the GPU nodes (warm or cold, scaler/testbench/sim/nodes.py).

Scored (`RunResult.summary`): TTFT and ITL attainment (share of requests within the SLO), p99 TTFT
and ITL, billed `gpu_hours` (every provisioned GPU), `replica_gpu_hours` (replicas starting or
ready), scale events (changes of a serving role's replica count), max replicas per role, warm and
cold starts, HPA syncs whose change the tolerance swallowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from scaler.testbench.sim.actuation import HPA_SYNC_S, HpaActuator
from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.fluid import FluidGraph
from scaler.testbench.sim.nodes import GpuNodes
from scaler.testbench.sim.policies import Policy, make_policy
from scaler.testbench.sim.telemetry import Telemetry

SERVING_ROLES = ("prefill", "decode")


class Cluster:
    """The replicas and nodes of one replay; what policies may read (base.ClusterView)."""

    def __init__(self, graph: FluidGraph, nodes: GpuNodes) -> None:
        self.graph, self.nodes = graph, nodes
        self.events = {"prefill": 0, "decode": 0, "warm": 0}

    def replicas(self, role: str) -> tuple[int, int]:
        if role == "warm":
            return self.nodes.balloons, self.nodes.balloons
        return self.graph.replicas(role)

    def free_warm_gpus(self) -> int:
        return self.nodes.free_warm()

    def balloons(self) -> int:
        return self.nodes.balloons

    def apply(self, role: str, n: int, now: float) -> None:
        n = max(0, int(n))
        if n == self.replicas(role)[0]:
            return
        self.events[role] = self.events.get(role, 0) + 1
        if role == "warm":
            self.nodes.set_balloons(n, now)
        else:
            self.graph.set_replicas(role, n, now)


PLOT_POINTS = 1500


@dataclass
class RunResult:
    """A replay's score, and its time series reduced to PLOT_POINTS buckets (the per-step
    telemetry of a 14-day replay is ~160 MB; it is kept only on request)."""

    name: str
    summary: dict
    series: dict[str, np.ndarray] = field(default_factory=dict)
    telemetry: Telemetry | None = None


def plot_series(tel: Telemetry, ttft_slo: float, points: int = PLOT_POINTS) -> dict[str, np.ndarray]:
    """Per bucket: the most replicas of each role, and the share of arrivals with TTFT > SLO."""
    c, n = tel.cols, tel.i
    m = max(1, -(-n // points))
    arrivals = c["arrivals"][:n]
    late = arrivals * (c["ttft"][:n] > ttft_slo)
    return {
        "desired_prefill": downsample(c["desired_prefill"][:n], points, "max"),
        "desired_decode": downsample(c["desired_decode"][:n], points, "max"),
        "balloons": downsample(c["balloons"][:n], points, "max"),
        "ttft_breach_share": _bucket_sum(late, m) / np.maximum(_bucket_sum(arrivals, m), 1e-9),
    }


def _bucket_sum(x: np.ndarray, m: int) -> np.ndarray:
    pad = (-len(x)) % m
    return np.concatenate([x, np.zeros(pad)]).reshape(-1, m).sum(axis=1)


def replay(name: str | Policy, ctx: SimContext, progress: Callable[[int], None] | None = None,
           keep_telemetry: bool = False, params: Mapping[str, Any] | None = None) -> RunResult:
    """Replay policy `name` (a registered name, built with `params` as its knobs, or a Policy built
    already) over ctx.workload's simulated span; `progress(steps_done)` now and then."""
    wall0 = time.perf_counter()
    policy = name if isinstance(name, Policy) else make_policy(name, ctx, **(params or {}))
    wl, dt = ctx.workload, ctx.dt
    n, t0 = wl.n_sim, wl.sim_t0
    rate, isl, osl = ctx.sim("rate"), ctx.sim("isl"), ctx.sim("osl")
    nodes = GpuNodes(ctx.nodes)
    init = policy.initial_replicas()
    graph = FluidGraph(ctx.profile, now=t0, replicas={r: init[r] for r in SERVING_ROLES}, nodes=nodes)
    if init.get("warm"):  # initial balloon pods, on nodes already Ready
        nodes.set_balloons(init["warm"], t0 - ctx.nodes.node_provision_s)
    cluster = Cluster(graph, nodes)
    tel = Telemetry(n, dt, t0, ctx.profile)
    actuators: dict[str, HpaActuator] = {}
    latest: dict[str, float] = {}
    next_policy = next_sync = 0.0
    report_every = max(1, n // 200)
    rate_l, isl_l, osl_l = rate.tolist(), isl.tolist(), osl.tolist()
    for i in range(n):
        rel = i * dt
        now = t0 + rel
        if rel >= next_policy - 1e-9:
            out = policy.step(now, i, tel, cluster)
            while next_policy <= rel + 1e-9:
                next_policy += policy.interval_s
            if policy.direct:  # scale-downs first: a freed GPU can then serve a scale-up at once
                for role, v in sorted(out.items(), key=lambda kv: int(kv[1]) - cluster.replicas(kv[0])[0]):
                    cluster.apply(role, int(v), now)
            else:
                latest.update(out)
        if not policy.direct and rel >= next_sync - 1e-9:
            for role, value in latest.items():
                act = actuators.get(role)
                if act is None:
                    act = actuators[role] = HpaActuator(policy.scaled_object(role))
                desired = cluster.replicas(role)[0]
                cluster.apply(role, act.sync(now, value, desired, desired), now)
            while next_sync <= rel + 1e-9:
                next_sync += HPA_SYNC_S
        r = graph.step(dt, rate_l[i], isl_l[i], osl_l[i])
        tel.record(r, isl_l[i], osl_l[i], nodes.balloons, nodes.provisioned)
        if progress is not None and (i % report_every == 0 or i == n - 1):
            progress(i + 1)
    c = tel.cols
    summary = {
        **tel.slo_scores(ctx.ttft_slo, ctx.itl_slo),
        "gpu_hours": nodes.gpu_seconds / 3600,
        "replica_gpu_hours": graph.gpu_seconds / 3600,
        "scale_events": cluster.events["prefill"] + cluster.events["decode"],
        "scale_events_by_role": dict(cluster.events),
        "max_replicas": {"prefill": int(c["desired_prefill"].max()), "decode": int(c["desired_decode"].max())},
        "mean_replicas": {"prefill": float(c["desired_prefill"].mean()), "decode": float(c["desired_decode"].mean())},
        "warm_starts": nodes.warm_starts,
        "cold_starts": nodes.cold_starts,
        "unfinished_requests": graph.unfinished_requests,
        "hpa_tolerance_held": sum(a.held for a in actuators.values()),
        "hpa_tolerance_held_by_role": {role: a.held for role, a in actuators.items()},
        "actuation": "direct" if policy.direct else "keda-hpa",
    }
    if c["balloons"].max() > 0:
        summary["max_replicas"]["warm"] = int(c["balloons"].max())
    summary.update(policy.stats())
    summary["wall_s"] = time.perf_counter() - wall0
    return RunResult(policy.name, summary, plot_series(tel, ctx.ttft_slo), tel if keep_telemetry else None)


def downsample(x: np.ndarray, buckets: int, how: str = "mean") -> np.ndarray:
    """`x` reduced to at most `buckets` points (mean or max per bucket of ceil(len / buckets))."""
    n = len(x)
    m = max(1, -(-n // buckets))
    if m == 1:
        return x.astype(float)
    pad = m * (-(-n // m)) - n
    xp = np.concatenate([x.astype(float), np.full(pad, np.nan)]).reshape(-1, m)
    return np.nanmax(xp, axis=1) if how == "max" else np.nanmean(xp, axis=1)
