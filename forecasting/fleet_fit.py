"""Warm start for a fleet: `fit_many` fits many `auto` models on their history at once.

``OnlineForecaster.fit`` replays a series bin by bin through every candidate (and, over its last
``fit_replay_s``, through the rolling-origin backtest): about a second of Python per series of 14
days at 1-minute steps, an hour of one core for 1,000 graphs x 3 series. Most of that is the cost of
numpy calls on tiny arrays, once per bin and candidate. `fit_many` runs the SAME replay for a batch of
series side by side: every per-bin step below is the corresponding line of the sequential code
(`online.OnlineForecaster.fit/_absorb`, `auto.Ensemble.observe/_weigh`, `residuals.ErrorLedger`,
`residuals.ResidualQuantiles.settle`, and the candidates' `observe`/`forecast`) on arrays with one
row per series, rows that have no data in a bin left as they are. At the end the state of each row is
written into its model object, which then updates and predicts with the ordinary code. The result
equals `model.fit(t, y)` to float rounding (tests/test_fleet_fit.py compares the whole state and the
forecasts).

Batched together: `auto` models (AutoForecaster) whose candidates are among holt / ewma-* /
revert-* / seasonal-profile / ar-mean with the same settings, whose series share a grid phase (range
queries over the same start, end and step do). Anything else (other models or candidates, Prophet,
a series without a finite value) is fitted one by one with `fit`, as before.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np

from forecasting.grid import Grid, to_grid
from forecasting.transform import LOG1P, clean

NONE = -(2**62)  # an empty slot / "no bin yet" (the ledgers' own sentinel)


def fit_many(models: Sequence, histories: Sequence[tuple[np.ndarray, np.ndarray]], batch: int = 512,
             min_batch: int = 1) -> int:
    """`models[i].fit(*histories[i])` for every i; the supported ones batched (at most `batch` series
    at a time; a group of fewer than `min_batch` is fitted one by one: a batch costs about as much
    per bin for 3 series as for 300). Returns how many were fitted by the batched replay."""
    groups: dict[tuple, list[tuple]] = {}
    done = 0
    for m, (t, y) in zip(models, histories):
        prep = _prepare(m, t, y)
        if prep is None:
            m.fit(np.asarray(t, float), np.asarray(y, float))
            continue
        groups.setdefault(prep[0], []).append([m, prep[1], t, y])
    for key, members in groups.items():
        if len(members) < min_batch:
            for m, _, t, y in members:
                m.fit(np.asarray(t, float), np.asarray(y, float))
            continue
        for i in range(0, len(members), batch):
            chunk = members[i:i + batch]
            batch = _Batch(key, [c[0] for c in chunk], [c[1] for c in chunk])
            for c in chunk:
                c[1] = None  # the per-series bins and values: in the batch's array now
            batch.run()
            del batch
            done += len(chunk)
    return done


# --- eligibility and per-series preparation -------------------------------------------------------

def _signature(model) -> tuple | None:
    """What must be equal for models to share a batch; None when the model is not supported."""
    from forecasting.auto import AutoForecaster, Ensemble
    from forecasting.holt import Holt
    from forecasting.mean_reversion import MeanReversion
    from forecasting.seasonal_profile import SeasonalProfile
    from forecasting.window_mean import ArMean

    if type(model) is not AutoForecaster or model.track_on_predict:
        return None
    ens = model.model
    if type(ens) is not Ensemble or not ens.own_burn_in or not ens._all_ready or ens.space is not LOG1P:
        return None
    cands = []
    for c in ens.cands:
        if type(c) is Holt:
            cands.append(("holt", c.alpha, c.beta, c.phi, c.trend))
        elif type(c) is MeanReversion:
            cands.append(("revert", c.level._a, c.mean._a, c.reversion_steps))
        elif type(c) is SeasonalProfile:
            lc = c.corr
            cands.append(("profile", c.slot, c.n_slots, c.weight, lc._a_fast, lc._a_slow, lc.decay_s, c.level._a))
        elif type(c) is ArMean:
            cands.append(("armean", c.n, c.keep, c.lmax, c.pool, c._win.n))
        else:
            return None
    r = model.residuals
    return (model.step_s, model.fit_replay_s, model.max_drop, model.burn_in_s, tuple(cands),
            tuple(ens.leads.tolist()), ens.mode, ens.power, ens.prune, ens._keep, ens.min_score_errors,
            ens.reweigh_every, ens.borrow, ens._prior, ens.prior_errors, tuple(ens._warm_s.tolist()),
            tuple(ens.ledger.strides.tolist()), tuple(r.leads.tolist()), tuple(r.ledger.strides.tolist()), r.window)


def _prepare(model, t, y):
    """(group key, (grid, last bin, bins with a finite value, their values)) or None (fit alone)."""
    sig = _signature(model)
    if sig is None:
        return None
    grid, ks, vals = to_grid(np.asarray(t, float), clean(np.asarray(y, float)), model.step_s)
    if len(ks) == 0:
        return None
    fin = np.isfinite(vals)
    if not fin.any():
        return None
    return (sig, grid.phase), (grid, int(ks[-1]), ks[fin], vals[fin])


# --- the candidates, batched ------------------------------------------------------------------------

class _Ctx:
    """One bin of the batch: its index k, mid time t, the rows with data (m), and per row the bins
    since its previous data (n, 1 for a first value; `un` when equal on every row with data)."""

    __slots__ = ("k", "t", "m", "all", "first", "anyfirst", "n", "un")

    def sel(self, new, old):
        return new if self.all else np.where(self.m, new, old)

    def pw(self, a: float, table: np.ndarray):
        """a ** n per row (as Python's float power: the table holds a ** i for small i)."""
        if self.un is not None:
            return a ** self.un
        return _power(a, self.n, table)


def _table(a: float) -> np.ndarray:
    return np.array([a ** i for i in range(256)])


def _power(a: float, n: np.ndarray, table: np.ndarray) -> np.ndarray:
    small = n < len(table)
    out = table[np.where(small, n, 0)]
    if not small.all():
        out = np.where(small, out, np.array([a ** int(x) for x in n.tolist()]))
    return out


class _BHolt:
    def __init__(self, c, S, bins=None):
        self.alpha, self.beta, self.phi, self.trend = c.alpha, c.beta, c.phi, c.trend
        self.level, self.slope = np.zeros(S), np.zeros(S)
        self._t_keep, self._t_phi = _table(1.0 - self.alpha), _table(self.phi)
        self._scalar: dict[int, tuple] = {}

    def _coef(self, ctx):
        """(a, reach, phi ** n) for the rows' steps n."""
        if ctx.un is not None:
            hit = self._scalar.get(ctx.un)
            if hit is None:
                n, phi = ctx.un, self.phi
                a = self.alpha if n == 1 else 1.0 - (1.0 - self.alpha) ** n
                reach = phi * (1.0 - phi ** n) / (1.0 - phi) if phi < 1.0 else n * 1.0
                hit = self._scalar[n] = (a, reach, phi ** n)
            return hit
        n = ctx.n
        a = np.where(n == 1, self.alpha, 1.0 - _power(1.0 - self.alpha, n, self._t_keep))
        pn = _power(self.phi, n, self._t_phi)
        reach = self.phi * (1.0 - pn) / (1.0 - self.phi) if self.phi < 1.0 else n * 1.0
        return a, reach, pn

    def observe(self, ctx, z):
        a, reach, pn = self._coef(ctx)
        if self.trend:
            pred = self.level + self.slope * reach
            b_pred = self.slope * pn
            level = pred + a * (z - pred)
            slope = b_pred + self.beta * ((level - self.level) / ctx.n - b_pred)
            self.slope = ctx.sel(slope, self.slope)
        else:
            level = self.level + a * (z - self.level)
        self.level = ctx.sel(level, self.level)
        if ctx.anyfirst:
            self.level = np.where(ctx.first, z, self.level)
            self.slope = np.where(ctx.first, 0.0, self.slope)

    def forecast(self, leads, mids):
        if not self.trend:
            return np.repeat(self.level[:, None], len(leads), axis=1)
        phi = self.phi
        reach = phi * (1.0 - phi ** leads) / (1.0 - phi) if phi < 1.0 else leads * 1.0
        return self.level[:, None] + self.slope[:, None] * reach[None, :]

    def write(self, c, i, k):
        c.level, c.slope, c.k = float(self.level[i]), float(self.slope[i]), k


class _BEwma:
    """correction.Ewma, updated on the batch's rows with data (its steps are the batch's)."""

    def __init__(self, a, S):
        self.a = a
        self.table = _table(a)
        self.s, self.w = np.zeros(S), np.zeros(S)

    def update(self, ctx, z):
        a = ctx.pw(self.a, self.table)
        self.s = ctx.sel(a * self.s + (1.0 - a) * z, self.s)
        self.w = ctx.sel(a * self.w + (1.0 - a), self.w)

    @property
    def value(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.w > 0, self.s / np.where(self.w > 0, self.w, 1.0), np.nan)

    def write(self, e, i, k):
        e._s, e._w, e.k = float(self.s[i]), float(self.w[i]), k


class _BMeanReversion:
    def __init__(self, c, S, bins=None):
        self.rs = c.reversion_steps
        self.level, self.mean = _BEwma(c.level._a, S), _BEwma(c.mean._a, S)

    def observe(self, ctx, z):
        self.level.update(ctx, z)
        self.mean.update(ctx, z)

    def forecast(self, leads, mids):
        mv = self.mean.value[:, None]
        return mv + (self.level.value[:, None] - mv) * (0.5 ** (leads / self.rs))[None, :]

    def write(self, c, i, k):
        self.level.write(c.level, i, k)
        self.mean.write(c.mean, i, k)
        c.k = k


class _BCorrection:
    """correction.LevelCorrection: updated on its own rows (those with a reference), so its own steps."""

    def __init__(self, lc, S):
        self.af, self.as_, self.step, self.decay = lc._a_fast, lc._a_slow, lc.step, lc.decay_s
        self.tf, self.ts = _table(self.af), _table(self.as_)
        self.sf, self.wf, self.ss, self.ws = (np.zeros(S) for _ in range(4))
        self.k = np.full(S, NONE, dtype=np.int64)

    def update(self, k, r, m):
        n = np.where(self.k == NONE, 1, np.maximum(1, k - self.k))
        kf, ks = _power(self.af, n, self.tf), _power(self.as_, n, self.ts)
        self.sf = np.where(m, kf * self.sf + (1.0 - kf) * r, self.sf)
        self.wf = np.where(m, kf * self.wf + (1.0 - kf), self.wf)
        self.ss = np.where(m, ks * self.ss + (1.0 - ks) * r, self.ss)
        self.ws = np.where(m, ks * self.ws + (1.0 - ks), self.ws)
        self.k = np.where(m, k, self.k)

    def at(self, leads):
        with np.errstate(invalid="ignore", divide="ignore"):
            fast = np.where(self.wf > 0, self.sf / np.where(self.wf > 0, self.wf, 1.0), 0.0)
            slow = np.where(self.ws > 0, self.ss / np.where(self.ws > 0, self.ws, 1.0), 0.0)
        out = slow[:, None] + (fast - slow)[:, None] * np.exp(-np.asarray(leads, float) * (self.step / self.decay))[None, :]
        return np.where((self.k != NONE)[:, None], out, 0.0)

    def write(self, lc, i):
        has = self.k[i] != NONE
        lc._sf, lc._wf, lc._ss, lc._ws = (float(x[i]) if has else 0.0 for x in (self.sf, self.wf, self.ss, self.ws))
        lc.k = int(self.k[i]) if has else None


class _BProfile:
    def __init__(self, c, S, bins=None):
        self.slot, self.ns, self.weight = c.slot, c.n_slots, c.weight
        self.prof = np.zeros((S, self.ns))
        self.has = np.zeros((S, self.ns), dtype=bool)
        self.corr = _BCorrection(c.corr, S)
        self.level = _BEwma(c.level._a, S)
        self.j = np.full(S, NONE, dtype=np.int64)
        self.sum, self.n = np.zeros(S), np.zeros(S, dtype=np.int64)
        self.k = np.full(S, NONE, dtype=np.int64)
        self.t = np.full(S, np.nan)
        self.rows = np.arange(S)

    def observe(self, ctx, z):
        k, t, m = ctx.k, ctx.t, ctx.m
        x = t / self.slot - 0.5
        j = math.floor(x)
        f = x - j
        p0, p1 = j % self.ns, (j + 1) % self.ns
        h0, h1 = self.has[:, p0], self.has[:, p1]
        v0, v1 = self.prof[:, p0], self.prof[:, p1]
        ref = np.where(h0 & h1, v0 + f * (v1 - v0), np.where(h0, v0, np.where(h1, v1, np.nan)))
        self.corr.update(k, z - ref, m & (ref == ref))
        jj = math.floor(t / self.slot)
        new = m & (self.j != jj)
        fold = new & (self.j != NONE) & (self.n > 0)
        if fold.any():
            r = self.rows[fold]
            p = self.j[r] % self.ns
            mean = self.sum[r] / self.n[r]
            had = self.has[r, p]
            old = self.prof[r, p]
            self.prof[r, p] = np.where(had, old + self.weight * (mean - old), mean)
            self.has[r, p] = True
        self.j = np.where(new, jj, self.j)
        self.sum = np.where(new, 0.0, self.sum)
        self.n = np.where(new, 0, self.n)
        self.sum = np.where(m, self.sum + z, self.sum)
        self.n = self.n + m
        self.level.update(ctx, z)
        self.t = np.where(m, t, self.t)

    def forecast(self, leads, mids):
        x = np.asarray(mids, float) / self.slot - 0.5
        j = np.floor(x)
        f = (x - j)[None, :]
        p0 = j.astype(np.int64) % self.ns
        p1 = (p0 + 1) % self.ns
        h0, h1 = self.has[:, p0], self.has[:, p1]
        v0, v1 = self.prof[:, p0], self.prof[:, p1]
        ref = np.where(h0 & h1, v0 + f * (v1 - v0), np.where(h0, v0, np.where(h1, v1, np.nan)))
        ok = np.isfinite(ref)
        return np.where(ok, np.where(ok, ref, 0.0) + self.corr.at(leads), self.level.value[:, None])

    def write(self, c, i, k):
        c._prof[:] = self.prof[i]
        c._has[:] = self.has[i]
        self.corr.write(c.corr, i)
        self.level.write(c.level, i, k)
        c._j = int(self.j[i]) if self.j[i] != NONE else None
        c._sum, c._n = float(self.sum[i]), int(self.n[i])
        c.k, c.t = k, float(self.t[i])


class _BWindow:
    """window_mean.WindowMean (as ArMean's window): a ring of the last n bins per row."""

    def __init__(self, w, S):
        self.n = w.n
        self.rk = np.full((S, self.n), NONE, dtype=np.int64)
        self.ry = np.zeros((S, self.n))
        self.sum = np.zeros(S)
        self.adds = np.zeros(S, dtype=np.int64)
        self.mean, self.z = np.zeros(S), np.zeros(S)
        self.k = np.full(S, NONE, dtype=np.int64)
        self.rows = np.arange(S)

    def observe(self, k, y, m):
        s = self.sum + y  # the new value first, then the expired ones, oldest first (as the deque)
        expired = (self.rk != NONE) & (self.rk <= k - self.n) & m[:, None]
        while expired.any():
            idx = np.argmin(np.where(expired, self.rk, np.iinfo(np.int64).max), axis=1)
            anyx = expired[self.rows, idx]
            s = np.where(anyx, s - self.ry[self.rows, idx], s)
            expired[self.rows, idx] = False
            self.rk[self.rows[anyx], idx[anyx]] = NONE
        slot = k % self.n
        self.rk[:, slot] = np.where(m, k, self.rk[:, slot])
        self.ry[:, slot] = np.where(m, y, self.ry[:, slot])
        self.sum = np.where(m, s, self.sum)
        self.adds = self.adds + m
        redo = m & (self.adds >= 1024)
        if redo.any():  # re-add now and then (exactly: fsum, as the deque's)
            for r in np.flatnonzero(redo):
                self.sum[r] = math.fsum(self.ry[r, self.rk[r] != NONE].tolist())
            self.adds = np.where(redo, 0, self.adds)
        cnt = (self.rk != NONE).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.maximum(self.sum, 0.0) / np.maximum(cnt, 1)
        self.mean = np.where(m, mean, self.mean)
        self.z = np.where(m, np.log1p(self.mean), self.z)
        self.k = np.where(m, k, self.k)

    def write(self, w, i):
        have = np.flatnonzero(self.rk[i] != NONE)
        order = have[np.argsort(self.rk[i, have])]
        w._buf = deque((int(self.rk[i, j]), float(self.ry[i, j])) for j in order)
        w._sum, w._adds = float(self.sum[i]), int(self.adds[i])
        w.mean, w._z = float(self.mean[i]), float(self.z[i])
        w.k = int(self.k[i]) if self.k[i] != NONE else None


class _BArMean:
    """window_mean.ArMean. Its per-lag sums decay by `keep` at every bin of a row; here they are kept
    as U = sums / g with g = keep ** (bins observed) per row (renormalised before it underflows), so a
    bin only touches the lags whose origin bin has data in some row: with the usual history (one
    sample a minute on a 15 s grid, the bins with data evenly spaced) the lags q, 2q, ... read as
    strided views of a mirrored ring of the last bins with data. The coefficients are ratios of two
    such sums (g cancels). The ring of the sequential model (bin % (lmax + 1)) is kept as well, for
    the state written back."""

    def __init__(self, c, S, bins):
        self.keep, self.lmax, self.pool = c.keep, c.lmax, c.pool
        self.lags, self.lo, self.hi = c._lags, c._lo, c._hi
        r = self.lmax + 1
        self.r = r
        self.ko = np.full((S, r), NONE, dtype=np.int64)
        self.M, self.D = np.zeros((S, r)), np.zeros((S, r))
        self.U, self.X = np.zeros((self.lmax, S)), np.zeros((self.lmax, S))  # lag x row
        self.g = np.ones(S)
        self.mean, self.dev = np.zeros(S), np.zeros(S)
        self.win = _BWindow(c._win, S)
        self.k = np.full(S, NONE, dtype=np.int64)
        self.k0 = int(bins[0])
        steps = np.diff(bins)
        self.q = int(steps[0]) if len(steps) and (steps == steps[0]).all() else 0
        if self.q:  # evenly spaced: the lags q, 2q, ... <= lmax, from a mirrored ring of positions
            self.nq = self.lmax // self.q
            self.R = self.nq + 1
            self.rm, self.rd = np.zeros((2 * self.R, S)), np.zeros((2 * self.R, S))
            self.pos = 0
        else:
            self.any = np.zeros(int(bins[-1]) - self.k0 + 1, dtype=bool)  # a bin with data in some row
            self.any[bins - self.k0] = True

    def observe(self, ctx, z):
        k, m = ctx.k, ctx.m
        y = np.expm1(np.minimum(z, 700.0))
        self.g = np.where(m, self.g * self.keep, self.g)
        inv = np.where(m, 1.0 / self.g, 0.0)
        ys = np.where(m, y, 0.0)
        if self.q:
            if self.nq:
                R, p = self.R, self.pos
                dm = self.rd[p + R - self.nq:p + R][::-1]  # positions 1..nq back: lags q..nq*q
                mm = self.rm[p + R - self.nq:p + R][::-1]
                q = self.q
                self.U[q - 1::q][:self.nq] += dm * (ys - mm) * inv
                self.X[q - 1::q][:self.nq] += dm * dm * inv
        else:
            o = k - self.lags
            rel = o - self.k0
            use = np.flatnonzero((rel >= 0) & self.any[np.clip(rel, 0, len(self.any) - 1)])
            if len(use):
                lag_o = o[use]
                slot = lag_o % self.r
                hit = (self.ko[:, slot] == lag_o) & m[:, None]
                d = np.where(hit, self.D[:, slot], 0.0).T
                self.U[use] += np.where(hit.T, d * (ys - self.M[:, slot].T), 0.0) * inv
                self.X[use] += d * d * inv
        low = m & (self.g < 1e-150)
        if low.any():
            self.U[:, low] *= self.g[low]
            self.X[:, low] *= self.g[low]
            self.g[low] = 1.0
        self.win.observe(k, y, m)
        wm = self.win.mean
        self.mean = np.where(m, wm, self.mean)
        self.dev = np.where(m, y - wm, self.dev)
        s = k % self.r
        self.ko[:, s] = np.where(m, k, self.ko[:, s])
        self.M[:, s] = np.where(m, wm, self.M[:, s])
        self.D[:, s] = np.where(m, y - wm, self.D[:, s])
        if self.q:  # the next position: this bin's mean and deviation (0 for rows without data)
            R, p = self.R, self.pos
            d = np.where(m, ys - wm, 0.0)
            mw = np.where(m, wm, 0.0)
            self.rd[p] = self.rd[p + R] = d
            self.rm[p] = self.rm[p + R] = mw
            self.pos = (p + 1) % R

    def forecast(self, leads, mids):
        lead = np.clip(leads, 1, self.lmax) - 1
        if self.pool > 1.0:
            zero = np.zeros((1, self.U.shape[1]))
            hi, lo = self.hi[lead], self.lo[lead]
            if self.q:  # only the lags q, 2q, ... hold sums (adding the zeros between changes nothing)
                q = self.q
                U, X = self.U[q - 1::q][:self.nq], self.X[q - 1::q][:self.nq]
                hi, lo = np.minimum(hi // q, self.nq), np.minimum(lo // q, self.nq)
            else:
                U, X = self.U, self.X
            cy = np.concatenate([zero, np.cumsum(U, axis=0)], axis=0)
            cx = np.concatenate([zero, np.cumsum(X, axis=0)], axis=0)
            sxy, sxx = (cy[hi] - cy[lo]).T, (cx[hi] - cx[lo]).T
        else:
            sxy, sxx = self.U[lead].T, self.X[lead].T
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.clip(np.where(sxx > 0, sxy / sxx, 0.0), 0.0, 1.0)
        return np.log1p(np.maximum(self.mean[:, None] + beta * self.dev[:, None], 0.0))

    def write(self, c, i, k):
        c._ko[:], c._m[:], c._d[:] = self.ko[i], self.M[i], self.D[i]
        c._sxy[:], c._sxx[:] = self.U[:, i] * self.g[i], self.X[:, i] * self.g[i]
        c._mean, c._dev = float(self.mean[i]), float(self.dev[i])
        self.win.write(c._win, i)
        c.k = k
        c._stale = True
        c._coefficients()


_BATCHED = {"Holt": _BHolt, "MeanReversion": _BMeanReversion, "SeasonalProfile": _BProfile, "ArMean": _BArMean}


# --- the ledgers, batched ---------------------------------------------------------------------------

class _BLedger:
    """residuals.ErrorLedger with one row per series (slots depend on the bin only: shared)."""

    def __init__(self, ledger, S):
        self.leads, self.strides, self.cap, self.base = ledger.leads, ledger.strides, ledger.cap, ledger._base
        self.width = ledger.width
        self.tgt = np.full((S, len(ledger._tgt)), NONE, dtype=np.int64)
        self.val = np.zeros((S, self.width, len(ledger._tgt)))

    def record(self, k, zhat, m):
        """zhat: (S, width, leads)."""
        on = (k % self.strides) == 0
        slots = self.base[on] + (k // self.strides[on]) % self.cap[on]
        mm = m[:, None]
        self.tgt[:, slots] = np.where(mm, (k + self.leads[on])[None, :], self.tgt[:, slots])
        self.val[:, :, slots] = np.where(mm[:, :, None], zhat[:, :, on], self.val[:, :, slots])

    def settle(self, k, z, m):
        """(rows: the leads that can have a forecast for k, hit (S, rows), errors (S, width, rows))."""
        o = k - self.leads
        slots = self.base + (o // self.strides) % self.cap
        rows = np.flatnonzero((o % self.strides) == 0)
        slots = slots[rows]
        hit = (self.tgt[:, slots] == k) & m[:, None]
        self.tgt[:, slots] = np.where(hit, NONE, self.tgt[:, slots])
        return rows, hit, z[:, None, None] - self.val[:, :, slots]

    def write(self, ledger, i):
        ledger._tgt[:] = self.tgt[i]
        ledger._val[:] = self.val[i]


class _Batch:
    def __init__(self, key, models, preps):
        self.models = models
        self.S = S = len(models)
        m0 = models[0]
        self.step = m0.step_s
        self.phase = key[1]
        ens = m0.model
        self.leads = ens.leads
        self.nl = len(self.leads)
        self.nc = len(ens.cands)
        self.ledger = _BLedger(ens.ledger, S)
        self.res_ledger = _BLedger(m0.residuals.ledger, S)
        self.window = m0.residuals.window
        self.max_drop = m0.max_drop
        self.burn_in = m0.burn_in_s
        self.ens = ens
        # per series: last bin (with or without a value), its bins and values
        self.grids = [p[0] for p in preps]
        self.last_bin = np.array([p[1] for p in preps], dtype=np.int64)
        ks = [p[2] for p in preps]
        self.replay_from = np.array([int(k[-1]) - int(m0.fit_replay_s / self.step) for k in ks], dtype=np.int64)
        lo_k = min(int(k[0]) for k in ks)
        have = np.zeros(max(int(k[-1]) for k in ks) - lo_k + 1, dtype=bool)
        for k in ks:
            have[k - lo_k] = True
        self.bins = np.flatnonzero(have) + lo_k
        self.cands = [_BATCHED[type(c).__name__](c, S, self.bins) for c in ens.cands]
        B = len(self.bins)
        self.Y = np.full((B, S), np.nan)
        for i, (k, v) in enumerate(zip(ks, (p[3] for p in preps))):
            self.Y[np.searchsorted(self.bins, k), i] = v
        preps.clear()  # the caller's list: the per-series copies are in Y now

    def run(self):
        S, nl, nc, step, phase = self.S, self.nl, self.nc, self.step, self.phase
        ens = self.ens
        leads, lead_f = self.leads, self.leads.astype(float)
        keep, reweigh = ens._keep, ens.reweigh_every
        warm_s, max_warm = ens._warm_s, ens._max_warm_s
        zprev = np.full(S, np.nan)  # the chassis's previous value (for the glitch filter)
        k_last = np.full(S, NONE, dtype=np.int64)
        z_last = np.zeros(S)
        recorded = np.full(S, NONE, dtype=np.int64)
        t_first = np.full(S, np.nan)
        res_err = np.full((S, nl, self.window), np.nan)
        res_cnt = np.zeros((S, nl), dtype=np.int64)
        e_abs, e_wsum = np.zeros((S, nc, nl)), np.zeros((S, nc, nl))
        e_cnt = np.zeros((S, nc, nl), dtype=np.int64)
        weights = np.full((S, nc, nl), 1.0 / nc)
        fc_all = np.zeros((S, nc, nl))
        fc_k = np.full(S, NONE, dtype=np.int64)
        since = np.zeros(S, dtype=np.int64)
        warm = np.zeros(S, dtype=bool)
        ctx = _Ctx()
        k_prev = np.full(S, NONE, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for b, k in enumerate(self.bins.tolist()):
                yv = self.Y[b]
                p = yv == yv
                t = k * step + phase - 0.5 * step
                zr = np.log1p(yv)
                if self.max_drop is not None:
                    zd = np.where((zprev == zprev) & (zr < zprev - self.max_drop), zprev - self.max_drop, zr)
                else:
                    zd = zr
                zprev = np.where(p, zr, zprev)
                t_first = np.where(p & (t_first != t_first), t, t_first)
                ctx.k, ctx.t, ctx.m, ctx.all = k, t, p, bool(p.all())
                first = p & (k_prev == NONE)
                ctx.first, ctx.anyfirst = first, bool(first.any())
                n = np.where(first | ~p, 1, np.maximum(1, k - k_prev))
                ctx.n = n
                ctx.un = None
                if ctx.all and not ctx.anyfirst:
                    n0 = int(n[0])
                    if (n == n0).all():
                        ctx.un = n0
                k_prev = np.where(p, k, k_prev)
                bt = p & (k > self.replay_from)
                anybt = bool(bt.any())
                if anybt:
                    burning = (t - t_first) < self.burn_in
                    # ResidualQuantiles.settle (the chassis's backtest)
                    r_rows, hit, errs = self.res_ledger.settle(k, zr, bt)
                    if hit.any():
                        ss, jj = np.nonzero(hit)
                        li = r_rows[jj]
                        res_err[ss, li, res_cnt[ss, li] % self.window] = errs[ss, 0, jj]
                        res_cnt[ss, li] += 1
                    # Ensemble.observe, backtest part before the candidates
                    warm = warm | (bt & (t - t_first >= max_warm))
                    e_rows, hit, errs = self.ledger.settle(k, zd, bt)
                    if hit.any():
                        upd = hit[:, None, :] & np.isfinite(errs)
                        a, w = e_abs[:, :, e_rows], e_wsum[:, :, e_rows]
                        e_abs[:, :, e_rows] = np.where(upd, keep * a + (1.0 - keep) * np.abs(errs), a)
                        e_wsum[:, :, e_rows] = np.where(upd, keep * w + (1.0 - keep), w)
                        e_cnt[:, :, e_rows] += upd
                for c in self.cands:
                    c.observe(ctx, zd)
                if anybt:
                    mids = t + lead_f * step
                    fc = np.stack([c.forecast(leads, mids) for c in self.cands], axis=1)
                    np.maximum(fc, 0.0, out=fc)
                    rec = ((t - t_first)[:, None] >= warm_s[None, :])[:, :, None]
                    self.ledger.record(k, np.where(rec, fc, np.nan), bt)
                    fc_all = np.where(bt[:, None, None], fc, fc_all)
                    fc_k = np.where(bt, k, fc_k)
                    due = bt & (since >= reweigh)
                    if due.any():
                        weights = np.where(due[:, None, None], self._weigh(e_abs, e_wsum, e_cnt), weights)
                        since = np.where(due, 0, since)
                    since = since + bt
                k_last = np.where(p, k, k_last)
                z_last = np.where(p, zr, z_last)
                if anybt:
                    rec = bt & ~burning
                    if rec.any():  # the chassis's record: the ensemble's point forecasts at the leads
                        z = np.maximum((weights * fc_all).sum(axis=1), 0.0)
                        z = np.where(np.isfinite(z), z, z_last[:, None])
                        self.res_ledger.record(k, z[:, None, :], rec)
                        recorded = np.where(rec, k, recorded)
        self._write(zprev, k_last, z_last, recorded, t_first, res_err, res_cnt, e_abs, e_wsum, e_cnt, weights,
                    fc_all, fc_k, since, warm)

    def _weigh(self, e_abs, e_wsum, e_cnt):
        """auto.Ensemble._weigh for every row (all candidates ready)."""
        ens = self.ens
        S, nc, nl = e_abs.shape
        score = np.maximum(np.where(e_wsum > 0, e_abs / e_wsum, np.inf), 1e-6)
        scored = e_cnt >= ens.min_score_errors
        s = np.where(scored, score, np.inf)
        best = s.min(axis=1)
        if ens.mode == "best":
            w = np.zeros_like(s)
            am = np.argmin(s, axis=1)
            w[np.arange(S)[:, None], am, np.arange(nl)[None, :]] = 1.0
        else:
            w = np.where(scored & (s <= ens.prune * best[:, None, :]), s ** -ens.power, 0.0)
        unscored = ~scored.any(axis=1)  # (S, nl)
        w = np.where(unscored[:, None, :], 1.0, w)
        if ens.borrow and unscored.any():
            idx = np.where(~unscored, np.arange(nl)[None, :], -1)
            prev = np.concatenate([np.full((S, 1), -1), np.maximum.accumulate(idx, axis=1)[:, :-1]], axis=1)
            take = unscored & (prev >= 0)
            borrowed = np.take_along_axis(w, np.maximum(prev, 0)[:, None, :].repeat(nc, axis=1), axis=2)
            w = np.where(take[:, None, :], borrowed, w)
        tot = w.sum(axis=1, keepdims=True)
        w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 1.0 / nc)
        if ens._prior is not None:
            n = e_cnt[:, ens._prior, :].astype(float)
            lam = n / (n + ens.prior_errors)
            if ens.mode == "best":
                lam = (lam >= 0.5).astype(float)
            w = lam[:, None, :] * w
            w[:, ens._prior, :] += 1.0 - lam
        return w

    def _write(self, zprev, k_last, z_last, recorded, t_first, res_err, res_cnt, e_abs, e_wsum, e_cnt, weights,
               fc_all, fc_k, since, warm):
        for i, m in enumerate(self.models):
            m._reset()
            ens = m.model
            for bc, c in zip(self.cands, ens.cands):
                bc.write(c, i, int(k_last[i]))
            self.ledger.write(ens.ledger, i)
            ens._abs[:], ens._wsum[:], ens._count[:] = e_abs[i], e_wsum[i], e_cnt[i]
            ens._weights = weights[i].copy()
            ens._fc = fc_all[i].copy()
            ens._fc_k = int(fc_k[i]) if fc_k[i] != NONE else None
            ens._fc_leads, ens._extra, ens._w_cache = ens.leads, None, None
            ens._since_weigh = int(since[i])
            ens.k = int(k_last[i])
            ens._t_first = float(t_first[i])
            ens._warm = bool(warm[i])
            ens.backtest = True
            r = m.residuals
            self.res_ledger.write(r.ledger, i)
            r._errors[:] = res_err[i]
            r._count[:] = res_cnt[i]
            r._cache.clear()
            m._k_last, m._z_last = int(k_last[i]), float(z_last[i])
            m._recorded = int(recorded[i]) if recorded[i] != NONE else None
            m._z_prev_model = float(zprev[i])
            m._t_first = float(t_first[i])
            m._grid.reset(Grid(self.step, self.phase), last_closed=int(self.last_bin[i]))
