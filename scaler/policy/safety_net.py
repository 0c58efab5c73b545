"""The reactive safety net: when an observed limit is breached, scale up at once.

Forecasts can be wrong. When the observed prefill queue, TTFT, KV usage or ITL breach their limits,
the role's target rises immediately by a step (at least one replica, or `step_ratio` of the READY
count), bypassing the scale-up stabilisation and the no-cascade hold. The forecast only ever adds
capacity above this reactive need, never less.

Two guards keep it from running away (measured: without them a p99 that stays high for a window
after a burst compounded x1.5 per poll up to max_replicas):
- a TTFT breach is judged net of the long prompts' own prefill time (attainment.ttft_limit: where the
  p99 prompt alone takes longer than the SLO, against that time plus the mean prompt's queueing
  slack): on Mooncake's long prompts the net fired every ~330 s with an empty queue;
- a LATENCY breach (p99 TTFT, p99 ITL) counts only while the role is loaded (demand >= `min_load`
  of the ready replicas' capacity, queued work included): a slow p99 on an idle pool comes from long
  prompts or a stale window, and more replicas would not fix it. Queue and KV-usage breaches always
  count;
- the step is taken from the replicas READY, not from the target: while earlier emergency replicas
  are still starting, a breach that persists asks for no more than ready x (1 + step_ratio);
- one step at a time: the next only once the last one's replicas had time to start and to serve a
  latency window (the start-up lead plus `cooldown`; the p99 lingers for a window after the
  backlog drains). When the last step was taken is this rule's state, one per role.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping

from scaler.policy.attainment import ttft_limit
from scaler.policy.context import RoleContext, Target, load_of
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import GraphConfig, SafetyNet as SafetyNetConfig


@dataclass(frozen=True)
class Limits:
    queued_requests: float | None = None  # frontend requests waiting for a first token
    ttft_p99_s: float | None = None
    kv_usage: float | None = None  # 0..1, decode workers
    itl_p99_s: float | None = None


# Which observed signal each limit watches, per role kind.
_WATCH = {
    "prefill": (("queued_requests", "queued_requests"), ("ttft_p99_s", "ttft_p99")),
    "decode": (("kv_usage", "kv_usage"), ("itl_p99_s", "itl_p99")),
}


_LATENCY = {"ttft_p99_s", "itl_p99_s"}


def breaches(kind: str, limits: Limits, graph: Mapping[str, float], role: Mapping[str, float],
             loaded: bool = True) -> list[str]:
    """The limits the observations breach for a role of this kind, as readable notes. Latency limits
    count only when `loaded` (see the module docstring)."""
    out = []
    for limit_name, signal in _WATCH[kind]:
        if limit_name in _LATENCY and not loaded:
            continue
        limit = getattr(limits, limit_name)
        value = role.get(signal, graph.get(signal))
        if limit is not None and value is not None and value > limit:
            out.append(f"{signal}={value:.3g} > {limit:g}")
    return out


def emergency_target(current: int, step_ratio: float) -> int:
    """The target the safety net asks for: `current` (the ready replicas) plus max(1, ceil(current x
    step_ratio))."""
    return current + max(1, math.ceil(current * step_ratio))


class SafetyNet:
    def __init__(self, config: "SafetyNetConfig", graph: "GraphConfig") -> None:
        self.config = config
        self.limits = Limits(
            queued_requests=config.queued_requests,
            ttft_p99_s=config.ttft_p99_s or graph.slo.ttft_s,
            kv_usage=config.kv_usage,
            itl_p99_s=config.itl_p99_s or graph.slo.itl_s,
        )
        self.stepped_at: float | None = None  # when the last emergency step was taken

    def apply(self, ctx: RoleContext, t: Target) -> None:
        if not self.config.enabled:
            return
        net = self.config
        total = t.figures.get("demand_tokens_per_s", t.figures.get("decode_tokens_per_s"))
        ready = ctx.ready
        loaded = load_of(total, t.figures.get("tokens_per_s_per_replica"), ready)
        limits = self.limits
        if ctx.kind == "prefill" and limits.ttft_p99_s is not None:
            # Net of the long prompts' own prefill time (attainment.ttft_limit): more replicas would not
            # shorten it.
            own = ttft_limit(limits.ttft_p99_s, ctx.signals, ctx.profile, t.figures.get("capacity_correction", 1.0))
            limits = replace(limits, ttft_p99_s=own)
        breached = breaches(ctx.kind, limits, ctx.signals, ctx.role_signals,
                            loaded=loaded is None or loaded >= net.min_load)
        if not breached:
            return
        base = int(ready) if ready is not None else ctx.current
        wait = ctx.lead_s + net.cooldown
        now = ctx.now
        if self.stepped_at is not None and now - self.stepped_at < wait:
            t.note(Rule.SAFETY_NET, f"{', '.join(breached)}, but the last emergency step "
                                    f"({now - self.stepped_at:.0f}s ago) is still starting or settling ({wait:.0f}s)")
            return
        want = emergency_target(base, net.step_ratio)
        if want > t.value:
            t.bind(want, Rule.SAFETY_NET, "observed " + ", ".join(breached) + f": scale up at once from {base} ready")
        if want > ctx.current:
            t.emergency = True
            self.stepped_at = now
