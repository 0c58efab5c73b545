"""What pdscaler forecasts for a serving graph, and the demand figures derived from it.

Forecast directly, one model per series (the registry's models, `auto` by default):
- request_rate          requests/s arriving at the frontend
- prefill_tokens_per_s  input tokens/s arriving (= request_rate x mean ISL; read as rate(ISL_sum))
- decode_tokens_per_s   output tokens/s requested (= request_rate x mean OSL; rate(OSL_sum))

Derived from those forecasts (pure functions below, documented in the README):
- prefill demand at horizon h: the prefill_tokens_per_s quantile at now + h.
- prefill queue depth at capacity C (tokens/s): a fluid queue fed by the forecast path,
  Q(t + dt) = max(0, Q(t) + (D(t) - C) dt), starting from the observed queued tokens.
- decode KV demand (tokens in use), by Little's law: concurrent sequences = output tokens/s x ITL
  (each sequence emits one token per ITL), each holding on average ISL + OSL/2 tokens of KV, so
  KV(h) = decode_tokens_per_s(h) x ITL x (ISL + OSL/2). ITL, ISL and OSL are recent observed means;
  the result is scaled by an online correction, the smoothed ratio of observed KV tokens in use to
  this formula's value for the same moment (bounded to [0.25, 4]), so systematic effects the formula
  misses (prefix sharing, block rounding, queued decode work) are learned from the graph itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from forecasting.base import DEFAULT_QUANTILES, Forecast, Forecaster

FORECAST_SERIES: tuple[str, ...] = ("request_rate", "prefill_tokens_per_s", "decode_tokens_per_s")
CORRECTION_BOUNDS = (0.25, 4.0)


@dataclass(frozen=True)
class DemandForecast:
    """The forecasts of one graph at `now` for the given horizons, and the derived KV demand."""

    now: float
    horizons: np.ndarray
    series: Mapping[str, Forecast]
    kv_tokens: Mapping[float, np.ndarray] = field(default_factory=dict)  # quantile -> KV tokens in use
    notes: tuple[str, ...] = ()  # what the forecast could not include, and why

    def at(self, name: str, q: float) -> np.ndarray:
        return self.series[name].quantile(q)

    def figures(self, q: float) -> dict[str, float]:
        """Flat figures for reasons and explain: each series' quantile q at each horizon."""
        out = {}
        for i, h in enumerate(self.horizons):
            tag = f"p{round(q * 100)}@{h:g}s"
            for name, fc in self.series.items():
                out[f"forecast_{name}_{tag}"] = float(fc.quantile(q)[i])
            if q in self.kv_tokens:
                out[f"forecast_kv_tokens_{tag}"] = float(self.kv_tokens[q][i])
        return out


def warm_start_many(forecasters: Sequence["DemandForecaster"],
                    histories: Sequence[Mapping[str, tuple[np.ndarray, np.ndarray]]],
                    min_batch: int = 64) -> list[list[str]]:
    """`forecasters[i].warm_start(histories[i])` for all i, the models fitted together where they can
    be (forecasting/fleet_fit.py: same state as one by one, far less CPU for many series; groups of
    fewer than `min_batch` series are fitted one by one, which is cheaper for a few)."""
    from forecasting.fleet_fit import fit_many

    models, hists, out = [], [], []
    for f, history in zip(forecasters, histories):
        fitted = []
        for name, (t, y) in history.items():
            if name in f.models and len(t):
                models.append(f.models[name])
                hists.append((np.asarray(t, float), np.asarray(y, float)))
                fitted.append(name)
                f.last_t = max(f.last_t or -math.inf, float(t[-1]))
        out.append(fitted)
    fit_many(models, hists, min_batch=min_batch)
    return out


def fluid_queue(q0: float, demand: np.ndarray, capacity: float, dt: float) -> np.ndarray:
    """Queue depth (tokens) after each step of a fluid queue fed at `demand` (tokens/s per step)
    and drained at `capacity` tokens/s, starting from q0 tokens."""
    out = np.empty(len(demand))
    q = max(0.0, q0)
    for i, d in enumerate(demand):
        q = max(0.0, q + (d - capacity) * dt)
        out[i] = q
    return out


def littles_law_kv_tokens(decode_tokens_per_s: np.ndarray, itl_s: float, isl: float, osl: float) -> np.ndarray:
    """KV tokens in use for a decode token rate: concurrency (rate x ITL) x mean context (ISL + OSL/2)."""
    return np.asarray(decode_tokens_per_s) * itl_s * (isl + osl / 2.0)


class _Ewma:
    def __init__(self, alpha: float) -> None:
        self.alpha, self.value = alpha, math.nan

    def update(self, x: float | None) -> None:
        if x is None or not math.isfinite(x):
            return
        self.value = x if math.isnan(self.value) else self.value + self.alpha * (x - self.value)


