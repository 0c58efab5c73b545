"""The GPU budget shared by a graph's roles.

When the roles' targets need more GPUs than the budget, every role above its floor gives up
capacity in proportion to what it asked for (Dynamo's Planner scales both pools down
proportionally), never below its floor; the result never exceeds the budget unless the floors do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scaler.policy.context import Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import GraphConfig


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


def apply_budget(graph: "GraphConfig", targets: dict[str, Target]) -> None:
    """The serving roles within the graph's GPU budget. Floors are min_replicas, and a held role's
    floor is the target it holds: the budget trims the live roles, not a role held for want of data,
    unless the held targets alone exceed the budget."""
    if graph.gpu_budget is None:
        return
    roles = graph.roles
    serving = {r: t for r, t in targets.items() if t.kind != "warm"}
    gpus = {r: roles[r].gpus_per_replica for r in serving}
    floors = {r: t.value if t.held else roles[r].min_replicas for r, t in serving.items()}
    if sum(floors[r] * gpus[r] for r in serving) > graph.gpu_budget:
        # The held targets alone exceed the budget (e.g. adopted replicas above it): the GPUs are not
        # there, so the budget binds on every role down to its min_replicas.
        floors = {r: roles[r].min_replicas for r in serving}
    fitted, note = fit_budget({r: t.value for r, t in serving.items()}, gpus, floors, graph.gpu_budget)
    if note:
        for r, t in serving.items():
            t.bind(fitted[r], Rule.GPU_BUDGET, note)
