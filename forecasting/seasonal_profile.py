"""A smoothed seasonal profile: the typical value at each time of day (or week), plus a correction.

Where the seasonal naive (``seasonal_naive``) copies ONE past season, noise included, this averages
the seasons seen: each slot of the period (default 5 min of a day) keeps an exponentially weighted
mean over past periods (``season_weight`` per period: 0.3 = about three days of memory). A forecast
is ``profile(T) + correction``, the correction (``correction.LevelCorrection``) being the recent
residuals against the profile, fast part fading with the horizon: at minutes it follows today's
level, at hours it reverts towards the typical day shifted by the persistent offset. That reversion
is what persistence forecasts (last value, EWMA, Holt) lack at multi-hour horizons.

A slot enters the profile when it is complete (the next slot starts), so the profile never holds
today's partial data. Until the profile has data around T (less than a period of history), the
forecast is an EWMA level. Used by ``auto`` as the ``seasonal-profile`` candidate.
"""

from __future__ import annotations

import math

import numpy as np

from forecasting.correction import Ewma, LevelCorrection
from forecasting.transform import LOG1P

DAY_S = 86400.0


class SeasonalProfile:
    """Point model (log1p space): EWMA-over-periods slot profile with level correction."""

    space = LOG1P

    def __init__(self, step_s: float, *, period_s: float = DAY_S, slot_s: float = 300.0, season_weight: float = 0.3,
                 fast_halflife_s: float = 900.0, slow_halflife_s: float = 6 * 3600.0, decay_s: float = 3600.0,
                 level_halflife_s: float = 900.0, name: str = "seasonal-profile") -> None:
        self.name = name
        self.step = float(step_s)
        self.slot = max(float(slot_s), self.step)
        self.period = float(period_s)
        self.n_slots = max(2, int(round(self.period / self.slot)))
        self.slot = self.period / self.n_slots  # a whole number of slots per period
        self.weight = float(season_weight)
        self._prof = np.zeros(self.n_slots)
        self._has = np.zeros(self.n_slots, dtype=bool)
        self.corr = LevelCorrection(step_s, fast_halflife_s, slow_halflife_s, decay_s)
        self.level = Ewma(step_s, level_halflife_s)
        self.reset()

    def reset(self) -> None:
        self._prof.fill(0.0)
        self._has.fill(False)
        self.corr.reset()
        self.level.reset()
        self._j: int | None = None  # the absolute slot being accumulated
        self._sum = 0.0
        self._n = 0
        self.k: int | None = None
        self.t = math.nan

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def _fold(self) -> None:
        """The accumulated slot is complete: fold its mean into the profile."""
        if self._j is None or not self._n:
            return
        p = self._j % self.n_slots
        m = self._sum / self._n
        if self._has[p]:
            self._prof[p] += self.weight * (m - self._prof[p])
        else:
            self._prof[p], self._has[p] = m, True

    def _value(self, t: float) -> float:
        x = t / self.slot - 0.5
        j = math.floor(x)
        f = x - j
        p0, p1 = j % self.n_slots, (j + 1) % self.n_slots
        h0, h1 = self._has[p0], self._has[p1]
        if h0 and h1:
            return float(self._prof[p0] + f * (self._prof[p1] - self._prof[p0]))
        if h0:
            return float(self._prof[p0])
        return float(self._prof[p1]) if h1 else math.nan

    def _values(self, t: np.ndarray) -> np.ndarray:
        x = np.asarray(t, float) / self.slot - 0.5
        j = np.floor(x)
        f = x - j
        p0 = j.astype(np.int64) % self.n_slots
        p1 = (p0 + 1) % self.n_slots
        h0, h1 = self._has[p0], self._has[p1]
        v0, v1 = self._prof[p0], self._prof[p1]
        out = v0 + f * (v1 - v0)
        if not (h0.all() and h1.all()):
            out = np.where(h0 & h1, out, np.where(h0, v0, np.where(h1, v1, np.nan)))
        return out

    def observe(self, k: int, t: float, z: float) -> None:
        ref = self._value(t)
        if ref == ref:
            self.corr.update(k, z - ref)
        j = math.floor(t / self.slot)
        if j != self._j:
            self._fold()
            self._j, self._sum, self._n = j, 0.0, 0
        self._sum += z
        self._n += 1
        self.level.update(k, z)
        self.k, self.t = k, t

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.k is None:
            return np.zeros(len(k))
        ref = self._values(t)
        ok = np.isfinite(ref)
        leads = np.maximum(np.asarray(k) - self.k, 1)
        if ok.all():
            return ref + self.corr.at(leads)
        return np.where(ok, np.where(ok, ref, 0.0) + self.corr.at(leads), self.level.value)
