"""Which /scale resource each role is, and the DGD facts behind it (pure functions of config + JSON).

A role names its target explicitly (`scale_target`, any /scale resource), or a DGD service
(`service` -> Dynamo's adapter `<dgd>-<service lowercased>`), or nothing: then the DGD service whose
`subComponentType` is the role's kind, or failing that the one worker whose name contains it, is used.
`pdscaler render` and the cluster reads share these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from scaler.config import GraphConfig, ScaleTargetRef, dgdsa_ref


class TargetError(ValueError):
    """A DGD or config from which a role's scale target cannot be found; the message says why."""


@dataclass(frozen=True)
class RoleTarget:
    role: str
    kind: str
    ref: ScaleTargetRef
    service: str | None  # the DGD service behind it, if any


def services(dgd: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    spec = dgd.get("spec") or {}
    svcs = spec.get("services") or {}
    if not isinstance(svcs, Mapping):
        raise TargetError("the DGD's spec.services is not a map of service name -> spec")
    return {str(k): (v if isinstance(v, Mapping) else {}) for k, v in svcs.items()}


def find_service(dgd: Mapping[str, Any], kind: str) -> str:
    """The DGD service that serves `kind` (prefill or decode)."""
    svcs = services(dgd)
    by_type = [k for k, v in svcs.items() if str(v.get("subComponentType", "")).lower() == kind]
    if len(by_type) == 1:
        return by_type[0]
    if len(by_type) > 1:
        raise TargetError(f"several DGD services have subComponentType {kind}: {', '.join(by_type)}; "
                          "name one with the role's `service`")
    workers = [k for k, v in svcs.items()
               if kind in k.lower() and str(v.get("componentType", "worker")).lower() == "worker"]
    if len(workers) == 1:
        return workers[0]
    found = ", ".join(f"{k} ({v.get('componentType', '?')}/{v.get('subComponentType', '-')})" for k, v in svcs.items())
    if workers:
        raise TargetError(f"several DGD workers look like {kind} workers: {', '.join(workers)}; "
                          "set their subComponentType or name one with the role's `service`")
    raise TargetError(f"no {kind} service in the DGD (no subComponentType: {kind}, no worker named *{kind}*); "
                      f"services: {found or 'none'}")


def scaling_adapter_enabled(dgd: Mapping[str, Any], service: str) -> bool:
    """v1alpha1: `scalingAdapter: {enabled: true}`; v1beta1: `scalingAdapter: {}` (present = on)."""
    sa = services(dgd).get(service, {}).get("scalingAdapter")
    if not isinstance(sa, Mapping):
        return False
    if str(dgd.get("apiVersion", "")).endswith("v1alpha1"):
        return sa.get("enabled") is True
    return sa.get("enabled", True) is not False


def planner_services(dgd: Mapping[str, Any]) -> list[str]:
    return [k for k, v in services(dgd).items() if str(v.get("componentType", "")).lower() == "planner"]


def role_target(graph: str, gcfg: GraphConfig, role: str, dgd: Mapping[str, Any] | None) -> RoleTarget:
    """A role's scale target; raises TargetError naming the role when it cannot be found."""
    rc = gcfg.roles[role]
    if rc.scale_target is not None:
        return RoleTarget(role, rc.kind, rc.scale_target, None)
    service = rc.service
    if service is None:
        if rc.kind == "warm":
            raise TargetError(f"role {role!r} (warm) needs a scale_target (the placeholder Deployment)")
        if dgd is None:
            raise TargetError(f"role {role!r} names no service or scale_target, and the DGD "
                              f"{gcfg.dgd_name(graph)!r} could not be read to find its {rc.kind} service")
        try:
            service = find_service(dgd, rc.kind)
        except TargetError as e:
            raise TargetError(f"role {role!r}: {e}") from None
    return RoleTarget(role, rc.kind, dgdsa_ref(gcfg.dgd_name(graph), service), service)


def role_targets(graph: str, gcfg: GraphConfig, dgd: Mapping[str, Any] | None) -> dict[str, RoleTarget]:
    return {role: role_target(graph, gcfg, role, dgd) for role in gcfg.roles}
