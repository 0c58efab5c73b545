"""The chassis every model runs in: a point model on a regular grid, made into a `Forecaster`.

A `PointModel` only knows closed grid bins (index k, mid time t, value z in its own space) and
makes point forecasts for later bins. `OnlineForecaster` does the rest, identically for all models:

- cleaning (negative / NaN / inf are missing), gridding (``grid.OnlineGrid``: mean per bin; a
  regularly sampled series closes one bin per point, so there is no added delay);
- the transform into the model's space and back (ours: log1p; the Planner baselines: raw);
- honest quantiles: every closed bin is an origin of a rolling-origin backtest whose errors feed
  ``residuals.ResidualQuantiles``; quantile q = point + the empirical error quantile at that lead
  (log1p space), clipped at >= 0, monotone in q;
- ``fit(t, y)``: starts over; the history is loaded fast (state only) except its last
  ``fit_replay_s``, which is replayed with the backtest on so that quantiles are honest at once;
- optionally (``max_drop``, our models: 1.0) a one-bin glitch filter: a fall of more than a factor
  e from one bin to the next reaches the model damped until the next bin confirms it;
- a burn-in: forecasts made in the first ``burn_in_s`` (10 min) after a model's first data are
  not backtested (a model whose smoothing has not converged would otherwise fill its error window,
  and auto's scores, with start-up errors that say nothing about its later ones).

predict(now, horizons) forecasts the bins holding now + h, at least the bin after the last closed
one (so h = 0 is the next bin); it first closes the open bin if `now` is past its end. The lead
used for the error quantiles is counted from the last bin with data, so after a gap the band is
that of a longer horizon.

Models whose forecasts are expensive (the ARIMA and Prophet baselines) set ``track_on_predict``:
they forecast (and record the backtest origin) only when predict() is called, at most once per
bin, instead of at every bin.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np

from forecasting.base import DEFAULT_QUANTILES, Forecast
from forecasting.grid import Grid, OnlineGrid, to_grid
from forecasting.residuals import DEFAULT_ERROR_HORIZONS_S, ResidualQuantiles
from forecasting.transform import LOG1P, Transform, clean, clean_value


class PointModel(Protocol):
    """A point forecaster on closed grid bins. Bin indices only increase; a jump is a gap."""

    name: str
    space: Transform  # the space observe() receives and forecast() returns

    def reset(self) -> None:
        """Forget everything."""

    def observe(self, k: int, t: float, z: float) -> None:
        """Bin k (mid time t, seconds) closed with the finite value z (model space)."""

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Point forecasts (model space) for bins k (> the last observed bin), mid times t."""

    # Optional attributes: `backtest: bool`, set False by the chassis during fit's state-only phase
    # for models that run their own per-bin backtest (auto) and can skip it there; `ready: bool`,
    # False while the model only has its fallback forecast (Prophet before its first curve).

    def begin_history(self) -> None:
        """A batch of history follows (fit): skip expensive per-bin work until end_history()."""

    def end_history(self) -> None:
        """The history is loaded."""


