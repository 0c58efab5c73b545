"""Which series belong to which graph and role: label matchers shared by the sources."""

from __future__ import annotations

from typing import Mapping

from scaler.config import GraphConfig, RoleConfig
from scaler.signals import Signal, role_label_filter

# A matcher is (label, op, value) with op "=", "=~" or "!~", as in PromQL (regexes anchored).
Matcher = tuple[str, str, str]
LABEL = "dynamo_namespace"  # Dynamo's: "<Kubernetes namespace>-<DynamoGraphDeployment name>"


def graph_matchers(name: str, graph: GraphConfig, graphs: Mapping[str, GraphConfig] | None = None) -> list[Matcher]:
    """The graph's series: its configured labels, else Dynamo's dynamo_namespace="<ns>-<graph>".

    Without a namespace, dynamo_namespace=~".+-<graph>" (any Kubernetes namespace, which may itself
    contain '-'), except the values another of the configured `graphs` claims more precisely: its
    exact dynamo_namespace (a namespace or an equality label), or ".+-<other>" for a namespace-less
    graph whose name ends in "-<graph>". Graph `chat` then does not count the series of
    `support-chat`: a series goes to the most specific graph that matches it."""
    if graph.labels:
        return [(k, "=", v) for k, v in sorted(graph.labels.items())]
    if graph.namespace:
        return [(LABEL, "=", f"{graph.namespace}-{name}")]
    # Graph names are DNS labels ([a-z0-9-]), so they need no regex escaping.
    out = [(LABEL, "=~", f".+-{name}")]
    taken = []
    for other, ocfg in sorted((graphs or {}).items()):
        exact = ocfg.labels.get(LABEL) if ocfg.labels else (f"{ocfg.namespace}-{other}" if ocfg.namespace else None)
        if exact is not None:
            if exact.endswith(f"-{name}") and len(exact) > len(name) + 1:
                taken.append(_literal(exact))
        elif not ocfg.labels and other != name and other.endswith(f"-{name}"):
            taken.append(f".+-{other}")
    if taken:
        out.append((LABEL, "!~", "|".join(taken)))
    return out


def _literal(value: str) -> str:
    """A label value as an RE2 literal."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in value)


def role_matchers(signal: Signal, role: RoleConfig | None) -> list[Matcher]:
    if role is None:
        return []
    return [(k, "=", v) for k, v in role_label_filter(signal, role.kind, role.component).items()]

