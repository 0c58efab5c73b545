"""The replay's input: demand per simulation step (request rate, mean ISL, mean OSL), from any trace.

- Per-request traces (Azure CSV, Mooncake JSONL; scaler/testbench/traces.py) are binned to `dt` (1 s): the
  rate is the count per second, ISL/OSL the mean lengths of the step's arrivals (the trace's mean
  where a step has none). `--rate-scale k` multiplies the binned rate (for integer k exactly what
  `scale_rate` does, which copies every request k times; for fractional k its expectation).
- ServeGen rate curves (10-minute windows) are interpolated to `dt` (linear between window
  centres, or a step per window) and arrivals drawn per step as Poisson(rate x dt) / dt with a
  seeded generator. Windows with a zero total rate are data gaps (the traces' README), not idle
  periods: they are filled by interpolation from their neighbours. Mean lengths are constant per
  series: the ServeGen README's figures (m-large ISL ~930 OSL ~171, m-mid ISL ~313 OSL ~52),
  overridable.

A long trace keeps a history before the simulated span (`history_s`, by default the first day of a
trace spanning 2 days or more): it is what Prometheus would hold when the scaler starts, fed to
forecasters as a warm start, and never simulated or scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forecasting.evaluation.series import infer_format
from scaler.testbench.traces import bundled_trace, load_rate_curve, load_trace

# Mean lengths of the ServeGen language series (traces README; ServeGen, Alibaba).
SERVEGEN_LENGTHS: dict[str, tuple[float, float]] = {
    "language/m-large": (930.0, 171.0),
    "language/m-mid": (313.0, 52.0),
}
DAY_S = 86400.0


@dataclass(frozen=True)
class Workload:
    """Demand per step: `rate` (req/s), `isl`, `osl` (mean tokens) at times t0 + i*dt, i < len.

    Steps before `start` (an index) are history: observed, not simulated.
    """

    name: str
    dt: float
    t0: float
    rate: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    start: int = 0
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.rate)

    @property
    def n_sim(self) -> int:
        return len(self.rate) - self.start

    @property
    def sim_t0(self) -> float:
        return self.t0 + self.start * self.dt

    def history(self, step_s: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The history as Prometheus range queries at `step_s` would give it: each series averaged
        per step, labelled with the step's end time (request_rate, prefill/decode tokens per s)."""
        m = max(1, int(round(step_s / self.dt)))
        n = self.start // m
        if n == 0:
            return {}
        sl = slice(self.start - n * m, self.start)
        rate = self.rate[sl].reshape(n, m)
        t = self.t0 + (self.start - n * m + (np.arange(n) + 1) * m) * self.dt
        pre = (rate * self.isl[sl].reshape(n, m)).mean(axis=1)
        dec = (rate * self.osl[sl].reshape(n, m)).mean(axis=1)
        return {"request_rate": (t, rate.mean(axis=1)), "prefill_tokens_per_s": (t, pre), "decode_tokens_per_s": (t, dec)}

    def sliced(self, start_s: float = 0.0, duration_s: float | None = None) -> Workload:
        """The simulated span from `start_s` (seconds after the history) for `duration_s`."""
        a = self.start + int(round(start_s / self.dt))
        if a >= len(self.rate):
            raise ValueError(f"--start {start_s:g}s is past the end of the trace ({self.n_sim * self.dt:g}s)")
        b = len(self.rate)
        if duration_s is not None:
            b = min(b, a + max(1, int(round(duration_s / self.dt))))
        h = self.start  # keep the history right before the new start
        lo = max(0, a - h)
        return Workload(self.name, self.dt, self.t0 + lo * self.dt, self.rate[lo:b], self.isl[lo:b],
                        self.osl[lo:b], a - lo, self.notes)


def resolve_trace(path: str) -> Path:
    """A trace path, or the name of a bundled trace (azure-code, azure-conv)."""
    if not Path(path).exists():
        try:
            return bundled_trace(path)
        except ValueError:
            raise ValueError(f"no trace file {path!r} (bundled traces: azure-code, azure-conv)") from None
    return Path(path)


