"""Max step per decision interval: how far one decision may move a role's target."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import MaxStep


def limit_step(target: int, current: int, max_up: int | None, max_down: int | None,
               max_up_ratio: float | None = None) -> tuple[int, str | None]:
    """`target` limited to current + max(max_up, ceil(current x max_up_ratio)) upwards and to
    current - max_down downwards (None = unlimited); with a note when the limit applied."""
    if target > current:
        allowed = [current + max_up] if max_up is not None else []
        if max_up_ratio is not None:
            allowed.append(current + max(1, math.ceil(current * max_up_ratio)))
        if allowed and target > max(allowed):
            return max(allowed), f"scale-up limited to +{max(allowed) - current} per interval"
    elif target < current and max_down is not None and target < current - max_down:
        return current - max_down, f"scale-down limited to -{max_down} per interval"
    return target, None


class StepLimit:
    def __init__(self, config: "MaxStep") -> None:
        self.config = config

    def apply(self, ctx: RoleContext, t: Target) -> None:
        c = self.config
        v, note = limit_step(t.value, ctx.current, c.up, c.down, c.up_ratio)
        if note:
            t.bind(v, Rule.MAX_STEP, note)
