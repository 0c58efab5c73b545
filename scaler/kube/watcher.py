"""The background thread that reads the cluster on a cadence and keeps the last reading per graph.

The decision loop merges `snapshot()` into its observations (scaler/kube/replicas.py:with_replicas);
it never calls the API itself, so a slow, failing or forbidding API server only makes readings stale
(then ignored, with the reason in the decision's notes), never late decisions. Listeners
(`subscribe`) are told of each graph's reading as soon as it is read: the decision loop adopts the
replicas of a restarted scaler from them, whatever its metrics collection is doing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from scaler.clock import Clock, speed
from scaler.config import ScalerConfig
from scaler.kube.api import KubeApi, KubeError
from scaler.kube.ownership import Conflict, conflicts
from scaler.kube.replicas import (
    ClusterReading,
    RoleReplicas,
    count_ready_pods,
    dgd_service_status,
    dgd_state,
    parse_scale,
)
from scaler.kube.targets import TargetError, planner_services, role_target, role_targets

log = logging.getLogger("pdscaler.kube")


class ClusterWatcher:
    def __init__(self, config: ScalerConfig, api: KubeApi, clock: Clock,
                 on_conflicts: Callable[[str, list[Conflict]], None] | None = None,
                 errors: Callable[[str, int], None] | None = None) -> None:
        self.config, self.api, self.clock = config, api, clock
        self.on_errors = errors  # (graph, number of problems) after each read, e.g. a metrics counter
        self.on_conflicts = on_conflicts
        self._readings: dict[str, ClusterReading] = {}
        self._conflicts: dict[str, tuple[Conflict, ...]] = {}
        self._ownership_errors: dict[str, tuple[str, ...]] = {}
        self._checked_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.first_poll = threading.Event()  # set once every graph was read (or failed) once
        self._listeners: list[Callable[[str, ClusterReading], None]] = []
        self._thread: threading.Thread | None = None

    def subscribe(self, listener: Callable[[str, ClusterReading], None]) -> None:
        """Call `listener(graph, reading)` after each graph's read (from the reading thread)."""
        with self._lock:
            self._listeners.append(listener)

    # --- reads ---------------------------------------------------------------------------------

    def _dgd_path(self, graph: str) -> str:
        g = self.config.graphs[graph]
        return (f"/apis/{self.config.kubernetes.dgd_api_version}/namespaces/{g.namespace}/"
                f"dynamographdeployments/{g.dgd_name(graph)}")

    def read_graph(self, graph: str, now: float) -> ClusterReading:
        """Replicas per role and the DGD's state; every failure becomes a note, never an exception."""
        gcfg = self.config.graphs[graph]
        ns = gcfg.namespace
        errors: list[str] = []
        uses_dgd = any(rc.scale_target is None and rc.kind != "warm" for rc in gcfg.roles.values())
        dgd: dict[str, Any] | None = None
        if uses_dgd:
            try:
                dgd = self.api.get(self._dgd_path(graph))
            except KubeError as e:
                errors.append(f"DGD: {e}")
        roles: dict[str, RoleReplicas] = {}
        for role in gcfg.roles:
            try:
                target = role_target(graph, gcfg, role, dgd)
            except TargetError as e:
                errors.append(str(e))
                continue
            try:
                rr = parse_scale(self.api.get(target.ref.scale_path(ns)))
            except (KubeError, ValueError) as e:
                errors.append(f"{role}: {e}")
                continue
            ready = updated = None
            if dgd is not None and target.service is not None:
                ready, updated = dgd_service_status(dgd, target.service)
            if ready is None and rr.selector:
                try:
                    ready = count_ready_pods(self.api.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=rr.selector))
                except KubeError as e:
                    errors.append(f"{role}: ready pods: {e}")
            roles[role] = RoleReplicas(rr.desired, rr.current, ready, updated, rr.selector)
        with self._lock:
            known = self._conflicts.get(graph, ())
            own_errors = self._ownership_errors.get(graph, ())
        return ClusterReading(graph=graph, at=now, roles=roles, dgd=dgd_state(dgd) if dgd is not None else None,
                              errors=tuple(errors) + own_errors, conflicts=tuple(str(c) for c in known))

    def check_ownership(self, graph: str) -> list[Conflict]:
        """Other HPAs, ScaledObjects or a Planner on this graph's roles (needs list on both kinds)."""
        gcfg = self.config.graphs[graph]
        ns = gcfg.namespace
        errors: list[str] = []
        dgd = None
        try:
            dgd = self.api.get(self._dgd_path(graph))
        except KubeError as e:
            if e.status != 404:
                errors.append(f"ownership: DGD: {e}")
        try:
            targets = {r: t.ref for r, t in role_targets(graph, gcfg, dgd).items()}
        except TargetError as e:
            errors.append(f"ownership: {e}")
            targets = {}
        lists = {}
        for key, path in (("hpa", f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"),
                          ("so", f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects")):
            try:
                lists[key] = self.api.get(path).get("items") or []
            except KubeError as e:
                if e.status == 404 and key == "so":
                    lists[key] = []  # KEDA not installed: no ScaledObjects at all
                else:
                    errors.append(f"ownership: {e}")
        found = conflicts(graph, targets, lists.get("hpa", []), lists.get("so", []),
                          planner_services(dgd) if dgd is not None else ())
        with self._lock:
            previous = self._conflicts.get(graph, ())
            if "hpa" in lists and "so" in lists:  # keep the last complete answer when a list failed
                self._conflicts[graph] = tuple(found)
            self._ownership_errors[graph] = tuple(errors)
        if set(found) != set(previous):
            for c in found:
                log.warning("%s: %s", graph, c)
            if self.on_conflicts is not None:
                self.on_conflicts(graph, found)
        return found

    def poll(self, now: float | None = None) -> dict[str, ClusterReading]:
        now = self.clock.now() if now is None else now
        for graph in self.config.graphs:
            if now - self._checked_at.get(graph, float("-inf")) >= self.config.kubernetes.ownership_interval:
                self._checked_at[graph] = now
                self.check_ownership(graph)
            reading = self.read_graph(graph, now)
            with self._lock:
                self._readings[graph] = reading
                listeners = list(self._listeners)
            if self.on_errors is not None and reading.errors:
                self.on_errors(graph, len(reading.errors))
            for listener in listeners:
                try:
                    listener(graph, reading)
                except Exception:  # a listener's bug must not stop the reads
                    log.exception("cluster reading listener failed for %s", graph)
        self.first_poll.set()
        return self.snapshot()

    def conflicts(self) -> dict[str, tuple[Conflict, ...]]:
        """The last complete ownership check per graph."""
        with self._lock:
            return dict(self._conflicts)

    def snapshot(self) -> dict[str, ClusterReading]:
        with self._lock:
            return dict(self._readings)

    # --- thread --------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not kill cluster reads for good
                log.exception("cluster poll failed")
            self._stop.wait(self.config.kubernetes.interval / speed(self.clock))

    def start(self) -> "ClusterWatcher":
        self._thread = threading.Thread(target=self.run, name="pdscaler-cluster-reads", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        self.api.close()
