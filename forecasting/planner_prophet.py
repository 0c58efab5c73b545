"""`planner-prophet`: the Dynamo Planner's ProphetPredictor, a NEW Prophet fitted at every step.

What the Planner does (``ProphetPredictor``; defaults prophet_window_size=50, log1p off):
- keeps the last 50 values with synthetic timestamps ``2024-01-01 + i * interval`` (i counts the
  values appended: index-based, gaps do not exist for it);
- fewer than 5 values: predicts the last value;
- otherwise, at every prediction: ``Prophet()`` with all defaults (seasonalities "auto": with 50
  points none is enabled unless 50 steps span 2 days), ``fit`` on the 50 points, ``predict`` the next
  timestamp, yhat clipped at >= 0 (expm1 first in log1p mode).

Here: the same, with one deviation that does not change yhat: ``uncertainty_samples=0`` (the Planner
only reads yhat; Prophet's interval simulation would only cost time). The fit gets ``seed`` (the MAP
fit is deterministic anyway). A model is fitted at most once per new value, and only when a forecast
is asked for (``track_on_predict``), as in the Planner.

Multi-step (not in the Planner): the same fitted model predicts the synthetic timestamps h steps
ahead (h = lead in bins from the last observed bin), i.e. Prophet's trend extrapolation.
"""

from __future__ import annotations

import warnings
from collections import deque
from datetime import datetime

import numpy as np

from forecasting.planner_base import PlannerForecaster, PlannerPoint
from forecasting.prophet_model import quiet_prophet_logs

MIN_POINTS = 5
START = datetime(2024, 1, 1)


class PlannerProphet(PlannerPoint):
    name = "planner-prophet"

    def __init__(self, step_s: float, seed: int = 0, *, window: int = 50, log1p: bool = False,
                 missing: str = "skip") -> None:
        self.seed = int(seed)
        self.window = max(MIN_POINTS, int(window))
        super().__init__(step_s, log1p=log1p, missing=missing)

    def _reset_buffer(self) -> None:
        self.buf: deque[float] = deque(maxlen=self.window)
        self._model = None
        self._model_n = -1
        self._cache: dict[int, float] = {}

    def _append(self, v: float) -> None:
        self.buf.append(v)

    def _fitted(self):
        if self._model_n != self.n_added:
            quiet_prophet_logs()
            import pandas as pd
            from prophet import Prophet

            first = self.n_added - len(self.buf)
            ds = pd.to_datetime(START) + pd.to_timedelta((first + np.arange(len(self.buf))) * self.step, unit="s")
            m = Prophet(uncertainty_samples=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Prophet's own pandas deprecation warnings
                m.fit(pd.DataFrame({"ds": ds, "y": list(self.buf)}), seed=self.seed)
            self._model, self._model_n, self._cache = m, self.n_added, {}
        return self._model

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        h = np.maximum(np.asarray(k) - (self.k if self.k is not None else 0), 1)
        if len(self.buf) < MIN_POINTS:
            return np.full(len(h), self.buf[-1] if self.buf else 0.0)
        import pandas as pd

        m = self._fitted()
        todo = sorted(set(h.tolist()) - set(self._cache))
        if todo:
            ds = pd.to_datetime(START) + pd.to_timedelta((self.n_added - 1 + np.asarray(todo)) * self.step, unit="s")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yhat = m.predict(pd.DataFrame({"ds": ds}))["yhat"].to_numpy(dtype=float)
            self._cache.update(zip(todo, yhat.tolist()))
        return np.array([self._cache[x] for x in h.tolist()])


class PlannerProphetForecaster(PlannerForecaster):
    """`planner-prophet`: Prophet() on the last 50 values, refitted from scratch at every step."""

    name = "planner-prophet"
    track_on_predict = True

    def __init__(self, step_s: float, seed: int = 0, *, window: int = 50, log1p: bool = False,
                 missing: str = "skip", **chassis) -> None:
        super().__init__(PlannerProphet(step_s, seed, window=window, log1p=log1p, missing=missing), step_s, seed,
                         **chassis)
