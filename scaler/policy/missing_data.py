"""Never scale down on missing or stale data: hold the last target (or the floor if there is none).

Three causes, three rule names: no observation yet (`no-data`), the last one too old (`stale-data`),
or the inputs a role's capacity rule needs absent from it (`missing-data`, naming them). A held
target is marked so: no later rule lowers it, and the warm role holds while a serving role does
(its placeholders cover forecasts the held role does not have).

A role is sized on whatever inputs it has, but its target may only be LOWERED when every input of
`LOWER_ON` is there: prefill needs the arrivals and the queue, decode the KV in use and the decode
token rate. Without one (a series Prometheus stopped returning), the target may rise, never fall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import RoleConfig
    from scaler.observation import Observation


def hold(previous: int | None, min_replicas: int, max_replicas: int) -> int:
    """What to answer when the data cannot be trusted: the last target, never below the floor."""
    held = min_replicas if previous is None else max(previous, min_replicas)
    return min(held, max_replicas)


def staleness(now: float, data_at: float | None, stale_after: float) -> str | None:
    """Why the data cannot be trusted at `now`, or None if it is fresh enough."""
    if data_at is None:
        return "no observation yet"
    age = now - data_at
    if age > stale_after:
        return f"last observation is {age:.0f}s old (stale after {stale_after:.0f}s)"
    return None


def untrusted(now: float, obs: "Observation | None", stale_after: float) -> tuple[Rule, str] | None:
    """The rule and the reason when the graph's observation cannot be trusted at `now`."""
    why = staleness(now, obs.at if obs else None, stale_after)
    if why is None:
        return None
    return (Rule.NO_DATA if obs is None else Rule.STALE_DATA), why


def held(role: str, config: "RoleConfig", previous: int | None, rule: Rule, why: str) -> Target:
    """The target of a role held for want of data: `previous` (the floor when there is none)."""
    n = hold(previous, config.min_replicas, config.max_replicas)
    what = f"holding {n}" + (" (the floor)" if previous is None else " (never scale down on missing data)")
    t = Target(role, config.kind, n, rule, f"{why}; {what}", held=True)
    t.note(rule, t.message)
    return t


# The inputs a role's target may be LOWERED on, per role kind: each entry is satisfied by any one of
# its alternatives (all names of an alternative present). Without one of them a target may still
# rise on what is there, but never fall (`missing-data`, naming what is missing).
LOWER_ON: dict[str, tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]] = {
    "prefill": (
        ("arrivals", (("request_rate", "prefill_tokens_per_s"), ("request_rate", "isl_mean"))),
        ("queue", (("prefill_queued_tokens",),)),
    ),
    "decode": (
        ("KV in use", (("kv_active_blocks", "kv_block_size"), ("kv_usage", "ready_workers"))),
        ("decode tokens/s", (("request_rate", "decode_tokens_per_s"), ("request_rate", "osl_mean"))),
    ),
}


# With no traffic (request_rate 0) the mean lengths are 0/0 in PromQL (dropped) and the token rates 0.
_NOT_NEEDED_IDLE = frozenset({"isl_mean", "osl_mean", "prefill_tokens_per_s", "decode_tokens_per_s"})


def missing_for_lowering(kind: str, graph: Mapping[str, float], role: Mapping[str, float]) -> list[str]:
    """The inputs of LOWER_ON[kind] the observation lacks, as readable names."""
    values = {**graph, **role}
    have = set(values) | (_NOT_NEEDED_IDLE if values.get("request_rate") == 0 else set())
    return [f"{what} ({' or '.join('+'.join(a) for a in alternatives)})"
            for what, alternatives in LOWER_ON[kind] if not any(have.issuperset(a) for a in alternatives)]


class NeverLowerOnMissingData:
    """The last per-role rule: where an input the target may be lowered on is missing, the target
    holds at the last target (a rise on the inputs there are still goes through; before the first
    decision there is nothing to hold, and adopted replicas count as the last target)."""

    def apply(self, ctx: RoleContext, t: Target) -> None:
        missing = missing_for_lowering(ctx.kind, ctx.signals, ctx.role_signals)
        if not missing:
            return
        why = "missing " + ", ".join(missing)
        if ctx.previous is not None and t.value < ctx.previous:
            t.bind(ctx.previous, Rule.MISSING_DATA, f"{why}: holding {ctx.previous} (never scale down on missing data)")
            t.held = True
        else:
            t.note(Rule.MISSING_DATA, f"{why}: may rise, not fall")
