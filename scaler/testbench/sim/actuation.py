"""Between a policy and its replicas: KEDA + the HPA (or nothing, for controllers that patch /scale).

A policy's role is actuated one of two ways:

- through a ScaledObject (`HpaActuator`): every HPA sync (15 s, kube-controller-manager's
  `--horizontal-pod-autoscaler-sync-period`) the HPA asks KEDA for the metric; KEDA returns the
  policy's latest value rounded to milli-units (`keda_metric_value`) and the HPA's AverageValue
  arithmetic, tolerance, stabilisation and rate policies turn it into a replica count
  (`scaler.testbench.hpa.HorizontalPodAutoscaler`, a port of Kubernetes' controller). KEDA's pollingInterval
  only drives activation (0 <-> minReplicaCount) and cooldownPeriod only scaling to zero: both are
  irrelevant with minReplicaCount >= 1, so they are not simulated.
- directly (`direct=True` policies: the oracle, static sizing, Dynamo's Planner, which patches the
  DGDSA scale subresource itself): the count is applied when the policy decides.

Controllers that output replica targets (pdscaler, static) use `TARGET_BEHAVIOR`: AverageValue
target 1 (the metric IS the count), no stabilisation window and no rate limit (the policy owns
those). The HPA's 10 % tolerance still applies: at 10 or more replicas a +-1 change is swallowed
(|value / current - 1| <= 0.1); `HpaActuator.held` counts the syncs where that happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaler.testbench.hpa import (
    DEFAULT_TOLERANCE,
    Behavior,
    HorizontalPodAutoscaler,
    ScalingPolicy,
    ScalingRules,
    keda_metric_value,
)

HPA_SYNC_S = 15.0

TARGET_BEHAVIOR = Behavior(
    scale_up=ScalingRules(0, "Max", [ScalingPolicy("Pods", 100_000, 15)]),
    scale_down=ScalingRules(0, "Max", [ScalingPolicy("Percent", 100, 15)]),
)
"""No stabilisation, no practical rate limit: the HPA applies what the metric asks (within tolerance)."""


@dataclass(frozen=True)
class ScaledObject:
    """One role's ScaledObject (and the HPA KEDA makes of it), as far as the replay needs it."""

    min_replicas: int = 1
    max_replicas: int = 10_000
    target: float = 1.0  # AverageValue target (threshold of a Prometheus trigger)
    behavior: Behavior | None = TARGET_BEHAVIOR  # None: an HPA without spec.behavior (KEDA's default)
    tolerance: float = DEFAULT_TOLERANCE


class HpaActuator:
    """The HPA of one role's ScaledObject, synced by the replay every HPA_SYNC_S."""

    def __init__(self, so: ScaledObject) -> None:
        self.so = so
        self.hpa = HorizontalPodAutoscaler(so.min_replicas, so.max_replicas, so.behavior, tolerance=so.tolerance)
        self.held = 0  # syncs where the metric asked for a change the tolerance swallowed

    def sync(self, now: float, value: float | None, spec_replicas: int, status_replicas: int) -> int:
        """One HPA sync: the new spec.replicas. `value` None is a failed metrics read (no change)."""
        metrics = [] if value is None else [([keda_metric_value(value)], self.so.target)]
        result = self.hpa.reconcile(now, spec_replicas, metrics, status_replicas)
        if result.metrics and result.metrics[0].within_tolerance and result.metrics[0].usage_ratio != 1.0:
            wanted = -(-result.metrics[0].usage_milli // result.metrics[0].target_milli)  # ceil
            if wanted != spec_replicas:
                self.held += 1
        return result.desired_replicas
