"""Online correction of the capacity profile from observed latency, bounded and smoothed, both ways.

A profile says "one replica sustains C tokens/s at the latency target". It may be wrong either way:

- down: when a role runs at or under the capacity the (corrected) profile gives it, and its observed
  p99 latency (TTFT net of the prompts' own prefill for prefill, ITL for decode) still exceeds the
  target, the profile overstates the hardware (a slower GPU, longer prompts than profiled, noisy
  neighbours): the factor applied to C moves towards target / observed. While latency is within target
  it recovers slowly towards 1.
- up: when the same replicas served MORE than the corrected capacity for a whole rate window and the
  p99 latency stayed within target, they have shown they can (a profile measured at a stricter SLO, the
  config's flat defaults on faster hardware): the factor moves towards what was served, load x
  factor. Only shown capacity counts: the ready replicas must have stood unchanged over the window
  (else the window's rate was served by more of them than the last count says), and the factor never
  exceeds max_factor.

Unlike Dynamo's Planner, which applies the raw observed/expected ratio of one interval (and jitters
with it):

- the factor is an exponential average with a time half-life (default 10 min down, one minute up: a
  shown capacity is a fact, a slow reading may be one bad interval), so one bad interval moves it a
  little, a persistent gap fully;
- it is bounded to [min_factor, max_factor]: a wild reading cannot halve capacity twice;
- a fall only learns when the load is high enough to say something (>= min_load of capacity) and not
  above capacity (a breach then is under-provisioning, the safety net's business, not a bad profile).
"""

from __future__ import annotations

import math


class CapacityCorrection:
    def __init__(self, min_factor: float = 0.5, halflife_s: float = 600.0, min_load: float = 0.5,
                 deadband: float = 0.1, recovery: float = 1.05, max_factor: float = 2.0,
                 rise_halflife_s: float = 60.0, shown_over_s: float = 60.0) -> None:
        self.min_factor, self.max_factor = min_factor, max_factor
        self.halflife_s, self.rise_halflife_s = halflife_s, rise_halflife_s
        self.shown_over_s = shown_over_s
        self.min_load = min_load
        self.deadband = deadband
        self.recovery = recovery
        self.factor = 1.0
        self._at: float | None = None
        self._ready: float | None = None
        self._ready_since: float | None = None

    def update(self, now: float, observed_s: float | None, target_s: float, load: float | None,
               ready: float | None = None) -> None:
        """One observation: p99 latency `observed_s` against `target_s`, at `load` = demand / the
        capacity of the `ready` replicas under the current factor."""
        last, self._at = self._at, now
        if ready != self._ready:
            self._ready, self._ready_since = ready, now
        if observed_s is None or load is None or not math.isfinite(observed_s) or observed_s <= 0:
            return
        halflife = self.halflife_s
        if load > 1.0:
            steady = ready is not None and now - self._ready_since >= self.shown_over_s
            if not (steady and observed_s <= target_s):
                return  # a breach above capacity is under-provisioning, not a wrong profile
            goal = self.factor * load
            halflife = self.rise_halflife_s
        elif load < self.min_load:
            return
        elif observed_s > target_s * (1.0 + self.deadband):
            goal = self.factor * target_s / observed_s
        elif observed_s <= target_s and self.factor < 1.0:
            goal = min(1.0, self.factor * self.recovery)  # back towards the profile; above it only when shown
        else:
            return
        goal = min(self.max_factor, max(self.min_factor, goal))
        dt = 0.0 if last is None else max(0.0, now - last)
        weight = 1.0 - 0.5 ** (dt / halflife) if dt > 0 else 0.0
        self.factor = min(self.max_factor, max(self.min_factor, self.factor + weight * (goal - self.factor)))
