"""Scale-up and scale-down stabilisation windows, with the HPA's semantics.

Like Kubernetes' stabilizeRecommendationWithBehaviors: the target may rise only to the lowest
recommendation seen within the scale-up window, and fall only to the highest one seen within the
scale-down window. A burst must persist for the scale-up window to be acted on; a lull must persist
for the scale-down window. Time is passed in; the history is the caller's (one per role).

A forecast that has earned trust shortens the scale-down window: the HPA's 300 s hold guards
against releasing a replica that is needed again before a new one could start, and a calibrated
forecast (need.py: the headroom has settled on its own evidence) says that directly. While it does,
a fall waits only `forecast_scale_down` (60 s, Knative's stable window: the noise of a minute's
rates), and goes no lower than the most the forecast needs until a replica released now could be
back (the start-up time plus the decision window).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from scaler.policy.context import RoleContext, Target
from scaler.policy.floors import lead_time_floor
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import Stabilisation as StabilisationConfig


class Stabiliser:
    def __init__(self, up_window: float, down_window: float) -> None:
        self.up_window, self.down_window = up_window, down_window
        self._history: deque[tuple[float, int]] = deque()

    def apply(self, now: float, recommendation: int, current: int,
              down_window: float | None = None) -> tuple[int, str | None]:
        """The stabilised target, and a note when stabilisation changed the recommendation
        (`down_window`: a shorter scale-down window for this call)."""
        self._history.append((now, recommendation))
        horizon = now - max(self.up_window, self.down_window)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        down_w = self.down_window if down_window is None else min(down_window, self.down_window)
        up = min(r for t, r in self._history if t >= now - self.up_window)
        down = max(r for t, r in self._history if t >= now - down_w)
        target = min(max(current, up), down)
        if target == recommendation:
            return target, None
        if recommendation > current:
            return target, f"scale-up stabilised: lowest recommendation in the last {self.up_window:g}s is {up}"
        return target, f"scale-down stabilised: highest recommendation in the last {down_w:g}s is {down}"


class Stabilisation:
    """The rule: the role's target through its Stabiliser (its recommendation history is this rule's
    state). An emergency step of the safety net is remembered but not delayed."""

    def __init__(self, config: "StabilisationConfig") -> None:
        self.stabiliser = Stabiliser(config.scale_up, config.scale_down)
        self.forecast_window = config.forecast_scale_down

    def remember(self, at: float, replicas: int) -> None:
        """Enter `replicas` as recommended at `at` (adopted replicas: a fall waits for the window)."""
        self.stabiliser.apply(at, replicas, replicas)

    def apply(self, ctx: RoleContext, t: Target) -> None:
        trusted = self.forecast_window is not None and t.forecast_settled and t.forecast_needs is not None
        v, note = self.stabiliser.apply(ctx.now, t.value, ctx.current, self.forecast_window if trusted else None)
        if trusted and v < ctx.current:  # a fall: no lower than the forecast until a replica could be back
            back = ctx.warm_s + ctx.graph.decision_window
            ahead = t.forecast_needs[(ctx.horizons <= back + 1e-9) & np.isfinite(t.forecast_needs)]
            keep = lead_time_floor(ahead.tolist())
            if keep > v:
                v = min(ctx.current, keep)
                note = f"the forecast needs {keep} within {back:.0f}s (start-up + decision window)"
        if note and not t.emergency:
            t.bind(v, Rule.STABILISATION, note)
