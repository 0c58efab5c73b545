"""The serving signals pdscaler reads, defined once for every metrics source.

Each Signal says what it means, its scope (the whole graph, or one role's workers), the range of
sane values, and how to compute it from Dynamo's metrics: an aggregation over one metric with label
filters. The Prometheus source renders that as PromQL (overridable per signal); the scrape source
evaluates the same definition over samples it scraped itself. Metric names are Dynamo's defaults
(see the README's "Metrics read" table) and can be renamed in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Our key -> Dynamo's metric name. Histograms are named without the _bucket/_sum/_count suffix.
DEFAULT_METRIC_NAMES: dict[str, str] = {
    "requests_total": "dynamo_frontend_requests_total",
    "isl": "dynamo_frontend_input_sequence_tokens",
    "osl": "dynamo_frontend_output_sequence_tokens",
    "ttft": "dynamo_frontend_time_to_first_token_seconds",
    "itl": "dynamo_frontend_inter_token_latency_seconds",
    "queued": "dynamo_frontend_queued_requests",
    "inflight": "dynamo_frontend_inflight_requests",
    "worker_prefill_tokens": "dynamo_frontend_worker_active_prefill_tokens",
    "worker_decode_blocks": "dynamo_frontend_worker_active_decode_blocks",
    "kv_active_blocks": "dynamo_component_kvstats_active_blocks",
    "kv_total_blocks": "dynamo_component_kvstats_total_blocks",
    "kv_usage": "dynamo_component_kvstats_gpu_cache_usage_percent",
    "kv_block_size": "dynamo_frontend_model_kv_cache_block_size",
}

Aggregation = Literal["rate", "rate_sum", "mean", "quantile", "sum", "avg", "max", "count"]
# Role filters: which label identifies a role's workers.
RoleFilter = Literal["none", "worker_type", "component"]


@dataclass(frozen=True)
class Signal:
    name: str
    scope: Literal["graph", "role"]
    metric: str  # key into the metric names
    agg: Aggregation
    unit: str
    description: str
    lo: float = 0.0  # sane range: values outside are rejected as absurd
    hi: float = 1e9
    quantile: float | None = None
    role_filter: RoleFilter = "none"
    kinds: tuple[str, ...] = field(default=("prefill", "decode"))  # role kinds the signal applies to


SIGNALS: tuple[Signal, ...] = (
    Signal("request_rate", "graph", "requests_total", "rate", "req/s", "requests arriving at the frontend", hi=1e6),
    Signal(
        "prefill_tokens_per_s", "graph", "isl", "rate_sum", "tokens/s", "input tokens arriving per second", hi=1e10
    ),
    Signal(
        "decode_tokens_per_s", "graph", "osl", "rate_sum", "tokens/s", "output tokens requested per second", hi=1e10
    ),
    Signal("isl_mean", "graph", "isl", "mean", "tokens", "mean input sequence length", hi=1e7),
    Signal("isl_p99", "graph", "isl", "quantile", "tokens", "p99 input sequence length", hi=1e7, quantile=0.99),
    Signal("osl_mean", "graph", "osl", "mean", "tokens", "mean output sequence length", hi=1e7),
    Signal("queued_requests", "graph", "queued", "sum", "requests", "requests waiting for their first token", hi=1e7),
    Signal("inflight_requests", "graph", "inflight", "sum", "requests", "requests in the graph", hi=1e7),
    Signal("ttft_p99", "graph", "ttft", "quantile", "s", "p99 time to first token", hi=3600, quantile=0.99),
    Signal("itl_p99", "graph", "itl", "quantile", "s", "p99 inter-token latency", hi=600, quantile=0.99),
    Signal("itl_mean", "graph", "itl", "mean", "s", "mean inter-token latency", hi=600),
    Signal("kv_block_size", "graph", "kv_block_size", "max", "tokens", "tokens per KV block", hi=1e5),
    Signal(
        "prefill_queued_tokens", "role", "worker_prefill_tokens", "sum", "tokens",
        "prefill tokens queued or in progress at the role's workers", hi=1e10,
        role_filter="worker_type", kinds=("prefill",),
    ),
    Signal(
        "ready_workers", "role", "worker_prefill_tokens", "count", "replicas",
        "workers of the role that report to the router (ready)", hi=1e5,
        role_filter="worker_type", kinds=("prefill",),
    ),
    Signal(
        "ready_workers", "role", "worker_decode_blocks", "count", "replicas",
        "workers of the role that report to the router (ready)", hi=1e5,
        role_filter="worker_type", kinds=("decode",),
    ),
    Signal(
        "kv_active_blocks", "role", "kv_active_blocks", "sum", "blocks", "KV blocks in use on the role's workers",
        hi=1e10, role_filter="component", kinds=("decode",),
    ),
    Signal(
        "kv_total_blocks", "role", "kv_total_blocks", "sum", "blocks", "KV blocks on the role's workers",
        hi=1e10, role_filter="component", kinds=("decode",),
    ),
    Signal(
        "kv_usage", "role", "kv_usage", "avg", "ratio", "mean KV-cache usage of the role's workers (0..1)",
        # Over-full readings (above 1) are the strongest signal the KV safety net gets, not an error;
        # above 10 the series is not a share (a percent-valued export, say) and is dropped.
        hi=10.0, role_filter="component", kinds=("decode",),
    ),
)

GRAPH_SIGNALS = tuple(s for s in SIGNALS if s.scope == "graph")

# Role values read from the Kubernetes API (scaler/kube), not from metrics: name -> (lo, hi).
CLUSTER_SIGNALS: dict[str, tuple[float, float]] = {
    "desired_replicas": (0.0, 1e5),  # the scale subresource's spec.replicas
    "ready_replicas": (0.0, 1e5),  # Ready replicas (the DGD's status, or Ready pods of the selector)
}


def role_signals(kind: str) -> tuple[Signal, ...]:
    return tuple(s for s in SIGNALS if s.scope == "role" and kind in s.kinds)


def signal_range(name: str) -> tuple[float, float]:
    for s in SIGNALS:
        if s.name == name:
            return s.lo, s.hi
    if name in CLUSTER_SIGNALS:
        return CLUSTER_SIGNALS[name]
    raise KeyError(name)


def role_label_filter(signal: Signal, kind: str, component: str | None) -> dict[str, str]:
    """The label matchers that pick one role's workers for a role-scoped signal."""
    if signal.role_filter == "worker_type":
        return {"worker_type": kind}
    if signal.role_filter == "component" and component:
        return {"dynamo_component": component}
    return {}


def metric_names(overrides: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - set(DEFAULT_METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric keys {unknown}; known: {sorted(DEFAULT_METRIC_NAMES)}")
    return {**DEFAULT_METRIC_NAMES, **overrides}
