"""`auto`: the per-series automatic choice, an inverse-error weighted ensemble of cheap candidates.

Default candidates (all on log1p demand, all O(1) per bin, or O(leads) for ``ar-mean``) run side
by side on every series:

- ``holt``             damped Holt trend, level half-life 3 min (``holt.Holt``)
- ``ewma-fast``        EWMA level, half-life 1 min (close to "last value", less noisy)
- ``ewma-slow``        EWMA level, half-life 10 min
- ``seasonal-profile`` the typical day (slot means averaged over days) plus a level correction
  fading with the horizon (``seasonal_profile``)
- ``revert-1h``, ``revert-6h``  the recent level reverting to the one-day mean with a 1 h / 6 h
  half-life (``mean_reversion``)
- ``ar-mean``          the raw-demand mean of the last 5 minutes (>= 10 bins) plus the last bin's
  deviation from it times a per-lead regression coefficient fitted online (``window_mean.ArMean``):
  the window mean for bursts that do not persist, close to the last value for a drifting level.
  It is also the PRIOR (below).

Also available (``candidates=...``): ``seasonal-daily`` and ``seasonal-weekly`` (seasonal naive,
``seasonal_naive``; they share one slot store), ``revert-3h``, ``last`` (the last bin), ``mean-5m`` and
``mean-10m`` (raw-demand window means, ``window_mean``), and ``prophet`` (the cadence-refitted
Prophet of ``prophet_model``, ``prophet_params`` passed to it; it takes part only once it has a
curve). The default set was chosen on the ServeGen and Azure traces: persistence candidates win at
minutes, mean reversion and the averaged daily profile at hours, while one-season-back naive copies
were too noisy there to earn weight.

Each candidate is scored by its own rolling-origin backtest, run online: at every closed bin its
forecasts for the tracked leads are written in an ``ErrorLedger`` and settled when the target bin
closes. The score per lead is the exponentially weighted mean absolute log error (= twice the
pinball loss at q = 0.5 in log1p space; half-life ``score_halflife`` errors, i.e. a recent window).

The ensemble forecast at lead L weights the candidates by ``score^-power`` among those within
``prune`` x the best score at L (``mode="best"``: only the best), with weights interpolated in
log(lead) between tracked leads, so different horizons may lean on different candidates (Holt for
minutes, the profile or mean reversion for hours). Weights are refreshed every ``reweigh_every``
bins. Until ``min_score_errors`` errors exist at a lead, the lead takes the weights of the nearest
shorter lead that has them (``borrow``; equal weights before any lead has).

Short histories (``prior``, ``prior_errors``). An hour of data gives a few tens of scored origins per
lead, too few to tell the candidates apart (their mean errors differ by a few per cent while the
noise is larger), and equal weights over mostly slow log-space smoothers were 14-39 % behind the
best Planner baseline on the hour-long Azure traces. So the weights shrink toward one prior
candidate, ``ar-mean``, which learns its single parameter per lead from every bin:
``w = lam * w_scores + (1 - lam) * prior``, ``lam = n / (n + prior_errors)`` with n the prior
candidate's scored errors at that lead (300 by default: the scores take over within hours on a
30 s grid, and are at ~60 % after the 3-day warm start of a 10-minute series). And each candidate is
scored from the end of ITS OWN warm-up (``warmup_s``: a window mean after its window; models
without one after the chassis burn-in), not after the chassis's 10-minute burn-in, which on an
hour of data would discard a third of the evidence (``own_burn_in``; the ensemble's own residuals
still wait for the burn-in).

Quantiles come, as for every model, from the ensemble's own residuals (``online.OnlineForecaster``).

``chosen`` (a string such as ``"holt+seasonal-profile"``) names the candidates carrying at least 20 %
of the weight at the focus horizon (default 300 s, the provisioning lead time), in candidate order;
``weights`` gives all weights there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forecasting.holt import Holt
from forecasting.online import OnlineForecaster
from forecasting.residuals import DEFAULT_ERROR_HORIZONS_S, ErrorLedger, tracked_leads
from forecasting.seasonal_naive import DAY_S, WEEK_S, SeasonalNaive, SeasonalStore
from forecasting.transform import LOG1P

DEFAULT_CANDIDATES: tuple[str, ...] = (
    "holt", "ewma-fast", "ewma-slow", "seasonal-profile", "revert-1h", "revert-6h", "ar-mean")
PRIOR_CANDIDATE = "ar-mean"  # the weights shrink toward it while a lead has few scored errors
PRIOR_ERRORS = 300.0
KNOWN_CANDIDATES: tuple[str, ...] = DEFAULT_CANDIDATES + (
    "seasonal-daily", "seasonal-weekly", "revert-3h", "prophet", "last", "mean-5m", "mean-10m")
CHOSEN_MIN_WEIGHT = 0.2
_REVERT = {"1h": 3600.0, "3h": 3 * 3600.0, "6h": 6 * 3600.0}
_WINDOW = {"mean-5m": 300.0, "mean-10m": 600.0}


def build_candidates(names: Sequence[str], step_s: float, seed: int = 0, prophet_params: dict | None = None) -> list:
    """The candidate point models, by name (seasonal views share one slot store)."""
    out = []
    store = None
    for name in names:
        if name == "holt":
            out.append(Holt(step_s, level_halflife_s=180.0, name="holt"))
        elif name == "ewma-fast":
            out.append(Holt(step_s, level_halflife_s=60.0, trend=False, name="ewma-fast"))
        elif name == "ewma-slow":
            out.append(Holt(step_s, level_halflife_s=600.0, trend=False, name="ewma-slow"))
        elif name in ("seasonal-daily", "seasonal-weekly"):
            if store is None:
                store = SeasonalStore(max(300.0, float(step_s)), WEEK_S)
            periods = (DAY_S,) if name == "seasonal-daily" else (WEEK_S, DAY_S)
            out.append(SeasonalNaive(step_s, periods=periods, store=store, name=name))
        elif name.startswith("revert-") and name[7:] in _REVERT:
            from forecasting.mean_reversion import MeanReversion

            out.append(MeanReversion(step_s, reversion_halflife_s=_REVERT[name[7:]], name=name))
        elif name in _WINDOW:
            from forecasting.window_mean import WindowMean

            out.append(WindowMean(step_s, window_s=_WINDOW[name], name=name))
        elif name == "ar-mean":
            from forecasting.window_mean import ArMean

            out.append(ArMean(step_s, name="ar-mean"))
        elif name == "last":
            from forecasting.window_mean import LastValue

            out.append(LastValue(step_s, name="last"))
        elif name == "seasonal-profile":
            from forecasting.seasonal_profile import SeasonalProfile

            out.append(SeasonalProfile(step_s, name="seasonal-profile"))
        elif name == "prophet":
            from forecasting.prophet_model import ProphetPoint

            out.append(ProphetPoint(step_s, seed, **(prophet_params or {})))
            out[-1].name = "prophet"
        else:
            raise ValueError(f"unknown auto candidate {name!r}; known: {', '.join(KNOWN_CANDIDATES)}")
    if len({m.name for m in out}) != len(out):
        raise ValueError(f"duplicate candidates in {list(names)}")
    return out


class Ensemble:
    """Point model (log1p space): the candidates, their online backtest and the weighted combination."""

    name = "auto"
    space = LOG1P

    def __init__(self, step_s: float, candidates: list, leads: np.ndarray, *, mode: str = "ensemble",
                 power: float = 2.0, prune: float = 2.0, score_halflife: float = 200.0,
                 min_score_errors: int = 10, focus_horizon_s: float = 300.0, max_origins_per_lead: int = 64,
                 reweigh_every: int = 4, borrow: bool = True, own_burn_in: bool = True,
                 burn_in_s: float = 600.0, prior: str | None = PRIOR_CANDIDATE,
                 prior_errors: float = PRIOR_ERRORS) -> None:
        if mode not in ("ensemble", "best"):
            raise ValueError(f"mode must be 'ensemble' or 'best', got {mode!r}")
        if not candidates:
            raise ValueError("auto needs at least one candidate")
        self.step = float(step_s)
        self.cands = list(candidates)
        self.names = tuple(c.name for c in self.cands)
        self.borrow = bool(borrow)
        self.prior_errors = float(prior_errors)
        self._prior = self.names.index(prior) if prior in self.names else None
        self.leads = np.asarray(leads, dtype=np.int64)
        self._log_leads = np.log(self.leads.astype(float))
        self.mode = mode
        self.power = float(power)
        self.prune = float(prune)
        self._keep = 0.5 ** (1.0 / float(score_halflife))
        self.min_score_errors = int(min_score_errors)
        self.reweigh_every = max(1, int(reweigh_every))
        self.focus_lead = max(1.0, float(focus_horizon_s) / self.step)
        self.ledger = ErrorLedger(self.leads, max_origins_per_lead, width=len(self.cands))
        self._all_ready = not any(hasattr(c, "ready") for c in self.cands)
        # Each candidate is scored from its own warm-up on (a window mean needs its window, a slow
        # smoother several half-lives), not from the chassis's burn-in: on a short history, the
        # origins in between are a large part of the evidence. See online.OnlineForecaster.
        self.own_burn_in = own_burn_in
        self._warm_s = np.array([float(getattr(c, "warmup_s", burn_in_s)) for c in self.cands])
        self._max_warm_s = float(self._warm_s.max())
        self._ones = np.ones(len(self.cands), dtype=bool)
        self.backtest = True  # off during fit's state-only phase (see online.OnlineForecaster.fit)
        self.reset()

    def reset(self) -> None:
        for c in self.cands:
            c.reset()
        self.ledger.reset()
        n, nl = len(self.cands), len(self.leads)
        self._abs = np.zeros((n, nl))  # EWMA of |error|, bias-corrected by _wsum
        self._wsum = np.zeros((n, nl))
        self._count = np.zeros((n, nl), dtype=np.int64)
        self._weights = np.full((n, nl), 1.0 / n)
        self._fc_k: int | None = None
        self._fc = np.zeros((n, nl))
        self._fc_leads = self.leads
        self._extra: np.ndarray | None = None
        self._w_cache = None
        self._since_weigh = 0
        self.k: int | None = None
        self._t_first: float | None = None
        self._warm = False  # every candidate past its warm-up

    def begin_history(self) -> None:
        for c in self.cands:
            c.begin_history()

    def end_history(self) -> None:
        for c in self.cands:
            c.end_history()

    def _ready(self) -> np.ndarray:
        if self._all_ready:
            return self._ones
        return np.array([getattr(c, "ready", True) for c in self.cands])

    def observe(self, k: int, t: float, z: float) -> None:
        if self._t_first is None:
            self._t_first = t
        if not self.backtest:  # fit's state-only phase: just the candidates' state
            for c in self.cands:
                c.observe(k, t, z)
            self.k = k
            return
        if not self._warm:
            self._warm = t - self._t_first >= self._max_warm_s
        rows, errs = self.ledger.settle(k, z)
        if len(rows):
            keep = self._keep
            a, w = self._abs[:, rows], self._wsum[:, rows]
            if self._all_ready and np.isfinite(errs).all():
                self._abs[:, rows] = keep * a + (1.0 - keep) * np.abs(errs)
                self._wsum[:, rows] = keep * w + (1.0 - keep)
                self._count[:, rows] += 1
            else:  # a candidate not ready (or warming up) at the origin recorded NaN: no score
                fin = np.isfinite(errs)
                self._abs[:, rows] = np.where(fin, keep * a + (1.0 - keep) * np.abs(np.where(fin, errs, 0.0)), a)
                self._wsum[:, rows] = np.where(fin, keep * w + (1.0 - keep), w)
                self._count[:, rows] += fin
        for c in self.cands:
            c.observe(k, t, z)
        self.k = k
        # Forecast the tracked leads (for the backtest) and the leads the last predict() asked for
        # (so that the next predict() is a weighted sum of cached numbers), in one call each.
        nl = len(self.leads)
        leads = self.leads if self._extra is None else np.concatenate([self.leads, self._extra])
        targets = k + leads
        mids = t + leads * self.step
        ready = self._ready()
        fc = np.empty((len(self.cands), len(leads)))
        for i, c in enumerate(self.cands):
            fc[i] = c.forecast(targets, mids)
        np.maximum(fc, 0.0, out=fc)
        if self._all_ready and self._warm:
            self.ledger.record(k, fc[:, :nl])
        else:  # not ready, or still warming up: NaN, not scored
            rec = ready & (t - self._t_first >= self._warm_s) if self.own_burn_in else ready & self._warm
            self.ledger.record(k, np.where(rec[:, None], fc[:, :nl], np.nan))
        self._fc, self._fc_leads, self._fc_k = fc, leads, k
        if self._since_weigh >= self.reweigh_every or not self._all_ready:
            self._weights = self._weigh(ready)
            self._since_weigh = 0
            self._w_cache = None
        self._since_weigh += 1

    def _weigh(self, ready: np.ndarray) -> np.ndarray:
        """Weights (candidates x tracked leads) from the current scores."""
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.maximum(np.where(self._wsum > 0, self._abs / self._wsum, np.inf), 1e-6)
        scored = (self._count >= self.min_score_errors) & ready[:, None]
        s = np.where(scored, score, np.inf)
        best = s.min(axis=0)
        if self.mode == "best":
            w = np.zeros_like(s)
            w[np.argmin(s, axis=0), np.arange(s.shape[1])] = 1.0
        else:
            w = np.where(scored & (s <= self.prune * best), s ** -self.power, 0.0)
        unscored = ~scored.any(axis=0)
        if unscored.any():
            w[:, unscored] = ready[:, None].astype(float)
            if self.borrow:  # a lead not yet scored takes the weights of the nearest shorter scored one
                for j in np.flatnonzero(unscored):
                    sc = np.flatnonzero(~unscored[:j])
                    if len(sc):
                        w[:, j] = w[:, sc[-1]]
        tot = w.sum(axis=0)
        w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 1.0 / len(self.cands))
        if self._prior is not None and ready[self._prior]:
            # Shrink toward the prior candidate while a lead has few scored errors: weight
            # prior_errors / (n + prior_errors) on it at a lead with n errors (all of it before any).
            # mode="best": the prior candidate alone until lam reaches 1/2, then the best.
            n = self._count[self._prior].astype(float)
            lam = n / (n + self.prior_errors)
            if self.mode == "best":
                lam = (lam >= 0.5).astype(float)
            w = lam * w
            w[self._prior] += 1.0 - lam
        return w

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        k = np.asarray(k)
        if self.k is None:
            return np.zeros(len(k))
        leads = np.maximum(k - self.k, 1)
        if self._fc_k == self.k:
            pos = np.searchsorted(self._fc_leads[len(self.leads):], leads) + len(self.leads)
            pos = np.minimum(pos, len(self._fc_leads) - 1)
            if len(self.leads) == len(leads) and np.array_equal(leads, self.leads):
                return (self._weights * self._fc[:, : len(self.leads)]).sum(axis=0)
            if np.array_equal(self._fc_leads[pos], leads):
                return (self._weights_at(leads) * self._fc[:, pos]).sum(axis=0)
        # Not cached: compute, and remember these leads for the next bins.
        extra = np.unique(leads)
        self._extra = extra if len(extra) <= 16 else None
        f = np.stack([np.maximum(c.forecast(k, t), 0.0) for c in self.cands])
        return (self._weights_at(leads) * f).sum(axis=0)

    def _weights_at(self, leads: np.ndarray) -> np.ndarray:
        """Weights (candidates x leads) interpolated in log(lead); cached until they change."""
        key = leads.tobytes()
        if self._w_cache is not None and self._w_cache[0] == key:
            return self._w_cache[1]
        w = self._interpolate(leads)
        self._w_cache = (key, w)
        return w

    def _interpolate(self, leads: np.ndarray) -> np.ndarray:
        x = np.log(np.maximum(np.asarray(leads, float), 1.0))
        ll = self._log_leads
        hi = np.clip(np.searchsorted(ll, x), 1, len(ll) - 1) if len(ll) > 1 else np.zeros(len(x), dtype=int)
        lo = np.maximum(hi - 1, 0)
        span = ll[hi] - ll[lo]
        f = np.clip((x - ll[lo]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
        w = self._weights[:, lo] * (1.0 - f) + self._weights[:, hi] * f
        return w / np.maximum(w.sum(axis=0, keepdims=True), 1e-12)

    @property
    def weights(self) -> dict[str, float]:
        """Each candidate's weight at the focus horizon."""
        w = self._interpolate(np.array([self.focus_lead]))[:, 0]
        return {n: float(x) for n, x in zip(self.names, w)}

    @property
    def scores(self) -> dict[str, np.ndarray]:
        """Each candidate's mean absolute log error per tracked lead (NaN before any error)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(self._wsum > 0, self._abs / self._wsum, np.nan)
        return {n: s[i].copy() for i, n in enumerate(self.names)}

    @property
    def chosen(self) -> str:
        w = self.weights
        names = [n for n in self.names if w[n] >= CHOSEN_MIN_WEIGHT] or [max(w, key=w.get)]
        return "+".join(names)


class AutoForecaster(OnlineForecaster):
    """`auto`: per-series inverse-error weighted ensemble (or best) of cheap candidates."""

    name = "auto"

    def __init__(self, step_s: float, seed: int = 0, *, candidates: Sequence[str] = DEFAULT_CANDIDATES,
                 mode: str = "ensemble", power: float = 2.0, prune: float = 2.0, score_halflife: float = 200.0,
                 min_score_errors: int = 10, focus_horizon_s: float = 300.0,
                 error_horizons_s: Sequence[float] = DEFAULT_ERROR_HORIZONS_S, max_origins_per_lead: int = 64,
                 prophet_params: dict | None = None, max_drop: float | None = 1.0, borrow: bool = True,
                 own_burn_in: bool = True, prior: str | None = PRIOR_CANDIDATE,
                 prior_errors: float = PRIOR_ERRORS, **chassis) -> None:
        leads = tracked_leads(step_s, error_horizons_s)
        model = Ensemble(step_s, build_candidates(candidates, step_s, seed, prophet_params), leads, mode=mode,
                         power=power, prune=prune, score_halflife=score_halflife, min_score_errors=min_score_errors,
                         focus_horizon_s=focus_horizon_s, max_origins_per_lead=max_origins_per_lead, borrow=borrow,
                         own_burn_in=own_burn_in, burn_in_s=chassis.get("burn_in_s", 600.0), prior=prior,
                         prior_errors=prior_errors)
        super().__init__(model, step_s, seed, error_horizons_s=error_horizons_s,
                         max_origins_per_lead=max_origins_per_lead, max_drop=max_drop, **chassis)

    @property
    def chosen(self) -> str:
        """The candidate(s) carrying >= 20 % of the weight at the focus horizon, joined by '+'."""
        return self.model.chosen

    @property
    def weights(self) -> dict[str, float]:
        return self.model.weights

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.model.names
