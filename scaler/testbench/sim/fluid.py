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
- Replicas: set_replicas() starts replicas; each takes GPUs from a `GpuNodes` pool
  (scaler/testbench/sim/nodes.py), which says how long it takes to be ready: warm (a provisioned GPU is
  free) or cold (a node must be provisioned first). Without a pool every start takes the
  profile's `startup_delay_s`. Scale-downs cancel starting replicas first (the one furthest from
  ready), then remove ready ones; their GPUs go back to the pool. `gpu_seconds` counts every
  replica that exists (starting or ready); `nodes.gpu_seconds` counts what the cloud bills
  (every provisioned GPU, including idle nodes and balloon pods).
- Decode waits: when decode work stalls, the requests finished in the step waited for a slot;
  `decode_wait_s` (backlog / decode capacity) spread over their output tokens gives their
  effective ITL (`itl_effective_s`), what a client would measure as the mean gap between tokens.

Conservation: every request that arrives is either finished (prefilled and decoded) or counted in
one of the backlogs at the end (`unfinished_requests`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.sim.nodes import GpuNodes, fixed_delay_nodes


@dataclass
class PoolState:
    ready: int
    starting: list = field(default_factory=list)  # (ready-at time, GPU ids) of starting replicas, sorted
    gpus: list = field(default_factory=list)  # GPU ids of ready replicas (one tuple per replica)

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
    prefilled_requests: float = 0.0  # requests whose prefill finished in the step
    finished_requests: float = 0.0  # requests whose decode finished in the step
    decoded_tokens: float = 0.0
    decode_batch: float = 0.0  # sequences per ready decode replica
    decode_wait_s: float = 0.0  # time the decode backlog needs to drain (inf with no decode replica)
    itl_effective_s: float = 0.0  # ITL of the finished requests, decode wait spread over their tokens


class FluidGraph:
    def __init__(
        self,
        profile: EmulatorProfile,
        now: float,
        replicas: dict[str, int] | None = None,
        nodes: GpuNodes | None = None,
    ) -> None:
        self.p = profile
        self.now = now
        self.nodes = nodes if nodes is not None else fixed_delay_nodes(profile.startup_delay_s)
        reps = replicas or {"prefill": profile.prefill.initial_replicas, "decode": profile.decode.initial_replicas}
        self.pools = {role: PoolState(ready=0) for role in reps}
        counts = self.nodes.warm_starts, self.nodes.cold_starts
        for role, n in reps.items():  # the initial replicas are ready at once, on provisioned nodes
            pool = self.pools[role]
            for _ in range(max(0, int(n))):
                gids = tuple(self.nodes.acquire(now - 1e9)[0] for _ in range(self._gpus_per_replica(role)))
                pool.gpus.append(gids)
                pool.ready += 1
        self.nodes.warm_starts, self.nodes.cold_starts = counts  # initial replicas are not starts
        self.prefill_backlog = 0.0  # tokens
        self.prefill_backlog_requests = 0.0
        self.decode_backlog = 0.0  # output tokens waiting for decode capacity
        self.decode_backlog_requests = 0.0
        self.arrived = 0.0
        self.finished = 0.0
        self.gpu_seconds = 0.0
        self.kv_tokens_per_replica = profile.kv_blocks_per_replica * profile.kv_block_size

    def _gpus_per_replica(self, role: str) -> int:
        return self.p.prefill.gpus_per_replica if role == "prefill" else self.p.decode.gpus_per_replica

    def set_replicas(self, role: str, n: int, now: float) -> None:
        pool = self.pools[role]
        n = max(0, int(n))
        while pool.desired < n:
            gids, delay = [], 0.0
            for _ in range(self._gpus_per_replica(role)):
                gid, d = self.nodes.acquire(now)
                gids.append(gid)
                delay = max(delay, d)
            bisect.insort(pool.starting, (now + delay, tuple(gids)))
        while pool.desired > n and pool.starting:
            _, gids = pool.starting.pop()  # cancel the one furthest from ready first
            for gid in gids:
                self.nodes.release(gid, now)
        while pool.desired > n:
            pool.ready -= 1
            for gid in pool.gpus.pop():
                self.nodes.release(gid, now)

    def replicas(self, role: str) -> tuple[int, int]:
        pool = self.pools[role]
        return pool.desired, pool.ready

    def _start_ready(self, t: float) -> None:
        for pool in self.pools.values():
            while pool.starting and pool.starting[0][0] <= t:
                _, gids = pool.starting.pop(0)
                pool.gpus.append(gids)
                pool.ready += 1

    def step(self, dt: float, rate: float, isl: float, osl: float) -> StepResult:
        """Advance by dt seconds with `rate` requests/s of mean lengths isl/osl arriving."""
        self._start_ready(self.now)
        p = self.p
        gpus = 0
        for role, pool in self.pools.items():
            gpus += (pool.ready + len(pool.starting)) * self._gpus_per_replica(role)
        self.gpu_seconds += gpus * dt
        self.nodes.advance(self.now, dt)
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
        if stalled > 0:
            wait = self.decode_backlog / (throughput_max * n) if n and throughput_max > 0 else math.inf
            itl_eff = itl + wait / max(osl, 1.0)
        else:
            wait, itl_eff = 0.0, itl

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
            prefilled_requests=done_requests,
            finished_requests=finished,
            decoded_tokens=decoded,
            decode_batch=b if n else 0.0,
            decode_wait_s=wait,
            itl_effective_s=itl_eff,
        )

    @property
    def unfinished_requests(self) -> float:
        return self.prefill_backlog_requests + self.decode_backlog_requests
