"""`pdscaler backtest --prometheus URL --graph G --range 7d`: a graph's own history, replayed.

What ran is read back from Prometheus through the queries `pdscaler serve` sends (the same
templates, metric names, per-signal overrides and label selectors: `PrometheusSource.queries`),
as range queries whose rate window is the step, so that consecutive windows tile the range:

- demand: `request_rate`, `isl_mean`, `osl_mean`, `inflight_requests` (graph signals), one value per
  step; the arrivals of a step are its completions (Dynamo counts a request when it ends) plus the rise
  of the requests in flight over it (`arrivals`), so an overload replays as the demand that caused it;
- the replicas that ran: `ready_workers` of the graph's prefill and decode roles (the workers that
  report to the router);
- where Dynamo's TTFT / ITL histograms are in Prometheus, the attainment they recorded over the range
  (`increase` of the buckets, the SLO interpolated between bucket bounds, as histogram_quantile does).

The demand becomes a Workload (each step's rate and mean lengths held over its `step / dt`
simulation steps: the requests replayed are sum(rate x step)), which the simulator replays under
every policy with the graph's config (`--config`: its SLOs, roles, forecast settings, profile) and
beside them `as-run`: the replicas Prometheus saw ready, through the same fluid model, each asked for
a warm start-up before it was seen ready on nodes provisioned ahead (the oracle's node plan: `AsRun`),
so that its ready replicas are the recorded ones (`ready_gpu_hours` = `recorded_ready_gpu_hours`) and
its GPU-hours, like every row's, count start-ups and idle nodes: the least what ran could have cost.

The cluster is the simulator's (pdscaler polled and the HPA synced every 15 s, `--warm-start`,
`--cold-start`, GPU nodes under a cluster autoscaler), not necessarily the one that ran; as-run is
what that one did.

The simulated hardware: the graph's capacity profile when it has one (prefill tokens/s at the
workload's mean ISL, decode tokens/s at its mean context at the profile's ITL target, KV tokens, GPUs
per replica: `hardware`), else the emulated H200 of Dynamo's published profile (EmulatorProfile).

Range queries are cut into requests of at most RANGE_POINTS points (Prometheus refuses 11,000 per
series); every failure is one line (`HistoryError`): Prometheus unreachable, a query refused, a
series missing, a range without requests.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import requests

from scaler.config import (
    GraphConfig,
    PrometheusSourceConfig,
    RoleConfig,
    ScalerConfig,
    UnknownGraph,
    parse_duration,
)
from scaler.testbench.emulator.profile import DecodeProfile, EmulatorProfile, PrefillProfile
from scaler.testbench.sim.backtest import Backtest
from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.nodes import NodeSettings
from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.workload import Workload

RANGE_POINTS = 10_000  # points per range request (Prometheus' limit is 11,000 per series)
DEMAND = ("request_rate", "isl_mean", "osl_mean", "inflight_requests")
READY = "ready_workers"
SERVING = ("prefill", "decode")
HISTORY_POLICIES = ("as-run", "oracle", "static-peak", "static-best", "reactive-ttft", "llmd-keda", "planner",
                    "planner-load", "pdscaler")
QUERY_TIMEOUT_S = 30.0
# The TTFT / ITL histograms over the whole range: the buckets' increase, per bucket bound.
BUCKETS = "sum by (le) (increase({metric}_bucket{{{sel}}}[{window}]))"


class HistoryError(ValueError):
    """What stops a backtest from Prometheus, in one line."""


# ---- configuration --------------------------------------------------------------------------


def history_config(config: ScalerConfig | None, graph: str | None, namespace: str | None, url: str,
                   step: float, timeout: float = QUERY_TIMEOUT_S) -> tuple[ScalerConfig, str]:
    """The config the queries are rendered from, and the graph: `config`'s (its metric names, query
    overrides and graphs, so that selectors are exactly serve's), or a graph with Dynamo's defaults;
    the source is Prometheus at `url` with the rate window = `step`."""
    if config is None:
        if not graph:
            raise HistoryError("--prometheus needs --graph (or a --config with one graph)")
        roles = {"prefill": RoleConfig(kind="prefill"), "decode": RoleConfig(kind="decode")}
        config = ScalerConfig(graphs={graph: GraphConfig(namespace=namespace, roles=roles)})
    else:
        if not graph:
            if len(config.graphs) != 1:
                raise HistoryError(f"the config has {len(config.graphs)} graphs: pick one with --graph "
                                   f"({', '.join(config.graphs)})")
            graph = next(iter(config.graphs))
        if graph not in config.graphs:
            raise HistoryError(str(UnknownGraph(graph, list(config.graphs))))
        if namespace is not None:
            graphs = dict(config.graphs)
            graphs[graph] = graphs[graph].model_copy(update={"namespace": namespace})
            config = config.model_copy(update={"graphs": graphs})
    kinds = {rc.kind for rc in config.graphs[graph].roles.values()}
    missing = [k for k in SERVING if k not in kinds]
    if missing:
        raise HistoryError(f"graph {graph!r} has no {' or '.join(missing)} role: the simulator replays a "
                           f"disaggregated graph (a prefill and a decode role)")
    src = config.source
    kept = {"metric_names": src.metric_names}
    if isinstance(src, PrometheusSourceConfig):
        kept["queries"] = src.queries
    source = PrometheusSourceConfig(url=url.rstrip("/"), rate_window=step, timeout=timeout, **kept)
    return config.model_copy(update={"source": source}), graph


def role_names(gcfg: GraphConfig) -> dict[str, str]:
    """Simulator role (prefill, decode) -> the graph's role of that kind (its first)."""
    return {kind: next(r for r, rc in gcfg.roles.items() if rc.kind == kind) for kind in SERVING}


