"""`planner-load`: Dynamo Planner's load-based mode (reference/dynamo.md, "newer versions (2026)").

Every 5 s (the load-based interval's default), per engine (replica):

- prefill: the estimated TTFT of the next request, TTFT(q) = (q + ISL) / V_p + kv_transfer, where
  q = the engine's queued prefill tokens (telemetry `prefill_queued_tokens` / ready prefill
  replicas: the router's active prefill tokens, spread evenly), ISL the mean ISL of the last
  minute, V_p the prefill profile's tokens/s;
- decode: the estimated ITL at the engine's decode KV load, ITL(kv) = itl_base + itl_per_seq x
  kv / context, where kv = the KV tokens its scheduled sequences hold (`kv_usage` x the KV cache)
  plus those of the decode work queued for a slot (`decode_queued_kv_tokens` / ready decode
  replicas), context = ISL + OSL / 2.

Dynamo fits these as online linear regressions (iteration time on prefill tokens, ITL on decode KV
tokens) from the engines' forward-pass metrics. In the fluid model every engine of a role holds the
same load and its latency is exactly the profile's line, so the regression's fit IS the profile;
the replay uses it from the start (no cold-start "insufficient data" ticks: slightly in the
Planner's favour).

Decision per role: +1 when every engine's estimate is above the SLO; -1 (N > 1) when every engine's
estimate with the load the survivors would absorb (q or kv x N/(N-1)) is below SLO x sensitivity
(0.8, `load_scaling_down_sensitivity` 80 %) and that load is feasible (which also implies every
current estimate is below SLO x sensitivity): decode, Dynamo's cache-feasibility check, here on
the engine's sequence cap (the survivors' batch, kv x N/(N-1) / context, within max_num_seqs,
which binds before the KV cache on this profile) and the KV cache; prefill, the survivors'
utilisation (prefill tokens/s over the last minute / ((N-1) x V_p)) below 1. The prefill
feasibility is the replay's stand-in for what a real engine's queue shows near saturation: the
fluid model has no stochastic queueing, so below capacity its queue is only the tokens in
progress whatever the utilisation, and without the check 2 fully busy engines pass the
survivors' test and the Planner steps 4 -> 1 and back on a constant load (a choice in the
Planner's favour). Dynamo's newest source applies the
sensitivity to the queue-induced part of the prefill TTFT only ((SLO - own prefill time) x 0.8);
the replay follows the reference's wording (the whole estimate), which scales prefill down a little
less readily. One replica per interval and per role; nothing new while a change is pending
(desired != ready for either role, as the Planner waits for the graph to be ready). At least 1
replica per role (min_endpoint). It patches the scale subresource directly (`direct`: no KEDA/HPA),
like the throughput-based `planner`.

Not modelled: the throughput-based floor (off in the load-only `optimization_target`s) and the GPU
budget (unlimited, as for `planner`).
"""

from __future__ import annotations

from scaler.testbench.sim.policies.base import Policy

INTERVAL_S = 5.0
SENSITIVITY = 0.8
ISL_WINDOW_S = 60.0


class PlannerLoad(Policy):
    name = "planner-load"
    interval_s = INTERVAL_S
    direct = True

    def __init__(self, ctx, sensitivity: float = SENSITIVITY) -> None:
        super().__init__(ctx)
        if not 0 < sensitivity <= 1:
            raise ValueError(f"sensitivity must be in (0, 1], got {sensitivity}")
        self.sensitivity = sensitivity
        self.isl = float(ctx.sim("isl")[0])
        self.osl = float(ctx.sim("osl")[0])
        self.skipped = 0
        self.changes = {"prefill_up": 0, "prefill_down": 0, "decode_up": 0, "decode_down": 0}

    # -- the per-engine estimates (the regressions' fit in the fluid model) ---------------------

    def ttft_estimate(self, queued_tokens: float) -> float:
        p = self.ctx.profile
        return (queued_tokens + self.isl) / p.prefill.tokens_per_s + p.kv_transfer_s

    def itl_estimate(self, kv_tokens: float) -> float:
        d = self.ctx.profile.decode
        return d.itl_base_s + d.itl_per_seq_s * kv_tokens / max(self.isl + self.osl / 2.0, 1.0)

    def _decide(self, n: int, estimate, load: float, slo: float, fits=lambda load: True) -> int:
        """+1, -1 or 0 for a role of n engines, each carrying `load` (all alike in the fluid model);
        `fits(survivor_load)`: the feasibility check of a scale-down."""
        if n < 1:
            return 1
        engines = [load] * n  # the Planner's per-engine loop; every engine is the same here
        if all(estimate(x) > slo for x in engines):
            return 1
        if n > 1:
            survivors = [x * n / (n - 1) for x in engines]
            if all(fits(x) and estimate(x) < slo * self.sensitivity for x in survivors):
                return -1
        return 0

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        if i == 0:
            return {}
        if any(cluster.replicas(r)[0] != cluster.replicas(r)[1] for r in ("prefill", "decode")):
            self.skipped += 1
            return {}  # a change is pending: observe only
        w = telemetry.window(ISL_WINDOW_S)
        if "isl_mean" in w:
            self.isl, self.osl = w["isl_mean"], w["osl_mean"]
        g = telemetry.window(self.ctx.dt)  # gauges at the last step
        kv_cache = float(self.ctx.profile.kv_tokens_per_replica)
        out = {}
        prof = self.ctx.profile
        n_p = cluster.replicas("prefill")[1]
        q = g.get("prefill_queued_tokens", 0.0) / max(n_p, 1)
        survivors_util = w.get("prefill_tokens_per_s", 0.0) / (max(n_p - 1, 1) * prof.prefill.tokens_per_s)
        dp = self._decide(n_p, self.ttft_estimate, q, self.ctx.ttft_slo, fits=lambda x: survivors_util < 1.0)
        n_d = cluster.replicas("decode")[1]
        kv = g.get("kv_usage", 0.0) * kv_cache + g.get("decode_queued_kv_tokens", 0.0) / max(n_d, 1)
        context = max(self.isl + self.osl / 2.0, 1.0)
        dd = self._decide(n_d, self.itl_estimate, kv, self.ctx.itl_slo,
                          fits=lambda x: x < kv_cache and x / context <= prof.decode.max_num_seqs)
        cap = self.ctx.max_replicas
        for role, n, delta in (("prefill", n_p, dp), ("decode", n_d, dd)):
            if delta:
                out[role] = min(cap, max(1, n + delta))
                if out[role] != n:
                    self.changes[f"{role}_{'up' if delta > 0 else 'down'}"] += 1
        return out

    def stats(self) -> dict:
        return {"adjustments_skipped_pending": self.skipped, "load_changes": dict(self.changes),
                "sensitivity": self.sensitivity}
