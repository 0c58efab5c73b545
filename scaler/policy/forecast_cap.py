"""The forecast cap: a forecast far beyond anything recently observed is an extrapolation artefact.

The predicted replicas are capped at `max_growth` x the highest need of the ARRIVING demand observed
within `growth_window` (at least one replica's worth). The cap's reference excludes a backlog being
drained: it is not traffic a forecast should extrapolate from. The window is this rule's state, one
per role.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ForecastCap:
    def __init__(self, max_growth: float | None, window_s: float) -> None:
        self.max_growth, self.window_s = max_growth, window_s
        self._observed: deque[tuple[float, float]] = deque()  # (t, arriving need)

    def cap(self, now: float, arriving_need: float) -> float | None:
        """Record the need of the demand arriving now; the cap in force (None when disabled)."""
        self._observed.append((now, arriving_need))
        while self._observed and self._observed[0][0] < now - self.window_s:
            self._observed.popleft()
        if self.max_growth is None:
            return None
        return self.max_growth * max(1.0, max(n for _, n in self._observed))

    def apply(self, now: float, arriving_need: float, needs: np.ndarray) -> tuple[np.ndarray, float | None]:
        """`needs` (predicted replicas per horizon) capped; the cap when it bound, else None."""
        cap = self.cap(now, arriving_need)
        if cap is None or not np.nanmax(needs, initial=0.0) > cap:
            return needs, None
        return np.minimum(needs, cap), cap

    def note(self, cap: float) -> str:
        return (f"forecast capped at {cap:.2f} = {self.max_growth:g} x the highest observed "
                f"need of the last {self.window_s:.0f}s")
