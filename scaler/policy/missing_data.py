"""Never scale down on missing or stale data: hold the last target (or the floor if there is none).

Three causes, three rule names: no observation yet (`no-data`), the last one too old (`stale-data`),
or the inputs a role's capacity rule needs absent from it (`missing-data`, naming them). A held
target is marked so: no later rule lowers it, and the warm role holds while a serving role does
(its placeholders cover forecasts the held role does not have).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaler.policy.context import Target
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
