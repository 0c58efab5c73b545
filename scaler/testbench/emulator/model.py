"""Pure, clock-injected simulation of a prefill/decode-disaggregated serving graph.

No asyncio and no wall clock: every method takes `now` (seconds, any origin) and the simulation only
moves forward when told to. The HTTP emulator (``app.py``) and the metrics exporter (``metrics.py``)
are thin shells around it.

Model
- Prefill pool: one shared FIFO queue served by the READY, non-draining prefill replicas, each serving
  one request at a time for ``isl / prefill.tokens_per_s`` seconds (M/G/N; a request is never split).
  Prefill is event-exact: completions and replica start-ups are processed at their exact times.
- After prefill, the KV cache moves to decode in ``kv_transfer_s``; then the first token is emitted
  (TTFT = first token time - arrival) and the request joins the decode FIFO queue.
- Decode admission (at step boundaries): the head of the queue goes to the ready decode replica with
  the most free KV blocks among those with room for ``ceil((isl + osl) / block)`` blocks (reserved
  for the whole request, so there is no preemption) and fewer than ``max_num_seqs`` sequences.
  Strict FIFO: if the head fits nowhere, everything behind it waits too. A request admitted in the
  same step it became ready is credited the time since it became ready (so tick granularity does not
  inflate ITL).
- A decode replica with b sequences advances every one of them by ``dt / itl(b)`` tokens per step
  (fractional progress carried); whole tokens are reported; blocks are freed when a request ends.
- Replicas: scale-ups start replicas that become READY ``startup_delay_s`` later; scale-downs first
  cancel starting replicas, then drain ready ones (no new work; removed once idle).

Listeners (per request) and observers (whole graph) are called synchronously inside `advance()`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, cast

import numpy as np

from scaler.testbench.emulator.profile import EmulatorProfile

__all__ = [
    "ROLES",
    "Role",
    "TokenListener",
    "SimObserver",
    "SimRequest",
    "ReplicaCounts",
    "WorkerView",
    "FinishedArrays",
    "GraphSim",
]

Role = Literal["prefill", "decode"]
ROLES: tuple[Role, Role] = ("prefill", "decode")

_READY, _PREFILL_DONE, _TRANSFER_DONE = 0, 1, 2


class TokenListener(Protocol):
    """Per-request callbacks. The first token is reported by on_first_token (it counts as one token);
    later tokens by on_tokens; on_done follows the last token."""

    def on_first_token(self, t: float) -> None: ...

    def on_tokens(self, n: int, t: float) -> None: ...

    def on_done(self, t: float) -> None: ...


class SimObserver(Protocol):
    """Graph-wide event sink (the metrics exporter). Called synchronously inside advance()."""

    def on_first_token(self, req: SimRequest, t: float) -> None: ...

    def on_decode_tokens(self, itl_s: float, n: int, t: float) -> None:
        """`n` tokens were produced by one decode replica in one step, each `itl_s` after the previous."""

    def on_decode_admitted(self, req: SimRequest, wait_s: float, t: float) -> None:
        """`req` started decoding after waiting `wait_s` for KV room / a batch slot (0 if it did not)."""

    def on_finished(self, req: SimRequest, t: float) -> None: ...


@dataclass(slots=True, eq=False)
class SimRequest:
    id: int
    isl: int
    osl: int
    arrival: float
    stream: bool = True
    listener: TokenListener | None = None
    first_token: float | None = None
    done: float | None = None
    # prefill_queue | prefill | transfer | decode_queue | decode | done
    stage: str = "prefill_queue"
    decode_ready: float = math.nan
    blocks: int = 0  # decode KV blocks reserved

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def mean_itl(self) -> float | None:
        if self.done is None or self.first_token is None or self.osl <= 1:
            return None
        return (self.done - self.first_token) / (self.osl - 1)


class ReplicaCounts(NamedTuple):
    desired: int
    ready: int  # serving (not draining)
    starting: int
    draining: int = 0


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What one READY worker looks like to the router and to its own metrics endpoint.

    The prefill queue is shared, so its requests/tokens are spread evenly over the ready prefill
    workers (the remainder to the lowest ids), mimicking a router that balances assignments; the same
    for the decode queue over decode workers. active_prefill_tokens of a prefill worker = the ISL of
    its in-service request (counted in full until its prefill ends, as Dynamo's router does) plus
    its share of the queue. active_blocks: prefill = KV of the in-service and in-transfer requests;
    decode = reserved blocks.
    """

    worker_id: str
    role: Role
    active_prefill_tokens: int
    active_blocks: int
    total_blocks: int
    waiting: int
    running: int

    @property
    def usage(self) -> float:
        return self.active_blocks / self.total_blocks if self.total_blocks else 0.0


