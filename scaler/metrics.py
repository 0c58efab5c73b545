"""The scaler's own metrics (prometheus-client), served on the HTTP side port at /metrics.

Two kinds:
- instruments updated where things happen: poll and decide durations, metrics-source errors,
  warm-start fit durations, cluster-read errors, gRPC requests and their latency (a server
  interceptor);
- a collector that renders the latest decisions from the DecisionStore at scrape time (like
  kube-state-metrics renders objects): targets, current and ready replicas, the rule that bound each
  role, observed inputs, forecasts per quantile and horizon, decision and data age, ownership
  conflicts. Nothing stale lingers: a graph's series are exactly its latest decision's.

How much per graph: `metrics.detail` (scaler/config.py). "dashboard", the default, exports of the
observed inputs, the decision figures and the forecasts only what the bundled dashboards query
(DASHBOARD_*: about 40 series per graph instead of about 60, and a third less rendering in the
decision process every poll); "full" every one of them.

Every metric is prefixed `pdscaler_`; labels `graph`, `role`, and where relevant `rule`, `signal`,
`series`, `quantile`, `horizon` (seconds). The dashboards (dashboards/) are built on these names.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scaler.config import ScalerConfig
from scaler.store import DecisionStore
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.engine import Engine
    from scaler.kube.watcher import ClusterWatcher

# Forecast horizons exported (seconds; the nearest point of the engine's grid): 1, 5 and 10 minutes.
FORECAST_HORIZONS = (60.0, 300.0, 600.0)
# Decision figures worth a time series (the rest are in explain).
FIGURES = ("reactive_replicas", "predictive_replicas", "forecast_cap_replicas", "lead_time_s",
           "tokens_per_s_per_replica", "usable_tokens_per_s_per_replica", "usable_kv_tokens_per_replica",
           "arrival_tokens_per_s", "backlog_tokens_per_s", "demand_tokens_per_s", "decode_tokens_per_s",
           "kv_tokens", "capacity_correction", "serving_gpus", "forecast_gpus", "headroom", "headroom_windows",
           "attainment_gain")
# metrics.detail "dashboard" (the default) exports of these families only what dashboards/ query:
DASHBOARD_FIGURES = ("reactive_replicas", "predictive_replicas", "forecast_cap_replicas", "serving_gpus", "forecast_gpus",
                     "headroom", "headroom_windows")
DASHBOARD_SIGNALS = ("prefill_tokens_per_s", "decode_tokens_per_s")  # graph-wide (role=""), and in forecasts
DASHBOARD_QUANTILES = (0.5, 0.9)  # and forecast.quantile, the one decisions size on
STAGES = ("collect", "observe", "forecast", "decide", "publish", "send")  # pdscaler_stage_seconds' stages
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _Fam:
    """A gauge family as rows of (label values, value): the decision series are thousands of samples a
    scrape, and prometheus_client's GaugeMetricFamily and text formatting cost ~10x writing them here."""

    __slots__ = ("name", "documentation", "labels", "rows")

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels, self.rows = name, documentation, labels, []

    def add_metric(self, values: list[str], value: float) -> None:
        self.rows.append((values, value))

    def family(self) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in self.rows:
            fam.add_metric(values, value)
        return fam

    def text(self, out: list[str]) -> None:
        """Append the exposition text (Prometheus text format 0.0.4, as generate_latest writes it)."""
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {self.name} {doc}\n# TYPE {self.name} gauge\n")
        name, labels = self.name, self.labels
        for values, value in self.rows:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(labels, values))
            out.append(f"{name}{{{pairs}}} {_number(value)}\n")


