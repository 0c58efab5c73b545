"""Reactive and predictive need: how many replicas the demand needs, now and at the lead time.

- reactive need: the capacity rule (scaler/capacity.py) on the observed demand, with the profile
  corrected online from observed latency (scaler/correction.py);
- predictive need: the same rule on the forecast demand at every horizon, capped (forecast_cap.py),
  and its maximum over [now + lead, now + lead + decision_window], lead = the start-up time rises
  are planned on (startup.py's lead_s). By default the demand is the median forecast at full
  capacity times the calibrated headroom (headroom.py) and the attainment feedback's gain
  (attainment.py); with
  `forecast.headroom.enabled: false`, the `forecast.quantile` forecast at `target_utilization`;
- need = the larger: the forecast only ever adds capacity above the reactive need.

The role's correction, forecast cap, headroom and feedback are this rule's state. The predicted replicas per horizon go
with the target (`Target.forecast_needs`) for the lead-time floor and the warm pool.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from scaler.capacity import (
    DecodeDemand,
    Need as CapacityNeed,
    PrefillDemand,
    context,
    decode_need,
    observed_decode_demand,
    observed_prefill_demand,
    prefill_need,
)
from scaler.correction import CapacityCorrection
from scaler.policy.attainment import AttainmentFeedback, ttft_limit
from scaler.policy.context import RoleContext, Target, load_of
from scaler.policy.forecast_cap import ForecastCap
from scaler.policy.headroom import Headroom
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from forecasting.demand import DemandForecast

    from scaler.config import ForecastConfig


class Need:
    def __init__(self, forecast: "ForecastConfig", attainment: float, poll_s: float) -> None:
        self.correction = CapacityCorrection()
        self.forecast_cap = ForecastCap(forecast.max_growth, forecast.growth_window)
        # The headroom calibrates the forecast's sizing: a purely reactive graph (forecast off) keeps
        # its utilisation targets.
        hc = forecast.headroom
        on = forecast.enabled and hc.enabled
        self.headroom = Headroom(hc, attainment, poll_s) if on else None
        self.feedback = AttainmentFeedback(attainment, hc.feedback_rate, hc.gain_max) if on else None
        self.poll_s = poll_s

    def size(self, ctx: RoleContext) -> Target:
        """The role's need as a target (rule `capacity` or `forecast`). Raises capacity.MissingInput
        when the observation lacks what the capacity rule needs."""
        # Calibrated headroom: the median forecast at full capacity, times the learned multiple.
        u, q = (1.0, 0.5) if self.headroom else (None, ctx.quantile)
        reactive, demand = self._reactive(ctx, u)
        needs = self._predicted(ctx, demand, q, u)
        h = ctx.horizons
        window = (h >= ctx.lead_s - 1e-9) & (h <= ctx.lead_s + ctx.graph.decision_window + 1e-9)
        if not window.any():
            window = h >= h[-1]
        figures = {**reactive.figures, "reactive_replicas": reactive.replicas, "lead_time_s": ctx.lead_s,
                   "capacity_correction": self.correction.factor}
        sized_on = f"p{round(q * 100)}"
        # The cap's reference is the need of the ARRIVING demand (a drained backlog is not traffic).
        arriving = max(0.0, reactive.replicas - reactive.figures.get("backlog_tokens_per_s", 0.0) / max(
            reactive.figures.get("usable_tokens_per_s_per_replica", 1.0), 1e-9))
        cap_ref = arriving
        if self.headroom:
            requests = ctx.signals.get("request_rate", 0.0) * self.poll_s
            # While replicas asked for are still starting, a queue is the start-up's, not the forecast's.
            self.headroom.observe(ctx.now, arriving if _starting(ctx) else reactive.replicas, requests)
            planned = needs[window][np.isfinite(needs[window])]
            if planned.size:
                self.headroom.plan(ctx.now, ctx.lead_s, ctx.graph.decision_window, float(planned.max()))
            self._feedback(ctx, requests)
            gain = self.feedback.gain
            needs = self.headroom.size(needs) * gain
            hr = self.headroom.value
            # The cap's reference: the arriving need as the feedback corrects it (the bursts the
            # minute's rate dilutes show as SLO misses).
            cap_ref = arriving * gain
            figures |= {"headroom": hr, "headroom_windows": float(self.headroom.samples), "attainment_gain": gain}
            sized_on = f"p50 x headroom {hr:.2f} ({self.headroom.why()}; {self.feedback.why()})"
        needs, cap = self.forecast_cap.apply(ctx.now, cap_ref, needs)
        finite = needs[window][np.isfinite(needs[window])]
        predictive = float(finite.max()) if finite.size else None

        if predictive is not None and predictive > reactive.replicas:
            raw, rule = predictive, Rule.FORECAST
            message = (f"forecast {sized_on} demand over [now+{ctx.lead_s:.0f}s, "
                       f"+{ctx.graph.decision_window:.0f}s] needs {predictive:.2f} replicas "
                       f"(observed demand: {reactive.replicas:.2f}, {reactive.term})")
        else:
            raw, rule = reactive.replicas, Rule.CAPACITY
            message = f"observed demand needs {reactive.replicas:.2f} replicas ({reactive.term})"
            if predictive is not None:
                message += f"; forecast needs no more ({predictive:.2f})"
        figures["arriving_replicas"] = arriving
        if predictive is not None:
            figures["predictive_replicas"] = predictive
        if cap is not None:
            figures["forecast_cap_replicas"] = cap
            message += "; " + self.forecast_cap.note(cap)
        t = Target(ctx.role, ctx.kind, max(0, math.ceil(raw - 1e-9)), rule, message,
                   inputs={**ctx.signals, **ctx.role_signals}, figures=figures, forecast_needs=needs,
                   forecast_settled=self.headroom is not None and self.headroom.settled and predictive is not None)
        t.note(rule, f"{t.value} ({message})")
        return t

    def _feedback(self, ctx: RoleContext, requests: float) -> None:
        """This poll's latency verdict, net of what no replica can shorten (attainment.py)."""
        g, slo = ctx.signals, ctx.graph.slo
        if _starting(ctx):
            return  # replicas asked for are still starting: a miss now is the start-up's, not the sizing's
        if ctx.kind == "prefill":
            limit = ttft_limit(slo.ttft_s, g, ctx.profile, self.correction.factor)
            self.feedback.observe(g.get("ttft_p99"), limit, requests)
        else:
            self.feedback.observe(g.get("itl_p99"), slo.itl_s, requests)

    def _reactive(self, ctx: RoleContext, u: float | None) -> tuple[CapacityNeed, PrefillDemand | DecodeDemand]:
        """The observed demand's need; the correction learns from the observed latency at this load."""
        g, r, profile = ctx.signals, ctx.role_signals, ctx.profile
        if ctx.kind == "prefill":
            demand = observed_prefill_demand(g, r)
            need = prefill_need(demand, profile.prefill, ctx.config.prefill, self.correction.factor, u)
            load = load_of(need.figures.get("arrival_tokens_per_s"), need.figures.get("tokens_per_s_per_replica"),
                           r.get("ready_workers"))
            # Judged net of the long prompts' own prefill time, which no capacity factor explains.
            limit = ttft_limit(ctx.graph.slo.ttft_s, g, profile, self.correction.factor)
            self.correction.update(ctx.now, g.get("ttft_p99"), limit, load, r.get("ready_workers"))
        else:
            demand = observed_decode_demand(g, r, profile.decode.kv_tokens)
            need = decode_need(demand, profile.decode, ctx.config.decode, self.correction.factor, u)
            load = load_of(need.figures.get("decode_tokens_per_s"), need.figures.get("tokens_per_s_per_replica"),
                           r.get("ready_workers"))
            self.correction.update(ctx.now, g.get("itl_p99"), ctx.graph.slo.itl_s, load, r.get("ready_workers"))
        return need, demand

    def _predicted(self, ctx: RoleContext, demand: PrefillDemand | DecodeDemand, q: float,
                   u: float | None) -> np.ndarray:
        """Replicas the forecast demand (quantile q) needs at each horizon (NaN where there is none)."""
        if ctx.forecast is None:
            return np.full(len(ctx.horizons), np.nan)
        factor = self.correction.factor
        if ctx.kind == "prefill":
            return _prefill_needs(ctx.forecast, q, demand.isl, ctx, factor, u)
        return _decode_needs(ctx.forecast, q, context(ctx.signals), ctx, factor, u)


