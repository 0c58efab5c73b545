"""Advisory mode: decide, export and explain, but answer KEDA with the replicas as they stand.

A graph in `mode: advisory` lets a team watch what pdscaler would do on live traffic before it acts:
each role answers its current replicas (the scale subresource's spec.replicas, else the ready count,
else min_replicas) and carries the target it would have asked for as `advised`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from scaler.policy.context import replicas_now

if TYPE_CHECKING:
    from scaler.config import GraphConfig


def answer(graph: "GraphConfig", role: str, target: int, role_signals: Mapping[str, float]
           ) -> tuple[int, int | None]:
    """(the replicas to answer, the advised target or None in active mode)."""
    if graph.mode != "advisory":
        return target, None
    return replicas_now(role_signals, graph.roles[role].min_replicas), target
