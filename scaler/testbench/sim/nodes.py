"""GPU nodes under a cluster autoscaler: warm and cold replica starts, balloon pods, billed GPU-time.

A replica's start-up delay depends on whether a GPU is already provisioned for it:

- warm start (`warm_start_s`, 90 s of model load; the published AKS + KEDA Dynamo walk-through): a
  provisioned GPU is free, either idle (freed by a scale-down less than `scale_down_unneeded_s` ago,
  the cluster autoscaler's `--scale-down-unneeded-time`, default 10 min) or held by a balloon pod
  (a low-priority placeholder of the `warm` role, which a real replica preempts);
- cold start (`node_provision_s` + `warm_start_s`, 210 + 90 = 300 s by default; landscape.md: 3-8
  minutes on AKS): no GPU is free, so the cluster autoscaler provisions a node first.

A preempted balloon pod goes pending and is placed again: on a free GPU if there is one, else on
a new node (provisioned, and billed, from that moment). A GPU whose node is still provisioning can
be taken over: the replica is ready `warm_start_s` after the node is.

Simplifications (documented, deliberate): one GPU per node (e.g. Azure NC40ads H100 v5), so the
cluster autoscaler removes exactly the GPUs that stay idle for `scale_down_unneeded_s`; no
`scale-down-delay-after-add`; nodes are billed from the moment they are requested.

Billed GPU-time (`gpu_seconds`) counts every provisioned GPU: replicas starting or ready, balloon
pods, and idle nodes not yet removed. That is what the cloud bills.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

# Cluster autoscaler --scale-down-unneeded-time default (10 minutes).
SCALE_DOWN_UNNEEDED_S = 600.0
# A new GPU node on AKS: ~3 min until Ready (landscape.md: 3-8 min including model load).
NODE_PROVISION_S = 210.0
# Model load on a warm node (published AKS + KEDA Dynamo walk-through, EmulatorProfile.startup_delay_s).
WARM_START_S = 90.0


@dataclass(frozen=True)
class NodeSettings:
    warm_start_s: float = WARM_START_S
    node_provision_s: float = NODE_PROVISION_S
    scale_down_unneeded_s: float = SCALE_DOWN_UNNEEDED_S

    @property
    def cold_start_s(self) -> float:
        return self.node_provision_s + self.warm_start_s


@dataclass
class _Gpu:
    id: int
    node_ready_at: float  # when its node is (or was) Ready
    idle_since: float | None = None  # None while a replica or a balloon holds it


class GpuNodes:
    """The provisioned GPUs of one cluster, shared by every role of a graph."""

    def __init__(self, settings: NodeSettings | None = None) -> None:
        self.s = settings or NodeSettings()
        self._gpus: dict[int, _Gpu] = {}
        self._idle: dict[int, _Gpu] = {}
        self._idle_heap: list[tuple[float, int]] = []  # (idle since, id), lazily pruned
        self._balloons: list[int] = []  # GPU ids held by balloon pods
        self._next_id = 0
        self.gpu_seconds = 0.0
        self.warm_starts = 0
        self.cold_starts = 0

    # -- queries ---------------------------------------------------------------------------

    @property
    def provisioned(self) -> int:
        return len(self._gpus)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def balloons(self) -> int:
        return len(self._balloons)

    def free_warm(self) -> int:
        """GPUs a replica could start on without a new node (idle or held by a balloon)."""
        return len(self._idle) + len(self._balloons)

    # -- replicas --------------------------------------------------------------------------

    def acquire(self, now: float) -> tuple[int, float]:
        """A GPU for a replica starting at `now`: (gpu id, seconds until the replica is ready).

        Preference: an idle Ready GPU, a balloon's Ready GPU, then the nearest-Ready GPU still
        provisioning (idle, then a balloon's), then a new node."""
        gpu = self._take_idle(now, ready_only=True) or self._preempt_balloon(now, ready_only=True)
        gpu = gpu or self._take_idle(now) or self._preempt_balloon(now) or self._provision(now)
        ready_at = max(now, gpu.node_ready_at) + self.s.warm_start_s
        if gpu.node_ready_at > now:
            self.cold_starts += 1
        else:
            self.warm_starts += 1
        return gpu.id, ready_at - now

    def release(self, gpu_id: int, now: float) -> None:
        """A replica (started or not) gave its GPU back: the node idles until removed or reused."""
        gpu = self._gpus[gpu_id]
        gpu.idle_since = now
        self._idle[gpu_id] = gpu
        heapq.heappush(self._idle_heap, (now, gpu_id))

    # -- balloon pods ----------------------------------------------------------------------

    def set_balloons(self, n: int, now: float) -> None:
        """Keep `n` balloon pods (one GPU each) placed."""
        n = max(0, int(n))
        while len(self._balloons) > n:
            self.release(self._balloons.pop(), now)
        while len(self._balloons) < n:
            self._place_balloon(now)

    def _place_balloon(self, now: float) -> None:
        gpu = self._take_idle(now) or self._provision(now)
        self._balloons.append(gpu.id)

    # -- time ------------------------------------------------------------------------------

    def advance(self, now: float, dt: float) -> None:
        """Bill `dt` seconds of every provisioned GPU, then remove nodes idle for too long."""
        self.gpu_seconds += len(self._gpus) * dt
        end = now + dt
        heap = self._idle_heap
        while heap and heap[0][0] + self.s.scale_down_unneeded_s <= end:
            since, gid = heapq.heappop(heap)
            gpu = self._idle.get(gid)
            if gpu is not None and gpu.idle_since == since:
                del self._idle[gid]
                del self._gpus[gid]

    # -- internals -------------------------------------------------------------------------

    def _take_idle(self, now: float, ready_only: bool = False) -> _Gpu | None:
        """An idle GPU, if any: one whose node is Ready before one still provisioning (the one
        nearest Ready), then the most recently freed (its node is the furthest from removal)."""
        if not self._idle:
            return None

        def key(g: int) -> tuple:
            gpu = self._idle[g]
            return (gpu.node_ready_at <= now, -gpu.node_ready_at if gpu.node_ready_at > now else 0.0, gpu.idle_since, g)

        gid = max(self._idle, key=key)
        if ready_only and self._idle[gid].node_ready_at > now:
            return None
        gpu = self._idle.pop(gid)
        gpu.idle_since = None
        return gpu

    def _preempt_balloon(self, now: float, ready_only: bool = False) -> _Gpu | None:
        """The GPU of the balloon pod whose node is the nearest Ready; the balloon goes pending and
        is placed again (on a free GPU, else a new node)."""
        if not self._balloons:
            return None
        gid = min(self._balloons, key=lambda g: (self._gpus[g].node_ready_at, g))
        if ready_only and self._gpus[gid].node_ready_at > now:
            return None
        self._balloons.remove(gid)
        self._place_balloon(now)
        return self._gpus[gid]

    def _provision(self, now: float) -> _Gpu:
        gpu = _Gpu(self._next_id, now + self.s.node_provision_s)
        self._next_id += 1
        self._gpus[gpu.id] = gpu
        return gpu


def fixed_delay_nodes(delay_s: float) -> GpuNodes:
    """Nodes that always give the same start-up delay (no node provisioning): the fluid model's
    original behaviour, where every replica is ready `delay_s` after it is created."""
    return GpuNodes(NodeSettings(warm_start_s=delay_s, node_provision_s=0.0, scale_down_unneeded_s=math.inf))
