"""The capacity rule: how many replicas of a role the observed demand needs (pure arithmetic).

prefill: demand (tokens/s) = request_rate x isl_mean + queued_prefill_tokens / backlog_drain;
         replicas = demand / (tokens_per_s x target_utilization).
decode:  replicas = max(KV tokens in use / (kv_tokens x target_utilization),
                        request_rate x osl_mean / (tokens_per_s x target_utilization)).
The result is fractional; the engine rounds it up and the policy layer bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from scaler.config import DecodeCapacity, PrefillCapacity


@dataclass(frozen=True)
class Need:
    """Replicas needed (fractional), with the figures that led there."""

    replicas: float
    term: str  # which term of the rule dominated
    figures: Mapping[str, float] = field(default_factory=dict)


class MissingInput(Exception):
    """The inputs the rule needs are not available; the message names them."""


def _req(signals: Mapping[str, float], *names: str) -> list[float]:
    missing = [n for n in names if n not in signals]
    if missing:
        raise MissingInput("missing " + ", ".join(missing))
    return [signals[n] for n in names]


def prefill_need(cap: PrefillCapacity, graph: Mapping[str, float], role: Mapping[str, float]) -> Need:
    (rate,) = _req(graph, "request_rate")
    # With no traffic the mean ISL is 0/0 (NaN in PromQL, hence dropped): arrival demand is then 0.
    isl = 0.0 if rate == 0 else _req(graph, "isl_mean")[0]
    arrival = rate * isl
    queued = role.get("prefill_queued_tokens", 0.0)
    backlog = queued / cap.backlog_drain
    usable = cap.tokens_per_s * cap.target_utilization
    demand = arrival + backlog
    return Need(
        replicas=demand / usable,
        term="backlog" if backlog > arrival else "arrivals",
        figures={
            "arrival_tokens_per_s": arrival,
            "backlog_tokens_per_s": backlog,
            "demand_tokens_per_s": demand,
            "usable_tokens_per_s_per_replica": usable,
        },
    )


def decode_need(cap: DecodeCapacity, graph: Mapping[str, float], role: Mapping[str, float]) -> Need:
    figures: dict[str, float] = {}
    terms: dict[str, float] = {}
    kv_used = _kv_tokens_in_use(cap, graph, role)
    if kv_used is not None:
        usable_kv = cap.kv_tokens * cap.target_utilization
        figures |= {"kv_tokens_in_use": kv_used, "usable_kv_tokens_per_replica": usable_kv}
        terms["kv"] = kv_used / usable_kv
    rate = graph.get("request_rate")
    if rate is not None and (rate == 0 or "osl_mean" in graph):
        token_rate = 0.0 if rate == 0 else rate * graph["osl_mean"]
        usable = cap.tokens_per_s * cap.target_utilization
        figures |= {"decode_tokens_per_s": token_rate, "usable_tokens_per_s_per_replica": usable}
        terms["throughput"] = token_rate / usable
    if not terms:
        raise MissingInput("missing KV usage (kv_active_blocks) and decode token rate (request_rate, osl_mean)")
    term = max(terms, key=terms.__getitem__)
    return Need(replicas=terms[term], term=term, figures=figures)


def _kv_tokens_in_use(cap: DecodeCapacity, graph: Mapping[str, float], role: Mapping[str, float]) -> float | None:
    if "kv_active_blocks" in role and "kv_block_size" in graph:
        return role["kv_active_blocks"] * graph["kv_block_size"]
    if "kv_usage" in role and "ready_workers" in role:
        return role["kv_usage"] * role["ready_workers"] * cap.kv_tokens
    return None
