"""Scale-up and scale-down stabilisation windows, with the HPA's semantics.

Like Kubernetes' stabilizeRecommendationWithBehaviors: the target may rise only to the lowest
recommendation seen within the scale-up window, and fall only to the highest one seen within the
scale-down window. A burst must persist for the scale-up window to be acted on; a lull must persist
for the scale-down window. Time is passed in; the history is the caller's (one per role).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import Stabilisation as StabilisationConfig


class Stabiliser:
    def __init__(self, up_window: float, down_window: float) -> None:
        self.up_window, self.down_window = up_window, down_window
        self._history: deque[tuple[float, int]] = deque()

    def apply(self, now: float, recommendation: int, current: int) -> tuple[int, str | None]:
        """The stabilised target, and a note when stabilisation changed the recommendation."""
        self._history.append((now, recommendation))
        horizon = now - max(self.up_window, self.down_window)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        up = min(r for t, r in self._history if t >= now - self.up_window)
        down = max(r for t, r in self._history if t >= now - self.down_window)
        target = min(max(current, up), down)
        if target == recommendation:
            return target, None
        if recommendation > current:
            return target, f"scale-up stabilised: lowest recommendation in the last {self.up_window:g}s is {up}"
        return target, f"scale-down stabilised: highest recommendation in the last {self.down_window:g}s is {down}"


class Stabilisation:
    """The rule: the role's target through its Stabiliser (its recommendation history is this rule's
    state). An emergency step of the safety net is remembered but not delayed."""

    def __init__(self, config: "StabilisationConfig") -> None:
        self.stabiliser = Stabiliser(config.scale_up, config.scale_down)

    def remember(self, at: float, replicas: int) -> None:
        """Enter `replicas` as recommended at `at` (adopted replicas: a fall waits for the window)."""
        self.stabiliser.apply(at, replicas, replicas)

    def apply(self, ctx: RoleContext, t: Target) -> None:
        v, note = self.stabiliser.apply(ctx.now, t.value, ctx.current)
        if note and not t.emergency:
            t.bind(v, Rule.STABILISATION, note)
