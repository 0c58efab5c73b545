"""What the engine keeps per role: the rule objects that have state (each owns its own) and the
role's last target. `Engine.decide` (scaler/engine.py) runs them in its order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scaler.policy.cascade import NoCascade
from scaler.policy.floors import Floors
from scaler.policy.hpa_tolerance import HpaTolerance
from scaler.policy.missing_data import NeverLowerOnMissingData
from scaler.policy.need import Need
from scaler.policy.safety_net import SafetyNet
from scaler.policy.stabilisation import Stabilisation
from scaler.policy.step_limit import StepLimit
from scaler.startup import StartupTracker

if TYPE_CHECKING:
    from scaler.config import GraphConfig, RoleConfig, ScalerConfig


@dataclass
class RoleRules:
    """One role's rules that keep state, and what the engine remembers of the role."""

    need: Need
    safety_net: SafetyNet
    floors: Floors
    stabilisation: Stabilisation
    step_limit: StepLimit
    no_cascade: NoCascade
    hpa_tolerance: HpaTolerance
    never_lower: NeverLowerOnMissingData
    startup: StartupTracker
    target: int | None = None  # the last target computed (advised, in advisory mode)
    floor_only: bool = True  # every target so far was the floor held for want of data (adopt_replicas may replace it)

    @classmethod
    def of(cls, config: ScalerConfig, graph: GraphConfig, role: RoleConfig) -> "RoleRules":
        return cls(need=Need(config.forecast, graph.slo.attainment, config.poll_interval),
                   safety_net=SafetyNet(role.safety_net, graph), floors=Floors(),
                   stabilisation=Stabilisation(role.stabilisation), step_limit=StepLimit(role.max_step),
                   no_cascade=NoCascade(role.no_cascade), hpa_tolerance=HpaTolerance(graph.hpa_tolerance),
                   never_lower=NeverLowerOnMissingData(),
                   startup=StartupTracker(role.startup.warm, role.startup.cold_s, role.startup.learn,
                                          observed_lead=role.startup.lead == "observed"))
