"""`oracle`: perfect foresight, the fewest replicas that meet the SLOs given the start-up delays.

It knows each future second's need per role (scaler/testbench/sim/sizing.py: no-queue sizing of the true
per-second demand) and acts every step, setting replicas directly (no HPA, no tolerance):

- replicas: W_r(t) = max(need_r over [t, t + warm start]): a replica starts exactly one warm
  start-up ahead of the first second that needs it, and is released as soon as no second within
  one warm start-up needs it (restarting it later costs no more than keeping it);
- GPU nodes: provisioned GPUs P(t) = max(sum_r W_r over [t, t + node provisioning]), so every warm
  start finds a Ready GPU; the GPUs beyond the replicas are held by balloon pods (the `warm` role),
  which a starting replica preempts.

Scale-downs are applied before scale-ups, so a released balloon's GPU goes to the replica that
replaces it. Not a strict lower bound on GPU-hours: the no-queue sizing ignores the TTFT slack,
and released GPUs stay billed until the cluster autoscaler removes their node.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.sizing import forward_max


class Oracle(Policy):
    name = "oracle"
    direct = True

    @property
    def interval_s(self) -> float:  # type: ignore[override]
        return self.ctx.dt

    @cached_property
    def plan(self) -> dict[str, np.ndarray]:
        warm = self.ctx.steps(self.ctx.nodes.warm_start_s)
        provision = self.ctx.steps(self.ctx.nodes.node_provision_s)
        replicas = {role: forward_max(n, warm) for role, n in self.ctx.need.items()}
        total = sum(replicas.values())
        return {**replicas, "warm": forward_max(total, provision) - total}

    def initial_replicas(self) -> dict[str, int]:
        return {role: int(x[0]) for role, x in self.plan.items()}

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        return {role: int(x[i]) for role, x in self.plan.items()}
