"""min_replicas / max_replicas: the floor and ceiling of a role."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaler.policy.context import Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import RoleConfig


def bound(replicas: int, min_replicas: int, max_replicas: int) -> tuple[int, Rule | None]:
    """The target within [min, max], and the bound that applied (None if neither)."""
    if replicas < min_replicas:
        return min_replicas, Rule.MIN_REPLICAS
    if replicas > max_replicas:
        return max_replicas, Rule.MAX_REPLICAS
    return replicas, None


def apply_bounds(config: "RoleConfig", t: Target) -> None:
    v, which = bound(t.value, config.min_replicas, config.max_replicas)
    if which:
        t.bind(v, which, f"bounded to {which.value.replace('-', '_')}={v}")
