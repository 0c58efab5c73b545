"""`static-peak`, `static-mean` (and `static-size`): a constant deployment sized from the whole trace.

Sized with the oracle's arithmetic (scaler/testbench/sim/sizing.py): static-peak is the most replicas any
second of the trace needs (so it meets the SLOs everywhere in the fluid model), static-mean the
replicas the mean demand needs (mean of the fractional need, rounded up)."""

from __future__ import annotations

import math

import numpy as np

from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.sizing import decode_tokens_per_s_per_replica


class StaticPeak(Policy):
    name = "static-peak"
    interval_s = math.inf
    direct = True

    def counts(self) -> dict[str, int]:
        return {role: int(need.max()) for role, need in self.ctx.need.items()}

    def initial_replicas(self) -> dict[str, int]:
        return self.counts()

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        return dict(self.counts())


class StaticMean(StaticPeak):
    name = "static-mean"

    def counts(self) -> dict[str, int]:
        c, p = self.ctx, self.ctx.profile
        rate, isl, osl = c.sim("rate"), c.sim("isl"), c.sim("osl")
        prefill = float(np.mean(rate * isl)) / p.prefill.tokens_per_s
        decode = float(np.mean(rate * osl / decode_tokens_per_s_per_replica(p, isl, osl, c.itl_slo)))
        return {"prefill": max(1, math.ceil(prefill)), "decode": max(1, math.ceil(decode))}


class StaticSize(StaticPeak):
    """`static-size`: a constant deployment of given sizes (`prefill`, `decode`; default 1 each), for
    sweeps and the static-best search."""

    name = "static-size"

    def __init__(self, ctx, prefill: int = 1, decode: int = 1) -> None:
        super().__init__(ctx)
        self.sizes = {"prefill": max(1, int(prefill)), "decode": max(1, int(decode))}

    def counts(self) -> dict[str, int]:
        return dict(self.sizes)
