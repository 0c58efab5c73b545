"""What the four Dynamo SLA Planner baselines share: the Planner's ``BasePredictor`` data handling.

Reproduced from ai-dynamo/dynamo ``components/src/dynamo/planner/core/load/predictors.py`` (older
releases: ``components/planner/src/dynamo/planner/utils/load_predictor.py``):

- The Planner observes one value per adjustment interval and keeps them in an INDEX-BASED buffer
  (no timestamps). Here one closed grid bin is one Planner observation, so ``step_s`` plays the
  role of the Planner's ``throughput_adjustment_interval`` (default 180 s).
- It maps a non-finite reading (NaN / inf) to 0 and appends it. Here a missing bin is, by default,
  simply not appended (``missing="skip"``): in the Planner a NaN means "no traffic in the interval"
  (0/0 in increase(sum)/increase(count)), while on our grid it means "no sample", and a zero there
  would be a fake outage. ``missing="zero"`` appends 0 for every missing bin, as the Planner does.
- It skips the leading idle period: zeros are not appended until the first non-zero value.
- Its forecasts are clipped at >= 0 (done by the chassis for every model).
- It predicts one interval ahead. Longer horizons are the lead in bins from the last observed bin,
  extended the natural way for each predictor (documented in each module).
- ``load_predictor_log1p`` (default False) makes ARIMA, Kalman and Prophet work on log1p(y); here
  ``log1p=False`` likewise by default.
"""

from __future__ import annotations

import math

from forecasting.online import OnlineForecaster
from forecasting.transform import IDENTITY, LOG1P

# Cap on zeros appended for one gap with missing="zero" (a days-long gap would otherwise flood the buffer).
MAX_GAP_ZEROS = 10_000


class PlannerPoint:
    """Base of the Planner point models: an index-based buffer with the Planner's input handling."""

    name = "planner"

    def __init__(self, step_s: float, *, log1p: bool = False, missing: str = "skip") -> None:
        if missing not in ("skip", "zero"):
            raise ValueError(f"missing must be 'skip' or 'zero', got {missing!r}")
        self.step = float(step_s)
        self.log1p = bool(log1p)
        self.space = LOG1P if self.log1p else IDENTITY
        self.missing = missing
        self.reset()

    def reset(self) -> None:
        self.k: int | None = None  # last observed bin
        self.n_added = 0  # values appended to the buffer so far (the Planner's curr_step)
        self._seen_nonzero = False
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        """Subclasses: clear their buffer/state."""

    def _append(self, v: float) -> None:
        """Subclasses: one value appended to the buffer (model space)."""

    def begin_history(self) -> None:
        pass

    def end_history(self) -> None:
        pass

    def observe(self, k: int, t: float, z: float) -> None:
        if self.missing == "zero" and self.k is not None:
            for _ in range(min(k - self.k - 1, MAX_GAP_ZEROS)):
                self._add(0.0)
        self._add(z)
        self.k = k

    def _add(self, v: float) -> None:
        if not math.isfinite(v):
            v = 0.0
        if v == 0.0 and not self._seen_nonzero:
            return  # the Planner skips the idle period before the first traffic
        if v != 0.0:
            self._seen_nonzero = True
        self.n_added += 1
        self._append(v)


class PlannerForecaster(OnlineForecaster):
    """The chassis for the Planner baselines (same gridding and residual quantiles as our models)."""

    name = "planner"
