"""The policies a backtest compares, by name (each in its own module)."""

from __future__ import annotations

from scaler.testbench.sim.policies.base import Policy
from scaler.testbench.sim.policies.llmd_keda import LlmdKeda
from scaler.testbench.sim.policies.oracle import Oracle
from scaler.testbench.sim.policies.pdscaler import Pdscaler
from scaler.testbench.sim.policies.planner import Planner, PlannerProphet
from scaler.testbench.sim.policies.planner_load import PlannerLoad
from scaler.testbench.sim.policies.reactive import ReactiveTtft
from scaler.testbench.sim.policies.static import StaticMean, StaticPeak, StaticSize
from scaler.testbench.sim.policies.static_best import StaticBest

POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (Oracle, StaticPeak, StaticMean, StaticBest, StaticSize, ReactiveTtft, LlmdKeda, Planner,
              PlannerProphet, PlannerLoad, Pdscaler)
}
DEFAULT_POLICIES = ("oracle", "static-peak", "static-mean", "static-best", "reactive-ttft", "llmd-keda", "planner",
                    "planner-load", "pdscaler")


def make_policy(name: str, ctx, **params) -> Policy:
    """Policy `name` for `ctx`; `params` are its knobs (keyword arguments of its class, for sweeps)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return cls(ctx, **params)
