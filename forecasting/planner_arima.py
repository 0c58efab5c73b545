"""`planner-arima`: the Dynamo Planner's ARIMAPredictor, pmdarima ``auto_arima`` then online updates.

What the Planner does (``ARIMAPredictor`` in predictors.py; defaults load_predictor="arima",
load_predictor_log1p=False):
- fewer than 5 values: predict the last value; all values identical: predict that value
  (pmdarima would predict 0 for a constant series);
- first prediction: ``pmdarima.auto_arima(buffer, suppress_warnings=True, error_action="ignore")``
  (pmdarima's defaults: stepwise search, non-seasonal, p, q <= 5, d by KPSS test, AIC). If raw mode
  was requested and the chosen order has p = q = 0 (a random walk / white noise), it refits on
  log1p(buffer) and stays in log1p mode ("better for spiky series");
- later predictions: the values that arrived since the last prediction are fed to
  ``model.update(...)`` (refits the parameters from the previous ones, same order), then
  ``model.predict(n_periods=1)``; log1p mode maps back with expm1; clipped at >= 0; on any exception
  the last value.
- (Older Planner releases kept a 100-value window and re-ran auto_arima at every prediction.)

Deviations, for cost only: the first ``auto_arima`` sees at most the last ``window`` values (the
Planner fits whatever its buffer holds, e.g. a whole warm-up trace, which at 1,000+ points takes
10-60 s per series here); and when the model's own series grows past ``max_points`` it is re-selected
with auto_arima on the last ``window`` values (``model.update`` refits on the whole series, so its
cost grows without bound otherwise). ``window=None, max_points=None`` is the Planner exactly.

Multi-step (not in the Planner): ``model.predict(n_periods=h)``, h = the lead in bins from the last
observed bin. Like the Planner, the model is brought up to date only when a forecast is asked for
(``track_on_predict``), so the cost is per prediction, not per data point.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from forecasting.planner_base import PlannerForecaster, PlannerPoint
from forecasting.transform import IDENTITY

MIN_POINTS = 5
_BLAS = None  # threadpoolctl controller, made on first use


def _one_blas_thread():
    """A context limiting BLAS/OpenMP to one thread: ARIMA's matrices are tiny, and multithreaded BLAS
    only adds contention when many series (or other processes) share the cores."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1)


class PlannerArima(PlannerPoint):
    name = "planner-arima"

    def __init__(self, step_s: float, seed: int = 0, *, log1p: bool = False, missing: str = "skip",
                 window: int | None = 300, max_points: int | None = 1200) -> None:
        self.seed = int(seed)
        self.window = None if window is None else max(MIN_POINTS, int(window))
        self.max_points = None if max_points is None else max(int(max_points), self.window or 0)
        self.requested_log1p = bool(log1p)
        super().__init__(step_s, log1p=False, missing=missing)
        self.space = IDENTITY  # raw in and out; the log1p decision is internal, as in the Planner

    def _reset_buffer(self) -> None:
        self.raw: list[float] = []
        self.pending: list[float] = []
        self.model = None
        self.log_mode = self.requested_log1p
        self.model_len = 0
        self._cache_n = -1
        self._cache_path = np.zeros(0)
        self.order = None

    def _append(self, v: float) -> None:
        v = max(0.0, v)
        self.raw.append(v)
        self.pending.append(v)
        if self.window is not None and len(self.raw) > 2 * self.window:
            del self.raw[: len(self.raw) - self.window]

    def _last(self) -> float:
        return self.raw[-1] if self.raw else 0.0

    def _fit(self, values: list[float]) -> None:
        import pmdarima

        data = values if self.window is None else values[-self.window:]
        self.log_mode = self.requested_log1p
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = dict(suppress_warnings=True, error_action="ignore", random_state=self.seed)
            model = pmdarima.auto_arima([math.log1p(v) for v in data] if self.log_mode else list(data), **kw)
            p, _, q = model.order
            if p == 0 and q == 0 and not self.log_mode:
                try:
                    model = pmdarima.auto_arima([math.log1p(v) for v in data], **kw)
                    self.log_mode = True
                except Exception:
                    pass
        self.model, self.order, self.model_len = model, model.order, len(data)
        self.pending = []

    def _path(self, n_periods: int) -> np.ndarray:
        """The model's forecast path 1..n_periods ahead, raw units; raises on failure."""
        if self.model is None:
            self._fit(self.raw)
        elif self.pending:
            if self.max_points is not None and self.model_len + len(self.pending) > self.max_points:
                self._fit(self.raw)
            else:
                upd = [math.log1p(v) for v in self.pending] if self.log_mode else list(self.pending)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.model.update(upd)
                self.model_len += len(self.pending)
                self.pending = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = np.asarray(self.model.predict(n_periods=n_periods), dtype=float).reshape(-1)
        return np.maximum(np.expm1(np.minimum(path, 700.0)) if self.log_mode else path, 0.0)

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        h = np.maximum(np.asarray(k) - (self.k if self.k is not None else 0), 1)
        if len(self.raw) < MIN_POINTS:
            return np.full(len(h), self._last())
        if min(self.raw) == max(self.raw):
            return np.full(len(h), self.raw[0])
        need = int(h.max())
        if self._cache_n != self.n_added or len(self._cache_path) < need:
            try:
                with _one_blas_thread():
                    self._cache_path = self._path(
                        max(need, len(self._cache_path) if self._cache_n == self.n_added else 0))
            except Exception:
                self.pending = []
                self._cache_path = np.full(need, self._last())
            self._cache_n = self.n_added
        return self._cache_path[h - 1]


class PlannerArimaForecaster(PlannerForecaster):
    """`planner-arima`: pmdarima auto_arima, then online updates; h-step = the ARIMA path."""

    name = "planner-arima"
    track_on_predict = True

    def __init__(self, step_s: float, seed: int = 0, *, log1p: bool = False, missing: str = "skip",
                 window: int | None = 300, max_points: int | None = 1200, **chassis) -> None:
        model = PlannerArima(step_s, seed, log1p=log1p, missing=missing, window=window, max_points=max_points)
        super().__init__(model, step_s, seed, **chassis)
