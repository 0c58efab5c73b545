"""Traces as forecastable series: a regular grid of times and one value per step.

Per-request traces (Azure CSV, Mooncake JSONL) are binned at a step (15-60 s is typical) into one of

- ``request_rate``          requests arriving per second in the step (count / step)
- ``prefill_tokens_per_s``  input tokens arriving per second (sum of ISL / step)
- ``decode_tokens_per_s``   output tokens requested per second (sum of OSL / step)

Bin k covers arrivals in [k*step, (k+1)*step) after the first request and is labelled with its END
time (k+1)*step: that is when the value is fully observed, so a model updated with (t_k, y_k) has
seen nothing from after t_k. The last, incomplete bin is dropped (it would undercount).

ServeGen rate curves (``category_model,t_s,total_rate_rps,...``; 10-minute windows) give only
``request_rate``. Their times are kept as given (one label per window, on a regular grid; missing
windows become NaN). Windows whose total rate is exactly zero are treated as MISSING (NaN), not as
idle periods: the dataset's README says they are likely gaps in the data (language/m-mid has 84 of
them in a 14-day series that never otherwise drops below ~10 % of its mean), and scoring a forecaster
against fake zeros would reward predicting outages. The count is recorded in ``Series.notes``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaler.testbench.traces import TraceRequest, load_rate_curve, load_trace

__all__ = ["Series", "SIGNALS", "SERIES_FORMATS", "bin_requests", "series_from_requests",
           "series_from_trace", "series_from_rate_curve", "load_series", "infer_format"]

SIGNALS: tuple[str, ...] = ("request_rate", "prefill_tokens_per_s", "decode_tokens_per_s")
SERIES_FORMATS: tuple[str, ...] = ("azure", "mooncake", "rates")
_RATE_HEADER_START = "category_model,"


@dataclass(frozen=True)
class Series:
    """One regular series: values `y` (NaN = missing) at times `t` (seconds, ascending, step apart)."""

    name: str
    t: np.ndarray
    y: np.ndarray
    step_s: float
    source: str
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.t.shape != self.y.shape or self.t.ndim != 1:
            raise ValueError(f"t and y must be 1-D of the same length, got {self.t.shape} and {self.y.shape}")
        if not (self.step_s > 0):
            raise ValueError(f"step must be > 0, got {self.step_s}")

    def __len__(self) -> int:
        return len(self.t)

    @property
    def span_s(self) -> float:
        """Time covered: number of points x step."""
        return len(self.t) * self.step_s

    @property
    def n_missing(self) -> int:
        return int(np.isnan(self.y).sum())


def bin_requests(requests: Sequence[TraceRequest], step_s: float, signal: str = "request_rate") -> tuple[np.ndarray, np.ndarray]:
    """(t, y): `signal` per second in each complete step of the trace, t = end of each bin.

    Arrival times are relative to the first request (as `load_trace` returns them). A trace shorter
    than one step gives empty arrays.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {', '.join(SIGNALS)}")
    if not (step_s > 0 and math.isfinite(step_s)):
        raise ValueError(f"step must be a finite duration > 0, got {step_s}")
    if not requests:
        return np.zeros(0), np.zeros(0)
    arr = np.array([(r.t, r.isl, r.osl) for r in requests], dtype=np.float64)
    times = arr[:, 0] - arr[:, 0].min()
    # Complete bins only: the trace spans [0, t_last]; bin k is complete if (k+1)*step <= t_last.
    # A relative tolerance keeps a bin ending exactly at t_last despite float noise in the division.
    n_bins = int(math.floor(times.max() / step_s * (1 + 1e-12) + 1e-9))
    if n_bins == 0:
        return np.zeros(0), np.zeros(0)
    idx = np.floor(times / step_s).astype(np.int64)
    keep = idx < n_bins
    weights = {"request_rate": None, "prefill_tokens_per_s": arr[:, 1], "decode_tokens_per_s": arr[:, 2]}[signal]
    sums = np.bincount(idx[keep], weights=None if weights is None else weights[keep], minlength=n_bins)
    t = (np.arange(n_bins, dtype=np.float64) + 1.0) * step_s
    return t, sums.astype(np.float64) / step_s


def series_from_requests(requests: Sequence[TraceRequest], step_s: float, signal: str = "request_rate",
                         name: str = "trace", source: str = "") -> Series:
    t, y = bin_requests(requests, step_s, signal)
    notes = (f"{len(requests)} requests binned at {step_s:g} s into {len(t)} complete bins labelled by their "
             f"end time; the last incomplete bin is dropped",)
    return Series(name=name, t=t, y=y, step_s=float(step_s), source=source, notes=notes)


def series_from_trace(path: str | os.PathLike[str], step_s: float, signal: str = "request_rate",
                      fmt: str | None = None) -> Series:
    """Bin a per-request trace file (azure or mooncake; None = detect)."""
    path = Path(path)
    requests = load_trace(path, fmt)
    s = series_from_requests(requests, step_s, signal, name=path.stem, source=str(path))
    if len(s) == 0:
        raise ValueError(f"{path}: trace spans less than one step ({step_s:g} s)")
    return s


