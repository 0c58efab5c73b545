"""Online correction of the capacity profile from observed latency, bounded and smoothed.

A profile says "one replica sustains C tokens/s at the latency target". When a role runs at or
under the capacity the (corrected) profile gives it, and its observed p99 latency (TTFT for prefill,
ITL for decode) still exceeds the target, the profile overstates the hardware (a slower GPU, longer
prompts than profiled, noisy neighbours): the factor applied to C moves towards target / observed.
While latency is within target it recovers slowly towards 1. Unlike Dynamo's Planner, which
applies the raw observed/expected ratio of one interval (and jitters with it):

- the factor is an exponential average with a time half-life (default 10 min), so one bad interval
  moves it a little, a persistent gap fully;
- it is bounded to [min_factor, 1]: a profile is never trusted beyond what it claims, and a wild
  reading cannot halve capacity twice;
- it only learns when the load is high enough to say something (>= min_load of capacity) and not
  above capacity (a breach then is under-provisioning, the safety net's business, not a bad profile).
"""

from __future__ import annotations

import math


class CapacityCorrection:
    def __init__(self, min_factor: float = 0.5, halflife_s: float = 600.0, min_load: float = 0.5,
                 deadband: float = 0.1, recovery: float = 1.05) -> None:
        self.min_factor = min_factor
        self.halflife_s = halflife_s
        self.min_load = min_load
        self.deadband = deadband
        self.recovery = recovery
        self.factor = 1.0
        self._at: float | None = None

    def update(self, now: float, observed_s: float | None, target_s: float, load: float | None) -> None:
        """One observation: p99 latency `observed_s` against `target_s`, at `load` = demand / the
        capacity of the ready replicas under the current factor."""
        last, self._at = self._at, now
        if observed_s is None or load is None or not math.isfinite(observed_s) or observed_s <= 0:
            return
        if load < self.min_load or load > 1.0:
            return
        if observed_s > target_s * (1.0 + self.deadband):
            goal = self.factor * target_s / observed_s
        elif observed_s <= target_s:
            goal = self.factor * self.recovery
        else:
            return
        goal = min(1.0, max(self.min_factor, goal))
        dt = 0.0 if last is None else max(0.0, now - last)
        weight = 1.0 - 0.5 ** (dt / self.halflife_s) if dt > 0 else 0.0
        self.factor = min(1.0, max(self.min_factor, self.factor + weight * (goal - self.factor)))
