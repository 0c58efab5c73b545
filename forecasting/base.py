"""The forecasting model interface: fit on history, update online, predict quantiles at horizons.

Time is explicit everywhere (seconds, the caller's clock): a model never reads a clock. Series may
be irregular, have gaps, NaN (missing) and zero stretches; models must accept all of these.

    model.fit(t, y)                       # history; may be called again to refit from scratch
    model.update(t_new, y_new)            # one new point, in time order (NaN = missing)
    fc = model.predict(now, horizons=[120, 300], quantiles=(0.5, 0.9))
    fc.quantile(0.9)                      # array, one value per horizon, for times now + horizons
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9)


@dataclass(frozen=True)
class Forecast:
    """Quantile forecasts of one series for the times `at` (= now + horizons)."""

    now: float
    horizons: np.ndarray  # seconds ahead, shape (H,)
    values: dict[float, np.ndarray] = field(default_factory=dict)  # quantile -> shape (H,), >= 0

    @property
    def at(self) -> np.ndarray:
        return self.now + self.horizons

    def quantile(self, q: float) -> np.ndarray:
        try:
            return self.values[q]
        except KeyError:
            raise KeyError(f"quantile {q} not forecast; have {sorted(self.values)}") from None

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)


@runtime_checkable
class Forecaster(Protocol):
    """What every model implements. Implementations live one per module in forecasting/."""

    name: str

    def fit(self, t: np.ndarray, y: np.ndarray) -> None:
        """Learn from history (timestamps in seconds, ascending; values may hold NaN)."""

    def update(self, t: float, y: float) -> None:
        """Absorb one new point, later than every point seen so far (NaN = missing)."""

    def predict(self, now: float, horizons: Sequence[float], quantiles: Sequence[float] = DEFAULT_QUANTILES) -> Forecast:
        """Quantile forecasts for now + each horizon (seconds). Never negative, never NaN."""
