"""The HPA's tolerance: ask for a rise the HPA will act on.

The HPA ignores a change while |metric / (target x current) - 1| <= tolerance (Kubernetes' default
0.1, settable per HPA only where HPAConfigurableTolerance is on: alpha in 1.33-1.34, beta from 1.35).
pdscaler answers its target as an AverageValue metric of target 1, so at 10 or more replicas a +1 is
swallowed and the replica never starts. Where the graph's ScaledObjects run with a tolerance
(`hpa_tolerance`, 0 as the shipped ones), a needed rise is rounded up to the smallest count the HPA
acts on: floor(current x (1 + tolerance)) + 1. Falls are left as they are (the HPA applies the larger
ones; rounding a fall down would lower beyond the need). `current` is the scale subresource's
replicas when the cluster is read, else the last target.
"""

from __future__ import annotations

import math

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule


def smallest_rise(current: int, tolerance: float) -> int:
    """The least replica count above `current` that the HPA's tolerance lets through."""
    return math.floor(current * (1 + tolerance) + 1e-9) + 1


class HpaTolerance:
    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def apply(self, ctx: RoleContext, t: Target) -> None:
        if not self.tolerance:
            return
        desired = ctx.role_signals.get("desired_replicas")
        current = int(desired) if desired is not None else ctx.current
        if current <= 0 or t.value <= current or t.value / current - 1 > self.tolerance:
            return
        n = smallest_rise(current, self.tolerance)
        t.bind(n, Rule.HPA_TOLERANCE, f"a rise to {t.value} from {current} is within the HPA's {self.tolerance:g} "
                                      f"tolerance: asking for {n}, the smallest rise it acts on")
