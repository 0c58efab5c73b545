"""`planner`, `planner-prophet`: Dynamo's SLA Planner (reference/dynamo.md), throughput-based mode.

Every adjustment interval (60 s, as in Dynamo's examples) it reads, over the last interval, the
request count, mean ISL, mean OSL, mean TTFT and mean ITL (increase(_sum) / increase(_count)), feeds
the count, ISL and OSL to its predictor (`planner`: constant, the last value; `planner-prophet`: a
new Prophet fitted on the last 50 values at every interval, forecasting/planner_prophet.py) and sets

    prefill = ceil(pred_requests x pred_isl / interval x min(1, ttft_correction)
                   / prefill_tokens_per_s_per_gpu / gpus_per_prefill_engine)
    decode  = ceil(pred_requests x pred_osl / interval
                   / decode_tokens_per_s_per_gpu(itl = ITL_SLO / itl_correction, context = isl + osl/2)
                   / gpus_per_decode_engine)

both at least 1 (min_endpoint), where ttft_correction = observed TTFT / profiled TTFT at that ISL
(ISL / tokens_per_s + KV transfer), itl_correction = observed ITL / profiled ITL at the observed
concurrency per decode engine (requests/s x request duration / engines, Little's law). Its
"profile" is the simulated hardware's (as profiling the real engine would give). Like the
Planner it patches the scale subresource directly (no KEDA/HPA) and skips an adjustment while a
previous scale is still rolling out (desired != ready); the predictors are still updated.

Left out: the GPU budget (default 8 GPUs, which would cap every trace here; unlimited instead). The
newer 5-second load-based +-1 loop is its own policy, `planner-load` (planner_load.py).
"""

from __future__ import annotations

import math

import numpy as np

from forecasting.planner_constant import PlannerConstant
from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.sizing import decode_tokens_per_s_per_replica

ADJUSTMENT_INTERVAL_S = 60.0


class Planner(Policy):
    name = "planner"
    interval_s = ADJUSTMENT_INTERVAL_S
    direct = True

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.k = 0
        self.predictors = {s: self._predictor() for s in ("requests", "isl", "osl")}
        self.skipped = 0

    def _predictor(self):
        return PlannerConstant(self.interval_s)

    def _predict(self, name: str, now: float) -> float:
        p = self.predictors[name]
        return max(0.0, float(p.forecast(np.array([self.k + 1]), np.array([now + self.interval_s]))[0]))

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        if i == 0:
            return {}
        w = telemetry.window(self.interval_s)
        self.k += 1
        for name, key in (("requests", "requests"), ("isl", "isl_mean"), ("osl", "osl_mean")):
            self.predictors[name].observe(self.k, now, w.get(key, math.nan))
        if any(cluster.replicas(r)[0] != cluster.replicas(r)[1] for r in ("prefill", "decode")):
            self.skipped += 1
            return {}  # a previous scale is still rolling out
        prof, interval = self.ctx.profile, self.interval_s
        req, isl, osl = (self._predict(n, now) for n in ("requests", "isl", "osl"))
        if req <= 0 or "isl_mean" not in w:
            return {"prefill": 1, "decode": 1}
        expected_ttft = w["isl_mean"] / prof.prefill.tokens_per_s + prof.kv_transfer_s
        p_corr = w.get("ttft_mean", expected_ttft) / expected_ttft
        prefill = req * isl / interval * min(1.0, p_corr) / prof.prefill.tokens_per_s / prof.prefill.gpus_per_replica
        d_corr = 1.0
        n_dec = max(1, cluster.replicas("decode")[1])
        if "itl_mean" in w:
            duration = w.get("ttft_mean", 0.0) + w["osl_mean"] * w["itl_mean"]
            concurrency = w["requests"] / interval * duration / n_dec
            b = min(concurrency, prof.decode.max_num_seqs)
            d_corr = w["itl_mean"] / prof.decode.itl(b)
        itl_target = self.ctx.itl_slo / max(d_corr, 1e-9)
        per_gpu = float(decode_tokens_per_s_per_replica(prof, np.array([isl]), np.array([osl]), itl_target)[0])
        # No profiled point meets the corrected ITL: the Planner's interpolator falls back to its
        # lowest-ITL point (here a batch of one).
        per_gpu = max(per_gpu, 1.0 / prof.decode.itl(1))
        decode = req * osl / interval / per_gpu / prof.decode.gpus_per_replica
        cap = self.ctx.max_replicas
        return {"prefill": min(cap, max(1, math.ceil(prefill))), "decode": min(cap, max(1, math.ceil(decode)))}

    def stats(self) -> dict:
        return {"adjustments_skipped_rolling_out": self.skipped}


class PlannerProphet(Planner):
    name = "planner-prophet"

    def _predictor(self):
        from forecasting.planner_prophet import PlannerProphet as Model

        return Model(self.interval_s)
