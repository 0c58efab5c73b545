"""Prometheus exporter of the emulated graph, under NVIDIA Dynamo's metric names.

`EmulatorMetrics` is both a `SimObserver` (it accumulates counters and histograms from simulation
events) and a prometheus_client collector (gauges are read from the simulation's views at scrape
time). The simulation itself never imports prometheus. All values are in the simulation's (virtual)
time units.

Histograms are kept in `FastHistogram` (numpy bucket counts, `observe(value, count)`): Dynamo observes
inter-token latency once per token, which at replay speed is far too many calls for
prometheus_client's Histogram. Bucket boundaries reproduce Dynamo's frontend defaults
(lib/llm/src/http/service/metrics.rs: log-spaced between MIN and MAX, rounded to 2 significant
figures, with a leading 0): TTFT (0.001 s, 480 s, 18), ITL (0.001 s, 2 s, 13), request duration
(1 s, 512 s, 10), ISL (50, 128000, 12), OSL (50, 32000, 10) - so `histogram_quantile` over the
emulator is exactly as coarse as over a real Dynamo frontend.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from scaler.testbench.emulator.model import ROLES, GraphSim, SimRequest

__all__ = [
    "dynamo_log_buckets",
    "FastHistogram",
    "EmulatorMetrics",
    "TTFT_BUCKETS",
    "ITL_BUCKETS",
    "REQUEST_DURATION_BUCKETS",
    "ISL_BUCKETS",
    "OSL_BUCKETS",
    "DYNAMO_COMPONENTS",
]


def _round_sig(value: float, digits: int = 2) -> float:
    if value == 0:
        return 0.0
    magnitude = math.floor(math.log10(abs(value)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return round(value * scale) / scale


def dynamo_log_buckets(lo: float, hi: float, count: int) -> tuple[float, ...]:
    """Dynamo's `generate_log_buckets`: 0, then count-1 log-spaced values ending at `hi`, 2 sig. figs."""
    if not (0 < lo < hi) or count < 2:
        raise ValueError("need 0 < lo < hi and count >= 2")
    out = [0.0]
    for i in range(1, count):
        v = _round_sig(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (count - 1)))
        if v != out[-1]:
            out.append(v)
    return tuple(out)


TTFT_BUCKETS = dynamo_log_buckets(0.001, 480.0, 18)
ITL_BUCKETS = dynamo_log_buckets(0.001, 2.0, 13)
REQUEST_DURATION_BUCKETS = dynamo_log_buckets(1.0, 512.0, 10)
ISL_BUCKETS = dynamo_log_buckets(50.0, 128_000.0, 12)
OSL_BUCKETS = dynamo_log_buckets(50.0, 32_000.0, 10)

#: Dynamo component names of the two worker services (the DGD service keys).
DYNAMO_COMPONENTS: dict[str, str] = {"prefill": "PrefillWorker", "decode": "DecodeWorker"}


