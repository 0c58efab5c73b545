"""Who else scales a role pdscaler scales (pure): other HPAs, other ScaledObjects, Dynamo's Planner.

Two autoscalers on one /scale resource fight: each overwrites the other's replicas (Dynamo's docs:
choose one autoscaler per service). pdscaler's own ScaledObjects are the ones whose triggers are all
`external`/`external-push` triggers naming this graph and role; KEDA's HPA for them
(`keda-hpa-<name>`, owned by the ScaledObject) is ours too. Anything else targeting the same resource
is reported, as is a DGD with a Planner service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from scaler.config import ScaleTargetRef

EXTERNAL_TRIGGERS = ("external", "external-push")


@dataclass(frozen=True)
class Conflict:
    role: str
    owner_kind: str  # HorizontalPodAutoscaler | ScaledObject | Planner
    owner: str  # namespace/name, or the DGD service
    detail: str

    def __str__(self) -> str:
        return f"ownership: {self.owner_kind} {self.owner} also scales role {self.role} ({self.detail})"


def _group(api_version: str | None) -> str:
    return api_version.split("/")[0] if api_version and "/" in api_version else ""


def same_target(ref: ScaleTargetRef, api_version: str | None, kind: str | None, name: str | None) -> bool:
    """Group, kind and name equal (versions may differ: v1alpha1 and v1beta1 name one resource)."""
    return name == ref.name and kind == ref.kind and _group(api_version) == _group(ref.api_version)


def _ours(so: Mapping[str, Any], graph: str, role: str) -> bool:
    triggers = (so.get("spec") or {}).get("triggers") or []
    return bool(triggers) and all(
        t.get("type") in EXTERNAL_TRIGGERS
        and (t.get("metadata") or {}).get("graph") == graph
        and (t.get("metadata") or {}).get("role") == role
        for t in triggers
    )


def _name(obj: Mapping[str, Any]) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace', '?')}/{md.get('name', '?')}"


def conflicts(graph: str, targets: Mapping[str, ScaleTargetRef], hpas: Iterable[Mapping[str, Any]],
              scaled_objects: Iterable[Mapping[str, Any]], planners: Iterable[str] = ()) -> list[Conflict]:
    """Every other scaler on one of `targets` (role -> scale target)."""
    out: list[Conflict] = []
    ours: set[str] = set()  # names of our ScaledObjects, whose HPAs are ours too
    for so in scaled_objects:
        ref = (so.get("spec") or {}).get("scaleTargetRef") or {}
        for role, target in targets.items():
            # A ScaledObject's scaleTargetRef defaults to apps/v1 Deployment.
            if not same_target(target, ref.get("apiVersion", "apps/v1"), ref.get("kind", "Deployment"), ref.get("name")):
                continue
            if _ours(so, graph, role):
                ours.add((so.get("metadata") or {}).get("name", ""))
                continue
            types = ", ".join(sorted({str(t.get("type")) for t in (so.get("spec") or {}).get("triggers") or []}))
            out.append(Conflict(role, "ScaledObject", _name(so), f"triggers: {types or 'none'}"))
    for hpa in hpas:
        md = hpa.get("metadata") or {}
        owners = [o.get("name") for o in md.get("ownerReferences") or [] if o.get("kind") == "ScaledObject"]
        if any(o in ours for o in owners):
            continue
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        for role, target in targets.items():
            if same_target(target, ref.get("apiVersion"), ref.get("kind"), ref.get("name")):
                by = f"KEDA ScaledObject {owners[0]}" if owners else "not managed by KEDA"
                out.append(Conflict(role, "HorizontalPodAutoscaler", _name(hpa), by))
    for planner in planners:
        for role, target in targets.items():
            if target.kind == "DynamoGraphDeploymentScalingAdapter":
                out.append(Conflict(role, "Planner", planner,
                                    "Dynamo's Planner scales the DGD's services through the same adapters"))
    return out
