"""Arrival schedules for the open-loop load shapes (shapes.py): pure Python, no locust import.

A schedule is a sorted list of ``Arrival(t, isl, osl)``: request k is due ``t`` seconds after the
schedule's origin with an ``isl``-token prompt and ``max_tokens = osl``. The ``build_*`` functions
turn the locustfile's options (an argparse namespace) into one; every locust process builds the same
schedule from the same options and seed, and a distributed worker sends its round-robin share.

- ``build_trace``: a per-request trace at its own timing divided by ``speedup``, its own ISL/OSL.
- ``build_diurnal``: a ServeGen rate curve, one day compressed into ``day_minutes``, scaled to
  ``peak_rate``; arrivals drawn from the curve.
- ``build_burst``: ``rate``, then ``burst_factor`` x ``rate`` during [burst_at, burst_at + burst_for).
- ``build_constant``: ``rate`` for ``duration``.

Rate-driven schedules draw a non-homogeneous Poisson process (thinning) or evenly spaced arrivals in
the integrated rate (``arrivals="uniform"``); their lengths are sampled from ``trace`` or fixed.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaler.testbench.traces import TraceRequest, load_rate_curve, load_trace, scale_rate
from scaler.testbench.traces import resolve_trace as _trace_file

__all__ = [
    "Arrival",
    "Schedule",
    "Lengths",
    "resolve_trace",
    "rate_arrivals",
    "servegen_rate",
    "pool_size",
    "build_trace",
    "build_diurnal",
    "build_burst",
    "build_constant",
    "BUILDERS",
]

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request to send: `t` seconds after the schedule origin, `isl` prompt tokens, `osl` max_tokens."""

    t: float
    isl: int
    osl: int


@dataclass(frozen=True)
class Schedule:
    """Arrivals sorted by t; `duration` is when the schedule ends (>= the last arrival)."""

    arrivals: list[Arrival]
    duration: float
    description: str

    def share(self, index: int, count: int) -> list[Arrival]:
        """The arrivals one of `count` load generators sends (round-robin, so each keeps the shape)."""
        if count <= 1:
            return list(self.arrivals)
        return self.arrivals[index % count :: count]


def resolve_trace(spec: str, fmt: str | None = None) -> list[TraceRequest]:
    """A trace file path, or a trace bundled with pdscaler (`azure-code`, `azure-conv`): the resolution
    of every pdscaler command (scaler.testbench.traces.resolve_trace)."""
    return load_trace(_trace_file(spec), fmt or None)


class Lengths:
    """ISL/OSL for rate-driven shapes: sampled from a trace's requests, or fixed."""

    def __init__(self, isl: int, osl: int, trace: Sequence[TraceRequest] | None = None, seed: int = 0) -> None:
        self.isl, self.osl = int(isl), int(osl)
        self.pairs = [(r.isl, r.osl) for r in trace] if trace else []
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_options(cls, o: Any) -> Lengths:
        trace = resolve_trace(o.trace, o.trace_format) if o.trace else None
        return cls(o.isl, o.osl, trace, o.seed)

    def draw(self, n: int) -> list[tuple[int, int]]:
        if not self.pairs:
            return [(self.isl, self.osl)] * n
        idx = self.rng.integers(0, len(self.pairs), size=n)
        return [self.pairs[i] for i in idx.tolist()]


def rate_arrivals(
    rate: Callable[[np.ndarray], np.ndarray],
    duration: float,
    peak: float,
    lengths: Lengths,
    process: str = "poisson",
    seed: int = 0,
    step: float = 0.01,
) -> list[Arrival]:
    """Arrival times of a request-rate curve `rate(t)` (req/s, vectorised) over [0, duration).

    poisson: a non-homogeneous Poisson process by thinning a homogeneous one at `peak` >= max rate.
    uniform: the k-th arrival where the integrated rate reaches k - 0.5 (deterministic, no noise).
    """
    if duration <= 0 or peak <= 0:
        return []
    if process == "poisson":
        rng = np.random.default_rng(seed)
        n = rng.poisson(peak * duration)
        t = np.sort(rng.uniform(0.0, duration, size=n))
        keep = rng.uniform(0.0, peak, size=n) < rate(t)
        times = t[keep]
    elif process == "uniform":
        grid = np.arange(0.0, duration + step, step)
        grid[-1] = duration
        r = rate(grid)
        cum = np.concatenate([[0.0], np.cumsum((r[1:] + r[:-1]) * 0.5 * np.diff(grid))])
        total = cum[-1]
        targets = np.arange(0.5, total, 1.0)
        times = np.interp(targets, cum, grid)
    else:
        raise ValueError(f"unknown arrival process {process!r}; expected poisson or uniform")
    pairs = lengths.draw(len(times))
    return [Arrival(float(t), i, o) for t, (i, o) in zip(times.tolist(), pairs, strict=True)]


def pool_size(arrivals: Sequence[Arrival], window: float, minimum: int = 2, maximum: int = 5000) -> int:
    """Users needed so no arrival waits if every request finishes within `window` seconds: the most
    arrivals within any window (plus 20% and 2 of slack), clamped to [minimum, maximum]."""
    if not arrivals:
        return minimum
    times = [a.t for a in arrivals]
    most = 0
    for i, t in enumerate(times):
        most = max(most, bisect_left(times, t + window, lo=i) - i)
    return int(min(maximum, max(minimum, math.ceil(most * 1.2) + 2)))


