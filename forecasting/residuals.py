"""Honest quantiles for any point forecaster, from its own recent out-of-sample errors.

Every model, the Planner baselines included, gets its quantiles the same way, so that pinball loss
and coverage compare models and not the ways they make intervals:

1. At every closed bin (an "origin"), the model's point forecasts for a fixed set of leads (bins
   ahead) are written in an ``ErrorLedger`` (a rolling-origin backtest that runs as the data
   arrives). When a target bin closes, each forecast made for it becomes an error
   ``e = z_actual - z_forecast`` in log1p space (so errors are relative, whatever the level).
   Long leads record an origin only every few bins (at most ``max_origins_per_lead`` pending per
   lead), which bounds memory and cost; short leads record every origin.
2. ``ResidualQuantiles`` keeps the last ``window`` errors per lead and turns them into quantile
   offsets: quantile q of the forecast = point + bias + (Q_q - Q_0.5), where Q_q is the conformal
   q-quantile of the window's errors (rank ceil((n+1)q) for q >= 0.5, floor((n+1)q) for q < 0.5)
   and the bias the median of the last ``bias_window`` errors (default: the whole window, i.e.
   plain conformal quantiles; a short bias window follows level shifts faster but, tried on the
   ServeGen and Azure traces, its noise cost more than it gained, most at long leads whose recent
   errors are strongly correlated). Offsets are recomputed at each new error while a lead's window
   fills, then every few errors (a quantile of 256 errors hardly moves with one more; this keeps
   predict() cheap, deterministically).
3. Until a lead has ``min_errors`` errors, its offsets are blended with a fallback band
   ``z_q * sigma(h)`` that widens with the horizon: the spread measured at the nearest shorter lead
   with enough errors, times sqrt(lead ratio), capped at the default band (and never below that
   spread); before any lead has enough errors, the default ``fallback_sigma * sqrt(1 + h / tau)``.
4. Offsets at other horizons are interpolated in log(lead); beyond the longest tracked lead they
   widen with sqrt(lead).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from statistics import NormalDist
from typing import Sequence

import numpy as np

# Horizons (seconds) at which errors are tracked: the provisioning lead times (1.5-8 min) densely,
# then out to a day. The one-step lead is always tracked too.
DEFAULT_ERROR_HORIZONS_S: tuple[float, ...] = (60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


def tracked_leads(step_s: float, horizons_s: Sequence[float] = DEFAULT_ERROR_HORIZONS_S) -> np.ndarray:
    """Leads in bins: 1 and each horizon rounded to the grid, unique and ascending."""
    leads = {1} | {max(1, int(round(h / step_s))) for h in horizons_s if h > 0}
    return np.array(sorted(leads), dtype=np.int64)


_NONE = -(2**62)  # an empty ledger slot


class ErrorLedger:
    """Forecasts made at past origins for fixed leads, settled against what happened.

    Lead L records an origin every ``stride_L = ceil(L / max_origins_per_lead)`` bins, into a ring of
    ``L // stride_L + 2`` slots. Each origin holds `width` forecasts per lead (several candidates'
    forecasts are settled at once)."""

    __slots__ = ("leads", "strides", "cap", "width", "_base", "_tgt", "_val")

    def __init__(self, leads: np.ndarray, max_origins_per_lead: int = 64, width: int = 1) -> None:
        self.leads = np.asarray(leads, dtype=np.int64)
        self.strides = np.maximum(1, -(-self.leads // max(1, max_origins_per_lead)))
        self.cap = self.leads // self.strides + 2
        self.width = int(width)
        self._base = np.concatenate([[0], np.cumsum(self.cap)[:-1]]).astype(np.int64)
        self._tgt = np.full(int(self.cap.sum()), _NONE, dtype=np.int64)
        self._val = np.zeros((self.width, len(self._tgt)))

    def reset(self) -> None:
        self._tgt.fill(_NONE)

    def record(self, k: int, zhat: np.ndarray) -> None:
        """Forecasts made at origin bin k for bins k + leads: shape (len(leads),) or (width, len(leads))."""
        m = (k % self.strides) == 0
        if m.all():
            slots = self._base + (k // self.strides) % self.cap
            self._tgt[slots] = k + self.leads
            self._val[:, slots] = zhat
        else:
            slots = self._base[m] + (k // self.strides[m]) % self.cap[m]
            self._tgt[slots] = k + self.leads[m]
            self._val[:, slots] = np.reshape(zhat, (self.width, -1))[:, m]

    def settle(self, k: int, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Bin k closed with value z: (indices of the leads with a forecast for k, their errors,
        shape (width, hits))."""
        o = k - self.leads
        slots = self._base + (o // self.strides) % self.cap
        hit = ((o % self.strides) == 0) & (self._tgt[slots] == k)
        rows = np.flatnonzero(hit)
        slots = slots[rows]
        self._tgt[slots] = _NONE
        return rows, z - self._val[:, slots]


class ResidualQuantiles:
    """Per-lead windows of out-of-sample errors (log1p space) and the quantile offsets they give."""

    def __init__(
        self,
        step_s: float,
        horizons_s: Sequence[float] = DEFAULT_ERROR_HORIZONS_S,
        window: int = 256,
        min_errors: int = 20,
        bias_window: int | None = None,
        fallback_sigma: float = 0.2,
        fallback_tau_s: float = 1800.0,
        fallback_max_sigma: float = 1.0,
        max_origins_per_lead: int = 64,
    ) -> None:
        if window < 1 or min_errors < 1:
            raise ValueError("window and min_errors must be >= 1")
        self.step = float(step_s)
        self.leads = tracked_leads(step_s, horizons_s)
        self.ledger = ErrorLedger(self.leads, max_origins_per_lead)
        self.window = int(window)
        self.min_errors = int(min_errors)
        self.bias_window = self.window if bias_window is None else max(1, min(int(bias_window), self.window))
        self._refresh = max(1, min(self.window // 32, self.bias_window // 8))
        self._arange_bias = np.arange(self.bias_window)
        lead_s = self.leads * self.step
        self._fallback = np.minimum(fallback_sigma * np.sqrt(1.0 + lead_s / fallback_tau_s), fallback_max_sigma)
        self._log_leads = np.log(self.leads.astype(float))
        self._log_leads_list = self._log_leads.tolist()
        self._max_lead = float(self.leads[-1])
        self._errors = np.full((len(self.leads), self.window), np.nan)
        self._count = np.zeros(len(self.leads), dtype=np.int64)
        self._cache: dict[tuple[int, tuple[float, ...]], tuple[int, np.ndarray]] = {}

    def reset(self) -> None:
        self.ledger.reset()
        self._errors.fill(np.nan)
        self._count.fill(0)
        self._cache.clear()

    @property
    def counts(self) -> np.ndarray:
        """Errors held per tracked lead (at most `window`)."""
        return np.minimum(self._count, self.window)

    def record(self, k: int, zhat: np.ndarray) -> None:
        """Point forecasts (log1p space) made at origin bin k for bins k + leads."""
        self.ledger.record(k, zhat)

    def settle(self, k: int, z: float) -> None:
        """Bin k closed with value z (log1p space)."""
        rows, errors = self.ledger.settle(k, z)
        if len(rows):
            self._errors[rows, self._count[rows] % self.window] = errors[0]
            self._count[rows] += 1

    def _sorted(self, i: int) -> np.ndarray:
        n = min(int(self._count[i]), self.window)
        return np.sort(self._errors[i, :n])

    def _spread(self, i: int) -> float:
        """Robust half-width (16th to 84th percentile) of lead i's errors."""
        s = self._sorted(i)
        n = len(s)
        return 0.5 * (float(s[min(n - 1, math.ceil(0.84 * (n - 1)))]) - float(s[int(0.16 * (n - 1))]))

    def _lead_offsets(self, i: int, quantiles: tuple[float, ...]) -> np.ndarray:
        """Offsets at tracked lead i for the (ascending) quantiles (cached, see below)."""
        key = (i, quantiles)
        hit = self._cache.get(key)
        count = int(self._count[i])
        if hit is not None:
            # Recompute after each new error while the window fills, then every few errors (one
            # error moves a quantile of 256 very little; deterministic either way).
            n_then, off = hit
            if count >= self.min_errors and (
                count == n_then or (n_then >= self.window and count - n_then < self._refresh)
            ):
                return off
        n = min(count, self.window)
        s = self._sorted(i) if n else None
        w = min(n / self.min_errors, 1.0)
        sigma = float(self._fallback[i])
        if w < 1.0:
            # Borrow the spread of the nearest shorter lead with enough errors, widened like a random
            # walk (sqrt of the lead ratio) but not beyond the default band (nor below that spread).
            for j in range(i - 1, -1, -1):
                if self._count[j] >= self.min_errors:
                    b = self._spread(j)
                    sigma = min(max(b * math.sqrt(self.leads[i] / self.leads[j]), b), max(sigma, b))
                    break
        if n:
            mid = float(s[min(max(math.ceil((n + 1) * 0.5) - 1, 0), n - 1)])
            bias = mid
            if self.bias_window < n:
                m = self.bias_window
                recent = self._errors[i, (count - 1 - self._arange_bias[:m]) % self.window]
                km = min(max(math.ceil((m + 1) * 0.5) - 1, 0), m - 1)
                bias = float(np.partition(recent, km)[km])
        out = []
        prev = -math.inf
        for q in quantiles:
            fb = _normal_quantile(q) * sigma
            if n:
                rank = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
                emp = bias + float(s[min(max(rank - 1, 0), n - 1)]) - mid
                v = w * emp + (1.0 - w) * fb
            else:
                v = fb
            prev = max(prev, v)
            out.append(prev)
        arr = np.array(out)
        self._cache[key] = (count, arr)
        return arr

    def offsets(self, leads: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
        """Offsets (log1p space), shape (len(quantiles), len(leads)), for leads in bins (>= 1, any
        float); rows follow `quantiles`, which must be ascending."""
        qs = tuple(float(q) for q in quantiles)
        if len(leads) <= 8:
            return self._offsets_few(leads, qs)
        lead = np.maximum(np.asarray(leads, dtype=float), 1.0)
        x = np.log(lead)
        nl = len(self.leads)
        hi = np.searchsorted(self._log_leads, x)  # first tracked lead >= lead
        need = set(np.minimum(hi, nl - 1).tolist()) | set(np.clip(hi - 1, 0, nl - 1).tolist())
        table = np.zeros((len(qs), nl))  # only the columns bracketing `leads` are read by interp
        for i in need:
            table[:, i] = self._lead_offsets(i, qs)
        out = np.empty((len(qs), len(lead)))
        for j in range(len(qs)):
            out[j] = np.interp(x, self._log_leads, table[j])
        beyond = lead > self.leads[-1]
        if beyond.any():
            out[:, beyond] *= np.sqrt(lead[beyond] / self.leads[-1])
        return out

    def _offsets_few(self, leads: Sequence[float], qs: tuple[float, ...]) -> np.ndarray:
        """`offsets` for a handful of leads, in plain Python (numpy's per-call cost dominates)."""
        ll = self._log_leads_list
        nl = len(ll)
        out = np.empty((len(qs), len(leads)))
        for c, lead in enumerate(leads):
            lead = max(float(lead), 1.0)
            x = math.log(lead)
            hi = bisect_left(ll, x)
            if hi >= nl:
                col = self._lead_offsets(nl - 1, qs) * math.sqrt(lead / self._max_lead)
            elif ll[hi] == x or hi == 0:
                col = self._lead_offsets(hi, qs)
            else:
                a, b = self._lead_offsets(hi - 1, qs), self._lead_offsets(hi, qs)
                col = a + (x - ll[hi - 1]) / (ll[hi] - ll[hi - 1]) * (b - a)
            out[:, c] = col
        return out


_NORMAL = NormalDist()
_NQ: dict[float, float] = {}


def _normal_quantile(q: float) -> float:
    v = _NQ.get(q)
    if v is None:
        v = _NQ[q] = _NORMAL.inv_cdf(min(max(q, 1e-9), 1 - 1e-9))
    return v