@dataclass(frozen=True, slots=True)
class FinishedArrays:
    """One entry per finished request, in completion order. itl is NaN when osl <= 1."""

    arrival: np.ndarray
    first_token: np.ndarray
    done: np.ndarray
    ttft: np.ndarray
    itl: np.ndarray
    isl: np.ndarray
    osl: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival)


class _Replica:
    __slots__ = ("id", "role", "state", "created_at", "ready_at")

    def __init__(self, rid: int, role: Role, created_at: float, ready_at: float) -> None:
        self.id = rid
        self.role = role
        self.state = "starting"  # starting | ready | draining | gone
        self.created_at = created_at
        self.ready_at = ready_at


class _PrefillReplica(_Replica):
    __slots__ = ("current", "busy_until", "transfer_blocks")

    def __init__(self, rid: int, created_at: float, ready_at: float) -> None:
        super().__init__(rid, "prefill", created_at, ready_at)
        self.current: SimRequest | None = None
        self.busy_until = math.inf
        self.transfer_blocks = 0


class _DecodeReplica(_Replica):
    """Active sequences live in slots [0, n) of fixed-size arrays (swap-remove keeps them packed)."""

    __slots__ = ("progress", "off", "rem", "emitted", "reqs", "n", "used_blocks", "n_listeners")

    def __init__(self, rid: int, created_at: float, ready_at: float, cap: int) -> None:
        super().__init__(rid, "decode", created_at, ready_at)
        self.progress = 0.0  # tokens each sequence would have produced since the replica started
        self.off = np.zeros(cap)  # progress value at which each sequence started decoding
        self.rem = np.zeros(cap)  # decode tokens to produce (osl - 1)
        self.emitted = np.zeros(cap)  # decode tokens already reported
        self.reqs: list[SimRequest | None] = [None] * cap
        self.n = 0
        self.used_blocks = 0
        self.n_listeners = 0


class _Rows:
    """Growable float64 table (amortised O(1) append)."""

    def __init__(self, cols: int, cap: int = 1024) -> None:
        self._a = np.empty((cap, cols))
        self.n = 0

    def append(self, row: tuple[float, ...]) -> None:
        if self.n == len(self._a):
            self._a = np.concatenate([self._a, np.empty_like(self._a)])
        self._a[self.n] = row
        self.n += 1

    def view(self) -> np.ndarray:
        return self._a[: self.n]