def _escape(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return v


def _number(v: float) -> str:
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def render(families: Iterable[_Fam]) -> bytes:
    out: list[str] = []
    for fam in families:
        fam.text(out)
    return "".join(out).encode()


class _Registry(CollectorRegistry):
    """A registry whose collectors with a `render()` (the decision series) write their own text
    (ScalerMetrics.exposition); collect() and generate_latest see only the other instruments."""

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list = []

    def register(self, collector) -> None:
        if hasattr(collector, "render"):
            self.rendered.append(collector)
            return
        super().register(collector)

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """As CollectorRegistry's, the rendered collectors' samples included."""
        value = super().get_sample_value(name, labels)
        if value is not None:
            return value
        for collector in list(self.rendered):
            for fam in collector.collect():
                for sample in fam.samples:
                    if sample.name == name and sample.labels == (labels or {}):
                        return sample.value
        return None

    def unregister(self, collector) -> None:
        if collector in self.rendered:
            self.rendered.remove(collector)
            return
        super().unregister(collector)


class ScalerMetrics:
    """One process's metrics in their own registry (several can live in one test process). `parts`:
    "loop" (the decision loop's instruments) and/or "server" (gRPC, health, reloads). `pdscaler
    serve` runs the loop in a child process (scaler/worker.py) with its own "loop" registry, whose
    text the serving process appends to its page (`extra`)."""

    def __init__(self, registry: CollectorRegistry | None = None, parts: tuple[str, ...] = ("loop", "server")) -> None:
        self.registry = registry or _Registry()
        self.extra: Callable[[], bytes] | None = None
        self.per_graph: list = []  # instruments labelled by graph: forget() drops a removed graph's series
        r = self.registry
        if "loop" in parts:
            self.poll_seconds = Histogram("pdscaler_poll_duration_seconds", "one decision-loop poll: collect, observe, decide",
                                          buckets=SLOW_BUCKETS, registry=r)
            self.collect_seconds = Histogram("pdscaler_source_collect_duration_seconds",
                                             "reading every graph's metrics from the source", buckets=SLOW_BUCKETS, registry=r)
            self.decide_seconds = Histogram("pdscaler_decide_duration_seconds", "deciding every graph (forecast, capacity, policy)",
                                            buckets=SLOW_BUCKETS, registry=r)
            self.source_errors = Counter("pdscaler_source_errors_total", "polls whose metrics source failed",
                                         ["error"], registry=r)
            self.source_up = Gauge("pdscaler_source_up", "1 when the last poll of the metrics source succeeded", registry=r)
            self.fit_seconds = Histogram("pdscaler_model_fit_duration_seconds", "fitting a graph's forecasts on history (warm start)",
                                         ["graph"], buckets=SLOW_BUCKETS, registry=r)
            self.cluster_errors = Counter("pdscaler_cluster_read_errors_total", "cluster reads that failed (per problem)",
                                          ["graph"], registry=r)
            self.polls = Counter("pdscaler_polls_total", "decision-loop polls", registry=r)
            self.decide_errors = Counter("pdscaler_decide_errors_total", "graphs whose decision failed (the last one was kept)",
                                         ["graph"], registry=r)
            self.per_graph += [self.fit_seconds, self.cluster_errors, self.decide_errors]
            self.stage_seconds = Histogram(
                "pdscaler_stage_seconds", "one poll's time in a stage of the decision loop: collect (read the source), "
                "observe (clean, feed the forecasters), forecast, decide (capacity, rules), publish (to the answers), "
                "send (the decision process: decisions and its /metrics page to the serving process)",
                ["stage"], buckets=SLOW_BUCKETS, registry=r)
            self.stage_cpu = Counter("pdscaler_stage_cpu_seconds_total", "CPU time (of its thread) spent in each stage "
                                     "of the decision loop (pdscaler_stage_seconds' stages)", ["stage"], registry=r)
            for stage in STAGES:  # every stage has its series from the start
                self.stage_seconds.labels(stage)
                self.stage_cpu.labels(stage)
        if "server" in parts:
            self.grpc_requests = Counter("pdscaler_grpc_requests_total", "gRPC requests by method and status code",
                                         ["method", "code"], registry=r)
            self.grpc_seconds = Histogram("pdscaler_grpc_request_duration_seconds", "gRPC unary request latency",
                                          ["method"], buckets=FAST_BUCKETS, registry=r)
            self.healthy = Gauge("pdscaler_healthy", "1 while the decision loop completes polls (see stuck_after)", registry=r)
            self.config_reloads = Counter("pdscaler_config_reloads_total", "config file reloads by result",
                                          ["result"], registry=r)

    def observe_stage(self, stage: str, wall_s: float, cpu_s: float) -> None:
        """One poll's (or one send's) time in a stage: wall seconds and CPU seconds of its thread."""
        self.stage_seconds.labels(stage).observe(max(0.0, wall_s))
        self.stage_cpu.labels(stage).inc(max(0.0, cpu_s))

    def watch(self, config: ScalerConfig, store: DecisionStore, engine: "Engine | None" = None,
              cluster: "ClusterWatcher | None" = None, now: Callable[[], float] = time.time,
              ages: bool = True) -> "DecisionCollector":
        """Export the latest decisions (and observations, cluster readings) at every scrape. `engine`
        may be a callable returning the current engine (it changes on config reloads)."""
        collector = DecisionCollector(config, store, engine, cluster, now, ages, self)
        self.registry.register(collector)
        return collector

    def forget(self, graphs: Iterable[str]) -> None:
        """Drop the per-graph instruments' series of every graph not in `graphs` (a config reload
        removed it; a graph added again starts its counters from 0, which Prometheus reads as a reset)."""
        keep = set(graphs)
        for metric in self.per_graph:
            seen = {s.labels["graph"] for fam in metric.collect() for s in fam.samples if "graph" in s.labels}
            for graph in seen - keep:
                try:
                    metric.remove(graph)
                except KeyError:  # removed meanwhile
                    pass

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _GrpcMetrics(self)

    def exposition(self) -> bytes:
        page = generate_latest(self.registry) + b"".join(c.render() for c in getattr(self.registry, "rendered", ()))
        return page + self.extra() if self.extra is not None else page


UNKNOWN_METHOD = "unknown"  # the method label of calls to methods the server does not have


class _GrpcMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ScalerMetrics) -> None:
        self.m = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            # A method no service here has: one series for all of them, whatever the caller named
            # (each name its own series would let any client grow /metrics without bound).
            self.m.grpc_requests.labels(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return handler
        method = details.method.rsplit("/", 1)[-1]  # a registered method: a bounded set of names
        if handler.unary_unary is None:  # streams: counted when opened
            self.m.grpc_requests.labels(method, "STREAM").inc()
            return handler
        inner, m = handler.unary_unary, self.m

        async def timed(request, context):
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK.name
            try:
                return await inner(request, context)
            except BaseException:
                c = context.code()
                code = c.name if isinstance(c, grpc.StatusCode) else grpc.StatusCode.UNKNOWN.name
                raise
            finally:
                m.grpc_seconds.labels(method).observe(time.perf_counter() - t0)
                m.grpc_requests.labels(method, code).inc()

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class DecisionCollector(Collector):
    """The latest decisions as series. `ages=False` leaves the ages out: `pdscaler serve` renders this
    in its decision process and the ages, which must be current at scrape time, in the serving one.
    Only configured graphs have series: replacing `config` (a reload) drops a removed graph's, those
    of `metrics`' per-graph instruments included."""

    def __init__(self, config: ScalerConfig, store: DecisionStore, engine: "Engine | None",
                 cluster: "ClusterWatcher | None", now: Callable[[], float], ages: bool = True,
                 metrics: "ScalerMetrics | None" = None) -> None:
        self.metrics = metrics
        self.config, self.store, self.engine, self.cluster, self.now = config, store, engine, cluster, now
        self.ages = ages

    @property
    def config(self) -> ScalerConfig:
        return self._config

    @config.setter
    def config(self, config: ScalerConfig) -> None:
        self._config = config
        if self.metrics is not None:
            self.metrics.forget(config.graphs)

    def describe(self) -> Iterable:
        return []  # names vary with the config; collected at scrape time

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return [f.family() for f in self.families()]

    def render(self) -> bytes:
        return render(self.families())

    def families(self) -> list[_Fam]:
        gr, grr = ["graph"], ["graph", "role"]
        fam = {
            "info": _Fam("pdscaler_graph_info", "1 per configured graph: its namespace, DGD and mode",
                         ["graph", "namespace", "dgd", "mode"]),
            "target": _Fam("pdscaler_target_replicas", "replicas pdscaler answers KEDA with", grr),
            "advised": _Fam("pdscaler_advised_replicas", "what an advisory graph would ask for", grr),
            "gpus": _Fam("pdscaler_target_gpus", "target replicas x GPUs per replica", grr),
            "current": _Fam("pdscaler_current_replicas", "replicas as they stand (scale subresource spec.replicas)", grr),
            "ready": _Fam("pdscaler_ready_replicas", "ready replicas (cluster, else the router's workers)", grr),
            "min": _Fam("pdscaler_min_replicas", "configured floor", grr),
            "max": _Fam("pdscaler_max_replicas", "configured ceiling", grr),
            "rule": _Fam("pdscaler_decision_rule", "1 for the rule that bound the role's target", grr + ["rule"]),
            "held": _Fam("pdscaler_decision_held", "1 when the role is held for want of usable data", grr),
            "figure": _Fam("pdscaler_decision_figure", "capacity and need figures behind the decision", grr + ["figure"]),
            "input": _Fam("pdscaler_observed", "observed inputs (graph-wide: role=\"\")", grr + ["signal"]),
            "forecast": _Fam("pdscaler_forecast", "forecast demand per series, quantile and horizon (s)",
                             gr + ["series", "quantile", "horizon"]),
            "decided": _Fam("pdscaler_decision_timestamp_seconds", "when the latest decision was made", gr),
            "age": _Fam("pdscaler_decision_age_seconds", "age of the latest decision at scrape time", gr),
            "data_age": _Fam("pdscaler_data_age_seconds", "age of the data the latest decision used (absent: none)", gr),
            "notes": _Fam("pdscaler_data_problems", "problems with the latest data (dropped values, source errors)", gr),
            "conflicts": _Fam("pdscaler_ownership_conflicts", "other autoscalers on a role pdscaler scales",
                              grr + ["owner_kind", "owner"]),
            "cluster_age": _Fam("pdscaler_cluster_reading_age_seconds", "age of the last cluster reading", gr),
        }
        now = self.now()
        full = self.config.metrics.detail == "full"
        figures = FIGURES if full else DASHBOARD_FIGURES
        for graph, gcfg in self.config.graphs.items():
            fam["info"].add_metric([graph, gcfg.namespace or "", gcfg.dgd_name(graph), gcfg.mode], 1)
        for graph, d in self.store.all().items():
            gcfg = self.config.graphs.get(graph)
            if gcfg is None:
                continue
            fam["decided"].add_metric([graph], d.at)
            if self.ages:
                add_ages(fam["age"], fam["data_age"], graph, d, now)
            fam["notes"].add_metric([graph], len(d.notes))
            for role, rd in d.roles.items():
                rcfg = gcfg.roles[role]
                fam["target"].add_metric([graph, role], rd.replicas)
                fam["gpus"].add_metric([graph, role], rd.replicas * rcfg.gpus_per_replica)
                if rd.advised is not None:
                    fam["advised"].add_metric([graph, role], rd.advised)
                fam["min"].add_metric([graph, role], rcfg.min_replicas)
                fam["max"].add_metric([graph, role], rcfg.max_replicas)
                fam["rule"].add_metric([graph, role, rd.reason.rule], 1)
                fam["held"].add_metric([graph, role], 1 if Rule(rd.reason.rule).held else 0)
                for k in figures:
                    v = rd.reason.figures.get(k)
                    if _finite(v):
                        fam["figure"].add_metric([graph, role, k], float(v))
            self._observed(graph, fam, full)
            if d.forecast is not None:
                self._forecast(graph, d.forecast, fam["forecast"], full)
        if self.cluster is not None:  # it may still hold the readings of a graph a reload removed
            for graph, reading in self.cluster.snapshot().items():
                if graph in self.config.graphs:
                    fam["cluster_age"].add_metric([graph], max(0.0, now - reading.at))
            for graph, found in self.cluster.conflicts().items():
                if graph not in self.config.graphs:
                    continue
                for c in found:
                    fam["conflicts"].add_metric([graph, c.role, c.owner_kind, c.owner], 1)
        if not self.ages:
            del fam["age"], fam["data_age"]
        return list(fam.values())

    def _observed(self, graph: str, fam: dict, full: bool = True) -> None:
        engine = self.engine() if callable(self.engine) else self.engine
        obs = engine.latest(graph) if engine is not None else None
        if obs is None:
            return
        for name, v in obs.signals.items():
            if (full or name in DASHBOARD_SIGNALS) and _finite(v):
                fam["input"].add_metric([graph, "", name], float(v))
        for role, values in obs.roles.items():
            if full:
                for name, v in values.items():
                    if _finite(v):
                        fam["input"].add_metric([graph, role, name], float(v))
            current = values.get("desired_replicas")
            ready = values.get("ready_replicas", values.get("ready_workers"))
            if _finite(current):
                fam["current"].add_metric([graph, role], float(current))
            if _finite(ready):
                fam["ready"].add_metric([graph, role], float(ready))

    def _forecast(self, graph: str, forecast, family: GaugeMetricFamily, full: bool = True) -> None:
        hs = np.asarray(forecast.horizons, dtype=float)
        if hs.size == 0:
            return
        fc_cfg = self.config.forecast
        quantiles = fc_cfg.quantiles if full else [q for q in fc_cfg.quantiles
                                                   if q in DASHBOARD_QUANTILES or q == fc_cfg.quantile]
        series = {n: fc for n, fc in forecast.series.items() if full or n in DASHBOARD_SIGNALS}
        for want in FORECAST_HORIZONS:
            i = int(np.argmin(np.abs(hs - want)))
            if abs(hs[i] - want) > 30:  # the grid does not reach this far
                continue
            for name, fc in series.items():
                for q in quantiles:
                    v = float(fc.quantile(q)[i])
                    if _finite(v):
                        family.add_metric([graph, name, f"{q:g}", f"{want:g}"], v)
            if not full:
                continue
            for q, kv in forecast.kv_tokens.items():
                v = float(kv[i])
                if _finite(v):
                    family.add_metric([graph, "kv_tokens", f"{q:g}", f"{want:g}"], v)


def add_ages(age: "_Fam", data_age: "_Fam", graph: str, d, now: float) -> None:
    age.add_metric([graph], max(0.0, now - d.at))
    if d.data_at is not None:
        data_age.add_metric([graph], max(0.0, now - d.data_at))


class AgeCollector(Collector):
    """Decision and data age per graph at scrape time, from the serving process's store."""

    def __init__(self, store: DecisionStore, now: Callable[[], float]) -> None:
        self.store, self.now = store, now

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return [f.family() for f in self.families()]

    def render(self) -> bytes:
        return render(self.families())

    def families(self) -> list[_Fam]:
        age = _Fam("pdscaler_decision_age_seconds", "age of the latest decision at scrape time", ["graph"])
        data_age = _Fam("pdscaler_data_age_seconds", "age of the data the latest decision used (absent: none)",
                        ["graph"])
        now = self.now()
        for graph, d in self.store.all().items():
            add_ages(age, data_age, graph, d, now)
        return [age, data_age]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
