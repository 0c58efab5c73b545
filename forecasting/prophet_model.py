"""Prophet with daily and weekly seasonality, refitted on a cadence without blocking forecasts.

Prophet is far too slow to fit at every 15 s tick (~0.2 s per fit), and it need not be: the daily
and weekly shape changes slowly. So:

- Every ``refit_every_s`` of model time (default hourly) Prophet is fitted on the last
  ``history_s`` (default 14 days) of the log1p series, averaged into ``fit_resolution_s`` bins
  (default 10 min; ~2,000 points), with daily seasonality once the history spans 2 days and weekly
  once it spans 8 days (additive in log space = multiplicative in demand). The fit returns a DENSE
  CURVE: Prophet's yhat on a ``curve_step_s`` grid (default 1 min) from a little before the data's
  end to ``refit_every_s + max_horizon_s`` after it.
- Between refits, a forecast is an interpolation in that curve, plus an online level correction from
  the recent residuals against it (``correction.LevelCorrection``: two-speed EWMA of log residuals,
  the fast part fading with the horizon). Past the curve's end (a refit kept failing), the curve is
  extended by whole days.
- ``refit="background"``: fits run in the shared worker process (``refit.shared_worker``);
  update/predict only poll a future, so a fit never blocks them. The new curve is adopted at the first
  update/predict after the fit completes; a fit that fails, or hangs past ``refit_timeout_s``, is
  abandoned and the previous curve kept (the next attempt comes a cadence later).
- ``refit="sync"`` (the default, for offline evaluation and tests): the same fits, on the same data,
  at the same model times, run inline, so the curves are identical; only their adoption is immediate.
  The live scaler passes ``refit="background"`` (``registry.MODELS["prophet"].live_params``).
- Before the first curve (history shorter than ``min_history_s``, default 2 days), the point
  forecast is an EWMA level of the recent bins. Loading history with ``fit()`` defers fitting to the
  end of the history (one fit, not one per hour of history), and does not replay the history
  through the error backtest (``fit_replay_s=0``): there is no curve during the history, and the
  fallback's errors would misstate Prophet's. The quantiles start from the fallback band.
- The curve is kept within a factor e of the range of the fitted history (log1p space): a guard
  against runaway trend extrapolation on short or odd histories.

Seeding: the MAP fit (L-BFGS from Prophet's deterministic initial values) gets ``seed`` passed to
CmdStan; Prophet's Monte Carlo intervals are not used (``uncertainty_samples=0``): quantiles come
from the residual wrapper like every other model's.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from forecasting.correction import Ewma, LevelCorrection
from forecasting.online import OnlineForecaster
from forecasting.refit import RefitWorker, shared_worker
from forecasting.transform import LOG1P

log = logging.getLogger(__name__)

DAY_S = 86400.0

_QUIET = ("prophet", "prophet.forecaster", "prophet.models", "prophet.plot", "cmdstanpy", "cmdstanpy.model")


def quiet_prophet_logs() -> None:
    """Prophet and CmdStanPy log every fit at INFO (and a plotly notice at import); silence them."""
    for name in _QUIET:
        lg = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
            lg.addHandler(logging.NullHandler())  # cmdstanpy adds its own INFO handler only if none
        lg.setLevel(logging.CRITICAL if name == "prophet.plot" else logging.WARNING)
        lg.propagate = False


def fit_curve(payload: dict[str, Any]) -> np.ndarray:
    """Fit Prophet to payload["t"] (s), payload["z"] (log1p) and return yhat on the curve grid
    ``curve_t0 + i * curve_dt``, i < curve_n, kept within 1 (a factor e) of the range of z. Runs in
    the worker process or inline; deterministic."""
    quiet_prophet_logs()
    import pandas as pd
    from prophet import Prophet

    df = pd.DataFrame({"ds": pd.to_datetime(np.asarray(payload["t"], float), unit="s"),
                       "y": np.asarray(payload["z"], float)})
    m = Prophet(
        growth="linear",
        daily_seasonality=bool(payload["daily"]),
        weekly_seasonality=bool(payload["weekly"]),
        yearly_seasonality=False,
        seasonality_mode="additive",
        changepoint_prior_scale=float(payload["changepoint_prior_scale"]),
        seasonality_prior_scale=float(payload["seasonality_prior_scale"]),
        n_changepoints=int(payload["n_changepoints"]),
        uncertainty_samples=0,
    )
    grid = payload["curve_t0"] + payload["curve_dt"] * np.arange(int(payload["curve_n"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Prophet's own pandas deprecation warnings, once per fit
        m.fit(df, seed=int(payload["seed"]))
        out = m.predict(pd.DataFrame({"ds": pd.to_datetime(grid, unit="s")}))
    yhat = out["yhat"].to_numpy(dtype=float)
    # Guard against runaway trend extrapolation (short or odd histories): stay within e^1 of the range
    # seen (log1p space).
    z = np.asarray(payload["z"], float)
    return np.clip(yhat, max(0.0, float(z.min()) - 1.0), float(z.max()) + 1.0)


class ProphetPoint:
    """Point model (log1p space): a cadence-refitted Prophet curve plus an online level correction."""

    name = "prophet"
    space = LOG1P

    def __init__(
        self,
        step_s: float,
        seed: int = 0,
        *,
        refit: str = "sync",
        refit_every_s: float = 3600.0,
        refit_timeout_s: float = 120.0,
        history_s: float = 14 * DAY_S,
        fit_resolution_s: float = 600.0,
        curve_step_s: float = 60.0,
        max_horizon_s: float = DAY_S,
        min_history_s: float = 2 * DAY_S,
        daily_min_span_s: float = 2 * DAY_S,
        weekly_min_span_s: float = 8 * DAY_S,
        changepoint_prior_scale: float = 0.05,
        seasonality_prior_scale: float = 10.0,
        n_changepoints: int = 25,
        fast_halflife_s: float = 900.0,
        slow_halflife_s: float = 6 * 3600.0,
        decay_s: float = 3600.0,
        level_halflife_s: float = 900.0,
        fit_fn: Callable[[dict[str, Any]], np.ndarray] | None = None,
        worker: RefitWorker | None = None,
    ) -> None:
        if refit not in ("sync", "background"):
            raise ValueError(f"refit must be 'sync' or 'background', got {refit!r}")
        self.step = float(step_s)
        self.seed = int(seed)
        self.refit = refit
        self.refit_every_s = float(refit_every_s)
        self.refit_timeout_s = float(refit_timeout_s)
        self.fit_res = max(float(fit_resolution_s), self.step)
        self.curve_dt = float(curve_step_s)
        self.max_horizon_s = float(max_horizon_s)
        self.min_history_s = float(min_history_s)
        self.daily_min_span_s = float(daily_min_span_s)
        self.weekly_min_span_s = float(weekly_min_span_s)
        self.prophet_params = dict(changepoint_prior_scale=float(changepoint_prior_scale),
                                   seasonality_prior_scale=float(seasonality_prior_scale),
                                   n_changepoints=int(n_changepoints))
        self.fit_fn = fit_fn or fit_curve
        self._worker = worker
        self._size = int(math.ceil(float(history_s) / self.fit_res)) + 1
        self._hs = np.zeros(self._size)
        self._hn = np.zeros(self._size, dtype=np.int32)
        self._hj = np.full(self._size, np.iinfo(np.int64).min, dtype=np.int64)
        self.lookback_s = max(3600.0, 4.0 * float(fast_halflife_s))
        self._recent: deque[tuple[int, float, float]] = deque(maxlen=max(8, int(self.lookback_s / self.step) + 1))
        self.corr = LevelCorrection(step_s, fast_halflife_s, slow_halflife_s, decay_s)
        self.level = Ewma(step_s, level_halflife_s)
        self.fits = 0  # curves adopted
        self.failures = 0  # fits that failed or timed out
        self.last_error: BaseException | None = None
        self.reset()

    # -- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        self._hn.fill(0)
        self._hj.fill(np.iinfo(np.int64).min)
        self._recent.clear()
        self.corr.reset()
        self.level.reset()
        self.k: int | None = None
        self.t = math.nan
        self._t_first = math.nan
        self._in_history = False
        self._last_fit_t: float | None = None
        self._future: Future | None = None
        self._future_meta: tuple[float, float, int] | None = None
        self.curve: tuple[float, float, np.ndarray] | None = None  # (t0, dt, values)

    @property
    def worker(self) -> RefitWorker:
        if self._worker is None:
            self._worker = shared_worker()
        return self._worker

    @property
    def ready(self) -> bool:
        """A curve is in use (before that, forecasts are the EWMA fallback)."""
        return self.curve is not None

    @property
    def refit_pending(self) -> bool:
        return self._future is not None

    def begin_history(self) -> None:
        self._in_history = True

    def end_history(self) -> None:
        self._in_history = False
        self._last_fit_t = None
        self._maybe_fit()

    def observe(self, k: int, t: float, z: float) -> None:
        self.poll()
        j = math.floor(t / self.fit_res)
        i = j % self._size
        if self._hj[i] != j:
            self._hj[i], self._hs[i], self._hn[i] = j, 0.0, 0
        self._hs[i] += z
        self._hn[i] += 1
        self._recent.append((k, t, z))
        self.level.update(k, z)
        if self.curve is not None:
            self.corr.update(k, z - self._curve_at(np.array([t]))[0])
        if self.k is None:
            self._t_first = t
        self.k, self.t = k, t
        if not self._in_history:
            self._maybe_fit()

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        self.poll()
        if self.k is None:
            return np.zeros(len(k))
        if self.curve is None:
            return np.full(len(k), self.level.value)
        return self._curve_at(np.asarray(t, float)) + self.corr.at(np.maximum(np.asarray(k) - self.k, 1))

    # -- fitting ------------------------------------------------------------------------------

    def _maybe_fit(self) -> None:
        if self._future is not None or self.k is None:
            return
        if self.t - self._t_first < self.min_history_s:
            return
        if self._last_fit_t is not None and self.t - self._last_fit_t < self.refit_every_s:
            return
        payload = self.payload()
        if payload is None:
            return
        self._last_fit_t = self.t  # the next attempt is a cadence later, whatever happens to this one
        meta = (payload["curve_t0"], payload["curve_dt"], payload["curve_n"])
        if self.refit == "sync":
            try:
                self._adopt(meta, self.fit_fn(payload))
            except Exception as exc:
                self._failed(exc)
        else:
            self._future = self.worker.submit(self.fit_fn, payload, self.refit_timeout_s)
            self._future_meta = meta

    def payload(self) -> dict[str, Any] | None:
        """What a fit needs: the history at fit resolution and the curve grid."""
        j_end = math.floor(self.t / self.fit_res)
        valid = (self._hn > 0) & (self._hj > j_end - self._size) & (self._hj <= j_end)
        if valid.sum() < 2:
            return None
        order = np.argsort(self._hj[valid])
        js = self._hj[valid][order]
        ts = (js + 0.5) * self.fit_res
        zs = (self._hs[valid] / self._hn[valid])[order]
        span = ts[-1] - ts[0]
        t0 = self.t - self.lookback_s
        n = int(math.ceil((self.lookback_s + self.refit_every_s + self.max_horizon_s) / self.curve_dt)) + 1
        return dict(
            t=ts, z=zs, seed=self.seed,
            daily=span >= self.daily_min_span_s, weekly=span >= self.weekly_min_span_s,
            curve_t0=float(t0), curve_dt=float(self.curve_dt), curve_n=n,
            **self.prophet_params,
        )

    def poll(self) -> None:
        """Adopt a finished background fit (non-blocking)."""
        f = self._future
        if f is None or not f.done():
            return
        self._future, meta = None, self._future_meta
        if f.cancelled():
            self._failed(RuntimeError("fit cancelled"))
            return
        exc = f.exception()
        if exc is not None:
            self._failed(exc)
        else:
            self._adopt(meta, f.result())

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the background fit in flight (if any) finishes and adopt it; for offline use
        and tests. True when nothing is left in flight."""
        f = self._future
        if f is not None:
            try:
                f.exception(timeout=timeout_s)
            except TimeoutError:
                return False
            except Exception:
                pass
            self.poll()
        return self._future is None

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = exc
        log.warning("prophet fit failed (%s); keeping the previous curve", exc)

    def _adopt(self, meta: tuple[float, float, int], values: Any) -> None:
        t0, dt, n = meta
        v = np.asarray(values, dtype=float).reshape(-1)
        if len(v) != n or not np.isfinite(v).all():
            self._failed(ValueError(f"fit returned {len(v)} values (finite: {np.isfinite(v).all()}), wanted {n}"))
            return
        self.curve = (float(t0), float(dt), v)
        self.fits += 1
        # Re-learn the correction against the new curve from the recent bins.
        self.corr.reset()
        if self._recent:
            ks, ts, zs = zip(*self._recent)
            res = np.asarray(zs) - self._curve_at(np.asarray(ts))
            for k, r in zip(ks, res.tolist()):
                self.corr.update(k, r)

    def _curve_at(self, t: np.ndarray) -> np.ndarray:
        t0, dt, v = self.curve
        t_end = t0 + dt * (len(v) - 1)
        past = t > t_end
        if past.any():  # beyond the curve: the same time of day, whole days earlier
            t = np.where(past, t - np.ceil((t - t_end) / DAY_S) * DAY_S, t)
        x = np.clip((t - t0) / dt, 0.0, len(v) - 1.0)
        i = np.minimum(x.astype(np.int64), len(v) - 2) if len(v) > 1 else np.zeros(len(x), dtype=np.int64)
        f = x - i
        return v[i] + f * (v[np.minimum(i + 1, len(v) - 1)] - v[i])


