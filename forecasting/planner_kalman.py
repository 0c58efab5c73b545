"""`planner-kalman`: the Dynamo Planner's KalmanPredictor, a local linear trend Kalman filter.

Planner (filterpy ``KalmanFilter(dim_x=2, dim_z=1)``, reproduced here in plain floats):
state [level, trend], F = [[1, 1], [0, 1]], H = [1, 0], P0 = 1000 I, Q = diag(q_level, q_trend),
R = r, with the Planner's defaults q_level = 1.0, q_trend = 0.1, r = 10.0 (``kalman_*`` settings;
they are in the units of the series: the Planner feeds request counts per interval, raw by default).
The first value initialises the level (trend 0) without an update; each later value is one
predict + update. ``predict_next()`` is the predicted level one step ahead; it does not check
``kalman_min_points`` (only that the filter is initialised), nor does this.

Multi-step (not in the Planner): the filter's h-step prediction F^h x, i.e. level + h * trend,
where h is the lead in bins from the last observed bin (a gap skipped with missing="skip" is not
a filter step: the Planner's filter has no notion of time).
"""

from __future__ import annotations

import numpy as np

from forecasting.planner_base import PlannerForecaster, PlannerPoint


class PlannerKalman(PlannerPoint):
    name = "planner-kalman"

    def __init__(self, step_s: float, *, q_level: float = 1.0, q_trend: float = 0.1, r: float = 10.0,
                 log1p: bool = False, missing: str = "skip") -> None:
        self.q_level = max(1e-12, float(q_level))
        self.q_trend = max(1e-12, float(q_trend))
        self.r = max(1e-9, float(r))
        super().__init__(step_s, log1p=log1p, missing=missing)

    def _reset_buffer(self) -> None:
        self.initialized = False
        self.x0 = self.x1 = 0.0
        self.p00, self.p01, self.p10, self.p11 = 1000.0, 0.0, 0.0, 1000.0

    def _append(self, z: float) -> None:
        if not self.initialized:
            self.x0, self.x1, self.initialized = z, 0.0, True
            return
        # predict: x = F x, P = F P F' + Q
        x0, x1 = self.x0 + self.x1, self.x1
        p00 = self.p00 + self.p01 + self.p10 + self.p11 + self.q_level
        p01 = self.p01 + self.p11
        p10 = self.p10 + self.p11
        p11 = self.p11 + self.q_trend
        # update with z (Joseph form, as filterpy)
        s = p00 + self.r
        k0, k1 = p00 / s, p10 / s
        y = z - x0
        self.x0, self.x1 = x0 + k0 * y, x1 + k1 * y
        # P = (I - K H) P (I - K H)' + K R K'
        a00, a10 = 1.0 - k0, -k1  # I - K H = [[1 - k0, 0], [-k1, 1]]
        m00, m01 = a00 * p00, a00 * p01
        m10, m11 = a10 * p00 + p10, a10 * p01 + p11
        self.p00 = m00 * a00 + k0 * self.r * k0
        self.p01 = m00 * a10 + m01 + k0 * self.r * k1
        self.p10 = m10 * a00 + k1 * self.r * k0
        self.p11 = m10 * a10 + m11 + k1 * self.r * k1

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        if not self.initialized:
            return np.zeros(len(k))
        h = np.maximum(np.asarray(k) - self.k, 1)
        return self.x0 + h * self.x1


class PlannerKalmanForecaster(PlannerForecaster):
    """`planner-kalman`: local linear trend Kalman filter, h-step = level + h * trend."""

    name = "planner-kalman"

    def __init__(self, step_s: float, seed: int = 0, *, q_level: float = 1.0, q_trend: float = 0.1, r: float = 10.0,
                 log1p: bool = False, missing: str = "skip", **chassis) -> None:
        model = PlannerKalman(step_s, q_level=q_level, q_trend=q_trend, r=r, log1p=log1p, missing=missing)
        super().__init__(model, step_s, seed, **chassis)
