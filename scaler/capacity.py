"""The capacity rule: how many replicas of a role a given demand needs (pure arithmetic).

The same rule sizes the observed demand (the reactive need) and the forecast demand (the
predictive need); only the demand figures differ. Per-replica capacity comes from the capacity
profile (scaler/capacity_profile.py) at the demand's mean lengths, times the online correction
(scaler/correction.py), times the planned utilisation:

prefill: demand (tokens/s) = arrival tokens/s + queued prefill tokens / backlog_drain;
         replicas = demand / (profile.prefill(ISL) x correction x target_utilization).
decode:  replicas = max(KV tokens in use / (kv_tokens x target_utilization),
                        decode tokens/s / (profile.decode(ISL + OSL/2) x correction x target_utilization)).

The result is fractional; the policy layer rounds it up and bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from scaler.capacity_profile import DecodeProfile, PrefillProfile
from scaler.config import DecodeCapacity, PrefillCapacity

if TYPE_CHECKING:
    from scaler.config import GraphConfig
    from scaler.observation import Observation


@dataclass(frozen=True)
class Need:
    """Replicas needed (fractional), with the figures that led there."""

    replicas: float
    term: str  # which term of the rule dominated
    figures: Mapping[str, float] = field(default_factory=dict)


class MissingInput(Exception):
    """The inputs the rule needs are not available; the message names them."""


@dataclass(frozen=True)
class PrefillDemand:
    arrival_tokens_per_s: float
    queued_tokens: float
    isl: float | None  # mean input length; None when unknown (no traffic)


@dataclass(frozen=True)
class DecodeDemand:
    kv_tokens: float | None  # KV tokens in use (or forecast to be)
    tokens_per_s: float | None  # decode tokens/s requested
    context: float | None  # mean tokens a running sequence holds (ISL + OSL/2)


def prefill_need(demand: PrefillDemand, profile: PrefillProfile, policy: PrefillCapacity,
                 correction: float = 1.0, utilization: float | None = None) -> Need:
    """`utilization` replaces the policy's target_utilization (1.0: the profile's full capacity)."""
    per_replica = profile.throughput(demand.isl if demand.isl is not None else 0.0) * correction
    usable = per_replica * (policy.target_utilization if utilization is None else utilization)
    backlog = demand.queued_tokens / policy.backlog_drain
    total = demand.arrival_tokens_per_s + backlog
    return Need(
        replicas=total / usable,
        term="backlog" if backlog > demand.arrival_tokens_per_s else "arrivals",
        figures={
            "arrival_tokens_per_s": demand.arrival_tokens_per_s,
            "backlog_tokens_per_s": backlog,
            "demand_tokens_per_s": total,
            "tokens_per_s_per_replica": per_replica,
            "usable_tokens_per_s_per_replica": usable,
        },
    )


def decode_need(demand: DecodeDemand, profile: DecodeProfile, policy: DecodeCapacity,
                correction: float = 1.0, utilization: float | None = None) -> Need:
    """`utilization` replaces the policy's target_utilization of the THROUGHPUT term (1.0: the
    profile's full capacity); the KV term keeps it (a full KV cache preempts sequences)."""
    figures: dict[str, float] = {}
    terms: dict[str, float] = {}
    if demand.kv_tokens is not None:
        usable_kv = profile.kv_tokens * policy.target_utilization
        figures |= {"kv_tokens": demand.kv_tokens, "usable_kv_tokens_per_replica": usable_kv}
        terms["kv"] = demand.kv_tokens / usable_kv
    if demand.tokens_per_s is not None:
        per_replica = profile.throughput(demand.context or 0.0) * correction
        usable = per_replica * (policy.target_utilization if utilization is None else utilization)
        figures |= {"decode_tokens_per_s": demand.tokens_per_s, "tokens_per_s_per_replica": per_replica,
                    "usable_tokens_per_s_per_replica": usable}
        terms["throughput"] = demand.tokens_per_s / usable
    if not terms:
        raise MissingInput("missing KV usage (kv_active_blocks) and decode token rate (request_rate, osl_mean)")
    term = max(terms, key=terms.__getitem__)
    return Need(replicas=terms[term], term=term, figures=figures)


