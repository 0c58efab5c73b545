"""Replicas per role and the DGD's state, parsed from API objects (pure), and merged into observations.

desired = the scale subresource's spec.replicas (what KEDA/the HPA last wrote), current = its
status.replicas, ready = the DGD's status.services[<service>].readyReplicas when Dynamo reports it,
else the Ready, non-terminating pods matched by the scale subresource's status.selector (as the HPA
counts them). A rollout is in progress while desired != updated or updated != ready (the rule Dynamo's
Planner waits on).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from scaler.observation import Observation


@dataclass(frozen=True)
class RoleReplicas:
    desired: int | None = None
    current: int | None = None
    ready: int | None = None
    updated: int | None = None
    selector: str | None = None

    @property
    def starting(self) -> int | None:
        if self.desired is None or self.ready is None:
            return None
        return max(0, self.desired - self.ready)

    @property
    def rolling_out(self) -> bool:
        if self.desired is None or self.ready is None:
            return False
        updated = self.updated if self.updated is not None else self.ready
        return self.desired != updated or updated != self.ready


@dataclass(frozen=True)
class DgdState:
    ready: bool | None  # the Ready condition; None when the DGD reports none
    state: str | None  # status.state (e.g. successful, pending, failed)
    message: str = ""


@dataclass(frozen=True)
class ClusterReading:
    """What the cluster said about one graph at time `at` (the injected clock's seconds)."""

    graph: str
    at: float
    roles: Mapping[str, RoleReplicas] = field(default_factory=dict)
    dgd: DgdState | None = None
    errors: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()  # other scalers on our roles (scaler/kube/ownership.py)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def parse_scale(obj: Mapping[str, Any]) -> RoleReplicas:
    """An autoscaling/v1 Scale object."""
    if obj.get("kind") not in (None, "Scale"):
        raise ValueError(f"expected a Scale object, got kind {obj.get('kind')!r}")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    selector = status.get("selector")
    return RoleReplicas(desired=_int(spec.get("replicas", 0)), current=_int(status.get("replicas", 0)),
                        selector=selector if isinstance(selector, str) and selector else None)


def count_ready_pods(pods: Mapping[str, Any]) -> int:
    n = 0
    for pod in pods.get("items") or []:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                n += 1
                break
    return n


def dgd_service_status(dgd: Mapping[str, Any], service: str) -> tuple[int | None, int | None]:
    """(ready, updated) replicas Dynamo reports for a service, when it does."""
    svc = ((dgd.get("status") or {}).get("services") or {}).get(service) or {}
    return _int(svc.get("readyReplicas")), _int(svc.get("updatedReplicas"))


def dgd_state(dgd: Mapping[str, Any]) -> DgdState:
    status = dgd.get("status") or {}
    ready, message = None, ""
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            ready = c.get("status") == "True"
            message = str(c.get("message") or c.get("reason") or "")
    state = status.get("state")
    return DgdState(ready=ready, state=str(state) if state else None, message=message)


def with_replicas(obs: Observation, reading: ClusterReading | None, now: float, stale_after: float) -> Observation:
    """`obs` plus the cluster's desired and ready replicas per role, unless the reading is missing or stale
    (then a note says so and the engine falls back to what the metrics say)."""
    if reading is None:
        return obs
    age = now - reading.at
    if age > stale_after:
        return replace(obs, errors=obs.errors + (f"cluster reading is {age:.0f}s old (> {stale_after:.0f}s): "
                                                 "replica counts from the cluster ignored",))
    roles = {r: dict(v) for r, v in obs.roles.items()}
    for role, rr in reading.roles.items():
        values = roles.setdefault(role, {})
        if rr.desired is not None:
            values["desired_replicas"] = float(rr.desired)
        if rr.ready is not None:
            values["ready_replicas"] = float(rr.ready)
    notes = tuple(reading.errors)
    if reading.dgd is not None and reading.dgd.ready is False:
        notes += (f"DGD not Ready ({reading.dgd.state or 'no state'}{': ' + reading.dgd.message if reading.dgd.message else ''})",)
    for role, rr in reading.roles.items():
        if rr.rolling_out:
            notes += (f"{role}: rollout in progress (desired {rr.desired}, updated {rr.updated}, ready {rr.ready})",)
    return replace(obs, roles=MappingProxyType({r: MappingProxyType(v) for r, v in roles.items()}),
                   errors=obs.errors + notes)
