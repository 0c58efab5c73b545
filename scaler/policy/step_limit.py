"""Max step per decision interval: how far one decision may move a role's target."""

from __future__ import annotations

import math


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
