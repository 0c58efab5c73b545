"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2), as pure, clock-injected Python.

pdscaler never talks to the HPA directly: KEDA turns each ScaledObject into an HPA whose one
External metric (AverageValue target) is served by pdscaler. So what pdscaler asks for is
filtered through the HPA's math - tolerance, stabilisation windows, rate policies and min/max -
and the demo and the replay simulator must run that same math to show what would really happen.

Ported from Kubernetes (kubernetes/kubernetes, master as of v1.35/v1.36):

- ``pkg/controller/podautoscaler/replica_calculator.go``: ``GetExternalPerPodMetricReplicas``
  (the External metric with an AverageValue target, the only kind KEDA's external scaler
  produces by default) and ``Tolerances.isWithin`` (per-direction tolerances,
  ``behavior.scaleUp/scaleDown.tolerance``, KEP-4951, gate ``HPAConfigurableTolerance``,
  alpha in 1.33, beta and on by default since 1.35).
- ``pkg/controller/podautoscaler/horizontal.go``: ``reconcileAutoscaler`` (the disabled /
  above-max / below-min branches), ``computeReplicasForMetrics`` (max over metrics),
  ``recordInitialRecommendation``, ``stabilizeRecommendation`` + ``convertDesiredReplicasWithRules``
  (HPA without ``spec.behavior``), ``normalizeDesiredReplicasWithBehaviors``,
  ``stabilizeRecommendationWithBehaviors``, ``convertDesiredReplicasWithBehaviorRate``,
  ``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``,
  ``getReplicasChangePerPeriod``, ``storeScaleEvent``, ``markScaleEventsOutdated``.
- ``pkg/apis/autoscaling/v2/defaults.go``: ``defaultHPAScaleUpRules``,
  ``defaultHPAScaleDownRules``, ``copyHPAScalingRules`` (field-wise defaulting of a behavior).

Time is a float number of seconds (``now``) passed in by the caller; nothing here reads a clock.
Comparisons keep Go's strictness (``time.After``/``time.Before``), so window edges match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, Mapping, Sequence

DEFAULT_TOLERANCE = 0.1
"""kube-controller-manager ``--horizontal-pod-autoscaler-tolerance``."""
DEFAULT_DOWNSCALE_STABILIZATION_SECONDS = 300
"""kube-controller-manager ``--horizontal-pod-autoscaler-downscale-stabilization``."""
SCALE_UP_LIMIT_FACTOR = 2.0  # horizontal.go scaleUpLimitFactor (HPA without behavior)
SCALE_UP_LIMIT_MINIMUM = 4.0  # horizontal.go scaleUpLimitMinimum (HPA without behavior)
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
_POLICY_TYPES = ("Pods", "Percent")
_SELECT_POLICIES = ("Max", "Min", "Disabled")


# --------------------------------------------------------------------------- behavior


@dataclass(frozen=True)
class ScalingPolicy:
    """``HPAScalingPolicy``: change by at most ``value`` pods / percent per ``period_seconds``."""

    type: PolicyType
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.type not in _POLICY_TYPES:
            raise ValueError(f"policy type must be one of {_POLICY_TYPES}, got {self.type!r}")
        if self.value <= 0:
            raise ValueError(f"policy value must be > 0, got {self.value}")
        if not 0 < self.period_seconds <= 1800:  # validation.go: (0, 1800]
            raise ValueError(f"periodSeconds must be in (0, 1800], got {self.period_seconds}")

    def __str__(self) -> str:
        unit = "%" if self.type == "Percent" else ""
        return f"{self.type} {self.value}{unit}/{self.period_seconds}s"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value, "periodSeconds": self.period_seconds}