# --- Reading the demand from an observation ---------------------------------------------------------
# One derivation, used alike by the reactive sizing (observed_*_demand) and the forecaster (demand_values).


def _req(signals: Mapping[str, float], *names: str) -> list[float]:
    missing = [n for n in names if n not in signals]
    if missing:
        raise MissingInput("missing " + ", ".join(missing))
    return [signals[n] for n in names]


def token_rate(graph: Mapping[str, float], name: str, mean: str) -> float | None:
    """Tokens/s of one direction (`name`: prefill_tokens_per_s or decode_tokens_per_s): the measured
    rate(ISL or OSL sum), else request rate x the mean length; 0 with no traffic (the mean is then 0/0,
    NaN in PromQL, hence dropped); None when neither is known."""
    rate = graph.get("request_rate")
    if rate == 0:
        return 0.0
    if name in graph:
        return graph[name]
    if rate is not None and mean in graph:
        return rate * graph[mean]
    return None


def observed_prefill_demand(graph: Mapping[str, float], role: Mapping[str, float]) -> PrefillDemand:
    (rate,) = _req(graph, "request_rate")
    isl = None if rate == 0 else _req(graph, "isl_mean")[0]
    arrival = token_rate(graph, "prefill_tokens_per_s", "isl_mean")
    return PrefillDemand(arrival, role.get("prefill_queued_tokens", 0.0), isl)


def observed_decode_demand(graph: Mapping[str, float], role: Mapping[str, float], kv_tokens: float) -> DecodeDemand:
    rate = None
    if "request_rate" in graph and (graph["request_rate"] == 0 or "osl_mean" in graph):
        rate = token_rate(graph, "decode_tokens_per_s", "osl_mean")
    return DecodeDemand(kv_tokens_in_use(graph, role, kv_tokens), rate, context(graph))


def context(graph: Mapping[str, float]) -> float | None:
    """Mean tokens a running sequence holds: its prompt plus half its output on average."""
    if "isl_mean" in graph and "osl_mean" in graph:
        return graph["isl_mean"] + graph["osl_mean"] / 2.0
    return None


def kv_tokens_in_use(graph: Mapping[str, float], role: Mapping[str, float], kv_tokens: float) -> float | None:
    """KV tokens in use on a decode role: active blocks x block size, else mean usage x ready workers
    x one replica's KV tokens."""
    if "kv_active_blocks" in role and "kv_block_size" in graph:
        return role["kv_active_blocks"] * graph["kv_block_size"]
    if "kv_usage" in role and "ready_workers" in role:
        return role["kv_usage"] * role["ready_workers"] * kv_tokens
    return None


def demand_values(obs: "Observation", gcfg: "GraphConfig", kv_tokens: float
                  ) -> tuple[dict[str, float], float | None]:
    """The forecast inputs in an observation: the demand series (token_rate), the means the
    derivations use, and the KV tokens in use on the decode roles (kv_tokens_in_use, with
    `kv_tokens` per replica from the graph's profile): the same figures the reactive sizing reads."""
    sig = obs.signals
    values = {k: sig[k] for k in ("request_rate", "isl_mean", "osl_mean", "itl_mean") if k in sig}
    for name, mean in (("prefill_tokens_per_s", "isl_mean"), ("decode_tokens_per_s", "osl_mean")):
        v = token_rate(sig, name, mean)
        if v is not None:
            values[name] = v
    kv = None
    for role, rcfg in gcfg.roles.items():
        used = kv_tokens_in_use(sig, obs.roles.get(role, {}), kv_tokens) if rcfg.kind == "decode" else None
        if used is not None:
            kv = (kv or 0.0) + used
    return values, kv
