"""The policy interface of the replay: what a scaling policy sees and what it answers.

Every `interval_s` of simulated time the replay calls `step(now, i, telemetry, cluster)`:
`telemetry.window(w)` is the Prometheus view of the graph (scaler/testbench/sim/telemetry.py), `cluster`
the current replicas and nodes (read-only). The answer is a value per role:

- `direct = False`: a metric value per role, which KEDA + the HPA (scaler/testbench/sim/actuation.py) turn
  into replicas at each HPA sync, per the role's `scaled_object(role)`;
- `direct = True`: a replica count per role, applied at once (controllers that patch /scale).

Roles are `prefill`, `decode`, and `warm` (balloon pods keeping GPU nodes provisioned).
Policies that look at the future (oracle, static sizing) read `ctx`, the whole workload.
"""

from __future__ import annotations

from typing import Protocol

from scaler.testbench.sim.actuation import ScaledObject
from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.sizing import forward_max
from scaler.testbench.sim.telemetry import Telemetry


class ClusterView(Protocol):
    def replicas(self, role: str) -> tuple[int, int]:
        """(desired, ready) replicas of a serving role."""

    def free_warm_gpus(self) -> int:
        """Provisioned GPUs a replica could start on without a new node."""

    def balloons(self) -> int: ...


class Policy:
    name = "policy"
    interval_s = 15.0
    direct = False

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def scaled_object(self, role: str) -> ScaledObject:
        return ScaledObject(min_replicas=0 if role == "warm" else 1, max_replicas=self.ctx.max_replicas)

    def initial_replicas(self) -> dict[str, int]:
        """Replicas ready when the replay starts. Default: what the first cold-start window needs,
        as a well-run deployment would have at that moment (the same start for every policy)."""
        w = self.ctx.steps(self.ctx.nodes.cold_start_s)
        return {role: int(forward_max(need[: w + 1], w)[0]) for role, need in self.ctx.need.items()}

    def step(self, now: float, i: int, telemetry: Telemetry, cluster: ClusterView) -> dict[str, float]:
        raise NotImplementedError

    def stats(self) -> dict:
        """Extra figures for the report (e.g. decision cost, reasons)."""
        return {}
