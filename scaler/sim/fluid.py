"""A per-second fluid model of prefill and decode pools, for replaying long rate curves fast.

Fourteen days of ServeGen traffic is ~240 million requests: too many to simulate one by one (the
emulator's event-exact GraphSim serves per-request traces of an hour). The fluid model treats
traffic as flows, one step per `dt` seconds:

- Prefill: arrivals bring D = rate x ISL tokens/s into a FIFO backlog Q served at
  C = ready_prefill x tokens_per_s. Requests arriving during a step wait behind the backlog:
  TTFT = Q_mid / C + ISL / tokens_per_s + kv_transfer, where Q_mid is the backlog the step's mean
  arrival finds (half-way through the step); infinite when C = 0.
- Decode: the finished prefills hand R = rate x OSL tokens/s of decode work to the decode pool.
  With n ready replicas each holding b sequences, a replica yields b / itl(b) tokens/s, with
  itl(b) = itl_base + itl_per_seq x b. The steady batch for R is b = r x itl_base / (1 - r x
  itl_per_seq), r = R / n; b is capped by max_num_seqs and by KV (b x (ISL + OSL/2) <= KV tokens).
  Work beyond the cap waits in a decode backlog (its tokens stall: ITL counts as the SLO missed).
- Replicas: set_replicas() starts replicas that are ready `startup_delay_s` later; scale-downs
  cancel starting replicas first, then remove ready ones. GPU-seconds count every replica that
  exists (starting or ready).

Conservation: every request that arrives is either finished (prefilled and decoded) or counted in
one of the backlogs at the end (`unfinished_requests`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from scaler.emulator.profile import EmulatorProfile


@dataclass
class PoolState:
    ready: int
    starting: deque = field(default_factory=deque)  # ready-at times of starting replicas

    @property
    def desired(self) -> int:
        return self.ready + len(self.starting)


@dataclass
class StepResult:
    t: float
    arrivals: float  # requests arriving in the step
    ttft_s: float  # TTFT of the requests that arrived in the step
    itl_s: float  # ITL of the tokens decoded in the step (inf when decode work stalls)
    decode_stalled_share: float  # share of the step's decode work that could not be served
    prefill_backlog_tokens: float
    decode_backlog_tokens: float
    kv_usage: float
    ready: dict[str, int]
    desired: dict[str, int]


class FluidGraph:
    def __init__(self, profile: EmulatorProfile, now: float, replicas: dict[str, int] | None = None) -> None:
        self.p = profile
        self.now = now
        reps = replicas or {"prefill": profile.prefill.initial_replicas, "decode": profile.decode.initial_replicas}
        self.pools = {role: PoolState(ready=n) for role, n in reps.items()}
        self.prefill_backlog = 0.0  # tokens
        self.prefill_backlog_requests = 0.0
        self.decode_backlog = 0.0  # output tokens waiting for decode capacity
        self.decode_backlog_requests = 0.0
        self.arrived = 0.0
        self.finished = 0.0
        self.gpu_seconds = 0.0
        self.kv_tokens_per_replica = profile.kv_blocks_per_replica * profile.kv_block_size

    def set_replicas(self, role: str, n: int, now: float) -> None:
        pool = self.pools[role]
        n = max(0, int(n))
        while pool.desired < n:
            pool.starting.append(now + self.p.startup_delay_s)
        while pool.desired > n and pool.starting:
            pool.starting.pop()  # cancel the most recently started first
        while pool.desired > n:
            pool.ready -= 1

    def replicas(self, role: str) -> tuple[int, int]:
        pool = self.pools[role]
        return pool.desired, pool.ready

    def _start_ready(self, t: float) -> None:
        for pool in self.pools.values():
            while pool.starting and pool.starting[0] <= t:
                pool.starting.popleft()
                pool.ready += 1

    def step(self, dt: float, rate: float, isl: float, osl: float) -> StepResult:
        """Advance by dt seconds with `rate` requests/s of mean lengths isl/osl arriving."""
        self._start_ready(self.now)
        p = self.p
        gpus = sum(
            pool.desired * (p.prefill.gpus_per_replica if role == "prefill" else p.decode.gpus_per_replica)
            for role, pool in self.pools.items()
        )
        self.gpu_seconds += gpus * dt
        arrivals = rate * dt
        self.arrived += arrivals

        # Prefill: FIFO backlog of tokens.
        cap = self.pools["prefill"].ready * p.prefill.tokens_per_s
        if cap > 0:
            # Arrivals are spread over the step: the mean arrival finds the backlog half-way through it.
            ahead = max(0.0, self.prefill_backlog + (arrivals * isl - cap * dt) / 2.0)
            ttft = ahead / cap + isl / p.prefill.tokens_per_s + p.kv_transfer_s
        else:
            ttft = math.inf
        self.prefill_backlog += arrivals * isl
        self.prefill_backlog_requests += arrivals
        served = min(self.prefill_backlog, cap * dt)
        done_requests = self.prefill_backlog_requests * (served / self.prefill_backlog) if self.prefill_backlog else 0.0
        self.prefill_backlog -= served
        self.prefill_backlog_requests -= done_requests

        # Decode: work = output tokens of the requests handed over, plus any backlog.
        self.decode_backlog += done_requests * osl
        self.decode_backlog_requests += done_requests
        n = self.pools["decode"].ready
        context = isl + osl / 2.0
        b_max = min(p.decode.max_num_seqs, self.kv_tokens_per_replica / max(context, 1.0))
        throughput_max = b_max / p.decode.itl(b_max) if b_max > 0 else 0.0  # per replica
        demand = self.decode_backlog / dt  # tokens/s wanted this step
        per_replica = demand / n if n else math.inf
        if n and per_replica <= throughput_max:
            r = per_replica
            b = r * p.decode.itl_base_s / max(1e-12, 1.0 - r * p.decode.itl_per_seq_s)
            b = min(b, b_max)
            itl = p.decode.itl(b)
            decoded = self.decode_backlog
            stalled = 0.0
        else:
            b = b_max
            itl = p.decode.itl(b_max) if n else math.inf
            decoded = throughput_max * n * dt
            stalled = 1.0 - decoded / self.decode_backlog if self.decode_backlog else 0.0
        finished = self.decode_backlog_requests * (decoded / self.decode_backlog) if self.decode_backlog else 0.0
        self.decode_backlog -= decoded
        self.decode_backlog_requests -= finished
        self.finished += finished
        kv_usage = (b * context / self.kv_tokens_per_replica) if n else 0.0

        self.now += dt
        return StepResult(
            t=self.now,
            arrivals=arrivals,
            ttft_s=ttft,
            itl_s=itl if stalled == 0 else math.inf,
            decode_stalled_share=stalled,
            prefill_backlog_tokens=self.prefill_backlog,
            decode_backlog_tokens=self.decode_backlog,
            kv_usage=min(1.0, kv_usage),
            ready={r: pool.ready for r, pool in self.pools.items()},
            desired={r: pool.desired for r, pool in self.pools.items()},
        )

    @property
    def unfinished_requests(self) -> float:
        return self.prefill_backlog_requests + self.decode_backlog_requests
