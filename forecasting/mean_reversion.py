"""Mean reversion: the recent level, decaying towards a long-run mean as the horizon grows.

Demand that wanders around a stable mean (day-to-day level swings that do not persist) is better
forecast hours ahead by something between the current level and the long-run mean than by either.
On log1p demand:

    level  = EWMA of the recent bins (half-life ``level_halflife_s``, default 5 min)
    mean   = EWMA of the bins over ``mean_halflife_s`` (default a day)
    forecast h ahead = mean + (level - mean) * 0.5 ** (h / reversion_halflife_s)

This is an AR(1) around a slowly moving mean, what pmdarima's ARIMA often settles on (d = 0) for
such series, at O(1) per bin. ``auto`` runs it at two reversion speeds (``revert-1h``, ``revert-6h``)
and weighs them by their backtest errors like its other candidates.
"""

from __future__ import annotations

import numpy as np

from forecasting.correction import Ewma
from forecasting.transform import LOG1P


class MeanReversion:
    """Point model (log1p space): EWMA level reverting to an EWMA long-run mean."""

    space = LOG1P

    def __init__(self, step_s: float, *, reversion_halflife_s: float = 3600.0, level_halflife_s: float = 300.0,
                 mean_halflife_s: float = 86400.0, name: str = "mean-reversion") -> None:
        self.name = name
        self.step = float(step_s)
        self.reversion_steps = float(reversion_halflife_s) / self.step
        self.level = Ewma(step_s, level_halflife_s)
        self.mean = Ewma(step_s, mean_halflife_s)
        self.k: int | None = None

    def reset(self) -> None:
        self.level.reset()
        self.mean.reset()
        self.k = None

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        self.level.update(k, z)
        self.mean.update(k, z)
        self.k = k

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.k is None:
            return np.zeros(len(k))
        h = np.maximum(np.asarray(k) - self.k, 1)
        m = self.mean.value
        return m + (self.level.value - m) * 0.5 ** (h / self.reversion_steps)