class GraphSim:
    """The emulated graph. `replicas` overrides the profile's initial replica counts; initial replicas
    are READY at construction time (the graph was already running)."""

    def __init__(
        self, profile: EmulatorProfile, now: float, replicas: dict[str, int] | None = None
    ) -> None:
        self.profile = profile
        self.now = float(now)
        self._prefill_rate = profile.prefill.tokens_per_s
        self._itl_base = profile.decode.itl_base_s
        self._itl_slope = profile.decode.itl_per_seq_s
        self._max_seqs = profile.decode.max_num_seqs
        self._block = profile.kv_block_size
        self._kv_blocks = profile.kv_blocks_per_replica
        self._gpus = {"prefill": profile.prefill.gpus_per_replica, "decode": profile.decode.gpus_per_replica}

        self._events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._next_req_id = 0
        self._next_worker_id = 1
        self._prefill: list[_PrefillReplica] = []
        self._decode: list[_DecodeReplica] = []
        self._desired = {"prefill": 0, "decode": 0}
        self._idle_prefill: list[_PrefillReplica] = []
        self._prefill_queue: deque[SimRequest] = deque()
        self._prefill_queued_tokens = 0
        self._decode_queue: deque[SimRequest] = deque()
        self._n_transfer = 0
        self.observers: list[SimObserver] = []

        # Accounting.
        self.submitted = 0
        self.first_tokens = 0
        self.finished = 0
        self.output_tokens = 0
        self._rows = _Rows(5)  # arrival, first_token, done, isl, osl
        self._gpu_seconds = 0.0
        self._gpu_count = 0
        self._gpu_t = self.now

        initial = {"prefill": profile.prefill.initial_replicas, "decode": profile.decode.initial_replicas}
        for role, n in (replicas or {}).items():
            self._check_role(role)
            initial[role] = int(n)
        for role in ROLES:
            if initial[role] < 0:
                raise ValueError(f"replicas[{role!r}] must be >= 0")
            for _ in range(initial[role]):
                rep = self._new_replica(role, self.now, self.now)
                self._make_ready(rep, self.now)
            self._desired[role] = initial[role]

    # ------------------------------------------------------------------ public API: inputs

    def add_observer(self, observer: SimObserver) -> None:
        self.observers.append(observer)

    def submit(
        self,
        isl: int,
        osl: int,
        now: float,
        listener: TokenListener | None = None,
        *,
        stream: bool = True,
    ) -> SimRequest:
        """A request arrives at `now` (the simulation is advanced to `now` first; a `now` in the past
        arrives at the simulation's current time). Lengths of 0 are treated as 1 (a request has at
        least one prompt token and produces at least one token)."""
        if isl < 0 or osl < 0:
            raise ValueError(f"isl and osl must be >= 0, got isl={isl} osl={osl}")
        self.advance(now)
        t = self.now
        req = SimRequest(self._next_req_id, max(1, int(isl)), max(1, int(osl)), t, stream, listener)
        self._next_req_id += 1
        self.submitted += 1
        if self._idle_prefill:
            self._start_prefill(self._idle_prefill.pop(), req, t)
        else:
            self._prefill_queue.append(req)
            self._prefill_queued_tokens += req.isl
        return req

    def set_replicas(self, role: str, n: int, now: float) -> None:
        """Set the desired replica count of `role` at `now`."""
        self._check_role(role)
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"replicas must be a non-negative integer, got {n!r}")
        n = int(n)
        self.advance(now)
        t = self.now
        active = [r for r in self._reps(role) if r.state in ("starting", "ready")]
        if n > len(active):
            for _ in range(n - len(active)):
                rep = self._new_replica(role, t, t + self.profile.startup_delay_s)  # type: ignore[arg-type]
                if self.profile.startup_delay_s <= 0:
                    self._make_ready(rep, t)
                else:
                    self._push(rep.ready_at, _READY, rep)
        elif n < len(active):
            excess = len(active) - n
            # Cancel the replicas that would become ready last, then drain the least busy ready ones.
            starting = sorted((r for r in active if r.state == "starting"), key=lambda r: -r.ready_at)
            for rep in starting[:excess]:
                self._remove(rep, t)
            excess -= min(excess, len(starting))
            ready = [r for r in active if r.state == "ready"]
            ready.sort(key=self._load)
            for rep in ready[:excess]:
                rep.state = "draining"
                if role == "prefill" and rep in self._idle_prefill:
                    self._idle_prefill.remove(rep)
                if self._load(rep) == 0:
                    self._remove(rep, t)
        self._desired[role] = n

    def advance(self, now: float) -> None:
        """Move the simulation to `now` in steps of at most profile.tick_s. No-op if `now` is not later."""
        tick = self.profile.tick_s
        while self.now < now:
            t1 = min(now, self.now + tick)
            if now - t1 < 1e-9:  # do not leave a float-rounding sliver for another step
                t1 = now
            self._step(self.now, t1)
            self.now = t1

    # ------------------------------------------------------------------ public API: views

    def replicas(self, role: str) -> ReplicaCounts:
        self._check_role(role)
        states = [r.state for r in self._reps(role)]
        return ReplicaCounts(
            self._desired[role], states.count("ready"), states.count("starting"), states.count("draining")
        )

    @property
    def queued_requests(self) -> int:
        """Arrived, no first token yet (Dynamo's frontend queued_requests: includes prefill time)."""
        return self.submitted - self.first_tokens

    @property
    def inflight_requests(self) -> int:
        return self.submitted - self.finished

    @property
    def in_system(self) -> int:
        """Requests not finished, counted stage by stage (equals inflight_requests by conservation)."""
        return sum(self.stage_counts().values())

    def stage_counts(self) -> dict[str, int]:
        return {
            "prefill_queue": len(self._prefill_queue),
            "prefill": sum(1 for r in self._prefill if r.current is not None),
            "transfer": self._n_transfer,
            "decode_queue": len(self._decode_queue),
            "decode": sum(r.n for r in self._decode),
        }

    @property
    def prefill_waiting(self) -> int:
        return len(self._prefill_queue)

    @property
    def prefill_queued_tokens(self) -> int:
        """Prompt tokens of requests waiting for a prefill replica (not yet in service)."""
        return self._prefill_queued_tokens

    @property
    def prefill_pending_tokens(self) -> int:
        """Queued plus in-service prompt tokens (what the prefill pool still has to process, in full)."""
        busy = sum(r.current.isl for r in self._prefill if r.current is not None)
        return self._prefill_queued_tokens + busy

    @property
    def decode_waiting(self) -> int:
        return len(self._decode_queue)

    def decode_kv_usage(self) -> float:
        """Reserved / total KV blocks over the ready (non-draining) decode replicas; 0 with none."""
        ready = [r for r in self._decode if r.state == "ready"]
        total = len(ready) * self._kv_blocks
        return sum(r.used_blocks for r in ready) / total if total else 0.0

    def itl(self, batch: int) -> float:
        return self._itl_base + self._itl_slope * batch

    def workers(self, role: str) -> list[WorkerView]:
        """Views of the READY (non-draining) workers of `role`, by worker id."""
        self._check_role(role)
        views: list[WorkerView] = []
        if role == "prefill":
            ready_p = sorted((r for r in self._prefill if r.state == "ready"), key=lambda r: r.id)
            k = len(ready_p)
            q_tok, q_len = self._prefill_queued_tokens, len(self._prefill_queue)
            for i, rep in enumerate(ready_p):
                cur = rep.current
                share_tok = q_tok // k + (1 if i < q_tok % k else 0)
                share_len = q_len // k + (1 if i < q_len % k else 0)
                blocks = rep.transfer_blocks + (self._blocks(cur.isl) if cur else 0)
                views.append(
                    WorkerView(str(rep.id), "prefill", (cur.isl if cur else 0) + share_tok,
                               min(blocks, self._kv_blocks), self._kv_blocks, share_len, 1 if cur else 0)
                )
        else:
            ready_d = sorted((r for r in self._decode if r.state == "ready"), key=lambda r: r.id)
            k = len(ready_d)
            q_len = len(self._decode_queue)
            for i, drep in enumerate(ready_d):
                share_len = q_len // k + (1 if i < q_len % k else 0)
                views.append(WorkerView(str(drep.id), "decode", 0, drep.used_blocks, self._kv_blocks,
                                        share_len, drep.n))
        return views

    def finished_arrays(self) -> FinishedArrays:
        """Copies of the per-finished-request accounting arrays."""
        a = self._rows.view().copy()
        arrival, first, done, isl, osl = a.T
        with np.errstate(divide="ignore", invalid="ignore"):
            itl = np.where(osl > 1, (done - first) / (osl - 1), np.nan)
        return FinishedArrays(arrival, first, done, first - arrival, itl, isl.astype(np.int64), osl.astype(np.int64))

    @property
    def gpu_seconds(self) -> float:
        """GPU-seconds of every existing replica (starting, ready, draining) up to the current time."""
        return self._gpu_seconds + self._gpu_count * (self.now - self._gpu_t)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self._block)

    def _push(self, t: float, kind: int, obj: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, obj))

    def _gpu_change(self, delta: int, t: float) -> None:
        self._gpu_seconds += self._gpu_count * (t - self._gpu_t)
        self._gpu_t = t
        self._gpu_count += delta

    def _reps(self, role: str) -> list[_Replica]:
        return self._prefill if role == "prefill" else self._decode  # type: ignore[return-value]

    def _new_replica(self, role: Role, t: float, ready_at: float) -> _Replica:
        rid = self._next_worker_id
        self._next_worker_id += 1
        rep: _Replica
        if role == "prefill":
            rep = _PrefillReplica(rid, t, ready_at)
            self._prefill.append(rep)
        else:
            rep = _DecodeReplica(rid, t, ready_at, self._max_seqs)
            self._decode.append(rep)
        self._gpu_change(self._gpus[role], t)
        return rep

    def _remove(self, rep: _Replica, t: float) -> None:
        rep.state = "gone"
        self._reps(rep.role).remove(rep)
        self._gpu_change(-self._gpus[rep.role], t)

    @staticmethod
    def _load(rep: _Replica) -> int:
        if isinstance(rep, _PrefillReplica):
            return 0 if rep.current is None else 1
        assert isinstance(rep, _DecodeReplica)
        return rep.n

    def _make_ready(self, rep: _Replica, t: float) -> None:
        rep.state = "ready"
        if isinstance(rep, _PrefillReplica):
            self._prefill_idle_at(rep, t)

    def _prefill_idle_at(self, rep: _PrefillReplica, t: float) -> None:
        """`rep` has nothing in service at `t`: take the next queued request, or go idle / away."""
        if rep.state == "draining":
            self._remove(rep, t)
        elif self._prefill_queue:
            req = self._prefill_queue.popleft()
            self._prefill_queued_tokens -= req.isl
            self._start_prefill(rep, req, t)
        else:
            self._idle_prefill.append(rep)

    def _start_prefill(self, rep: _PrefillReplica, req: SimRequest, t: float) -> None:
        req.stage = "prefill"
        rep.current = req
        rep.busy_until = t + req.isl / self._prefill_rate
        self._push(rep.busy_until, _PREFILL_DONE, rep)

    def _step(self, t0: float, t1: float) -> None:
        events = self._events
        # 1. Exact-time events: replica start-ups, prefill completions, KV transfers (first tokens).
        while events and events[0][0] <= t1:
            t, _, kind, obj = heapq.heappop(events)
            if kind == _PREFILL_DONE:
                rep: _PrefillReplica = obj  # type: ignore[assignment]
                req = rep.current
                assert req is not None
                rep.current = None
                blocks = self._blocks(req.isl)
                rep.transfer_blocks += blocks
                req.stage = "transfer"
                self._n_transfer += 1
                self._push(t + self.profile.kv_transfer_s, _TRANSFER_DONE, (req, rep, blocks))
                self._prefill_idle_at(rep, t)
            elif kind == _TRANSFER_DONE:
                t_req, t_rep, t_blocks = cast(tuple[SimRequest, _PrefillReplica, int], obj)
                t_rep.transfer_blocks -= t_blocks
                self._n_transfer -= 1
                self._first_token(t_req, t)
            else:  # _READY
                rep_r: _Replica = obj  # type: ignore[assignment]
                if rep_r.state == "starting":
                    self._make_ready(rep_r, t)

        # 2. Decode progress over [t0, t1] with the batches admitted at t0.
        dt = t1 - t0
        for drep in list(self._decode):
            if drep.n:
                self._decode_step(drep, t0, t1, dt)
            if drep.state == "draining" and drep.n == 0:
                self._remove(drep, t1)

        # 3. Admission at t1.
        if self._decode_queue:
            self._admit(t0, t1)

    def _first_token(self, req: SimRequest, t: float) -> None:
        req.first_token = t
        self.first_tokens += 1
        self.output_tokens += 1
        if req.listener is not None:
            req.listener.on_first_token(t)
        for ob in self.observers:
            ob.on_first_token(req, t)
        if req.osl <= 1:
            self._finish(req, t)
        else:
            req.stage = "decode_queue"
            req.decode_ready = t
            self._decode_queue.append(req)

    def _finish(self, req: SimRequest, t: float) -> None:
        req.done = t
        req.stage = "done"
        self.finished += 1
        self._rows.append((req.arrival, req.first_token, t, req.isl, req.osl))  # type: ignore[arg-type]
        if req.listener is not None:
            req.listener.on_done(t)
        for ob in self.observers:
            ob.on_finished(req, t)

    def _decode_step(self, rep: _DecodeReplica, t0: float, t1: float, dt: float) -> None:
        n = rep.n
        itl = self._itl_base + self._itl_slope * n
        p_old = rep.progress
        p_new = p_old + dt / itl
        rep.progress = p_new
        off, rem, emitted = rep.off[:n], rep.rem[:n], rep.emitted[:n]
        new = np.minimum(np.floor(p_new - off), rem)
        inc = new - emitted
        tokens = int(inc.sum())
        emitted[:] = new
        if tokens:
            self.output_tokens += tokens
            for ob in self.observers:
                ob.on_decode_tokens(itl, tokens, t1)
            if rep.n_listeners:
                for i in np.flatnonzero(inc).tolist():
                    req = rep.reqs[i]
                    if req is not None and req.listener is not None:
                        t_tok = t0 + (off[i] + new[i] - p_old) * itl
                        req.listener.on_tokens(int(inc[i]), min(t1, max(t_tok, req.first_token)))  # type: ignore[arg-type]
        done = np.flatnonzero(new >= rem)
        if len(done):
            finished: list[tuple[SimRequest, float]] = []
            for i in done[::-1].tolist():  # descending, so swap-remove never moves an unvisited slot
                req = rep.reqs[i]
                assert req is not None
                t_done = t0 + (off[i] + rem[i] - p_old) * itl
                finished.append((req, min(t1, max(t_done, req.first_token))))  # type: ignore[arg-type]
                rep.used_blocks -= req.blocks
                if req.listener is not None:
                    rep.n_listeners -= 1
                last = rep.n - 1
                if i != last:
                    rep.off[i], rep.rem[i], rep.emitted[i] = rep.off[last], rep.rem[last], rep.emitted[last]
                    rep.reqs[i] = rep.reqs[last]
                rep.off[last] = rep.rem[last] = rep.emitted[last] = 0.0
                rep.reqs[last] = None
                rep.n = last
            finished.sort(key=lambda x: x[1])
            for req, t_done in finished:
                self._finish(req, t_done)

    def _admit(self, t0: float, t1: float) -> None:
        ready = [r for r in self._decode if r.state == "ready"]
        if not ready:
            return
        queue = self._decode_queue
        while queue:
            req = queue[0]
            need = min(self._blocks(req.isl + req.osl), self._kv_blocks)
            best: _DecodeReplica | None = None
            best_free = -1
            for rep in ready:
                free = self._kv_blocks - rep.used_blocks
                if rep.n < self._max_seqs and free >= need and free > best_free:
                    best, best_free = rep, free
            if best is None:
                return
            queue.popleft()
            i = best.n
            best.n += 1
            # When could it have started? A request that became ready during this step, or a replica
            # that became ready during it, gets credit for the time since; one that was already
            # blocked at t0 found room only now (room freed by completions is released at t1).
            if req.decode_ready > t0:
                start = max(req.decode_ready, best.ready_at)
            elif best.ready_at > t0:
                start = best.ready_at
            else:
                start = t1
            credit = (t1 - start) / (self._itl_base + self._itl_slope * best.n)
            best.off[i] = best.progress - credit
            best.rem[i] = req.osl - 1
            best.emitted[i] = 0.0
            best.reqs[i] = req
            best.used_blocks += need
            if req.listener is not None:
                best.n_listeners += 1
            req.blocks = need
            req.stage = "decode"
            wait = max(0.0, start - req.decode_ready)
            for ob in self.observers:
                ob.on_decode_admitted(req, wait, t1)
