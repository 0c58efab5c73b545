"""The policies a backtest compares, by name (each in its own module)."""

from __future__ import annotations

from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.policies.oracle import Oracle
from scaler.testbench.sim.policies.pdscaler import Pdscaler
from scaler.testbench.sim.policies.planner import Planner, PlannerProphet
from scaler.testbench.sim.policies.reactive import ReactiveTtft
from scaler.testbench.sim.policies.static import StaticMean, StaticPeak

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Oracle, StaticPeak, StaticMean, ReactiveTtft, Planner, PlannerProphet, Pdscaler)
}
DEFAULT_POLICIES = ("oracle", "static-peak", "static-mean", "reactive-ttft", "planner", "pdscaler")


def make_policy(name: str, ctx) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return cls(ctx)
