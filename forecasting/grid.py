"""A regular time grid for irregular, gappy series: models see one value per step (mean per bin).

Bins are labelled by their END time, like a Prometheus rate: the value at t summarises the window
ending at t. Bin k has the nominal time ``tau_k = phase + k * step`` and holds the points with t in
``(tau_k - step + slack, tau_k + slack]`` (slack = step / 8, so that a little scrape jitter does not
move a point to the next bin). The phase is taken from the first timestamp, so a regularly sampled
series (any phase) maps one point to one bin.

Online (``OnlineGrid``), a bin is CLOSED, and handed to the model, as soon as
- a point arrives within ``slack`` of its nominal time (the usual case: one point per step, or the
  last of several points in the step), or
- a point arrives in a later bin, or the caller's ``now`` passes the bin's end.
So a regularly sampled series is never held back a step. A point that arrives for an already closed
bin (late, out of order) counts towards the next bin. Empty bins are never emitted: a model sees a
jump in the bin index, i.e. a gap, and NaN points only mark time.
"""

from __future__ import annotations

import math

import numpy as np

SLACK_FRACTION = 0.125


class Grid:
    """Bin arithmetic for one step and phase (seconds)."""

    __slots__ = ("step", "phase", "slack")

    def __init__(self, step_s: float, phase: float = 0.0) -> None:
        if not (step_s > 0 and math.isfinite(step_s)):
            raise ValueError(f"step_s must be a positive number, got {step_s!r}")
        self.step = float(step_s)
        self.phase = float(phase)
        self.slack = SLACK_FRACTION * self.step

    @classmethod
    def anchored(cls, step_s: float, t0: float) -> "Grid":
        """The grid whose nominal bin times include t0."""
        return cls(step_s, float(t0) % float(step_s))

    def index(self, t: float) -> int:
        """The bin holding time t."""
        return math.ceil((t - self.phase - self.slack) / self.step)

    def indices(self, t: np.ndarray) -> np.ndarray:
        return np.ceil((np.asarray(t, dtype=float) - self.phase - self.slack) / self.step).astype(np.int64)

    def time(self, k: int | np.ndarray) -> float | np.ndarray:
        """Nominal (end) time of bin k."""
        return self.phase + np.asarray(k) * self.step if isinstance(k, np.ndarray) else self.phase + k * self.step

    def mid(self, k: int | np.ndarray) -> float | np.ndarray:
        """Middle of the window bin k summarises."""
        return self.time(k) - 0.5 * self.step


def to_grid(t: np.ndarray, y: np.ndarray, step_s: float,
            grid: Grid | None = None) -> tuple[Grid, np.ndarray, np.ndarray]:
    """Irregular (t, y) -> (grid, bin indices k0..k1, mean of the finite values per bin; NaN if none).

    The grid is anchored at the first timestamp unless given. Points need not be sorted.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("t and y must be 1-D arrays of the same length")
    ok_t = np.isfinite(t)
    t, y = t[ok_t], y[ok_t]
    if len(t) == 0:
        return grid or Grid(step_s), np.zeros(0, dtype=np.int64), np.zeros(0)
    if grid is None:
        grid = Grid.anchored(step_s, float(t.min()))
    k = grid.indices(t)
    k0 = int(k.min())
    n_bins = int(k.max()) - k0 + 1
    fin = np.isfinite(y)
    idx = k[fin] - k0
    sums = np.bincount(idx, weights=y[fin], minlength=n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return grid, np.arange(k0, k0 + n_bins, dtype=np.int64), means


class OnlineGrid:
    """Accumulates points in time order and emits closed bins as (k, mean) with a finite mean."""

    __slots__ = ("step", "grid", "open_k", "_sum", "_n", "last_closed", "_rephase")

    def __init__(self, step_s: float) -> None:
        self.step = float(step_s)
        Grid(step_s)  # validates the step
        self.reset()

    def reset(self, grid: Grid | None = None, last_closed: int | None = None) -> None:
        """Start over; optionally continue a grid (after a batch fit) whose last bin was `last_closed`.

        When continuing, the first later point re-anchors the phase, so live points taken at another
        phase than the history's still close their bins at once.
        """
        self.grid = grid
        self.open_k: int | None = None
        self._sum = 0.0
        self._n = 0
        self.last_closed = last_closed
        self._rephase = grid is not None

    def add(self, t: float, y: float) -> list[tuple[int, float]]:
        """Add one point (y NaN = missing); returns the bins this closes, oldest first."""
        out: list[tuple[int, float]] = []
        if self.grid is None:
            self.grid = Grid.anchored(self.step, t)
        elif self._rephase and self.open_k is None:
            # First live point after a batch fit: move the phase so that this point sits on the
            # nominal time of its bin, keeping the bin numbering continuous.
            self._rephase = False
            k = self.grid.index(t)
            if self.last_closed is not None:
                k = max(k, self.last_closed + 1)
            self.grid = Grid(self.step, t - k * self.step)
        g = self.grid
        k = g.index(t)
        if self.open_k is not None and k > self.open_k:
            out.extend(self._close())
        if self.last_closed is not None and k <= self.last_closed:
            k = self.last_closed + 1  # late: counts towards the next bin
        if self.open_k is None:
            self.open_k = k
            self._sum, self._n = 0.0, 0
        if y == y and math.isfinite(y):
            self._sum += y
            self._n += 1
        if t >= g.phase + self.open_k * g.step - g.slack:
            out.extend(self._close())
        return out

    def advance(self, now: float) -> list[tuple[int, float]]:
        """Close the open bin if `now` is past its end; returns what was closed."""
        if self.open_k is not None and self.grid is not None:
            g = self.grid
            if now >= g.phase + self.open_k * g.step + g.slack:
                return self._close()
        return []

    def _close(self) -> list[tuple[int, float]]:
        k, s, n = self.open_k, self._sum, self._n
        self.open_k = None
        self.last_closed = k
        return [(k, s / n)] if n else []
