"""Which series belong to which graph and role: label matchers shared by the sources."""

from __future__ import annotations

from scaler.config import GraphConfig, RoleConfig
from scaler.signals import Signal, role_label_filter

# A matcher is (label, op, value) with op "=" or "=~", as in PromQL.
Matcher = tuple[str, str, str]


def graph_matchers(name: str, graph: GraphConfig) -> list[Matcher]:
    """The graph's series: its configured labels, else Dynamo's dynamo_namespace="<ns>-<graph>"."""
    if graph.labels:
        return [(k, "=", v) for k, v in sorted(graph.labels.items())]
    if graph.namespace:
        return [("dynamo_namespace", "=", f"{graph.namespace}-{name}")]
    # Graph names are DNS labels ([a-z0-9-]), so they need no regex escaping.
    return [("dynamo_namespace", "=~", f".+-{name}")]


def role_matchers(signal: Signal, role: RoleConfig | None) -> list[Matcher]:
    if role is None:
        return []
    return [(k, "=", v) for k, v in role_label_filter(signal, role.kind, role.component).items()]

