"""Damped Holt linear trend (and its no-trend special case, an EWMA level) on the log1p series.

State: a level and a per-step trend, updated at each closed bin (``n`` steps after the previous one):

    predicted level  L' = L + b * (phi + phi^2 + ... + phi^n),   b' = b * phi^n
    level            L  = L' + a_n * (z - L'),   a_n = 1 - (1 - alpha)^n  (a gap of n steps weighs
                                                                          like n missed updates)
    trend            b  = b' + beta * ((L - L_old) / n - b')
    forecast h ahead      L + b * (phi + ... + phi^h)    (the trend's total reach is bounded)

Smoothing is set in seconds, so the same defaults fit a 15 s and a 60 s grid:
``alpha = 1 - 0.5^(step / level_halflife_s)``, likewise beta from ``trend_halflife_s`` and the per-step
damping ``phi = 0.5^(step / damping_halflife_s)``. In log space a trend is a growth RATE, and
damping keeps a burst's slope from being extrapolated for hours.
"""

from __future__ import annotations

import numpy as np

from forecasting.online import OnlineForecaster
from forecasting.transform import LOG1P


class Holt:
    """Point model: damped Holt (trend=True) or EWMA level (trend=False), log1p space."""

    space = LOG1P

    def __init__(self, step_s: float, *, level_halflife_s: float = 180.0, trend: bool = True,
                 trend_halflife_s: float = 1800.0, damping_halflife_s: float = 900.0, name: str = "holt") -> None:
        self.name = name
        self.step = float(step_s)
        self.alpha = 1.0 - 0.5 ** (self.step / level_halflife_s)
        self.trend = bool(trend)
        self.beta = 1.0 - 0.5 ** (self.step / trend_halflife_s)
        self.phi = 0.5 ** (self.step / damping_halflife_s)
        self.reset()

    def reset(self) -> None:
        self.level = 0.0
        self.slope = 0.0
        self.k: int | None = None

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def _reach(self, n):
        """phi + phi^2 + ... + phi^n (n may be an array)."""
        phi = self.phi
        return phi * (1.0 - phi ** n) / (1.0 - phi) if phi < 1.0 else n * 1.0

    def observe(self, k: int, t: float, z: float) -> None:
        if self.k is None:
            self.level, self.slope, self.k = z, 0.0, k
            return
        n = max(1, k - self.k)
        a = self.alpha if n == 1 else 1.0 - (1.0 - self.alpha) ** n
        if self.trend:
            pred = self.level + self.slope * self._reach(n)
            b_pred = self.slope * self.phi ** n
            level = pred + a * (z - pred)
            self.slope = b_pred + self.beta * ((level - self.level) / n - b_pred)
            self.level = level
        else:
            self.level += a * (z - self.level)
        self.k = k

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.k is None:
            return np.zeros(len(k))
        if not self.trend or self.slope == 0.0:
            return np.full(len(k), self.level)
        h = np.maximum(np.asarray(k) - self.k, 1)
        return self.level + self.slope * self._reach(h)


class HoltForecaster(OnlineForecaster):
    """`holt`: damped Holt trend on log1p demand, quantiles from its own recent errors."""

    name = "holt"

    def __init__(self, step_s: float, seed: int = 0, *, level_halflife_s: float = 180.0, trend: bool = True,
                 trend_halflife_s: float = 1800.0, damping_halflife_s: float = 900.0,
                 max_drop: float | None = 1.0, **chassis) -> None:
        model = Holt(step_s, level_halflife_s=level_halflife_s, trend=trend, trend_halflife_s=trend_halflife_s,
                     damping_halflife_s=damping_halflife_s)
        super().__init__(model, step_s, seed, max_drop=max_drop, **chassis)
