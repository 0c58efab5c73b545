"""Window means on raw demand: the plain mean of the last ``window_s`` of bins, and the last value.

A log-space smoother (``holt``'s EWMAs) averages log1p values, i.e. takes a geometric-like mean:
in a bursty series (requests arriving in bursts separated by idle bins) it treats the bursts as
noise and forecasts well below the demand the bursts add up to. The raw-space mean of the last few
minutes counts every request once, which is what a capacity forecast for the next minutes needs.
``auto`` runs it as the ``mean-5m`` / ``mean-10m`` candidates, next to ``last`` (the last bin's
value, persistence, right for steady series whose level drifts).

Both models receive log1p values (the space of ``auto``) and return log1p values. O(1) per bin.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from forecasting.transform import LOG1P


class WindowMean:
    """Point model (log1p in and out): log1p of the raw mean of the bins in the last ``window_s``."""

    space = LOG1P

    def __init__(self, step_s: float, *, window_s: float = 600.0, name: str = "mean-10m") -> None:
        self.name = name
        self.step = float(step_s)
        self.n = max(1, int(round(float(window_s) / self.step)))  # window length in bins
        self.warmup_s = (self.n - 1) * self.step  # a full window: scored from then on (auto)
        self.reset()

    def reset(self) -> None:
        self._buf: deque[tuple[int, float]] = deque()
        self._sum = 0.0
        self._adds = 0
        self.k: int | None = None
        self.mean = 0.0
        self._z = 0.0

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        y = math.expm1(min(z, 700.0))
        buf = self._buf
        buf.append((k, y))
        self._sum += y
        while buf[0][0] <= k - self.n:
            self._sum -= buf.popleft()[1]
        self._adds += 1
        if self._adds >= 1024:  # re-add now and then: no drift from running-sum rounding
            self._sum, self._adds = math.fsum(v for _, v in buf), 0
        self.mean = max(self._sum, 0.0) / len(buf)
        self._z = math.log1p(self.mean)
        self.k = k

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.full(len(k), self._z)


class LastValue:
    """Point model (log1p): the last observed bin, held at every horizon."""

    space = LOG1P

    def __init__(self, step_s: float, *, name: str = "last") -> None:
        self.name = name
        self.step = float(step_s)
        self.warmup_s = 0.0
        self.reset()

    def reset(self) -> None:
        self._z = 0.0
        self.k: int | None = None

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        self._z, self.k = z, k

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.full(len(k), self._z)


class ArMean:
    """Point model (log1p in and out): the raw mean of the last ``window_s`` plus the last bin's
    deviation from it, scaled per lead by an online regression coefficient.

        m_t = raw mean of the bins in the last window,  d_t = y_t - m_t
        forecast L bins ahead = m_t + beta_L * d_t,  beta_L = sum(d_o * (y_{o+L} - m_o)) / sum(d_o^2)

    over past origins o (exponentially weighted, half-life ``memory`` origins), clipped to [0, 1]:
    an AR(1)-like persistence of the deviation from the recent mean, fitted per lead from every
    settled pair. A bursty series whose bursts do not persist gets beta ~ 0 (the window mean); a
    steady series whose level drifts gets beta ~ 1 (the last value). One scalar per lead is
    learned from every bin, so it is usable after tens of bins, where choosing between candidate
    models by their backtest errors needs far more. Leads beyond ``max_lead_s`` use the longest
    fitted one. O(leads) per bin.
    """

    space = LOG1P

    def __init__(self, step_s: float, *, window_s: float = 300.0, min_bins: int = 10, memory: float = 400.0,
                 max_lead_s: float = 3600.0, pool: float = 3.0, name: str = "ar-mean") -> None:
        self.name = name
        self.step = float(step_s)
        # The window: window_s, and at least min_bins bins (a mean of fewer coarse bins is too noisy).
        self.n = max(int(min_bins), 2, int(round(float(window_s) / self.step)))
        self.warmup_s = (self.n - 1) * self.step
        self.keep = 0.5 ** (1.0 / float(memory))
        self.lmax = max(1, min(256, int(math.ceil(float(max_lead_s) / self.step))))
        self._lags = np.arange(1, self.lmax + 1)
        self.pool = float(pool)
        self._lo = np.clip(np.ceil(self._lags / self.pool).astype(int), 1, self.lmax) - 1
        self._hi = np.clip(np.floor(self._lags * self.pool).astype(int), 1, self.lmax)
        self._win = WindowMean(step_s, window_s=self.n * self.step, name="_window")
        self.reset()

    def reset(self) -> None:
        self._win.reset()
        r = self.lmax + 1
        self._ko = np.full(r, -(2**62), dtype=np.int64)  # origin bin held in each ring slot
        self._m = np.zeros(r)
        self._d = np.zeros(r)
        self._sxy = np.zeros(self.lmax)
        self._sxx = np.zeros(self.lmax)
        self._beta_cache = np.zeros(self.lmax)
        self._stale = False
        self._mean = 0.0
        self._dev = 0.0
        self.k: int | None = None

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        y = math.expm1(min(z, 700.0))
        r = self.lmax + 1
        o = k - self._lags
        slot = o % r
        hit = self._ko[slot] == o  # origins L bins back that are held (gaps leave holes)
        d = np.where(hit, self._d[slot], 0.0)
        keep = self.keep
        self._sxy *= keep
        self._sxy += d * (y - self._m[slot])
        self._sxx *= keep
        self._sxx += d * d
        self._stale = True  # the coefficients are computed when a forecast needs them
        self._win.observe(k, t, z)
        m = self._win.mean
        self._mean, self._dev = m, y - m
        s = k % r
        self._ko[s], self._m[s], self._d[s] = k, m, y - m
        self.k = k

    def _coefficients(self) -> np.ndarray:
        """beta per lead from the weighted sums (lazily: a warm start's history needs it only at the end)."""
        if self._stale:
            if self.pool > 1.0:  # pool the sums over leads within a factor `pool` of each lead
                cy = np.concatenate([[0.0], np.cumsum(self._sxy)])
                cx = np.concatenate([[0.0], np.cumsum(self._sxx)])
                sxy, sxx = cy[self._hi] - cy[self._lo], cx[self._hi] - cx[self._lo]
            else:
                sxy, sxx = self._sxy, self._sxx
            with np.errstate(divide="ignore", invalid="ignore"):
                self._beta_cache = np.clip(np.where(sxx > 0, sxy / sxx, 0.0), 0.0, 1.0)
            self._stale = False
        return self._beta_cache

    @property
    def _beta(self) -> np.ndarray:
        return self._coefficients()

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.k is None:
            return np.zeros(len(k))
        lead = np.clip(np.asarray(k) - self.k, 1, self.lmax)
        return np.log1p(np.maximum(self._mean + self._coefficients()[lead - 1] * self._dev, 0.0))
