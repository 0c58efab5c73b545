"""Seasonal naive (weekly, falling back to daily, falling back to a level) with a level correction.

The forecast for time T is what happened one season earlier, at T - P (T - mP when the horizon is
longer than the season), corrected by how far the recent bins sat from THEIR values one season
earlier (``correction.LevelCorrection``: "today runs 15 % above last week"), in log1p space.

- Values one season back are read from a ring of SLOTS (``slot_s``, default 5 min: each slot the mean
  of its bins), linearly interpolated between slot centres. A slot smooths scrape noise and bounds
  memory: a week of 5-min slots is 2016 numbers per series, whatever the grid step.
- Periods are tried in order (default: a week, then a day). A period is used for a time T only when
  the slots around T - P hold data, so a history shorter than a week uses the daily season and one
  shorter than a day (or a gap a season ago) uses the last resort: an EWMA level of the recent bins.
- Each period has its own correction, fed with the residuals against that period's reference.
"""

from __future__ import annotations

import math

import numpy as np

from forecasting.correction import Ewma, LevelCorrection
from forecasting.online import OnlineForecaster
from forecasting.transform import LOG1P

DAY_S = 86400.0
_NONE = -(2**62)  # an empty slot
WEEK_S = 7 * DAY_S


class SeasonalStore:
    """Slot means of the log1p series over the last `span_s` (a ring indexed by absolute slot)."""

    def __init__(self, slot_s: float, span_s: float) -> None:
        self.slot = float(slot_s)
        self.size = int(math.ceil(span_s / self.slot)) + 4
        self._n = np.zeros(self.size, dtype=np.int32)
        self._mean = np.zeros(self.size)
        self._stamp = np.full(self.size, _NONE, dtype=np.int64)
        self.k: int | None = None  # last bin added (several views may share one store)

    def reset(self) -> None:
        self._n.fill(0)
        self._stamp.fill(_NONE)
        self.k = None

    def add(self, k: int, t: float, z: float) -> None:
        if self.k is not None and k <= self.k:
            return
        self.k = k
        j = math.floor(t / self.slot)
        i = j % self.size
        if self._stamp[i] != j:
            self._stamp[i], self._mean[i], self._n[i] = j, 0.0, 0
        n = int(self._n[i]) + 1
        self._n[i] = n
        self._mean[i] += (z - self._mean[i]) / n

    def _slot(self, j: int) -> float:
        i = j % self.size
        return float(self._mean[i]) if self._stamp[i] == j else math.nan

    def value(self, t: float) -> float:
        """The slot profile at time t, linear between slot centres (NaN when neither neighbouring
        slot has data; the one that has, when only one has)."""
        x = t / self.slot - 0.5
        j = math.floor(x)
        f = x - j
        v0, v1 = self._slot(j), self._slot(j + 1)
        if v0 == v0 and v1 == v1:
            return v0 + f * (v1 - v0)
        return v0 if v0 == v0 else v1

    def values(self, t: np.ndarray) -> np.ndarray:
        """`value` for an array of times."""
        x = np.asarray(t, float) / self.slot - 0.5
        j = np.floor(x)
        f = x - j
        j = j.astype(np.int64)
        i0 = j % self.size
        i1 = (j + 1) % self.size
        ok0 = self._stamp[i0] == j
        ok1 = self._stamp[i1] == j + 1
        v0, v1 = self._mean[i0], self._mean[i1]
        out = v0 + f * (v1 - v0)
        if not (ok0.all() and ok1.all()):
            out = np.where(ok0 & ok1, out, np.where(ok0, v0, np.where(ok1, v1, np.nan)))
        return out


class SeasonalNaive:
    """Point model (log1p space): seasonal naive over `periods` in order, level correction, EWMA fallback."""

    space = LOG1P

    def __init__(self, step_s: float, *, periods: tuple[float, ...] = (WEEK_S, DAY_S), slot_s: float = 300.0,
                 fast_halflife_s: float = 900.0, slow_halflife_s: float = 6 * 3600.0, decay_s: float = 3600.0,
                 level_halflife_s: float = 900.0, store: SeasonalStore | None = None,
                 name: str = "seasonal-naive") -> None:
        self.name = name
        self.step = float(step_s)
        self.periods = tuple(float(p) for p in periods)
        if not self.periods:
            raise ValueError("periods must not be empty")
        self.store = store or SeasonalStore(max(float(slot_s), self.step), max(self.periods))
        self._own_store = store is None
        self.corr = [LevelCorrection(step_s, fast_halflife_s, slow_halflife_s, decay_s) for _ in self.periods]
        self.level = Ewma(step_s, level_halflife_s)
        self.k: int | None = None
        self.t: float = math.nan

    def reset(self) -> None:
        self.store.reset()
        for c in self.corr:
            c.reset()
        self.level.reset()
        self.k, self.t = None, math.nan

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        # Residuals against each season BEFORE this bin enters the store.
        for p, c in zip(self.periods, self.corr):
            ref = self.store.value(t - p)
            if ref == ref:
                c.update(k, z - ref)
        self.store.add(k, t, z)
        self.level.update(k, z)
        self.k, self.t = k, t

    def reference(self, t: np.ndarray, period_index: int) -> np.ndarray:
        """Season `period_index`'s value for times t (NaN where the store has none)."""
        p = self.periods[period_index]
        m = np.maximum(1.0, np.ceil((np.asarray(t, float) - self.t) / p))
        return self.store.values(t - m * p)

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.k is None:
            return np.zeros(len(k))
        leads = np.maximum(np.asarray(k) - self.k, 1)
        t = np.asarray(t, float)
        out = None
        todo = None  # positions still without a seasonal value
        for i in range(len(self.periods)):  # the first period with data wins
            if todo is None:
                ref = self.reference(t, i)
                ok = np.isfinite(ref)
                out = np.where(ok, ref + self.corr[i].at(leads), np.nan)
            else:
                ref = self.reference(t[todo], i)
                ok = np.isfinite(ref)
                out[todo[ok]] = ref[ok] + self.corr[i].at(leads[todo[ok]])
            if ok.all():
                return out
            todo = np.flatnonzero(~np.isfinite(out))
        out[todo] = self.level.value
        return out


class SeasonalNaiveForecaster(OnlineForecaster):
    """`seasonal-naive`: weekly seasonal naive (daily, then level, as fallbacks) with level correction."""

    name = "seasonal-naive"

    def __init__(self, step_s: float, seed: int = 0, *, periods: tuple[float, ...] = (WEEK_S, DAY_S),
                 slot_s: float = 300.0, fast_halflife_s: float = 900.0, slow_halflife_s: float = 6 * 3600.0,
                 decay_s: float = 3600.0, level_halflife_s: float = 900.0, max_drop: float | None = 1.0,
                 **chassis) -> None:
        model = SeasonalNaive(step_s, periods=tuple(periods), slot_s=slot_s, fast_halflife_s=fast_halflife_s,
                              slow_halflife_s=slow_halflife_s, decay_s=decay_s, level_halflife_s=level_halflife_s)
        super().__init__(model, step_s, seed, max_drop=max_drop, **chassis)
