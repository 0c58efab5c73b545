"""What the replay records every step, and what a policy can observe of it (the Prometheus view).

`Telemetry` keeps one row per simulation step (arrivals, lengths, TTFT, ITL, backlogs, KV,
replicas). Policies never see the fluid model's state directly: they see `window(i, w)`, the figures
Prometheus would compute at step i over the last `w` seconds, as `scaler/sources/scrape.py` derives
them from Dynamo's metrics:

- counters as rates over the window: request_rate, prefill_tokens_per_s (= rate(ISL_sum)),
  decode_tokens_per_s (= rate(OSL_sum)); means = rate(_sum) / rate(_count): isl_mean, osl_mean,
  ttft_mean, itl_mean (absent when nothing happened in the window, as 0/0 in PromQL);
- histogram quantiles over the window: isl_p99 (of the steps' mean input lengths, weighted by their
  arrivals: the fluid model's TTFT is per step too), ttft_p99 (weighted by the requests arriving in each step;
  Prometheus records a TTFT at the first token, a few hundred ms later: the same window to within a
  step), itl_p99 (weighted by the tokens decoded in each step, with the decode wait of a stalled
  step spread over the output tokens). Quantiles are exact, not interpolated between histogram
  buckets; an infinite TTFT (no prefill replica) is reported as CAP_S, the top bucket;
- gauges at the last step: queued_requests (the prefill backlog plus the requests in prefill,
  as Dynamo's gauge counts from entry to first token), prefill_queued_tokens (backlog plus tokens
  in progress: the router's active prefill tokens), kv_active_blocks, kv_total_blocks, kv_usage,
  ready_workers per role, kv_block_size; decode_queued_kv_tokens (the KV the decode work waiting
  for a batch slot would hold: its requests, backlog / OSL, x (ISL + OSL/2); the engines'
  queued_requests.sum_decode_kv_tokens, which Dynamo's load-based Planner reads).

No scrape lag is modelled: data is fresh at the step it describes (optimistic for every policy
alike).
"""

from __future__ import annotations

import math

import numpy as np

from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.sim.fluid import StepResult

CAP_S = 600.0  # what an infinite latency reads as (the top finite histogram bucket, roughly)

