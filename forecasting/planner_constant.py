"""`planner-constant`: the Dynamo Planner's ConstantPredictor, the next value is the last value.

Planner: ``predict_next()`` returns the last appended value (0 before any), minimum 1 data point.
Multi-step: the last value holds at every horizon (that is what "constant" means). No log1p mode
in the Planner either.
"""

from __future__ import annotations

import numpy as np

from forecasting.planner_base import PlannerForecaster, PlannerPoint


class PlannerConstant(PlannerPoint):
    name = "planner-constant"

    def __init__(self, step_s: float, *, missing: str = "skip") -> None:
        super().__init__(step_s, log1p=False, missing=missing)

    def _reset_buffer(self) -> None:
        self.last = 0.0

    def _append(self, v: float) -> None:
        self.last = v

    def forecast(self, k: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.full(len(k), self.last)


class PlannerConstantForecaster(PlannerForecaster):
    """`planner-constant`: last value, held at every horizon."""

    name = "planner-constant"

    def __init__(self, step_s: float, seed: int = 0, *, missing: str = "skip", **chassis) -> None:
        super().__init__(PlannerConstant(step_s, missing=missing), step_s, seed, **chassis)
