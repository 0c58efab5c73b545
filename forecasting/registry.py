"""The forecasting models by name: ``make(name, step_s, seed=0, **params)`` builds one.

Every model implements ``forecasting.base.Forecaster`` and runs in the same chassis
(``online.OnlineForecaster``: gridding, cleaning, residual quantiles), so they differ only in their
point forecasts. ``baseline=True`` marks the reproductions of Dynamo's SLA Planner predictors.
``live_params`` are the parameters the live scaler should add to its own (``make(name, step_s,
seed, **info.live_params, **params)``): the defaults suit offline evaluation, where everything must
be synchronous and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from forecasting.base import Forecaster


@dataclass(frozen=True)
class ModelInfo:
    """A registered model."""

    name: str
    factory: Callable[..., Forecaster]  # factory(step_s, seed, **params)
    baseline: bool
    description: str
    live_params: dict[str, Any] = field(default_factory=dict)


def _auto(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.auto import AutoForecaster

    return AutoForecaster(step_s, seed, **params)


def _holt(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.holt import HoltForecaster

    return HoltForecaster(step_s, seed, **params)


def _seasonal(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.seasonal_naive import SeasonalNaiveForecaster

    return SeasonalNaiveForecaster(step_s, seed, **params)


def _prophet(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.prophet_model import ProphetForecaster

    return ProphetForecaster(step_s, seed, **params)


def _planner_constant(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.planner_constant import PlannerConstantForecaster

    return PlannerConstantForecaster(step_s, seed, **params)


def _planner_arima(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.planner_arima import PlannerArimaForecaster

    return PlannerArimaForecaster(step_s, seed, **params)


def _planner_kalman(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.planner_kalman import PlannerKalmanForecaster

    return PlannerKalmanForecaster(step_s, seed, **params)


def _planner_prophet(step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    from forecasting.planner_prophet import PlannerProphetForecaster

    return PlannerProphetForecaster(step_s, seed, **params)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("auto", _auto, False,
                  "per-series inverse-error weighted ensemble of Holt, EWMAs, a smoothed daily profile and "
                  "mean reversion, scored by an online rolling-origin backtest per horizon"),
        ModelInfo("holt", _holt, False, "damped Holt linear trend on log1p demand"),
        ModelInfo("seasonal-naive", _seasonal, False,
                  "weekly seasonal naive (daily, then EWMA level as fallbacks) with a level correction"),
        ModelInfo("prophet", _prophet, False,
                  "Prophet (daily + weekly) refitted hourly; dense curve + online correction between refits",
                  live_params={"refit": "background"}),
        ModelInfo("planner-constant", _planner_constant, True, "Dynamo Planner: last value"),
        ModelInfo("planner-arima", _planner_arima, True,
                  "Dynamo Planner: pmdarima auto_arima once, then incremental updates"),
        ModelInfo("planner-kalman", _planner_kalman, True, "Dynamo Planner: local linear trend Kalman filter"),
        ModelInfo("planner-prophet", _planner_prophet, True,
                  "Dynamo Planner: Prophet() on the last 50 points, refitted from scratch at every step"),
    )
}


def make(name: str, step_s: float, seed: int = 0, **params: Any) -> Forecaster:
    """A new model `name` on a grid of `step_s` seconds, seeded, with model-specific `params`."""
    try:
        info = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return info.factory(float(step_s), int(seed), **params)
