"""Offline evaluation of the forecasting models (`pdscaler forecast-eval`, the cost benchmark).

The only part of `forecasting/` that may import `scaler` (for the trace loaders of the test bench);
the models themselves never do (tests/test_import_direction.py).

- `rolling_origin.py`: rolling-origin evaluation, pinball loss, coverage;
- `series.py`: traces turned into the demand series the models forecast;
- `bench_cost.py`: `python -m forecasting.evaluation.rolling_origin.bench_cost`, the CPU cost of forecasting a fleet.
"""