class OnlineForecaster:
    """A `Forecaster` (forecasting.base) around a `PointModel`."""

    name = "online"
    track_on_predict = False

    def __init__(
        self,
        model: PointModel,
        step_s: float,
        seed: int = 0,
        *,
        error_horizons_s: Sequence[float] = DEFAULT_ERROR_HORIZONS_S,
        residual_window: int = 256,
        min_errors: int = 20,
        bias_window: int | None = None,
        fallback_sigma: float = 0.2,
        fit_replay_s: float = 86400.0,
        max_origins_per_lead: int = 64,
        max_drop: float | None = None,
        burn_in_s: float = 600.0,
    ) -> None:
        self.model = model
        self.step_s = float(step_s)
        self.seed = int(seed)
        self.fit_replay_s = float(fit_replay_s)
        self.max_drop = None if max_drop is None else float(max_drop)
        self.burn_in_s = float(burn_in_s)
        self._t_first = math.nan  # time of the first bin with data
        if self.max_drop is not None and model.space is not LOG1P:
            raise ValueError("max_drop applies to models working on log1p values")
        self._z_prev_model = math.nan  # the last observed value (model space), for the glitch filter
        self._grid = OnlineGrid(step_s)
        self.residuals = ResidualQuantiles(
            step_s, error_horizons_s, window=residual_window, min_errors=min_errors, bias_window=bias_window,
            fallback_sigma=fallback_sigma, max_origins_per_lead=max_origins_per_lead,
        )
        self._leads = self.residuals.leads
        # A model that scores its own candidates and handles their warm-up (auto) keeps its backtest
        # on during the burn-in; the burn-in still keeps start-up errors out of the residuals.
        self._has_backtest = hasattr(model, "backtest") and not getattr(model, "own_burn_in", False)
        self._k_last: int | None = None  # last observed bin
        self._z_last = 0.0  # its value, log1p space
        self._recorded: int | None = None  # last origin written in the backtest

    # -- the protocol -------------------------------------------------------------------------

    def fit(self, t: np.ndarray, y: np.ndarray) -> None:
        self._reset()
        grid, ks, vals = to_grid(np.asarray(t, float), clean(np.asarray(y, float)), self.step_s)
        if len(ks) == 0:
            return
        last_bin = int(ks[-1])
        fin = np.isfinite(vals)
        ks, vals = ks[fin], vals[fin]
        if len(ks):
            mids = grid.mid(ks)
            zm = self.model.space.forward(vals)
            replay_from = ks[-1] - int(self.fit_replay_s / self.step_s)
            self.model.begin_history()
            has_flag = hasattr(self.model, "backtest")
            try:
                n_state = int(np.searchsorted(ks, replay_from, side="right"))
                if has_flag:
                    self.model.backtest = False
                if n_state:
                    self._t_first = float(mids[0])
                for k, tm, z in zip(ks[:n_state].tolist(), mids[:n_state].tolist(), zm[:n_state].tolist()):
                    self.model.observe(k, tm, self._deglitch(z))
                if n_state:
                    self._k_last, self._z_last = int(ks[n_state - 1]), math.log1p(float(vals[n_state - 1]))
                if has_flag:
                    self.model.backtest = True
                for k, z, y1 in zip(ks[n_state:].tolist(), zm[n_state:].tolist(), vals[n_state:].tolist()):
                    self._absorb(grid, k, y1, z)
            finally:
                if has_flag:
                    self.model.backtest = True
                self.model.end_history()
        self._grid.reset(grid, last_closed=last_bin)

    def update(self, t: float, y: float) -> None:
        t = float(t)
        if not math.isfinite(t):
            return
        for k, v in self._grid.add(t, clean_value(y)):
            self._absorb(self._grid.grid, k, v, self.model.space.f(v))

    def predict(
        self, now: float, horizons: Sequence[float], quantiles: Sequence[float] = DEFAULT_QUANTILES
    ) -> Forecast:
        now = float(now)
        h_in = np.asarray(horizons, dtype=float).reshape(-1)
        h = np.maximum(h_in, 0.0)
        qs = [float(q) for q in quantiles]
        if any(not (0.0 < q < 1.0) for q in qs):
            raise ValueError(f"quantiles must be in (0, 1), got {qs}")
        for k, v in self._grid.advance(now):
            self._absorb(self._grid.grid, k, v, self.model.space.f(v))
        if self._k_last is None or self._grid.grid is None or len(h) == 0:
            return Forecast(now, h_in, {q: np.zeros(len(h)) for q in qs})
        g = self._grid.grid
        k_floor = max(self._k_last, self._grid.last_closed if self._grid.last_closed is not None else self._k_last)
        targets = np.maximum(g.indices(now + h), k_floor + 1)
        if self.track_on_predict and self._recorded != self._k_last and not self._burning():
            both = np.concatenate([self._k_last + self._leads, targets])
            z = self._point(g, both)
            self.residuals.record(self._k_last, z[: len(self._leads)])
            self._recorded = self._k_last
            z = z[len(self._leads):]
        else:
            z = self._point(g, targets)
        order = sorted(set(qs))
        off = self.residuals.offsets(targets - self._k_last, order)
        vals = np.maximum(np.expm1(np.minimum(z[None, :] + off, 700.0)), 0.0)
        vals = np.maximum.accumulate(vals, axis=0)  # monotone in q, also after clipping
        by_q = {q: vals[i] for i, q in enumerate(order)}
        return Forecast(now, h_in, {q: by_q[q].copy() for q in qs})

    # -- internals ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._grid.reset()
        self.model.reset()
        self.residuals.reset()
        self._k_last, self._z_last, self._recorded = None, 0.0, None
        self._z_prev_model = math.nan
        self._t_first = math.nan

    def _point(self, g: Grid, targets: np.ndarray) -> np.ndarray:
        """The model's point forecasts for bins `targets`, in log1p space, finite and >= 0."""
        z = self.model.forecast(targets, g.mid(targets))
        if self.model.space is not LOG1P:
            z = np.log1p(np.maximum(self.model.space.inverse(z), 0.0))
        z = np.maximum(z, 0.0)
        bad = ~np.isfinite(z)
        if bad.any():
            z[bad] = self._z_last
        return z

    def _burning(self) -> bool:
        g = self._grid.grid
        t = self._k_last * g.step + g.phase - 0.5 * g.step
        return t - self._t_first < self.burn_in_s

    def _deglitch(self, z: float) -> float:
        """With max_drop set: a fall of more than max_drop (log1p) below the previous bin is passed
        to the model as a fall of max_drop, until the next bin confirms it (a one-bin dip to near
        zero is usually a partial scrape window or a counter reset, and smoothing models would
        carry it for several bins). Rises pass unchanged; the backtest sees the real value."""
        prev, self._z_prev_model = self._z_prev_model, z
        if self.max_drop is not None and prev == prev and z < prev - self.max_drop:
            return prev - self.max_drop
        return z

    def _absorb(self, g: Grid, k: int, y: float, z_model: float) -> None:
        """Bin k closed with value y (raw, finite); z_model is y in the model's space."""
        z = math.log1p(y)
        t = k * g.step + g.phase - 0.5 * g.step
        if self._t_first != self._t_first:
            self._t_first = t
        burning = t - self._t_first < self.burn_in_s
        self.residuals.settle(k, z)
        if burning and self._has_backtest:
            self.model.backtest = False
        try:
            self.model.observe(k, t, self._deglitch(z_model))
        finally:
            if burning and self._has_backtest:
                self.model.backtest = True
        self._k_last, self._z_last = k, z
        if not self.track_on_predict and not burning:
            self.residuals.record(k, self._point(g, k + self._leads))
            self._recorded = k
