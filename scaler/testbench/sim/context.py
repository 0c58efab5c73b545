"""What every policy of a replay is built from: the workload, the simulated hardware, the SLOs."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.sim.nodes import NodeSettings
from scaler.testbench.sim.sizing import replicas_needed
from scaler.testbench.sim.workload import Workload

# MLPerf Inference's interactive Llama-3.1-8B scenario (TTFT 0.5 s, TPOT 30 ms), as in the demo.
SLO_TTFT_S, SLO_ITL_S = 0.5, 0.030


@dataclass(frozen=True)
class SimContext:
    workload: Workload
    profile: EmulatorProfile = field(default_factory=EmulatorProfile)
    ttft_slo: float = SLO_TTFT_S
    itl_slo: float = SLO_ITL_S
    nodes: NodeSettings = field(default_factory=NodeSettings)
    profile_path: str | None = None  # --profile, handed to pdscaler's config
    max_replicas: int = 1000
    engine_overrides: dict | None = None  # --config: a pdscaler config merged over the generated one

    @property
    def dt(self) -> float:
        return self.workload.dt

    def sim(self, name: str) -> np.ndarray:
        """A workload column (rate, isl, osl) over the simulated span."""
        return getattr(self.workload, name)[self.workload.start :]

    @cached_property
    def need(self) -> dict[str, np.ndarray]:
        """Replicas each simulated step needs within the SLOs (scaler/testbench/sim/sizing.py), per role."""
        return replicas_needed(self.profile, self.sim("rate"), self.sim("isl"), self.sim("osl"), self.itl_slo)

    def steps(self, seconds: float) -> int:
        return int(np.ceil(seconds / self.dt - 1e-9))