@dataclass(frozen=True)
class ScalingRules:
    """``HPAScalingRules`` for one direction.

    ``stabilization_window_seconds=None`` means the controller default: 0 s for scale-up
    (filled in by defaulting), ``--horizontal-pod-autoscaler-downscale-stabilization`` (300 s)
    for scale-down. ``tolerance=None`` means the controller's cluster-wide tolerance (0.1).
    """

    stabilization_window_seconds: int | None = None
    select_policy: SelectPolicy = "Max"
    policies: list[ScalingPolicy] = field(default_factory=list)
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.select_policy not in _SELECT_POLICIES:
            raise ValueError(f"selectPolicy must be one of {_SELECT_POLICIES}, got {self.select_policy!r}")
        if not self.policies:
            raise ValueError("a scaling rule needs at least one policy")
        w = self.stabilization_window_seconds
        if w is not None and not 0 <= w <= 3600:
            raise ValueError(f"stabilizationWindowSeconds must be in [0, 3600], got {w}")
        if self.tolerance is not None and not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        object.__setattr__(self, "policies", list(self.policies))

    def longest_period(self) -> int:
        """horizontal.go ``getLongestPolicyPeriod``."""
        return max((p.period_seconds for p in self.policies), default=0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"selectPolicy": self.select_policy, "policies": [p.to_dict() for p in self.policies]}
        if self.stabilization_window_seconds is not None:
            out["stabilizationWindowSeconds"] = self.stabilization_window_seconds
        if self.tolerance is not None:
            out["tolerance"] = format(self.tolerance, "g")
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, default: ScalingRules) -> ScalingRules:
        """Fill the unset fields of ``d`` from ``default`` (defaults.go ``copyHPAScalingRules``)."""
        if d is None:
            return default
        policies = d.get("policies")
        window = d.get("stabilizationWindowSeconds")
        tolerance = d.get("tolerance")
        return cls(
            stabilization_window_seconds=int(window) if window is not None else default.stabilization_window_seconds,
            select_policy=d.get("selectPolicy") or default.select_policy,
            policies=(
                [ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in policies]
                if policies is not None
                else list(default.policies)
            ),
            tolerance=parse_quantity(tolerance) if tolerance is not None else default.tolerance,
        )


# defaults.go defaultHPAScaleUpRules / defaultHPAScaleDownRules. The scale-down window is nil
# there (the controller fills in its command-line default); here it is explicit in default().
_DEFAULT_SCALE_UP = ScalingRules(0, "Max", [ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)])
_DEFAULT_SCALE_DOWN_UNSET_WINDOW = ScalingRules(None, "Max", [ScalingPolicy("Percent", 100, 15)])