class DemandForecaster:
    """Per-graph forecasts of the demand series, fed with observations in time order."""

    def __init__(
        self,
        model: str = "auto",
        step_s: float = 15.0,
        seed: int = 0,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        model_params: Mapping[str, object] | None = None,
    ) -> None:
        from forecasting.registry import make

        self.quantiles = tuple(sorted(set(quantiles) | {0.5}))
        self.models: dict[str, Forecaster] = {
            name: make(model, step_s=step_s, seed=seed, **dict(model_params or {})) for name in FORECAST_SERIES
        }
        self.last_t: float | None = None
        self.isl, self.osl, self.itl = _Ewma(0.2), _Ewma(0.2), _Ewma(0.2)
        self.kv_correction = _Ewma(0.1)
        self.points = 0
        self._pending: list[tuple[float, dict]] | None = None  # points kept during a warm start elsewhere

    def warm_start(self, history: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """Fit each series on its history (timestamps, values); returns the series that were fitted.
        (One series at a time; `warm_start_many` fits many forecasters' series together.)"""
        fitted = []
        for name, (t, y) in history.items():
            if name in self.models and len(t):
                self.models[name].fit(np.asarray(t, float), np.asarray(y, float))
                fitted.append(name)
                self.last_t = max(self.last_t or -math.inf, float(t[-1]))
        return fitted

    def begin_warm_start(self) -> None:
        """The models are being fitted elsewhere (a warm-start worker, scaler/warm_fleet.py): keep the
        points observed from now on, to replay them into the fitted models when they are adopted."""
        self._pending = []

    def adopt(self, models: Mapping[str, Forecaster], last_t: float | None) -> list[str]:
        """Take models fitted on history up to `last_t` (by `warm_start` in another process), then
        replay the points observed since `begin_warm_start` that are later than that history: the
        same state as fitting here, had the fit taken no time. Returns the series adopted."""
        pending, self._pending = self._pending or [], None
        adopted = [name for name in models if name in self.models]
        for name in adopted:
            self.models[name] = models[name]
        if last_t is not None and adopted:
            self.last_t = max(self.last_t or -math.inf, float(last_t))
        for t, values in pending:
            if last_t is None or t > last_t:
                for name in adopted:
                    v = values.get(name)
                    self.models[name].update(t, math.nan if v is None else float(v))
        return adopted

    def observe(self, t: float, values: Mapping[str, float | None], kv_tokens_in_use: float | None = None) -> None:
        """One observation: the forecast series (missing ones as None/NaN), plus what the derivations use
        (isl_mean, osl_mean, itl_mean) and, when known, the KV tokens in use on decode workers."""
        if self.last_t is not None and t <= self.last_t:
            return
        self.last_t = t
        self.points += 1
        for name, model in self.models.items():
            v = values.get(name)
            model.update(t, math.nan if v is None else float(v))
        if self._pending is not None:  # a warm start elsewhere: replayed into its models (adopt)
            self._pending.append((t, {name: values.get(name) for name in self.models}))
        self.isl.update(values.get("isl_mean"))
        self.osl.update(values.get("osl_mean"))
        self.itl.update(values.get("itl_mean"))
        rate = values.get("decode_tokens_per_s")
        if kv_tokens_in_use is not None and rate is not None and rate > 0:
            formula = self._kv_formula(np.asarray([rate]))[0]
            if formula > 0 and math.isfinite(formula):
                lo, hi = CORRECTION_BOUNDS
                self.kv_correction.update(min(hi, max(lo, kv_tokens_in_use / formula)))

    def _kv_formula(self, decode_rate: np.ndarray) -> np.ndarray:
        if any(math.isnan(e.value) for e in (self.isl, self.osl, self.itl)):
            return np.full(len(decode_rate), math.nan)
        return littles_law_kv_tokens(decode_rate, self.itl.value, self.isl.value, self.osl.value)

    def forecast(self, now: float, horizons: Sequence[float]) -> DemandForecast:
        h = np.asarray(horizons, float)
        series = {name: m.predict(now, h, self.quantiles) for name, m in self.models.items()}
        correction = 1.0 if math.isnan(self.kv_correction.value) else self.kv_correction.value
        kv = {}
        for q in self.quantiles:
            est = self._kv_formula(series["decode_tokens_per_s"].quantile(q)) * correction
            if not np.isnan(est).any():
                kv[q] = est
        missing = [n for n, e in (("isl_mean", self.isl), ("osl_mean", self.osl), ("itl_mean", self.itl))
                   if math.isnan(e.value)]
        notes = (f"no KV forecast: {', '.join(missing)} not observed yet (Little's law needs the mean ISL, "
                 f"OSL and ITL); decode is forecast on its token rate alone",) if missing else ()
        return DemandForecast(now=now, horizons=h, series=series, kv_tokens=kv, notes=notes)