def series_from_rate_curve(path: str | os.PathLike[str], series: str | None = None,
                           step_s: float | None = None, zeros_missing: bool = True) -> Series:
    """A ServeGen rate curve as a `request_rate` series on a regular grid.

    The native step is the smallest spacing of the file (600 s for ServeGen). `step_s` may be that or
    a whole multiple of it (windows are then averaged, ignoring missing ones). Exact zeros become NaN
    when `zeros_missing` (the default; see the module docstring).
    """
    path = Path(path)
    t_raw, y_raw = load_rate_curve(path, series)
    if len(t_raw) < 2:
        raise ValueError(f"{path}: a rate curve needs at least 2 windows, got {len(t_raw)}")
    native = float(np.min(np.diff(t_raw)))
    if not native > 0:
        raise ValueError(f"{path}: duplicate window times in series {series!r}")
    # Reindex on the regular grid: windows absent from the file become NaN.
    k = np.rint((t_raw - t_raw[0]) / native).astype(np.int64)
    if np.any(np.abs((t_raw - t_raw[0]) / native - k) > 1e-6):
        raise ValueError(f"{path}: window times are not on a regular {native:g} s grid")
    y = np.full(int(k[-1]) + 1, np.nan)
    y[k] = y_raw
    t = t_raw[0] + np.arange(len(y), dtype=np.float64) * native
    notes: list[str] = []
    n_absent = len(y) - len(t_raw)
    if n_absent:
        notes.append(f"{n_absent} windows absent from the file are missing (NaN)")
    if zeros_missing:
        zeros = int(np.sum(y == 0.0))
        if zeros:
            was_zero = y == 0.0
            y = np.where(was_zero, np.nan, y)
            notes.append(f"{zeros} of {len(y)} windows with exactly zero total rate treated as missing "
                         f"(NaN): likely data gaps (dataset README), not idle periods; they are fed to "
                         f"the models as NaN and not scored")
            # Windows bordering a gap are often partial (a few req/s where the series runs at
            # thousands): reported, but kept as observed (only exact zeros are declared missing).
            edge = np.zeros_like(was_zero)
            edge[1:] |= was_zero[:-1]
            edge[:-1] |= was_zero[1:]
            low = edge & ~was_zero & (y < 0.05 * np.nanmedian(y))
            if low.any():
                notes.append(f"{int(low.sum())} windows next to those gaps are below 5 % of the median rate "
                             f"(likely partial windows); kept as observed and scored")
    if step_s is not None and not math.isclose(step_s, native, rel_tol=1e-9):
        ratio = step_s / native
        m = int(round(ratio))
        if m < 1 or not math.isclose(ratio, m, rel_tol=1e-9):
            raise ValueError(f"{path}: step {step_s:g} s must be a whole multiple of the curve's "
                             f"{native:g} s resolution")
        n = len(y) // m
        blocks = y[: n * m].reshape(n, m)
        with np.errstate(invalid="ignore"):
            counts = np.sum(~np.isnan(blocks), axis=1)
            y = np.where(counts > 0, np.nansum(blocks, axis=1) / np.maximum(counts, 1), np.nan)
        t = t[: n * m].reshape(n, m)[:, 0]
        notes.append(f"{m} windows of {native:g} s averaged per step of {step_s:g} s (missing ones ignored)")
        native = float(step_s)
    name = series if series is not None else path.stem
    return Series(name=name, t=t, y=y, step_s=native, source=str(path), notes=tuple(notes))


def infer_format(path: str | os.PathLike[str]) -> str:
    """"rates" for a ServeGen rate CSV, else "azure" or "mooncake" from the first non-empty line."""
    with Path(path).open("r", encoding="utf-8") as f:
        for line in f:
            s = line.strip().lstrip("\ufeff")
            if not s:
                continue
            if s.startswith(_RATE_HEADER_START):
                return "rates"
            if s.startswith("{"):
                return "mooncake"
            if s.replace(" ", "").startswith("TIMESTAMP,"):
                return "azure"
            break
    raise ValueError(f"{path}: cannot infer the trace format; pass --format azure|mooncake|rates")


def load_series(path: str | os.PathLike[str], fmt: str | None = None, series: str | None = None,
                signal: str = "request_rate", step_s: float | None = None) -> Series:
    """Any supported file as a Series. Per-request traces need `step_s` (default 30 s)."""
    fmt = fmt or infer_format(path)
    if fmt not in SERIES_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(SERIES_FORMATS)}")
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {', '.join(SIGNALS)}")
    if fmt == "rates":
        if signal != "request_rate":
            raise ValueError(f"a rate curve has only request_rate (no token lengths), not {signal}")
        return series_from_rate_curve(path, series, step_s)
    if series is not None:
        raise ValueError("--series selects a series of a rate curve; a per-request trace has one")
    return series_from_trace(path, 30.0 if step_s is None else step_s, signal, fmt)