def queries(config: ScalerConfig, graph: str) -> dict[tuple[str | None, str], str]:
    """(simulator role or None, signal) -> the PromQL serve sends for it (rate window = the step)."""
    from scaler.sources.prometheus import PrometheusSource

    src = PrometheusSource(config)
    try:
        rendered = {(role, s.name): q for (role, s), q in src.queries(graph).items()}
    finally:
        src.close()
    names = role_names(config.graphs[graph])
    out = {(None, s): rendered[(None, s)] for s in DEMAND}
    for kind, role in names.items():
        out[(kind, READY)] = rendered[(role, READY)]
    return out


# ---- reading Prometheus -----------------------------------------------------------------------


class PromClient:
    """Range and instant queries, POSTed, with one-line errors."""

    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT_S) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        self.requests = 0

    def close(self) -> None:
        self.session.close()

    def _call(self, path: str, data: dict, what: str) -> dict:
        self.requests += 1
        try:
            r = self.session.post(f"{self.url}{path}", data=data, timeout=self.timeout)
        except requests.RequestException as e:
            raise HistoryError(f"cannot reach Prometheus at {self.url}: {_why(e, self.timeout)}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            if isinstance(body, dict):
                err = str(body.get("error", body))[:200]
            else:
                err = f"not a Prometheus API answer: {r.text[:60]!r}" if r.text else "no answer"
            raise HistoryError(f"Prometheus at {self.url} refused the {what} query (HTTP {r.status_code}): {err}")
        data_ = body.get("data")
        if not isinstance(data_, dict) or not isinstance(data_.get("result"), list):
            raise HistoryError(f"Prometheus at {self.url} answered the {what} query without a result")
        return data_

    def range(self, promql: str, start: float, step: float, n: int, what: str) -> np.ndarray:
        """Values at start + k x step, k = 1..n (NaN where Prometheus has none): one series expected."""
        out = np.full(n, np.nan)
        for a in range(0, n, RANGE_POINTS):
            b = min(n, a + RANGE_POINTS)
            data = self._call("/api/v1/query_range", {
                "query": promql, "start": f"{start + (a + 1) * step:.3f}", "end": f"{start + b * step:.3f}",
                "step": f"{step:g}"}, what)
            result = data["result"]
            if data.get("resultType") not in (None, "matrix"):
                raise HistoryError(f"the {what} query gave a {data.get('resultType')}, not a range: {promql}")
            if len(result) > 1:
                raise HistoryError(f"the {what} query gave {len(result)} series where 1 is expected (the graph's "
                                   f"selector matches several; set the graph's labels): {promql}")
            for series in result:
                for t, v in series.get("values", []):
                    k = int(round((float(t) - start) / step)) - 1
                    if 0 <= k < n:
                        out[k] = _float(v)
        return out

    def instant(self, promql: str, at: float, what: str) -> list[dict]:
        return self._call("/api/v1/query", {"query": promql, "time": f"{at:.3f}"}, what)["result"]


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class History:
    """What Prometheus holds of a graph over [start, start + n x step]: series[key][k] is the value of
    the window ending at start + (k+1) x step (NaN: no sample)."""

    url: str
    graph: str
    start: float
    step: float
    n: int
    history_steps: int  # the first steps are history (warm start), not simulated
    series: dict[tuple[str | None, str], np.ndarray]
    queries: dict[tuple[str | None, str], str]
    recorded: dict[str, dict] = field(default_factory=dict)  # ttft / itl: the histograms' attainment
    requests: int = 0  # HTTP requests made

    @property
    def end(self) -> float:
        return self.start + self.n * self.step


def read_history(config: ScalerConfig, graph: str, start: float, end: float, step: float,
                 history_s: float = 0.0, slo: tuple[float, float] | None = None) -> History:
    """Range queries for [start - history_s, end] at `step` (the source config's rate window must be
    the step: history_config), and the recorded attainment of the SLOs (ttft_s, itl_s) over
    [start, end]."""
    src = config.source
    assert isinstance(src, PrometheusSourceConfig)
    if not end > start:
        raise HistoryError("the range is empty")
    h = int(round(history_s / step))
    t0 = start - h * step
    n = h + int(round((end - start) / step))
    qs = queries(config, graph)
    client = PromClient(src.url, src.timeout)
    try:
        series = {key: client.range(q, t0, step, n, _what(key)) for key, q in qs.items()}
        out = History(src.url, graph, t0, step, n, h, series, qs)
        if slo is not None:
            out.recorded = recorded_attainment(client, config, graph, start, end, slo)
        out.requests = client.requests
    finally:
        client.close()
    return out


def _what(key: tuple[str | None, str]) -> str:
    role, name = key
    return f"{role} {name}" if role else name


def recorded_attainment(client: PromClient, config: ScalerConfig, graph: str, start: float, end: float,
                        slo: tuple[float, float]) -> dict[str, dict]:
    """{"ttft": {...}, "itl": {...}}: the share of observations at most the SLO in Dynamo's histograms
    over [start, end] (absent where the histogram is not in Prometheus)."""
    from scaler.signals import metric_names
    from scaler.sources.prometheus import promql_window, render_matchers
    from scaler.sources.selection import graph_matchers

    src = config.source
    names = metric_names(src.metric_names)
    sel = render_matchers(graph_matchers(graph, config.graphs[graph], config.graphs))
    out = {}
    for key, limit, unit in (("ttft", slo[0], "requests"), ("itl", slo[1], "inter-token gaps")):
        promql = BUCKETS.format(metric=names[key], sel=sel, window=promql_window(end - start))
        buckets = {}
        for s in client.instant(promql, end, f"{key} histogram"):
            le, v = _float(s.get("metric", {}).get("le")), _float(s.get("value", [0, "nan"])[1])
            if not math.isnan(le) and math.isfinite(v):
                buckets[le] = v
        share, total = share_within(buckets, limit)
        if total > 0:
            out[key] = {"slo_s": limit, "attainment": share, "observations": total, "counts": unit, "query": promql}
    return out


def share_within(buckets: dict[float, float], limit: float) -> tuple[float, float]:
    """(share of observations <= limit, observations) from cumulative bucket counts {le: count},
    linear within the bucket holding `limit` (histogram_quantile's assumption); beyond the last
    finite bound, only what is below that bound counts."""
    if math.inf not in buckets:
        return math.nan, 0.0
    total = buckets[math.inf]
    if total <= 0:
        return math.nan, 0.0
    bounds = sorted(b for b in buckets if math.isfinite(b))
    below, lo = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if limit < b:
            frac = (limit - lo) / (b - lo) if b > lo else 1.0
            return min(1.0, (below + (c - below) * max(0.0, frac)) / total), total
        below, lo = c, b
    return min(1.0, below / total), total


# ---- the workload and what ran ----------------------------------------------------------------


@dataclass
class Replayable:
    workload: Workload
    replicas: dict[str, np.ndarray]  # per simulated step: the replicas Prometheus saw ready
    notes: list[str]


def to_workload(h: History, dt: float = 1.0) -> Replayable:
    """The history as a Workload at `dt` (each step's values held over step/dt simulation steps),
    trimmed to where the graph's request rate has samples, and the ready replicas per step."""
    m = h.step / dt
    if m < 1 or abs(m - round(m)) > 1e-9:
        raise HistoryError(f"--step ({h.step:g}s) must be a whole multiple of --dt ({dt:g}s)")
    m = int(round(m))
    rate = h.series[(None, "request_rate")]
    seen = np.flatnonzero(~np.isnan(rate))
    span = f"{_iso(h.start + h.history_steps * h.step)} to {_iso(h.end)}"
    if len(seen) == 0:
        raise HistoryError(f"Prometheus at {h.url} has no request_rate of graph {h.graph!r} from {span}: "
                           f"{h.queries[(None, 'request_rate')]}")
    a, b = int(seen[0]), int(seen[-1]) + 1
    if b <= h.history_steps:
        raise HistoryError(f"Prometheus at {h.url} has no request_rate of graph {h.graph!r} from {span} "
                           f"(only before it)")
    notes = []
    present = ~np.isnan(rate[a:b])
    gaps = int((~present).sum())
    r = np.nan_to_num(np.clip(rate[a:b], 0, None))
    if gaps > (b - a) / 2:
        raise HistoryError(f"request_rate of graph {h.graph!r} has no value in {gaps} of {b - a} steps: rate() needs "
                           f"two samples in each {h.step:g}s window; give a --step of at least two scrape intervals")
    if gaps:
        notes.append(f"{gaps} of {b - a} steps without a request_rate sample (taken as no requests)")
    r, note = arrivals(r, h.series[(None, "inflight_requests")], a, b, h.step)
    if note:
        notes.append(note)
    if a > h.history_steps:
        notes.append(f"the graph's series start at {_iso(h.start + a * h.step)}, after the range's start")
    start = max(0, h.history_steps - a)
    if not r[start:].sum() > 0:
        raise HistoryError(f"no requests to graph {h.graph!r} from {span} (request_rate is 0 throughout)")
    lengths = {}
    for name in ("isl_mean", "osl_mean"):
        x = h.series[(None, name)][a:b].copy()
        x[~(x >= 0)] = np.nan
        ok = ~np.isnan(x)
        if not ok.any():
            raise HistoryError(f"Prometheus at {h.url} has no {name} of graph {h.graph!r} from {span}: "
                               f"{h.queries[(None, name)]}")
        fill = float(np.average(x[ok], weights=np.maximum(r[ok], 1e-12)))
        lengths[name] = _ffill(x, fill)
    replicas = {}
    for kind in SERVING:
        x = h.series[(kind, READY)][a:b].copy()
        if np.isnan(x).all():
            raise HistoryError(f"Prometheus at {h.url} has no ready_workers of the {kind} role of graph {h.graph!r} "
                               f"from {span}: {h.queries[(kind, READY)]}")
        # count() of no series is no answer: no worker ready, while the graph's demand was being
        # recorded; where nothing was recorded (Prometheus down), the last count holds.
        x[np.isnan(x) & present] = 0.0
        first = float(x[~np.isnan(x)][0])
        replicas[kind] = np.repeat(np.round(_ffill(x, first)), m).astype(int)
    name = f"{h.graph}@prometheus"
    wl = Workload(name, dt, h.start + a * h.step, np.repeat(r, m), np.repeat(lengths["isl_mean"], m),
                  np.repeat(lengths["osl_mean"], m), start * m,
                  (f"{name}: {b - a - start} steps of {h.step:g}s from Prometheus ({h.url}), each held over "
                   f"{m} simulation steps", *notes))
    return Replayable(wl, {k: v[start * m:] for k, v in replicas.items()}, notes)


def arrivals(completed: np.ndarray, inflight: np.ndarray, a: int, b: int, step: float) -> tuple[np.ndarray, str]:
    """Arrivals per second of the steps a..b-1, and a note. Dynamo counts a request in requests_total
    when it ends, so request_rate is the rate of completions, which an overload holds down to what the
    graph served; the requests that arrived in a step are those completed plus the rise of the requests
    in flight (dynamo_frontend_inflight_requests: arrived, not finished) over it. Without that gauge,
    the completions stand for the arrivals (and the note says so)."""
    x = inflight[max(0, a - 1):b]
    if np.isnan(x).all():
        return completed, ("no inflight_requests in Prometheus: the completions (Dynamo counts a request "
                           "when it ends) stand for the arrivals, so overloads replay smaller than they were")
    x = _ffill(x, float(x[~np.isnan(x)][0]))
    if a == 0:  # the gauge before the first step is not known: no rise in the first step
        x = np.concatenate([x[:1], x])
    out = completed + np.diff(x) / step
    short = float(-out[out < 0].sum() * step)
    if short > 0.5:
        return np.clip(out, 0, None), (f"the requests in flight fell faster than requests completed in some steps "
                                       f"({short:.0f} requests in all): taken as no arrivals there")
    return np.clip(out, 0, None), ""


def _ffill(x: np.ndarray, first: float) -> np.ndarray:
    """NaNs replaced by the last value before them (`first` before any)."""
    out = x.copy()
    last = first
    for i, v in enumerate(out):
        if np.isnan(v):
            out[i] = last
        else:
            last = v
    return out


def hardware(gcfg: GraphConfig, wl: Workload) -> tuple[EmulatorProfile, str]:
    """The simulated hardware for a graph (module docstring) and a line saying which."""
    cp = gcfg.capacity_profile()
    gpus = {"prefill": cp.prefill.gpus_per_replica, "decode": cp.decode.gpus_per_replica}
    if gcfg.profile is None:
        base = EmulatorProfile()
        return (base.model_copy(update={
            "prefill": base.prefill.model_copy(update={"gpus_per_replica": gpus["prefill"]}),
            "decode": base.decode.model_copy(update={"gpus_per_replica": gpus["decode"]})}),
            "hardware: the emulated H200 (Dynamo's published profile)")
    rate = wl.rate[wl.start:]
    w = np.maximum(rate, 1e-12)
    isl = float(np.average(wl.isl[wl.start:], weights=w))
    osl = float(np.average(wl.osl[wl.start:], weights=w))
    prefill = cp.prefill.throughput(isl)
    target = cp.decode.itl_target_s
    decode = cp.decode.throughput(isl + osl / 2)
    base = min(DecodeProfile().itl_base_s, target / 2)
    batch = decode * target  # sequences per replica at the ITL target
    block = EmulatorProfile().kv_block_size
    hw = EmulatorProfile(
        prefill=PrefillProfile(tokens_per_s=prefill, gpus_per_replica=gpus["prefill"]),
        decode=DecodeProfile(itl_base_s=base, itl_per_seq_s=(target - base) / batch,
                             max_num_seqs=max(1, math.ceil(batch)), gpus_per_replica=gpus["decode"]),
        kv_blocks_per_replica=max(1, int(cp.decode.kv_tokens // block)),
    )
    return hw, (f"hardware: the graph's capacity profile at ISL {isl:.0f}: prefill {prefill:,.0f} tokens/s, "
                f"decode {decode:,.0f} tokens/s at ITL {target * 1000:g}ms, {cp.decode.kv_tokens:,.0f} KV tokens")


class AsRun(Policy):
    """`as-run`: the replicas Prometheus saw ready, step by step. Each replica is asked for one warm
    start-up before it was seen ready, on GPU nodes provisioned ahead by balloon pods (the oracle's
    node plan, scaler/testbench/sim/policies/oracle.py), so that the fluid model's ready replicas are
    the recorded ones and its GPU-hours the least those replicas could have been billed (start-ups,
    nodes provisioned ahead, idle nodes until the cluster autoscaler removes them). Replicas seen
    ready within the range's first warm start-up started before it: they are ready a warm start-up
    after the range's start (late by less than one start-up)."""

    name = "as-run"
    direct = True

    def __init__(self, ctx: SimContext, replicas: dict[str, np.ndarray]) -> None:
        super().__init__(ctx)
        from scaler.testbench.sim.sizing import forward_max

        self.ready = replicas
        warm = ctx.steps(ctx.nodes.warm_start_s)
        provision = ctx.steps(ctx.nodes.node_provision_s)
        plan = {role: forward_max(x, warm) for role, x in replicas.items()}
        p = ctx.profile
        gpus = plan["prefill"] * p.prefill.gpus_per_replica + plan["decode"] * p.decode.gpus_per_replica
        self.plan = {**plan, "warm": forward_max(gpus, provision) - gpus}

    @property
    def interval_s(self) -> float:  # type: ignore[override]
        return self.ctx.dt

    def initial_replicas(self) -> dict[str, int]:
        """The first step's ready replicas (they ran before the range), and balloon pods holding Ready
        GPUs also for the replicas that must start at once (seen ready within a warm start-up)."""
        p = self.ctx.profile
        gpus = {"prefill": p.prefill.gpus_per_replica, "decode": p.decode.gpus_per_replica}
        out = {role: int(x[0]) for role, x in self.ready.items()}
        out["warm"] = int(self.plan["warm"][0]) + sum((int(self.plan[r][0]) - out[r]) * gpus[r] for r in out)
        return out

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        return {role: int(x[i]) for role, x in self.plan.items()}

    def recorded_gpu_hours(self) -> float:
        """The GPU-time of the replicas Prometheus saw ready."""
        p, dt = self.ctx.profile, self.ctx.dt
        return float((self.ready["prefill"].sum() * p.prefill.gpus_per_replica
                      + self.ready["decode"].sum() * p.decode.gpus_per_replica) * dt / 3600)


def replay_as_run(ctx: SimContext, replicas: dict[str, np.ndarray]):
    """As-run replayed, with `ready_gpu_hours` (the fluid model's ready replicas) beside
    `recorded_ready_gpu_hours` (Prometheus'): equal when every start was in time."""
    from scaler.testbench.sim.replay import replay

    policy = AsRun(ctx, replicas)
    run = replay(policy, ctx, keep_telemetry=True)
    c, n, p = run.telemetry.cols, run.telemetry.i, ctx.profile
    ready = (c["ready_prefill"][:n].sum() * p.prefill.gpus_per_replica
             + c["ready_decode"][:n].sum() * p.decode.gpus_per_replica) * ctx.dt / 3600
    run.summary["ready_gpu_hours"] = float(ready)
    run.summary["recorded_ready_gpu_hours"] = policy.recorded_gpu_hours()
    run.telemetry = None
    return run


# ---- the report -------------------------------------------------------------------------------


@dataclass
class HistoryBacktest(Backtest):
    history: History | None = None
    hardware_note: str = ""

    def to_json(self) -> dict:
        out = super().to_json()
        h = self.history
        wl = self.ctx.workload
        out["prometheus"] = {
            "url": h.url, "graph": h.graph, "step_s": h.step, "sim_start": wl.sim_t0,
            "sim_end": wl.sim_t0 + wl.n_sim * wl.dt, "history_s": wl.start * wl.dt,
            "queries": {_what(k): q for k, q in h.queries.items()}, "http_requests": h.requests,
            "hardware": self.hardware_note,
        }
        out["recorded"] = h.recorded
        return out

    def table(self) -> str:
        lines = super().table().split("\n")
        h, wl = self.history, self.ctx.workload
        lines[0] = (f"backtest of graph {h.graph} from Prometheus {h.url}: {_iso(wl.sim_t0)} to "
                    f"{_iso(wl.sim_t0 + wl.n_sim * wl.dt)} ({wl.n_sim * wl.dt / 3600:.2f} h) at step {h.step:g}s, "
                    f"SLO TTFT {self.ctx.ttft_slo:g}s ITL {self.ctx.itl_slo * 1000:g}ms")
        ran = self.runs.get("as-run")
        if ran is not None:
            lines.append(f"as-run: the replicas Prometheus saw ready ({ran.summary['recorded_ready_gpu_hours']:.2f} "
                         f"GPU-h ready), replayed through the same fluid model, each started a warm start-up ahead on "
                         f"nodes provisioned ahead: its GPU-h are the least those replicas could have been billed")
        rec = h.recorded
        if rec:
            parts = [f"{k.upper()} <= {v['slo_s']:g}s for {v['attainment']:.2%} of {v['observations']:,.0f} "
                     f"{v['counts']}" for k, v in rec.items()]
            lines.append("as-run, as Dynamo's histograms recorded it: " + "; ".join(parts))
        else:
            lines.append("as-run, recorded: no TTFT/ITL histograms of the graph in Prometheus")
        lines.append(self.hardware_note)
        lines.extend(f"note: {n}" for n in wl.notes[1:])
        return "\n".join(lines)


def run_history_backtest(ctx: SimContext, history: History, replicas: dict[str, np.ndarray], policies: list[str],
                         hardware_note: str = "", progress: bool = False) -> HistoryBacktest:
    from scaler.testbench.sim.backtest import run_backtest

    t0 = time.perf_counter()
    others = [p for p in policies if p != "as-run"]
    bt = run_backtest(history.graph, ctx, others, progress=progress) if others else None
    out = HistoryBacktest(history.graph, ctx, history=history, hardware_note=hardware_note)
    for p in policies:
        if p == "as-run":
            out.runs[p] = replay_as_run(ctx, replicas)
        else:
            out.runs[p] = bt.runs[p]
    out.wall_s = time.perf_counter() - t0
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _why(e: Exception, timeout: float) -> str:
    """The reason of a failed request, short: "[Errno 111] Connection refused", "no answer within 30s"."""
    import re

    if isinstance(e, requests.Timeout):
        return f"no answer within {timeout:g}s"
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", str(e))
    text = m.group(0) if m else f"{type(e).__name__}: {e}"
    return text if len(text) <= 120 else text[:117] + "..."


def _duration(value: str, flag: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise HistoryError(f"{flag}: {e}") from None


def parse_time(value: str | None) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC unless it says); None: now."""
    if value is None:
        return time.time()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HistoryError(f"--end {value!r}: give epoch seconds or an ISO 8601 time (2026-12-01T12:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


# ---- the command ------------------------------------------------------------------------------


def cmd_backtest_prometheus(args, report: Callable[[Any, Any], int]) -> int:
    """`pdscaler backtest --prometheus URL ...` (scaler/testbench/cli.py dispatches here)."""
    from scaler.config import ConfigError, load_config

    try:
        bt = _backtest(args, load_config)
    except (HistoryError, ValueError, OSError, ConfigError) as e:
        print(f"pdscaler backtest: {e}", file=sys.stderr)
        return 2
    return report(bt, args)


def _backtest(args, load_config) -> HistoryBacktest:
    from scaler.testbench.sim.backtest import progress_wanted

    if args.trace:
        raise HistoryError("give --trace or --prometheus, not both")
    step = _duration(args.step, "--step")
    span = _duration(args.range, "--range")
    if not step > 0:
        raise HistoryError(f"--step must be > 0, got {args.step!r}")
    if step / args.dt < 1 or abs(step / args.dt - round(step / args.dt)) > 1e-9:
        raise HistoryError(f"--step ({step:g}s) must be a whole multiple of --dt ({args.dt:g}s)")
    if span < step:
        raise HistoryError(f"--range ({args.range}) must be at least one --step ({args.step})")
    end = math.floor(parse_time(args.end) / step) * step  # on the step grid, as a dashboard's range
    start = end - math.floor(span / step) * step
    # as for traces: a day of history (the forecasters' warm start) when the range spans two days or more
    history_s = 86400.0 if span >= 2 * 86400 else 0.0
    if args.history is not None:
        history_s = _duration(args.history, "--history")
    warm, cold = _duration(args.warm_start, "--warm-start"), _duration(args.cold_start, "--cold-start")
    if cold < warm:
        raise HistoryError(f"--cold-start ({cold:g}s) must be at least --warm-start ({warm:g}s)")
    user = raw = None
    if args.config:
        import yaml

        user = load_config(args.config)
        with open(args.config, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    config, graph = history_config(user, args.graph, args.namespace, args.prometheus, step)
    gcfg = config.graphs[graph]
    slo = (gcfg.slo.ttft_s, gcfg.slo.itl_s) if "slo" in gcfg.model_fields_set else (args.slo_ttft, args.slo_itl)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(HISTORY_POLICIES)
    from scaler.testbench.sim.policies import POLICIES

    unknown = [p for p in policies if p != "as-run" and p not in POLICIES]
    if unknown:
        raise HistoryError(f"unknown policies {unknown}; known: as-run, {', '.join(POLICIES)}")
    history = read_history(config, graph, start, end, step, history_s, slo)
    rep = to_workload(history, args.dt)
    if args.profile:
        gcfg = gcfg.model_copy(update={"profile": args.profile})
    hw, note = hardware(gcfg, rep.workload)
    overrides = None
    if raw is not None:  # the chosen graph's settings apply to pdscaler (merge_overrides takes the first)
        graphs = raw.get("graphs") or {}
        mine = {k: v for k, v in (graphs.get(graph) or {}).items() if not (args.profile and k == "profile")}
        overrides = {k: v for k, v in raw.items() if k not in ("graphs", "source")} | {"graphs": {graph: mine}}
    nodes = NodeSettings(warm, cold - warm, _duration(args.scale_down_unneeded, "--scale-down-unneeded"))
    ctx = SimContext(rep.workload, profile=hw, ttft_slo=slo[0], itl_slo=slo[1], nodes=nodes,
                     profile_path=args.profile, max_replicas=args.max_replicas, engine_overrides=overrides)
    return run_history_backtest(ctx, history, rep.replicas, policies, note, progress=progress_wanted(args.no_progress))
