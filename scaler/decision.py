"""What the engine decides for a serving graph, and why.

A Decision holds one RoleDecision per role. Each carries its Reason: the rule that bound the target,
a sentence for a person, the inputs it used and the capacity figures it computed. The same object
feeds the gRPC answers, the logs, the scaler's metrics and `pdscaler explain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from forecasting.demand import DemandForecast

    from scaler.policy.rule import Rule


@dataclass(frozen=True)
class Reason:
    rule: "Rule"  # the rule that bound the target (scaler/policy/rule.py), e.g. capacity, min-replicas, stale-data
    message: str  # one line for a person
    inputs: Mapping[str, float] = field(default_factory=dict)  # signal values used
    figures: Mapping[str, float] = field(default_factory=dict)  # demand, capacity per replica, raw need

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class RoleDecision:
    role: str
    kind: str
    replicas: int  # the target KEDA is answered with
    reason: Reason
    advised: int | None = None  # advisory mode: what pdscaler would have asked for
    steps: tuple[str, ...] = ()  # each rule of the pipeline that had a say, in order


@dataclass(frozen=True)
class Decision:
    graph: str
    at: float  # when it was decided (the injected clock's time)
    roles: Mapping[str, RoleDecision]
    data_at: float | None = None  # timestamp of the observation it used, if any
    notes: tuple[str, ...] = ()  # problems with the data (dropped values, source errors)
    forecast: "DemandForecast | None" = None  # the graph's demand forecast at decision time
    warnings: tuple[str, ...] = ()  # problems around the decision (another autoscaler on a role)

    @property
    def replicas(self) -> dict[str, int]:
        return {r: d.replicas for r, d in self.roles.items()}

    @property
    def reasons(self) -> dict[str, Reason]:
        return {r: d.reason for r, d in self.roles.items()}

    def to_dict(self) -> dict:
        """The decision as JSON-ready data (what `pdscaler explain --json` prints)."""
        def clean(m: Mapping[str, float]) -> dict[str, float | None]:
            return {k: (v if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else None)
                    for k, v in m.items()}

        return {
            "graph": self.graph,
            "at": self.at,
            "data_at": self.data_at,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "roles": {
                r: {
                    "kind": d.kind,
                    "replicas": d.replicas,
                    "advised": d.advised,
                    "rule": d.reason.rule,
                    "message": d.reason.message,
                    "steps": list(d.steps),
                    "inputs": clean(d.reason.inputs),
                    "figures": clean(d.reason.figures),
                }
                for r, d in self.roles.items()
            },
        }

    def explain(self) -> str:
        """A multi-line, human-readable account of the decision."""
        lines = [f"graph {self.graph} at t={self.at:.1f}" + (f" (data from t={self.data_at:.1f})" if self.data_at is not None else " (no data)")]
        for role, d in self.roles.items():
            advised = f" (advisory: would ask for {d.advised})" if d.advised is not None else ""
            lines.append(f"  {role} ({d.kind}): {d.replicas} replicas{advised} - {d.reason}")
            for step in d.steps:
                lines.append(f"    - {step}")
            if d.reason.inputs:
                lines.append("    inputs:  " + ", ".join(f"{k}={v:.4g}" for k, v in d.reason.inputs.items()))
            if d.reason.figures:
                lines.append("    figures: " + ", ".join(f"{k}={v:.4g}" for k, v in d.reason.figures.items()))
        for warning in self.warnings:
            lines.append(f"  WARNING: {warning}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)
