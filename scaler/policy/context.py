"""The values every rule works on: a role's context (what the rules read) and its target (what they move).

`RoleContext` is built once per role and decision by the Engine and never changed; `Target` is the
role's target as it moves through the pipeline, with the steps that moved it: each rule that changes
it calls `bind`, so the reason of a decision is the last rule that bound it and its steps are the
whole story.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from forecasting.demand import DemandForecast

    from scaler.capacity_profile import CapacityProfile
    from scaler.config import GraphConfig, RoleConfig


@dataclass(frozen=True)
class RoleContext:
    now: float
    role: str
    config: "RoleConfig"
    graph: "GraphConfig"
    profile: "CapacityProfile"
    signals: Mapping[str, float]  # the graph's observed signals
    role_signals: Mapping[str, float]  # this role's
    forecast: "DemandForecast | None"
    horizons: np.ndarray  # forecast horizons, seconds from now
    quantile: float  # the forecast quantile decisions size on
    current: int  # the replicas the role stands at: the last target, else the cluster's count
    previous: int | None  # the last target (None before the first decision)
    lead_s: float  # the start-up time a rise is planned on (startup.py's lead_s)
    warm_s: float  # the start-up times in use (learned when enabled); a replica released now is back
    cold_s: float  # within warm_s, its node still provisioned (the cluster autoscaler keeps it 10 min)
    has_warm_role: bool  # the graph keeps balloon pods: nodes are warm within the warm start-up time

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def ready(self) -> float | None:
        return ready_of(self.role_signals)


@dataclass
class Target:
    """A role's target as it moves through the pipeline."""

    role: str
    kind: str
    value: int
    rule: Rule
    message: str
    inputs: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    forecast_needs: np.ndarray | None = None  # predicted replicas per horizon (need.py), for the floors and the warm pool
    forecast_settled: bool = False  # the calibrated headroom rests on its own evidence (stabilisation.py)
    held: bool = False  # held for want of data: no later rule may lower it
    emergency: bool = False  # the safety net stepped: stabilisation and no-cascade do not delay it

    def bind(self, value: int, rule: Rule, note: str) -> None:
        if value != self.value:
            self.steps.append(f"{rule}: {self.value} -> {value} ({note})")
            self.value, self.rule, self.message = value, rule, note

    def note(self, rule: Rule, note: str) -> None:
        """A step that did not move the target (a rule that would have, but was held back)."""
        self.steps.append(f"{rule}: {note}")


def ready_of(values: Mapping[str, float]) -> float | None:
    """Ready replicas of a role: the cluster's count when read (scaler/kube), else the workers that
    report to Dynamo's router."""
    ready = values.get("ready_replicas")
    return ready if ready is not None else values.get("ready_workers")


def replicas_now(values: Mapping[str, float], default: int) -> int:
    """The role's replicas as they stand: the scale subresource's spec.replicas when read, else the
    ready count, else `default`."""
    for v in (values.get("desired_replicas"), ready_of(values)):
        if v is not None:
            return int(v)
    return default


def load_of(demand: float | None, per_replica: float | None, ready: float | None) -> float | None:
    """Demand as a share of the ready replicas' capacity (None when unknown)."""
    if demand is None or per_replica is None or not ready:
        return None
    return demand / (per_replica * ready)