class FastHistogram:
    """One histogram series: numpy bucket counts, weighted observations, Prometheus `le` semantics."""

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct and non-empty")
        self.bounds = bounds
        self._bounds_np = np.asarray(bounds)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, count: int = 1) -> None:
        """Record `count` observations of `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count
        self.count += count

    def observe_many(self, values: Iterable[float] | np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        idx = np.searchsorted(self._bounds_np, v, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum += float(v.sum())
        self.count += int(v.size)

    def cumulative(self) -> list[tuple[str, float]]:
        """Buckets as exposed: (le, cumulative count), ending with +Inf."""
        cum = np.cumsum(self.counts).tolist()
        return [(floatToGoString(b), c) for b, c in zip(self.bounds, cum, strict=False)] + [("+Inf", cum[-1])]


class EmulatorMetrics:
    """Observer of a GraphSim and prometheus_client collector of Dynamo-named metrics.

    Frontend series carry `model` and `dynamo_namespace` ("<k8s namespace>-<graph>"). Per-worker
    series exist only for READY (non-draining) workers, as a worker is only routed to (and scraped
    through its Service) while ready. Notes on fidelity:
    - TTFT and ISL are observed at the first token; request duration, OSL and requests_total at the
      end of the request.
    - ITL: one observation per decode token at the replica's step ITL; a request that had to wait for
      decode room adds one observation of that wait (the gap before its second token).
    - dynamo_frontend_model_total_kv_blocks is per worker, as Dynamo reports a worker's runtime config.
    """

    def __init__(
        self,
        sim: GraphSim,
        *,
        model: str = "emulated-llm",
        dynamo_namespace: str = "default-demo",
    ) -> None:
        self.sim = sim
        self.model = model
        self.dynamo_namespace = dynamo_namespace
        self.ttft = FastHistogram(TTFT_BUCKETS)
        self.itl = FastHistogram(ITL_BUCKETS)
        self.duration = FastHistogram(REQUEST_DURATION_BUCKETS)
        self.isl = FastHistogram(ISL_BUCKETS)
        self.osl = FastHistogram(OSL_BUCKETS)
        self.requests = {"stream": 0, "unary": 0}
        self.output_tokens = 0
        # Metric families left out of the exposition (test bench faults: `POST /admin/drop`); names as
        # exposed (a counter's with its `_total`).
        self.dropped: frozenset[str] = frozenset()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        sim.add_observer(self)

    # ---- SimObserver

    def on_first_token(self, req: SimRequest, t: float) -> None:
        self.ttft.observe(t - req.arrival)
        self.isl.observe(req.isl)
        self.output_tokens += 1

    def on_decode_tokens(self, itl_s: float, n: int, t: float) -> None:
        self.itl.observe(itl_s, n)
        self.output_tokens += n

    def on_decode_admitted(self, req: SimRequest, wait_s: float, t: float) -> None:
        if wait_s > 0:
            self.itl.observe(wait_s)

    def on_finished(self, req: SimRequest, t: float) -> None:
        self.duration.observe(t - req.arrival)
        self.osl.observe(req.osl)
        self.requests["stream" if req.stream else "unary"] += 1

    # ---- exposition

    def render(self) -> bytes:
        """The Prometheus text exposition of the current state."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        dropped = self.dropped
        for fam in self._families():
            if not dropped or not ({fam.name, f"{fam.name}_total"} & dropped):
                yield fam

    def _families(self) -> Iterator[Metric]:
        sim, ns = self.sim, self.dynamo_namespace
        fl = ["model", "dynamo_namespace"]
        fv = [self.model, ns]

        for name, doc, h in (
            ("dynamo_frontend_time_to_first_token_seconds", "Time to first token (s)", self.ttft),
            ("dynamo_frontend_inter_token_latency_seconds", "Inter-token latency (s)", self.itl),
            ("dynamo_frontend_request_duration_seconds", "Request duration (s)", self.duration),
            ("dynamo_frontend_input_sequence_tokens", "Input sequence length (tokens)", self.isl),
            ("dynamo_frontend_output_sequence_tokens", "Output sequence length (tokens)", self.osl),
        ):
            fam = HistogramMetricFamily(name, doc, labels=fl)
            fam.add_metric(fv, h.cumulative(), h.sum)
            yield fam

        req = CounterMetricFamily(
            "dynamo_frontend_requests_total", "Requests processed",
            labels=["model", "endpoint", "request_type", "status", "dynamo_namespace"],
        )
        for request_type, n in self.requests.items():
            req.add_metric([self.model, "chat_completions", request_type, "success", ns], n)
        yield req
        tok = CounterMetricFamily("dynamo_frontend_output_tokens_total", "Output tokens generated", labels=fl)
        tok.add_metric(fv, self.output_tokens)
        yield tok

        p = sim.profile
        for name, doc, value in (
            ("dynamo_frontend_inflight_requests", "Requests in flight", sim.inflight_requests),
            ("dynamo_frontend_queued_requests", "Requests waiting for their first token", sim.queued_requests),
            ("dynamo_frontend_model_total_kv_blocks", "KV blocks of one worker", p.kv_blocks_per_replica),
            ("dynamo_frontend_model_kv_cache_block_size", "Tokens per KV block", p.kv_block_size),
            ("dynamo_frontend_model_max_num_seqs", "Max sequences per worker", p.decode.max_num_seqs),
        ):
            g = GaugeMetricFamily(name, doc, labels=fl)
            g.add_metric(fv, value)
            yield g

        wl = ["worker_id", "dp_rank", "worker_type", "dynamo_namespace"]
        kl = ["dynamo_namespace", "dynamo_component", "dynamo_endpoint", "worker_id"]
        w_prefill = GaugeMetricFamily("dynamo_frontend_worker_active_prefill_tokens",
                                      "Prefill tokens assigned to the worker, not yet prefilled", labels=wl)
        w_blocks = GaugeMetricFamily("dynamo_frontend_worker_active_decode_blocks",
                                     "KV blocks in use by the worker's requests", labels=wl)
        w_wait = GaugeMetricFamily("dynamo_frontend_worker_num_requests_waiting",
                                   "Requests waiting at the worker", labels=wl)
        k_active = GaugeMetricFamily("dynamo_component_kvstats_active_blocks", "Active KV blocks", labels=kl)
        k_total = GaugeMetricFamily("dynamo_component_kvstats_total_blocks", "Total KV blocks", labels=kl)
        k_usage = GaugeMetricFamily("dynamo_component_kvstats_gpu_cache_usage_percent",
                                    "KV cache usage (0..1)", labels=kl)
        for role in ROLES:
            comp = DYNAMO_COMPONENTS[role]
            for w in sim.workers(role):
                wv = [w.worker_id, "0", role, ns]
                w_prefill.add_metric(wv, w.active_prefill_tokens)
                w_blocks.add_metric(wv, w.active_blocks)
                w_wait.add_metric(wv, w.waiting)
                kv = [ns, comp, "generate", w.worker_id]
                k_active.add_metric(kv, w.active_blocks)
                k_total.add_metric(kv, w.total_blocks)
                k_usage.add_metric(kv, w.usage)
        yield from (w_prefill, w_blocks, w_wait, k_active, k_total, k_usage)

        reps = GaugeMetricFamily("pdscaler_emulator_replicas", "Emulated replicas by role and state",
                                 labels=["role", "state"])
        for role in ROLES:
            c = sim.replicas(role)
            for state in ("desired", "ready", "starting", "draining"):
                reps.add_metric([role, state], getattr(c, state))
        yield reps
        vt = GaugeMetricFamily("pdscaler_emulator_virtual_time_seconds", "Simulation time (s)")
        vt.add_metric([], sim.now)
        yield vt
        gs = CounterMetricFamily("pdscaler_emulator_gpu_seconds_total",
                                 "GPU-seconds of all existing replicas (starting, ready, draining)")
        gs.add_metric([], sim.gpu_seconds)
        yield gs