class ProphetForecaster(OnlineForecaster):
    """`prophet`: Prophet (daily + weekly) refitted hourly, curve + online correction between refits."""

    name = "prophet"

    def __init__(self, step_s: float, seed: int = 0, *, refit: str = "sync", refit_every_s: float = 3600.0,
                 refit_timeout_s: float = 120.0, history_s: float = 14 * DAY_S, fit_resolution_s: float = 600.0,
                 curve_step_s: float = 60.0, max_horizon_s: float = DAY_S, min_history_s: float = 2 * DAY_S,
                 fit_fn: Callable[[dict[str, Any]], np.ndarray] | None = None, worker: RefitWorker | None = None,
                 prophet_params: dict[str, Any] | None = None, fit_replay_s: float = 0.0,
                 max_drop: float | None = 1.0, **chassis) -> None:
        model = ProphetPoint(
            step_s, seed, refit=refit, refit_every_s=refit_every_s, refit_timeout_s=refit_timeout_s,
            history_s=history_s, fit_resolution_s=fit_resolution_s, curve_step_s=curve_step_s,
            max_horizon_s=max_horizon_s, min_history_s=min_history_s, fit_fn=fit_fn, worker=worker,
            **(prophet_params or {}),
        )
        # No backtest replay over the history: there is no curve before the fit at its end, and the
        # fallback's errors would misstate Prophet's. Quantiles start from the fallback band.
        super().__init__(model, step_s, seed, fit_replay_s=fit_replay_s, max_drop=max_drop, **chassis)

    def wait_for_refit(self, timeout_s: float | None = None) -> bool:
        """Wait for a background fit in flight and adopt it (offline use, tests)."""
        return self.model.wait(timeout_s)
