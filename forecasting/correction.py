"""Online level correction of a reference forecast (a seasonal profile, a Prophet curve).

The residuals ``r = z - reference(t)`` of the recent bins (log1p space: relative errors) are smoothed
at two speeds: a FAST EWMA follows today's deviation from the reference (traffic 20 % above last
week's), a SLOW EWMA its persistent part. A forecast h ahead adds
``slow + (fast - slow) * exp(-h / decay_s)``: the recent deviation at short horizons, fading to the
long-run one. EWMA weights decay with time, not with the number of points, so gaps are handled.
"""

from __future__ import annotations

import math

import numpy as np


class LevelCorrection:
    """Two-speed EWMA of residuals, applied with a horizon-dependent fade.

    The EWMAs are normalised by their total weight, so the first residuals are averaged rather than
    the very first one standing in for a long memory."""

    __slots__ = ("step", "_a_fast", "_a_slow", "decay_s", "_sf", "_wf", "_ss", "_ws", "k")

    def __init__(self, step_s: float, fast_halflife_s: float = 900.0, slow_halflife_s: float = 6 * 3600.0,
                 decay_s: float = 3600.0) -> None:
        self.step = float(step_s)
        self._a_fast = 0.5 ** (self.step / fast_halflife_s)  # weight kept per step
        self._a_slow = 0.5 ** (self.step / slow_halflife_s)
        self.decay_s = float(decay_s)
        self.reset()

    def reset(self) -> None:
        self._sf = self._wf = self._ss = self._ws = 0.0
        self.k: int | None = None

    @property
    def fast(self) -> float:
        return self._sf / self._wf if self._wf > 0 else 0.0

    @property
    def slow(self) -> float:
        return self._ss / self._ws if self._ws > 0 else 0.0

    def update(self, k: int, r: float) -> None:
        """The residual of bin k."""
        n = 1 if self.k is None else max(1, k - self.k)
        kf, ks = self._a_fast ** n, self._a_slow ** n
        self._sf = kf * self._sf + (1.0 - kf) * r
        self._wf = kf * self._wf + (1.0 - kf)
        self._ss = ks * self._ss + (1.0 - ks) * r
        self._ws = ks * self._ws + (1.0 - ks)
        self.k = k

    def at(self, leads: np.ndarray) -> np.ndarray:
        """The correction for forecasts `leads` bins ahead of the last update."""
        if self.k is None:
            return np.zeros(len(leads))
        slow = self.slow
        return slow + (self.fast - slow) * np.exp(-np.asarray(leads, float) * (self.step / self.decay_s))


class Ewma:
    """A time-aware EWMA level: weight 0.5 ** (elapsed / halflife) on the past, normalised by the total
    weight, so that a long half-life over a short history is the plain mean so far (not the first
    value)."""

    __slots__ = ("_a", "_s", "_w", "k")

    def __init__(self, step_s: float, halflife_s: float) -> None:
        self._a = 0.5 ** (float(step_s) / float(halflife_s))
        self.reset()

    def reset(self) -> None:
        self._s = self._w = 0.0
        self.k: int | None = None

    @property
    def value(self) -> float:
        return self._s / self._w if self._w > 0 else math.nan

    def update(self, k: int, z: float) -> None:
        a = self._a if self.k is None else self._a ** max(1, k - self.k)
        self._s = a * self._s + (1.0 - a) * z
        self._w = a * self._w + (1.0 - a)
        self.k = k