_COLUMNS = (
    "arrivals", "isl", "osl", "ttft", "itl", "finished", "decoded", "prefill_backlog_tokens",
    "prefill_backlog_requests", "decode_backlog_tokens", "kv_usage", "decode_batch",
    "ready_prefill", "ready_decode", "desired_prefill", "desired_decode", "balloons", "provisioned_gpus",
)  # fmt: skip


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of `values` with `weights` (the smallest value whose cumulative weight reaches q)."""
    mask = weights > 0
    if not mask.any():
        return math.nan
    v, w = values[mask], weights[mask]
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return float(v[order][min(k, len(v) - 1)])


class Telemetry:
    """Per-step records of one replay, and the windowed figures a policy may observe."""

    def __init__(self, n: int, dt: float, t0: float, profile: EmulatorProfile) -> None:
        self.n, self.dt, self.t0, self.p = n, dt, t0, profile
        self.cols = {c: np.zeros(n) for c in _COLUMNS}
        self.i = 0  # steps recorded

    def record(self, r: StepResult, isl: float, osl: float, balloons: int, provisioned: int) -> None:
        i, c = self.i, self.cols
        c["arrivals"][i] = r.arrivals
        c["isl"][i] = isl
        c["osl"][i] = osl
        c["ttft"][i] = r.ttft_s
        c["itl"][i] = r.itl_effective_s
        c["finished"][i] = r.finished_requests
        c["decoded"][i] = r.decoded_tokens
        c["prefill_backlog_tokens"][i] = r.prefill_backlog_tokens
        c["prefill_backlog_requests"][i] = r.prefill_backlog_tokens / isl if isl > 0 else 0.0
        c["decode_backlog_tokens"][i] = r.decode_backlog_tokens
        c["kv_usage"][i] = r.kv_usage
        c["decode_batch"][i] = r.decode_batch
        c["ready_prefill"][i] = r.ready["prefill"]
        c["ready_decode"][i] = r.ready["decode"]
        c["desired_prefill"][i] = r.desired["prefill"]
        c["desired_decode"][i] = r.desired["decode"]
        c["balloons"][i] = balloons
        c["provisioned_gpus"][i] = provisioned
        self.i = i + 1

    def window(self, w_s: float) -> dict[str, float]:
        """Figures over the last `w_s` seconds of recorded steps (see the module docstring).

        Absent keys mean "no data" (nothing recorded yet, or 0/0)."""
        i = self.i
        if i == 0:
            return {}
        w = max(1, int(round(w_s / self.dt)))
        a = max(0, i - w)
        c, dt, p = self.cols, self.dt, self.p
        span = (i - a) * dt
        arr = c["arrivals"][a:i]
        n_arr = float(arr.sum())
        tok_in = float((arr * c["isl"][a:i]).sum())
        tok_out = float((arr * c["osl"][a:i]).sum())
        out: dict[str, float] = {
            "request_rate": n_arr / span,
            "prefill_tokens_per_s": tok_in / span,
            "decode_tokens_per_s": tok_out / span,
            "requests": n_arr,
            "kv_block_size": float(p.kv_block_size),
        }
        if n_arr > 0:
            ttft = np.minimum(c["ttft"][a:i], CAP_S)
            out["isl_mean"] = tok_in / n_arr
            out["osl_mean"] = tok_out / n_arr
            out["ttft_mean"] = float((ttft * arr).sum() / n_arr)
            out["ttft_p99"] = weighted_quantile(ttft, arr, 0.99)
            out["isl_p99"] = weighted_quantile(c["isl"][a:i], arr, 0.99)
        dec = c["decoded"][a:i]
        n_dec = float(dec.sum())
        if n_dec > 0:
            itl = np.minimum(c["itl"][a:i], CAP_S)
            out["itl_mean"] = float((itl * dec).sum() / n_dec)
            out["itl_p99"] = weighted_quantile(itl, dec, 0.99)
        last = i - 1
        isl, osl = c["isl"][last], c["osl"][last]
        last_rate = c["arrivals"][last] / dt
        in_prefill = last_rate * isl / p.prefill.tokens_per_s  # requests being prefilled (Little's law)
        ready_d = c["ready_decode"][last]
        blocks = p.kv_blocks_per_replica
        out.update(
            queued_requests=c["prefill_backlog_requests"][last] + in_prefill,
            prefill_queued_tokens=c["prefill_backlog_tokens"][last] + in_prefill * isl,
            ready_prefill=c["ready_prefill"][last],
            ready_decode=ready_d,
            kv_usage=c["kv_usage"][last],
            kv_total_blocks=blocks * ready_d,
            kv_active_blocks=c["kv_usage"][last] * blocks * ready_d,
            decode_batch=c["decode_batch"][last],
            decode_queued_kv_tokens=c["decode_backlog_tokens"][last] / max(osl, 1.0) * (isl + osl / 2.0),
        )
        return out

    # -- scoring ------------------------------------------------------------------------------

    def slo_scores(self, ttft_slo: float, itl_slo: float) -> dict[str, float]:
        """Attainment over the whole run: the share of requests with TTFT <= SLO (by arrival step),
        and with ITL <= SLO (by the step their decode finished; the requests still unfinished at
        the end are not scored); p99 TTFT and ITL."""
        c, n = self.cols, self.i
        arr, fin = c["arrivals"][:n], c["finished"][:n]
        ttft, itl = c["ttft"][:n], c["itl"][:n]
        total, done = float(arr.sum()), float(fin.sum())
        return {
            "requests": total,
            "ttft_attainment": float(arr[ttft <= ttft_slo].sum() / total) if total else 1.0,
            "itl_attainment": float(fin[itl <= itl_slo].sum() / done) if done else 1.0,
            "p99_ttft_s": weighted_quantile(np.minimum(ttft, CAP_S), arr, 0.99) if total else math.nan,
            "p99_itl_s": weighted_quantile(np.minimum(itl, CAP_S), fin, 0.99) if done else math.nan,
        }
