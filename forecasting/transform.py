"""Cleaning and variance-stabilising transforms of demand series.

Cleaning: a demand figure (a rate, a count, a token rate) is never negative, NaN or infinite; such a
reading is a scrape gap, a counter reset or a division by zero, so it is treated as MISSING (NaN),
never as a value.

Transforms: request and token rates are count-like, so their noise grows with their level (Poisson:
sd ~ sqrt(level); bursts: sd ~ level). Models work on ``log1p(y)``, where an error of 0.1 means about
10 % at any level and zero traffic stays finite (log1p(0) = 0). ``identity`` is kept for series
whose noise does not grow with level, and for the Planner baselines, which work on raw values by
default. ``inverse`` always returns values >= 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# expm1 overflows float64 a little above 709; a log1p rate of 700 is far beyond any real demand.
_MAX_LOG = 700.0


def clean(y: np.ndarray | float) -> np.ndarray:
    """A float array where negative, NaN and +/-inf values are NaN (missing)."""
    a = np.array(y, dtype=float, copy=True, ndmin=1)
    bad = ~np.isfinite(a)
    bad[~bad] = a[~bad] < 0
    a[bad] = np.nan
    return a


def clean_value(y: float) -> float:
    """`clean` for one value: NaN when y is negative, NaN, infinite or not a number."""
    try:
        v = float(y)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) and v >= 0 else math.nan


@dataclass(frozen=True)
class Transform:
    """A monotone map between demand values (>= 0) and the space a model works in."""

    name: str
    f: Callable[[float], float]  # one value forward
    finv: Callable[[float], float]  # one value back (>= 0)
    _fwd: Callable[[np.ndarray], np.ndarray]
    _inv: Callable[[np.ndarray], np.ndarray]

    def forward(self, y: np.ndarray) -> np.ndarray:
        """Demand values (>= 0 or NaN) to model space; NaN stays NaN."""
        return self._fwd(np.asarray(y, dtype=float))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Model space back to demand values, clipped at 0 (NaN stays NaN)."""
        return self._inv(np.asarray(z, dtype=float))


def _log1p_inv(z: float) -> float:
    return max(0.0, math.expm1(min(z, _MAX_LOG)))


def _log1p_inv_arr(z: np.ndarray) -> np.ndarray:
    return np.maximum(np.expm1(np.minimum(z, _MAX_LOG)), 0.0)


LOG1P = Transform(
    name="log1p",
    f=lambda y: math.log1p(y),
    finv=_log1p_inv,
    _fwd=np.log1p,
    _inv=_log1p_inv_arr,
)

IDENTITY = Transform(
    name="identity",
    f=lambda y: y,
    finv=lambda z: max(0.0, z),
    _fwd=lambda y: np.array(y, dtype=float, copy=True),
    _inv=lambda z: np.maximum(z, 0.0),
)

TRANSFORMS: dict[str, Transform] = {t.name: t for t in (LOG1P, IDENTITY)}


def get_transform(which: str | Transform) -> Transform:
    """A transform by name ("log1p", "identity"), or the transform itself."""
    if isinstance(which, Transform):
        return which
    try:
        return TRANSFORMS[which]
    except KeyError:
        raise ValueError(f"unknown transform {which!r}; known: {', '.join(TRANSFORMS)}") from None
