"""The forecasting models by name: ``make(name, step_s, seed=0, **params)`` builds one.

Every model implements ``forecasting.base.Forecaster`` and runs in the same chassis
(``online.OnlineForecaster``: gridding, cleaning, residual quantiles), so they differ only in their
point forecasts. ``baseline=True`` marks the reproductions of Dynamo's SLA Planner predictors.
``live_params`` are the parameters the live scaler should add to its own (``make(name, step_s,
seed, **info.live_params, **params)``): the defaults suit offline evaluation, where everything must
be synchronous and reproducible.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from forecasting.base import Forecaster


@dataclass(frozen=True)
class ModelInfo:
    """A registered model. `factory` is "module:Class", imported on first use (Prophet and pmdarima
    are slow to import and only needed by the models that use them); the class is called as
    Class(step_s, seed, **params)."""

    name: str
    factory: str
    baseline: bool
    description: str
    live_params: dict[str, Any] = field(default_factory=dict)

    def build(self, step_s: float, seed: int = 0, **params: Any) -> Forecaster:
        module, cls = self.factory.split(":")
        return getattr(importlib.import_module(module), cls)(float(step_s), int(seed), **params)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("auto", "forecasting.auto:AutoForecaster", False,
                  "per-series inverse-error weighted ensemble of Holt, EWMAs, a smoothed daily profile and "
                  "mean reversion, scored by an online rolling-origin backtest per horizon"),
        ModelInfo("holt", "forecasting.holt:HoltForecaster", False, "damped Holt linear trend on log1p demand"),
        ModelInfo("seasonal-naive", "forecasting.seasonal_naive:SeasonalNaiveForecaster", False,
                  "weekly seasonal naive (daily, then EWMA level as fallbacks) with a level correction"),
        ModelInfo("prophet", "forecasting.prophet_model:ProphetForecaster", False,
                  "Prophet (daily + weekly) refitted hourly; dense curve + online correction between refits",
                  live_params={"refit": "background"}),
        ModelInfo("planner-constant", "forecasting.planner_constant:PlannerConstantForecaster", True, "Dynamo Planner: last value"),
        ModelInfo("planner-arima", "forecasting.planner_arima:PlannerArimaForecaster", True,
                  "Dynamo Planner: pmdarima auto_arima once, then incremental updates"),
        ModelInfo("planner-kalman", "forecasting.planner_kalman:PlannerKalmanForecaster", True, "Dynamo Planner: local linear trend Kalman filter"),
        ModelInfo("planner-prophet", "forecasting.planner_prophet:PlannerProphetForecaster", True,
                  "Dynamo Planner: Prophet() on the last 50 points, refitted from scratch at every step"),
    )
}


def make(name: str, step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    """A new model `name` on a grid of `step_s` seconds, seeded, with model-specific `params`."""
    try:
        info = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return info.build(step_s, seed, **params)
