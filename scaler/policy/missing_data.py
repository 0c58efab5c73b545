"""Never scale down on missing or stale data: hold the last target (or the floor if there is none)."""

from __future__ import annotations


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