def load_workload(
    path: str,
    fmt: str | None = None,
    *,
    series: str | None = None,
    rate_scale: float = 1.0,
    dt: float = 1.0,
    seed: int = 0,
    isl: float | None = None,
    osl: float | None = None,
    interpolation: str = "linear",
    history_s: float | None = None,
) -> Workload:
    """Load any trace as a Workload (see the module docstring)."""
    if not (rate_scale >= 0 and math.isfinite(rate_scale)):
        raise ValueError(f"--rate-scale must be a finite number >= 0, got {rate_scale}")
    if not dt > 0:
        raise ValueError(f"--dt must be > 0, got {dt}")
    p = resolve_trace(path)
    fmt = fmt or infer_format(p)
    if fmt == "rates":
        return _from_rate_curve(p, series, rate_scale, dt, seed, isl, osl, interpolation, history_s)
    return _from_requests(p, fmt, rate_scale, dt, isl, osl, history_s)


def _history_steps(span_s: float, history_s: float | None, dt: float) -> int:
    if history_s is None:
        history_s = DAY_S if span_s >= 2 * DAY_S else 0.0
    if history_s >= span_s:
        raise ValueError(f"history {history_s:g}s leaves nothing to simulate in a {span_s:g}s trace")
    return int(round(history_s / dt))


def _from_requests(p: Path, fmt: str, k: float, dt: float, isl: float | None, osl: float | None,
                   history_s: float | None) -> Workload:
    reqs = load_trace(p, fmt)
    if not reqs:
        raise ValueError(f"{p}: no requests")
    t = np.array([r.t for r in reqs])
    il = np.array([r.isl for r in reqs], float) if isl is None else np.full(len(reqs), float(isl))
    ol = np.array([r.osl for r in reqs], float) if osl is None else np.full(len(reqs), float(osl))
    n = int(t[-1] // dt) + 1
    idx = np.minimum((t // dt).astype(int), n - 1)
    count = np.bincount(idx, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_isl = np.where(count > 0, np.bincount(idx, il, n) / count, il.mean())
        mean_osl = np.where(count > 0, np.bincount(idx, ol, n) / count, ol.mean())
    notes = (f"{len(reqs)} requests binned to {dt:g}s, rate x{k:g}",)
    start = _history_steps(n * dt, history_s, dt)
    return Workload(p.name, dt, 0.0, count / dt * k, mean_isl, mean_osl, start, notes)


def _from_rate_curve(p: Path, series: str | None, k: float, dt: float, seed: int, isl: float | None,
                     osl: float | None, interpolation: str, history_s: float | None) -> Workload:
    t, y = load_rate_curve(p, series)
    series = series or p.stem
    if isl is None or osl is None:
        if series not in SERVEGEN_LENGTHS:
            raise ValueError(f"no mean ISL/OSL known for series {series!r}: pass --isl and --osl")
        isl = SERVEGEN_LENGTHS[series][0] if isl is None else isl
        osl = SERVEGEN_LENGTHS[series][1] if osl is None else osl
    window = float(np.median(np.diff(t))) if len(t) > 1 else 600.0
    gaps = y <= 0
    notes = [f"{series}: {len(t)} windows of {window:g}s, rate x{k:g}, Poisson arrivals per {dt:g}s (seed {seed})"]
    if gaps.any():
        ok = ~gaps
        if not ok.any():
            raise ValueError(f"{p}: series {series!r} has no non-zero window")
        y = y.copy()
        y[gaps] = np.interp(t[gaps], t[ok], y[ok])
        notes.append(f"{int(gaps.sum())} zero-rate windows treated as data gaps and interpolated")
    span = t[-1] - t[0] + window
    n = int(round(span / dt))
    ts = t[0] + (np.arange(n) + 0.5) * dt
    if interpolation == "linear":
        curve = np.interp(ts, t + window / 2, y)
    elif interpolation == "step":
        curve = y[np.clip(np.searchsorted(t, ts, side="right") - 1, 0, len(y) - 1)]
    else:
        raise ValueError(f"interpolation must be linear or step, got {interpolation!r}")
    rng = np.random.default_rng(seed)
    rate = rng.poisson(curve * k * dt) / dt
    start = _history_steps(n * dt, history_s, dt)
    return Workload(series, dt, float(t[0]), rate.astype(float), np.full(n, float(isl)), np.full(n, float(osl)),
                    start, tuple(notes))


def synthetic(rate: np.ndarray, isl: float, osl: float, dt: float = 1.0, name: str = "synthetic") -> Workload:
    """A workload from a rate array (tests, examples)."""
    rate = np.asarray(rate, float)
    return Workload(name, dt, 0.0, rate, np.full(len(rate), float(isl)), np.full(len(rate), float(osl)))
