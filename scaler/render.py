"""`pdscaler render`: from a DynamoGraphDeployment manifest to the ScaledObjects and config that attach
pdscaler to it (pure: a parsed DGD in, objects out; the CLI reads and prints).

The prefill and decode services are found as the cluster reads find them (scaler/kube/targets.py:
subComponentType, else the worker names); each must have Dynamo's scaling adapter enabled, since the
ScaledObjects target the adapters `<dgd>-<service lowercased>`. The HPA behavior they carry is the
one manifests/overlays/dynamo-disagg documents: pdscaler does the stabilisation, so the HPA's windows
are 0, its step policies generous and its 10 % tolerance 0 (Kubernetes >= 1.33 with the
HPAConfigurableTolerance feature gate; elsewhere the field is dropped and 10 % applies).
"""

from __future__ import annotations

from typing import Any, Mapping

from scaler.config import dgdsa_ref
from scaler.kube.targets import TargetError, find_service, scaling_adapter_enabled, services

DEFAULT_SCALER_ADDRESS = "pdscaler.pdscaler.svc.cluster.local:6000"
ROLES = ("prefill", "decode")


class RenderError(ValueError):
    """A DGD pdscaler cannot attach to; the message says why and what to change."""


def hpa_behavior() -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "tolerance": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 1000, "periodSeconds": 15},
                                 {"type": "Pods", "value": 100, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 0, "tolerance": 0, "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
    }


def scaled_object(*, name: str, namespace: str, target: Mapping[str, str], graph: str, role: str,
                  min_replicas: int, max_replicas: int, scaler_address: str = DEFAULT_SCALER_ADDRESS,
                  polling_interval: int = 15) -> dict[str, Any]:
    """A ScaledObject whose one external trigger asks pdscaler for (graph, role)'s target replicas.
    Fallback: after 3 failed polls KEDA keeps the current replicas (raising them to min if lower),
    never scaling serving capacity down because the scaler is away."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": dict(target),
            "pollingInterval": polling_interval,
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "fallback": {"failureThreshold": 3, "replicas": max(1, min_replicas),
                         "behavior": "currentReplicasIfHigher"},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior()}},
            "triggers": [{
                "type": "external", "name": "pdscaler", "metricType": "AverageValue",
                "metadata": {"scalerAddress": scaler_address, "graph": graph, "role": role, "namespace": namespace},
            }],
        },
    }


def _gpus(spec: Mapping[str, Any]) -> int | None:
    res = spec.get("resources") or {}
    for part in ("limits", "requests"):
        v = (res.get(part) or {}).get("gpu")
        try:
            if v is not None and int(str(v)) >= 1:
                return int(str(v))
        except ValueError:
            pass
    return None


def render(dgd: Mapping[str, Any], namespace: str | None = None, *, scaler_address: str = DEFAULT_SCALER_ADDRESS,
           min_replicas: int = 1, max_replicas: int = 16) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(ScaledObjects, config snippet `{graphs: {<dgd>: ...}}`) for a DGD's prefill and decode services."""
    if not isinstance(dgd, Mapping) or dgd.get("kind") != "DynamoGraphDeployment":
        kind = dgd.get("kind") if isinstance(dgd, Mapping) else type(dgd).__name__
        raise RenderError(f"expected a DynamoGraphDeployment, got {kind!r}")
    api_version = str(dgd.get("apiVersion", ""))
    if not api_version.startswith("nvidia.com/"):
        raise RenderError(f"apiVersion {api_version!r} is not a Dynamo API version (nvidia.com/...)")
    md = dgd.get("metadata") or {}
    name = md.get("name")
    if not name:
        raise RenderError("the DGD has no metadata.name")
    ns = namespace or md.get("namespace") or "default"
    try:
        svcs = services(dgd)
        found = {role: find_service(dgd, role) for role in ROLES}
    except TargetError as e:
        raise RenderError(f"DGD {name!r} is not a disaggregated graph pdscaler can size: {e}") from None
    off = [svc for svc in found.values() if not scaling_adapter_enabled(dgd, svc)]
    if off:
        how = "scalingAdapter: {enabled: true}" if api_version.endswith("v1alpha1") else "scalingAdapter: {}"
        raise RenderError(f"DGD {name!r}: no scaling adapter on {', '.join(off)}; add `{how}` to "
                          f"{'that service' if len(off) == 1 else 'those services'} (KEDA scales the adapter)")
    objects, roles = [], {}
    for role, svc in found.items():
        ref = dgdsa_ref(name, svc)
        objects.append(scaled_object(
            name=f"{name}-{role}", namespace=ns,
            target={"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name},
            graph=name, role=role, min_replicas=min_replicas, max_replicas=max_replicas,
            scaler_address=scaler_address))
        role_cfg: dict[str, Any] = {"kind": role, "service": svc, "min_replicas": min_replicas,
                                    "max_replicas": max_replicas}
        gpus = _gpus(svcs[svc])
        if gpus:
            role_cfg["gpus_per_replica"] = gpus
        roles[role] = role_cfg
    return objects, {"graphs": {name: {"namespace": ns, "roles": roles}}}