@dataclass(frozen=True)
class Behavior:
    """``HorizontalPodAutoscalerBehavior`` (``spec.behavior``; in a ScaledObject
    ``advanced.horizontalPodAutoscalerConfig.behavior``)."""

    scale_up: ScalingRules
    scale_down: ScalingRules

    @classmethod
    def default(cls) -> Behavior:
        """Kubernetes' defaults: scale-up window 0 s, max(Pods 4, Percent 100) per 15 s;
        scale-down window 300 s, Percent 100 per 15 s."""
        return cls(
            scale_up=_DEFAULT_SCALE_UP,
            scale_down=ScalingRules(
                DEFAULT_DOWNSCALE_STABILIZATION_SECONDS, "Max", [ScalingPolicy("Percent", 100, 15)]
            ),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Behavior:
        """Build from the Kubernetes/KEDA YAML shape ``{scaleUp: {...}, scaleDown: {...}}``,
        each with ``stabilizationWindowSeconds``, ``selectPolicy``, ``policies`` [{type, value,
        periodSeconds}] and ``tolerance`` (a quantity such as ``"0.05"`` or ``"50m"``).
        Unset fields take the Kubernetes defaults, field by field, as the API server does."""
        unknown = set(d) - {"scaleUp", "scaleDown"}
        if unknown:
            raise ValueError(f"unknown behavior keys: {sorted(unknown)}")
        return cls(
            scale_up=ScalingRules.from_dict(d.get("scaleUp"), _DEFAULT_SCALE_UP),
            scale_down=ScalingRules.from_dict(d.get("scaleDown"), _DEFAULT_SCALE_DOWN_UNSET_WINDOW),
        )

    @classmethod
    def from_scaled_object_spec(cls, spec: Mapping[str, Any]) -> Behavior | None:
        """The behavior of a ScaledObject ``spec`` (``advanced.horizontalPodAutoscalerConfig.behavior``),
        or None when it has none - then KEDA creates the HPA without ``spec.behavior``."""
        b = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
        return None if b is None else cls.from_dict(b)

    def to_dict(self) -> dict[str, Any]:
        return {"scaleUp": self.scale_up.to_dict(), "scaleDown": self.scale_down.to_dict()}


def parse_quantity(q: str | float | int) -> float:
    """A Kubernetes ``resource.Quantity`` (``"0.05"``, ``"50m"``, ``"1e-1"``, ``"2Ki"``) as a float
    (``Quantity.AsApproximateFloat64``), parsed by ``kubernetes.utils.parse_quantity`` (exact,
    a Decimal). Numbers pass through; booleans, ``"NaN"`` and ``"Infinity"`` are not quantities."""
    # Imported here: the kubernetes package takes ~0.25 s to import and only a behavior's
    # tolerance needs it.
    from kubernetes.utils import parse_quantity as k8s_parse_quantity

    if isinstance(q, bool):
        raise ValueError(f"not a quantity: {q!r}")
    if isinstance(q, (int, float)):
        return float(q)
    try:
        value = float(k8s_parse_quantity(str(q).strip()))
    except ValueError as e:
        raise ValueError(f"not a Kubernetes quantity: {q!r}") from e
    if not math.isfinite(value):  # Decimal reads "NaN" and "Infinity"; a Quantity does not
        raise ValueError(f"not a Kubernetes quantity: {q!r}")
    return value


# --------------------------------------------------------------------------- metric math


def milli_value(x: float) -> int:
    """``resource.Quantity.MilliValue()`` of a decimal value: milli-units, rounded up.

    Uses the shortest decimal spelling of the float, so ``1.1`` is 1100 m, not 1101 m."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite quantity: {x}")
    return int((Decimal(repr(float(x))) * 1000).to_integral_value(rounding=ROUND_CEILING))


def keda_metric_value(x: float) -> float:
    """What KEDA hands the HPA for a value an external scaler returned.

    KEDA ``pkg/scalers/scaler.go`` ``quantityFromFloat64`` (used by ``GenerateMetricInMili`` and
    ``GetMetricTargetMili``): NaN and +-Inf become 0, negative values become 0 (KEDA PR #7889),
    everything else is formatted ``%.3f`` (rounded to the nearest milli-unit) and parsed as a
    quantity."""
    x = float(x)
    if not math.isfinite(x) or x < 0:
        return 0.0
    return float(f"{x:.3f}")


@dataclass(frozen=True)
class MetricProposal:
    """One External AverageValue metric's replica proposal (replica_calculator.go
    ``GetExternalPerPodMetricReplicas``)."""

    replicas: int
    usage_milli: int  # sum of the metric's values, milli-units
    target_milli: int  # target AverageValue, milli-units
    usage_ratio: float  # usage / (target * status replicas); inf/NaN at 0 replicas, as in Go
    within_tolerance: bool
    tolerance_up: float
    tolerance_down: float

    @property
    def usage(self) -> float:
        return self.usage_milli / 1000

    @property
    def target(self) -> float:
        return self.target_milli / 1000


def external_average_value(
    values: Sequence[float],
    target: float,
    status_replicas: int,
    tolerance_up: float = DEFAULT_TOLERANCE,
    tolerance_down: float = DEFAULT_TOLERANCE,
) -> MetricProposal:
    """replica_calculator.go ``GetExternalPerPodMetricReplicas`` in milli-units.

    usage = sum of the values (capped at MaxInt64); ratio = usage / (target * statusReplicas);
    inside ``[1 - tolerance_down, 1 + tolerance_up]`` the proposal is ``statusReplicas``, else
    ``ceil(usage / target)`` (capped at MaxInt32). At 0 replicas Go's float division gives +Inf
    (or NaN for 0/0), which is never within tolerance, so the proposal is ``ceil(usage/target)``.
    """
    usage = 0
    for v in values:
        m = milli_value(v)
        if m > 0 and usage > MAX_INT64 - m:
            usage = MAX_INT64
            break
        usage += m
    target_milli = milli_value(target)
    if target_milli <= 0:
        raise ValueError(f"AverageValue target must be positive, got {target}")
    if status_replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {status_replicas}")
    if status_replicas == 0:
        ratio = math.inf if usage > 0 else math.nan
    else:
        ratio = float(usage) / (float(target_milli) * float(status_replicas))
    within = (1.0 - tolerance_down) <= ratio <= (1.0 + tolerance_up)  # Tolerances.isWithin
    replicas = status_replicas
    if not within:
        replicas = min(math.ceil(float(usage) / float(target_milli)), MAX_INT32)
    return MetricProposal(replicas, usage, target_milli, ratio, within, tolerance_up, tolerance_down)


def average_value_replicas(
    values: Sequence[float],
    target: float,
    current_replicas: int,
    tolerance_up: float = DEFAULT_TOLERANCE,
    tolerance_down: float = DEFAULT_TOLERANCE,
) -> int:
    """The HPA's replica proposal for an External metric with an AverageValue ``target``.

    ``current_replicas`` is what the HPA divides by: the scale subresource's ``status.replicas``.
    E.g. 10 replicas, value 11, target 1: ratio 1.1 is within the default 10 % -> stays 10."""
    return external_average_value(values, target, current_replicas, tolerance_up, tolerance_down).replicas


# --------------------------------------------------------------------------- controller


@dataclass(frozen=True)
class Condition:
    """An HPA status condition (``AbleToScale``, ``ScalingActive``, ``ScalingLimited``)."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class HPAResult:
    """One reconcile: what the HPA decided and why.

    ``recommendation`` is the raw recommendation (max over metrics, before stabilisation and
    policies; None when the HPA did not look at metrics), ``stabilized`` the recommendation after
    the stabilisation windows. ``reasons`` explain the outcome in words; the conditions mirror the
    HPA's status conditions."""

    desired_replicas: int
    current_replicas: int
    recommendation: int | None
    stabilized: int | None
    reasons: tuple[str, ...]
    able_to_scale: Condition
    scaling_active: Condition
    scaling_limited: Condition
    metrics: tuple[MetricProposal, ...] = ()
    error: str | None = None

    @property
    def rescale(self) -> bool:
        return self.desired_replicas != self.current_replicas

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class _Recommendation:
    recommendation: int
    timestamp: float


@dataclass
class _ScaleEvent:
    replica_change: int  # always positive; direction is the list it is in
    timestamp: float
    outdated: bool = False


def _replicas_change_per_period(period_seconds: int, events: list[_ScaleEvent], now: float) -> int:
    """horizontal.go ``getReplicasChangePerPeriod``: changes strictly after ``now - period``."""
    cutoff = now - period_seconds
    return sum(e.replica_change for e in events if e.timestamp > cutoff)


_NOT_LIMITED = Condition(False, "DesiredWithinRange", "the desired count is within the acceptable range")


class HorizontalPodAutoscaler:
    """The state and math of one HPA (one ``key`` of horizontal.go's ``HorizontalController``).

    ``behavior=None`` is an HPA without ``spec.behavior`` - what KEDA creates when the
    ScaledObject has no ``advanced.horizontalPodAutoscalerConfig.behavior``: the controller then
    uses the older path (scale-down stabilisation over ``downscale_stabilization_seconds``,
    scale-up at most ``max(2 * current, 4)`` per reconcile, no event history). With a
    ``Behavior`` (e.g. ``Behavior.default()``) the behavior path runs: both windows and the rate
    policies over the recorded scale events.
    """

    def __init__(
        self,
        min_replicas: int,
        max_replicas: int,
        behavior: Behavior | None = None,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        downscale_stabilization_seconds: int = DEFAULT_DOWNSCALE_STABILIZATION_SECONDS,
    ) -> None:
        if min_replicas < 0 or max_replicas < 1 or min_replicas > max_replicas:
            raise ValueError(f"need 0 <= min <= max and max >= 1, got min={min_replicas} max={max_replicas}")
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.behavior = behavior
        self.tolerance = tolerance
        self.downscale_stabilization_seconds = downscale_stabilization_seconds
        self._recommendations: list[_Recommendation] | None = None
        self._up_events: list[_ScaleEvent] = []
        self._down_events: list[_ScaleEvent] = []

    # -- configuration derived from behavior --------------------------------------------

    def tolerances(self) -> tuple[float, float]:
        """(scale-up, scale-down) tolerance (horizontal.go ``tolerancesForHpa``)."""
        up = down = self.tolerance
        if self.behavior is not None:
            if self.behavior.scale_up.tolerance is not None:
                up = self.behavior.scale_up.tolerance
            if self.behavior.scale_down.tolerance is not None:
                down = self.behavior.scale_down.tolerance
        return up, down

    def _windows(self) -> tuple[int, int]:
        assert self.behavior is not None
        up = self.behavior.scale_up.stabilization_window_seconds or 0
        down = self.behavior.scale_down.stabilization_window_seconds
        if down is None:  # horizontal.go maybeInitScaleDownStabilizationWindow
            down = self.downscale_stabilization_seconds
        return up, down

    def wants_metrics(self, current_replicas: int) -> bool:
        """Whether a reconcile at ``current_replicas`` (spec.replicas) reads the metrics at all:
        not when scaling is disabled (0 replicas, min > 0) nor outside [min, max]."""
        if current_replicas == 0 and self.min_replicas != 0:
            return False
        return self.min_replicas <= current_replicas <= self.max_replicas

    # -- reconcile ----------------------------------------------------------------------

    def reconcile(
        self,
        now: float,
        current_replicas: int,
        metrics: Sequence[tuple[Sequence[float], float]],
        status_replicas: int | None = None,
        *,
        commit: bool = True,
    ) -> HPAResult:
        """One HPA sync (horizontal.go ``reconcileAutoscaler``).

        ``current_replicas`` is the target's ``spec.replicas``; ``status_replicas`` its
        ``status.replicas`` (what AverageValue divides by; defaults to ``current_replicas``).
        Each metric is ``(values, target AverageValue)``; the HPA takes the max proposal. An
        empty ``metrics`` list is a failed metrics read: nothing changes. With ``commit`` the
        scale event is recorded at once when the count changes (as after a successful scale
        update); pass ``commit=False`` and call ``record_scale_event`` after the update instead.
        """
        if current_replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {current_replicas}")
        status = current_replicas if status_replicas is None else status_replicas
        if self._recommendations is None:  # recordInitialRecommendation
            self._recommendations = [_Recommendation(current_replicas, now)]
        able = Condition(True, "SucceededGetScale", "the HPA controller was able to get the target's current scale")
        active = Condition(True, "ValidMetricFound", "the HPA was able to successfully calculate a replica count")
        limited = _NOT_LIMITED

        if current_replicas == 0 and self.min_replicas != 0:
            msg = "scaling is disabled since the replica count of the target is zero"
            return HPAResult(0, 0, None, None, (msg,), able, Condition(False, "ScalingDisabled", msg), limited)
        if current_replicas > self.max_replicas:
            desired, reasons = self.max_replicas, (f"clamped to max {self.max_replicas} (current above maxReplicas)",)
            result = HPAResult(desired, current_replicas, None, None, reasons, able, active, limited)
        elif current_replicas < self.min_replicas:
            desired, reasons = self.min_replicas, (f"clamped to min {self.min_replicas} (current below minReplicas)",)
            result = HPAResult(desired, current_replicas, None, None, reasons, able, active, limited)
        else:
            result = self._from_metrics(now, current_replicas, status, metrics, able, active)
        if commit and result.rescale:
            self.record_scale_event(now, current_replicas, result.desired_replicas)
        return result

    def _from_metrics(
        self,
        now: float,
        current: int,
        status: int,
        metrics: Sequence[tuple[Sequence[float], float]],
        able: Condition,
        active: Condition,
    ) -> HPAResult:
        up_tol, down_tol = self.tolerances()
        proposals: list[MetricProposal] = []
        errors: list[str] = []
        for values, target in metrics:
            try:
                proposals.append(external_average_value(values, target, status, up_tol, down_tol))
            except ValueError as e:
                errors.append(str(e))
        if not proposals:  # computeReplicasForMetrics: all metrics invalid -> no scaling
            err = errors[0] if errors else "no metric values"
            msg = f"the HPA was unable to compute the replica count: {err}"
            return HPAResult(
                current, current, None, None, (msg,), able,
                Condition(False, "FailedGetExternalMetric", msg), _NOT_LIMITED, error=err,
            )  # fmt: skip
        best = max(proposals, key=lambda p: p.replicas)  # first of the highest, as Go's loop
        recommendation = max(0, best.replicas)
        reasons: list[str] = []
        if best.within_tolerance and best.usage_ratio != 1.0:
            reasons.append(
                f"within tolerance: usage ratio {best.usage_ratio:.3f} in "
                f"[{1 - best.tolerance_down:.2f}, {1 + best.tolerance_up:.2f}], keeping {status}"
            )
        if self.behavior is None:
            stabilized, desired, stab_reason, limited = self._normalize_legacy(now, current, recommendation)
        else:
            stabilized, desired, stab_reason, limited = self._normalize_with_behaviors(now, current, recommendation)
        if stabilized != recommendation:
            reasons.append(stab_reason)
            able = Condition(True, *_stabilized_condition(recommendation, current, self.behavior is None))
        else:
            able = Condition(True, "ReadyForNewScale", "recommended size matches current size")
        if limited.status:
            reasons.append(limited.message)
        if not reasons:
            reasons.append("at recommendation" if desired == current else f"scale to recommendation {desired}")
        return HPAResult(
            desired, current, recommendation, stabilized, tuple(reasons), able, active, limited, tuple(proposals)
        )

    # -- HPA without spec.behavior ------------------------------------------------------

    def _normalize_legacy(self, now: float, current: int, desired: int) -> tuple[int, int, str, Condition]:
        """horizontal.go ``normalizeDesiredReplicas``: ``stabilizeRecommendation`` (max over the
        downscale window, a sample exactly at the cutoff still counts) then
        ``convertDesiredReplicasWithRules`` (min/max, scale-up at most max(2*current, 4))."""
        assert self._recommendations is not None
        cutoff = now - self.downscale_stabilization_seconds
        stabilized, old_index = desired, None
        for i, rec in enumerate(self._recommendations):
            if rec.timestamp < cutoff:
                old_index = i
            elif rec.recommendation > stabilized:
                stabilized = rec.recommendation
        self._store_recommendation(old_index, desired, now)
        window = self.downscale_stabilization_seconds
        reason = f"scale-down stabilised: highest recommendation in the last {window}s is {stabilized}"

        scale_up_limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))
        if self.max_replicas > scale_up_limit:
            max_allowed, cond = scale_up_limit, (
                "ScaleUpLimit",
                f"limited by scale-up limit max(2 x {current}, 4) = {scale_up_limit}",
            )
        else:
            max_allowed, cond = self.max_replicas, ("TooManyReplicas", f"clamped to max {self.max_replicas}")
        if stabilized < self.min_replicas:
            too_few = Condition(True, "TooFewReplicas", f"clamped to min {self.min_replicas}")
            return stabilized, self.min_replicas, reason, too_few
        if stabilized > max_allowed:
            return stabilized, max_allowed, reason, Condition(True, *cond)
        return stabilized, stabilized, reason, _NOT_LIMITED

    # -- HPA with spec.behavior ---------------------------------------------------------

    def _normalize_with_behaviors(self, now: float, current: int, desired: int) -> tuple[int, int, str, Condition]:
        """horizontal.go ``normalizeDesiredReplicasWithBehaviors``."""
        stabilized, reason = self._stabilize_with_behaviors(now, current, desired)
        final, limited = self._convert_with_behavior_rate(now, current, stabilized)
        return stabilized, final, reason, limited

    def _stabilize_with_behaviors(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """horizontal.go ``stabilizeRecommendationWithBehaviors``: the recommendation is kept
        between the min over the scale-up window and the max over the scale-down window
        (samples strictly newer than the cutoffs), starting from the current count."""
        assert self._recommendations is not None
        up_window, down_window = self._windows()
        up_cutoff, down_cutoff = now - up_window, now - down_window
        up_rec = down_rec = desired
        old_index = None
        for i, rec in enumerate(self._recommendations):
            if rec.timestamp > up_cutoff:
                up_rec = min(rec.recommendation, up_rec)
            if rec.timestamp > down_cutoff:
                down_rec = max(rec.recommendation, down_rec)
            if rec.timestamp < up_cutoff and rec.timestamp < down_cutoff:
                old_index = i
        recommendation = current
        if recommendation < up_rec:
            recommendation = up_rec
        if recommendation > down_rec:
            recommendation = down_rec
        self._store_recommendation(old_index, desired, now)
        if desired >= current:
            return recommendation, f"scale-up stabilised: lowest recommendation in the last {up_window}s is {up_rec}"
        return recommendation, f"scale-down stabilised: highest recommendation in the last {down_window}s is {down_rec}"

    def _convert_with_behavior_rate(self, now: float, current: int, desired: int) -> tuple[int, Condition]:
        """horizontal.go ``convertDesiredReplicasWithBehaviorRate``."""
        assert self.behavior is not None
        if desired > current:
            limit, why = self._scale_up_limit(now, current, self.behavior.scale_up)
            limit = max(limit, current)  # "we shouldn't scale up further until events are cleaned up"
            if self.max_replicas > limit:
                max_allowed, cond = limit, Condition(True, "ScaleUpLimit", f"limited by {why} ({limit} allowed)")
            else:
                max_allowed = self.max_replicas
                cond = Condition(True, "TooManyReplicas", f"clamped to max {self.max_replicas}")
            if desired > max_allowed:
                return max_allowed, cond
        elif desired < current:
            limit, why = self._scale_down_limit(now, current, self.behavior.scale_down)
            limit = min(limit, current)
            if self.min_replicas < limit:
                min_allowed, cond = limit, Condition(True, "ScaleDownLimit", f"limited by {why} ({limit} allowed)")
            else:
                min_allowed = self.min_replicas
                cond = Condition(True, "TooFewReplicas", f"clamped to min {self.min_replicas}")
            if desired < min_allowed:
                return min_allowed, cond
        return desired, _NOT_LIMITED

    def _period_start(self, now: float, current: int, period: int) -> int:
        added = _replicas_change_per_period(period, self._up_events, now)
        deleted = _replicas_change_per_period(period, self._down_events, now)
        return current - added + deleted

    def _scale_up_limit(self, now: float, current: int, rules: ScalingRules) -> tuple[int, str]:
        """horizontal.go ``calculateScaleUpLimitWithScalingRules``; also names the deciding policy."""
        if rules.select_policy == "Disabled":
            return current, "scale-up policy Disabled"
        proposals = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if p.type == "Pods":
                proposed = start + p.value
            else:  # rounded up, else a small percentage could never add a pod
                proposed = math.ceil(float(start) * (1 + float(p.value) / 100))
            proposals.append((proposed, p))
        pick = min if rules.select_policy == "Min" else max
        limit = pick(v for v, _ in proposals)
        policy = next(p for v, p in proposals if v == limit)
        return limit, f"policy {policy}"

    def _scale_down_limit(self, now: float, current: int, rules: ScalingRules) -> tuple[int, str]:
        """horizontal.go ``calculateScaleDownLimitWithBehaviors``; also names the deciding policy."""
        if rules.select_policy == "Disabled":
            return current, "scale-down policy Disabled"
        proposals = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if p.type == "Pods":
                proposed = start - p.value
            else:  # int32(float64) truncates toward zero
                proposed = int(float(start) * (1 - float(p.value) / 100))
            proposals.append((proposed, p))
        # Min picks the smallest change, i.e. the highest floor; Max the lowest floor.
        pick = max if rules.select_policy == "Min" else min
        limit = pick(v for v, _ in proposals)
        policy = next(p for v, p in proposals if v == limit)
        return limit, f"policy {policy}"

    # -- history ------------------------------------------------------------------------

    def _store_recommendation(self, old_index: int | None, desired: int, now: float) -> None:
        """Replace the (last found) expired sample, else append - as horizontal.go does."""
        assert self._recommendations is not None
        rec = _Recommendation(desired, now)
        if old_index is not None:
            self._recommendations[old_index] = rec
        else:
            self._recommendations.append(rec)

    def record_scale_event(self, now: float, prev_replicas: int, new_replicas: int) -> None:
        """horizontal.go ``storeScaleEvent``: remember a successful scale for the rate policies.
        Events older than the direction's longest policy period are marked outdated and the
        last outdated one is reused. Without a behavior nothing is stored (nothing reads it)."""
        if self.behavior is None or new_replicas == prev_replicas:
            return
        if new_replicas > prev_replicas:
            events, rules, change = self._up_events, self.behavior.scale_up, new_replicas - prev_replicas
        else:
            events, rules, change = self._down_events, self.behavior.scale_down, prev_replicas - new_replicas
        longest = rules.longest_period()
        cutoff = now - longest
        old_index = None
        for i, e in enumerate(events):
            if e.timestamp < cutoff:
                e.outdated = True
            if e.outdated:
                old_index = i
        event = _ScaleEvent(change, now)
        if old_index is not None:
            events[old_index] = event
        else:
            events.append(event)

    def recommendations(self) -> list[tuple[float, int]]:
        """The stored (timestamp, unstabilised recommendation) samples, oldest slot first."""
        return [(r.timestamp, r.recommendation) for r in (self._recommendations or [])]


def _stabilized_condition(recommendation: int, current: int, legacy: bool) -> tuple[str, str]:
    if recommendation >= current and not legacy:  # without behavior Go always says ScaleDownStabilized
        return "ScaleUpStabilized", (
            "recent recommendations were lower than current one, applying the lowest recent recommendation"
        )
    return "ScaleDownStabilized", (
        "recent recommendations were higher than current one, applying the highest recent recommendation"
    )