def servegen_rate(
    path: str | Path, series: str | None, start_h: float, hours: float, seconds_per_day: float,
) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
    """A ServeGen rate curve as a function of compressed wall time.

    Returns (rate(t_wall) in the curve's own req/s, wall duration, max rate over the window). The
    curve is piecewise linear between its points; zero-rate points are treated as gaps in the data
    (the ServeGen README says so) and interpolated over from their non-zero neighbours.
    """
    t_s, rate = load_rate_curve(_trace_file(path), series)  # a file, or servegen-language
    good = rate > 0
    if not good.any():
        raise ValueError(f"{path}: series {series!r} has no non-zero rate")
    t_s, rate = t_s[good], rate[good]
    start = t_s[0] + start_h * 3600.0
    compress = DAY_S / seconds_per_day  # curve seconds per wall second
    duration = hours * 3600.0 / compress

    def at(t_wall: np.ndarray) -> np.ndarray:
        return np.interp(start + np.asarray(t_wall, dtype=float) * compress, t_s, rate)

    probe = np.linspace(0.0, duration, 2001)
    inside = (t_s > start) & (t_s < start + hours * 3600.0)
    peak = float(max(at(probe).max(), rate[inside].max() if inside.any() else 0.0))
    return at, duration, peak



def build_trace(o: Any) -> Schedule:
    """Request r of the trace window [trace_start, trace_start + trace_duration) is due at
    (r.t - trace_start) / speedup; rate_scale copies/thins requests keeping the timing
    (`scaler.testbench.traces.scale_rate`); max_requests truncates."""
    if not o.trace:
        raise ValueError("--shape trace needs --trace (a file, or azure-code / azure-conv)")
    if o.speedup <= 0:
        raise ValueError(f"--speedup must be > 0, got {o.speedup}")
    reqs = resolve_trace(o.trace, o.trace_format)
    lo = o.trace_start
    hi = math.inf if o.trace_duration <= 0 else lo + o.trace_duration
    reqs = [r for r in reqs if lo <= r.t < hi]
    if o.rate_scale != 1.0:
        reqs = scale_rate(reqs, o.rate_scale, o.seed)
    if o.max_requests > 0:
        reqs = reqs[: o.max_requests]
    arrivals = [Arrival((r.t - lo) / o.speedup, r.isl, r.osl) for r in reqs]
    if math.isfinite(hi) and not (o.max_requests > 0 and len(arrivals) == o.max_requests):
        span = (hi - lo) / o.speedup
    else:
        span = arrivals[-1].t if arrivals else 0.0
    window = f"[{lo:g}s, {'end' if not math.isfinite(hi) else f'{hi:g}s'})"
    desc = (f"trace {o.trace} {window} x{o.rate_scale:g} at speedup {o.speedup:g}: "
            f"{len(arrivals)} requests in {span:.1f}s")
    return Schedule(arrivals, span, desc)


def build_diurnal(o: Any) -> Schedule:
    """ServeGen curve `rates` (series `series`), hours [curve_start, curve_start + curve_hours) played
    with one day in `day_minutes`; peak_rate > 0 scales the window's peak to it, else x rate_scale."""
    if not o.rates:
        raise ValueError("--shape diurnal needs --rates (a ServeGen rate CSV)")
    at, duration, peak = servegen_rate(o.rates, o.series or None, o.curve_start, o.curve_hours,
                                       o.day_minutes * 60.0)
    scale = o.peak_rate / peak if o.peak_rate > 0 else o.rate_scale
    arrivals = rate_arrivals(lambda t: at(t) * scale, duration, peak * scale * 1.001,
                             Lengths.from_options(o), o.arrivals, o.seed)
    desc = (f"diurnal {o.rates} {o.series or ''} {o.curve_hours:g}h from hour {o.curve_start:g} in "
            f"{duration:.0f}s, peak {peak * scale:.2f} req/s: {len(arrivals)} requests in {duration:.1f}s")
    return Schedule(arrivals, duration, desc)


def burst_rate(o: Any) -> Callable[[np.ndarray], np.ndarray]:
    lo, hi = o.burst_at, o.burst_at + o.burst_for

    def at(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        return np.where((t >= lo) & (t < hi), o.rate * o.burst_factor, o.rate)

    return at


def build_burst(o: Any) -> Schedule:
    peak = o.rate * max(1.0, o.burst_factor)
    arrivals = rate_arrivals(burst_rate(o), o.duration, peak, Lengths.from_options(o), o.arrivals, o.seed)
    desc = (f"burst {o.rate:g} req/s -> x{o.burst_factor:g} during [{o.burst_at:g}, "
            f"{o.burst_at + o.burst_for:g})s: {len(arrivals)} requests in {o.duration:.1f}s")
    return Schedule(arrivals, o.duration, desc)


def build_constant(o: Any) -> Schedule:
    arrivals = rate_arrivals(lambda t: np.full(np.shape(t), float(o.rate)), o.duration, o.rate,
                             Lengths.from_options(o), o.arrivals, o.seed)
    return Schedule(arrivals, o.duration,
                    f"constant {o.rate:g} req/s: {len(arrivals)} requests in {o.duration:.1f}s")


BUILDERS: dict[str, Callable[[Any], Schedule]] = {
    "trace": build_trace,
    "diurnal": build_diurnal,
    "burst": build_burst,
    "constant": build_constant,
}
