"""min_replicas / max_replicas: the floor and ceiling of a role."""

from __future__ import annotations


def bound(replicas: int, min_replicas: int, max_replicas: int) -> tuple[int, str | None]:
    """The target within [min, max], and the name of the bound that applied (None if neither)."""
    if replicas < min_replicas:
        return min_replicas, "min_replicas"
    if replicas > max_replicas:
        return max_replicas, "max_replicas"
    return replicas, None
