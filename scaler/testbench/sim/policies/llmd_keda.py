"""`llmd-keda`: llm-d's token-based KEDA recipe (reference/landscape.md, "Updates (late 2026)").

Two ScaledObjects with Prometheus triggers, AverageValue (KEDA's default metricType), so the HPA
sets desired = ceil(metric / threshold) (within its 10 % tolerance):

- prefill: metric = queued prefill tokens / V_p (the seconds of prefill work waiting, summed over
  the live pods: telemetry `prefill_queued_tokens`, the router's active prefill tokens), threshold
  = TTFT SLO - ISL / V_p, i.e. replicas = ceil(queued tokens / V_p / threshold). V_p = the
  profile's prefill tokens/s per replica at the trace's mean ISL (the emulated profile is flat in
  ISL; an operator measures it once at their mean ISL); the mean ISL is the trace's
  (request-weighted). When ISL / V_p leaves less than MIN_THRESHOLD_S (50 ms) of the SLO, the
  threshold is floored at 50 ms (a threshold <= 0 is not a valid trigger); `stats` says when.
- decode: metric = the sum over ready decode replicas of their KV usage share (vLLM's
  kv_cache_usage_perc, filtered to live pods), threshold 0.8: replicas = ceil(sum / 0.8).

Choices where the recipe is silent: HPA defaults (no behavior block: 300 s scale-down
stabilisation, scale-up max(4 pods, 100 %) per 15 s, 10 % tolerance), like `reactive-ttft`; the
metric is read at every HPA sync (KEDA's metrics server queries Prometheus when the HPA asks;
pollingInterval 30 s and cooldownPeriod only drive activation 0 <-> min, not simulated);
minReplicaCount 1; maxReplicaCount the operator's obvious ceiling, the replicas the trace's
busiest second needs (as for `reactive-ttft`), at least 1.

On this profile the decode rule has a blind spot the recipe inherits from vLLM's gauge: KV usage
counts scheduled sequences only, and the 256-sequence cap (max_num_seqs) binds before the KV cache
for contexts under ~3.5k tokens, so a saturated replica reads at most 256 x context / KV tokens
(0.58 at a 2k context) and ceil(sum / 0.8) never asks for more replicas than are ready: decode
work queued for a slot does not show. The frontier sweeps the KV threshold.
"""

from __future__ import annotations

import math

import numpy as np

from scaler.testbench.sim.actuation import ScaledObject
from scaler.testbench.sim.policies.base import Policy

KV_THRESHOLD = 0.8
MIN_THRESHOLD_S = 0.05
MIN_REPLICAS = 1


class LlmdKeda(Policy):
    name = "llmd-keda"
    interval_s = 15.0  # the Prometheus query runs at every HPA sync

    def __init__(self, ctx, kv_threshold: float = KV_THRESHOLD, prefill_threshold_s: float | None = None) -> None:
        super().__init__(ctx)
        if not kv_threshold > 0:
            raise ValueError(f"kv_threshold must be > 0, got {kv_threshold}")
        self.kv_threshold = kv_threshold
        rate, isl = ctx.sim("rate"), ctx.sim("isl")
        self.mean_isl = float(np.average(isl, weights=rate)) if rate.sum() > 0 else float(isl.mean())
        self.v_p = ctx.profile.prefill.tokens_per_s  # flat in ISL: the value at the mean ISL
        recipe = ctx.ttft_slo - self.mean_isl / self.v_p
        self.threshold_floored = prefill_threshold_s is None and recipe < MIN_THRESHOLD_S
        if prefill_threshold_s is None:
            prefill_threshold_s = max(MIN_THRESHOLD_S, recipe)
        self.prefill_threshold_s = float(prefill_threshold_s)

    def scaled_object(self, role: str) -> ScaledObject:
        target = self.prefill_threshold_s if role == "prefill" else self.kv_threshold
        ceiling = max(MIN_REPLICAS, int(self.ctx.need[role].max()))
        return ScaledObject(min_replicas=MIN_REPLICAS, max_replicas=ceiling, target=target, behavior=None)

    def metrics(self, window: dict[str, float]) -> dict[str, float]:
        """The two triggers' query values (KEDA's metric per ScaledObject)."""
        return {
            "prefill": window.get("prefill_queued_tokens", 0.0) / self.v_p,
            "decode": window.get("kv_usage", 0.0) * window.get("ready_decode", 0.0),
        }

    def replicas_for(self, window: dict[str, float]) -> dict[str, int]:
        """The recipe's formula (what the HPA converges to outside its tolerance and windows)."""
        m = self.metrics(window)
        return {"prefill": math.ceil(m["prefill"] / self.prefill_threshold_s - 1e-9),
                "decode": math.ceil(m["decode"] / self.kv_threshold - 1e-9)}

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        return self.metrics(telemetry.window(self.ctx.dt))

    def stats(self) -> dict:
        return {"prefill_threshold_s": self.prefill_threshold_s, "prefill_threshold_floored": self.threshold_floored,
                "kv_threshold": self.kv_threshold, "v_p_tokens_per_s": self.v_p, "mean_isl": self.mean_isl}