def _prefill_needs(forecast: "DemandForecast", q: float, isl: float | None, ctx: RoleContext,
                   factor: float, u: float | None) -> np.ndarray:
    if "prefill_tokens_per_s" not in forecast.series:
        return np.full(len(forecast.horizons), np.nan)
    d = forecast.at("prefill_tokens_per_s", q)
    return np.array([prefill_need(PrefillDemand(float(x), 0.0, isl), ctx.profile.prefill, ctx.config.prefill,
                                  factor, u).replicas if math.isfinite(x) else math.nan for x in d])


def _decode_needs(forecast: "DemandForecast", q: float, ctx_tokens: float | None, ctx: RoleContext,
                  factor: float, u: float | None) -> np.ndarray:
    rate = forecast.at("decode_tokens_per_s", q) if "decode_tokens_per_s" in forecast.series else None
    kv = forecast.kv_tokens.get(q)
    out = np.full(len(forecast.horizons), np.nan)
    for i in range(len(out)):
        tr = float(rate[i]) if rate is not None and math.isfinite(rate[i]) else None
        kt = float(kv[i]) if kv is not None and math.isfinite(kv[i]) else None
        if tr is None and kt is None:
            continue
        out[i] = decode_need(DecodeDemand(kt, tr, ctx_tokens), ctx.profile.decode, ctx.config.decode, factor,
                             u).replicas
    return out


def _starting(ctx: RoleContext) -> bool:
    """Replicas asked for (the scale subresource's count) are not all ready yet."""
    desired, ready = ctx.role_signals.get("desired_replicas"), ctx.ready
    return desired is not None and ready is not None and ready < desired


# What each role kind's reasons show of the forecast.
_FORECAST_SERIES_BY_KIND = {"prefill": ("prefill_tokens_per_s",), "decode": ("decode_tokens_per_s", "kv_tokens")}


def forecast_figures(kind: str, forecast: "DemandForecast", quantiles: list[float], horizon: float
                     ) -> dict[str, float]:
    """The forecast at the grid horizon nearest `horizon` (keys like forecast_<series>_p90@300s), for
    a reason's figures."""
    wanted = _FORECAST_SERIES_BY_KIND[kind]
    h = float(forecast.horizons[np.argmin(np.abs(forecast.horizons - horizon))])
    tag = f"@{h:g}s"
    out = {}
    for q in quantiles:
        for k, v in forecast.figures(q).items():
            if k.endswith(tag) and any(f"forecast_{w}_" in k for w in wanted):
                out[k] = v
    return out
