"""The GPU budget shared by a graph's roles.

When the roles' targets need more GPUs than the budget, every role above its floor gives up
capacity in proportion to what it asked for (Dynamo's Planner scales both pools down
proportionally), never below its floor; the result never exceeds the budget unless the floors do.
"""

from __future__ import annotations

import math


def fit_budget(targets: dict[str, int], gpus: dict[str, int], floors: dict[str, int], budget: int | None
               ) -> tuple[dict[str, int], str | None]:
    if budget is None:
        return dict(targets), None
    used = sum(targets[r] * gpus[r] for r in targets)
    if used <= budget:
        return dict(targets), None
    floor_gpus = sum(floors[r] * gpus[r] for r in targets)
    spare = max(0, budget - floor_gpus)
    extra = {r: (targets[r] - floors[r]) * gpus[r] for r in targets}
    total_extra = sum(extra.values())
    out = {}
    for r in targets:
        share = spare * extra[r] / total_extra if total_extra else 0
        out[r] = floors[r] + math.floor(share / gpus[r] + 1e-9)
    # Hand out GPUs left by rounding down, largest remainder first, while whole replicas fit.
    left = budget - sum(out[r] * gpus[r] for r in out)
    for r in sorted(targets, key=lambda r: -(extra[r] / max(total_extra, 1))):
        while out[r] < targets[r] and gpus[r] <= left:
            out[r] += 1
            left -= gpus[r]
    return out, f"GPU budget {budget}: targets needed {used} GPUs, scaled down proportionally"
