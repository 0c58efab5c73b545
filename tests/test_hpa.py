"""scaler.testbench.hpa against the Kubernetes HPA's math (replica_calculator.go, horizontal.go, defaults.go)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaler.testbench.hpa import (
    Behavior,
    HorizontalPodAutoscaler,
    ScalingPolicy,
    ScalingRules,
    average_value_replicas,
    external_average_value,
    keda_metric_value,
    milli_value,
    parse_quantity,
)

# ------------------------------------------------------------------ the replica formula

# (values, target, status replicas, tolerance_up, tolerance_down, expected)
FORMULA_CASES = [
    ([11], 1, 10, 0.1, 0.1, 10),  # ratio 1.10: +1 swallowed at 10 replicas
    ([10], 1, 9, 0.1, 0.1, 10),  # ratio 1.11: 9 -> 10 goes through
    ([12], 1, 10, 0.1, 0.1, 12),
    ([9], 1, 10, 0.1, 0.1, 10),  # ratio 0.90: -1 swallowed
    ([8], 1, 10, 0.1, 0.1, 8),
    ([11], 1, 10, 0.05, 0.1, 11),  # configurable scale-up tolerance lets 10 -> 11 through
    ([9], 1, 10, 0.1, 0.05, 9),  # configurable scale-down tolerance lets 10 -> 9 through
    ([11], 1, 10, 0.0, 0.0, 11),
    ([10.5], 1, 10, 0.1, 0.1, 10),
    ([5], 1, 1, 0.1, 0.1, 5),
    ([1.5, 1.6], 1, 1, 0.1, 0.1, 4),  # the HPA sums all values: ceil(3.1)
    ([5], 2, 1, 0.1, 0.1, 3),  # ceil(5 / 2)
    ([7], 0.5, 20, 0.1, 0.1, 14),
    ([0], 1, 5, 0.1, 0.1, 0),  # the HPA clamps to min later
    ([3], 1, 0, 0.1, 0.1, 3),  # 0 replicas: ratio is +Inf, never within tolerance
    ([0], 1, 0, 0.1, 0.1, 0),  # 0/0 is NaN, never within tolerance: ceil(0) = 0
    ([], 1, 4, 0.1, 0.1, 0),  # no values: usage 0
    ([100.001], 1, 100, 0.1, 0.1, 100),
]


@pytest.mark.parametrize("values,target,current,up,down,expected", FORMULA_CASES)
def test_average_value_replicas_matches_kubernetes(values, target, current, up, down, expected):
    assert average_value_replicas(values, target, current, up, down) == expected


def test_tolerance_band_edges_are_inclusive():
    # isWithin: (1 - down) <= ratio <= (1 + up)
    assert external_average_value([11], 1, 10).within_tolerance
    assert external_average_value([9], 1, 10).within_tolerance
    assert not external_average_value([11.001], 1, 10).within_tolerance
    assert average_value_replicas([11.001], 1, 10) == 12
    assert not external_average_value([8.999], 1, 10).within_tolerance
    assert average_value_replicas([8.999], 1, 10) == 9


def test_milli_units_round_up_like_quantity_milli_value():
    assert milli_value(1.1) == 1100  # not 1101 from 1.1 * 1000 = 1100.0000000000002
    assert milli_value(0.0001) == 1  # MilliValue rounds up
    assert milli_value(2.0001) == 2001
    assert average_value_replicas([2.0001], 1, 1) == 3  # a raw 2.0001 m-rounds up to 2.001
    assert average_value_replicas([keda_metric_value(2.0001)], 1, 1) == 2  # KEDA rounds first
    assert external_average_value([1.5, 1.6], 1, 1).usage_milli == 3100


def test_keda_metric_value_sanitises_like_quantity_from_float64():
    assert keda_metric_value(float("nan")) == 0
    assert keda_metric_value(float("inf")) == 0
    assert keda_metric_value(float("-inf")) == 0
    assert keda_metric_value(-3) == 0
    assert keda_metric_value(1.0004) == 1.0
    assert keda_metric_value(1.0006) == 1.001
    assert keda_metric_value(7) == 7.0
    assert keda_metric_value(0.0004) == 0.0


def test_invalid_target_is_an_error():
    with pytest.raises(ValueError):
        average_value_replicas([1], 0, 1)
    with pytest.raises(ValueError):
        average_value_replicas([1], -2, 1)


def test_tiny_target_rounds_up_to_one_milli():
    # Quantity.MilliValue rounds up, so 0.0001 is 1 m, a valid target.
    assert external_average_value([1], 0.0001, 1).target_milli == 1


@pytest.mark.parametrize(
    "q,expected", [("0.05", 0.05), ("50m", 0.05), ("1e-1", 0.1), ("0", 0.0), (0.2, 0.2), ("100m", 0.1), ("1", 1.0)]
)
def test_parse_quantity(q, expected):
    assert parse_quantity(q) == pytest.approx(expected)


def test_parse_quantity_rejects_garbage():
    with pytest.raises(ValueError):
        parse_quantity("5%")


# ------------------------------------------------------------------ behavior from YAML


def test_behavior_default_is_kubernetes_default():
    b = Behavior.default()
    assert b.scale_up.stabilization_window_seconds == 0
    assert b.scale_up.select_policy == "Max"
    assert b.scale_up.policies == [ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)]
    assert b.scale_down.stabilization_window_seconds == 300
    assert b.scale_down.policies == [ScalingPolicy("Percent", 100, 15)]


def test_behavior_from_dict_fills_unset_fields_field_by_field():
    b = Behavior.from_dict(
        {
            "scaleUp": {"tolerance": "50m", "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
            "scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Disabled"},
        }
    )
    assert b.scale_up.tolerance == pytest.approx(0.05)
    assert b.scale_up.policies == [ScalingPolicy("Pods", 2, 60)]
    assert b.scale_up.stabilization_window_seconds == 0
    assert b.scale_up.select_policy == "Max"
    assert b.scale_down.stabilization_window_seconds == 60
    assert b.scale_down.select_policy == "Disabled"
    assert b.scale_down.policies == [ScalingPolicy("Percent", 100, 15)]
    assert b.scale_down.tolerance is None
    # round trip
    assert Behavior.from_dict(b.to_dict()) == b


def test_behavior_from_scaled_object_spec():
    spec = {"advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"tolerance": "0.2"}}}}}
    b = Behavior.from_scaled_object_spec(spec)
    assert b is not None and b.scale_down.tolerance == pytest.approx(0.2)
    assert b.scale_down.stabilization_window_seconds is None  # the controller's 300 s applies
    assert HorizontalPodAutoscaler(1, 10, b)._windows() == (0, 300)
    assert Behavior.from_scaled_object_spec({"minReplicaCount": 1}) is None


def test_behavior_validation():
    with pytest.raises(ValueError):
        ScalingPolicy("Replicas", 1, 15)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScalingPolicy("Pods", 1, 0)
    with pytest.raises(ValueError):
        ScalingRules(0, "Sometimes", [ScalingPolicy("Pods", 1, 15)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Behavior.from_dict({"scaleUpp": {}})


# ------------------------------------------------------------------ the controller


def one(value: float, target: float = 1.0) -> list[tuple[list[float], float]]:
    return [([value], target)]


def drive(hpa: HorizontalPodAutoscaler, current: int, schedule, step: float = 15.0, start: float = 0.0):
    """Reconcile every `step` s; `schedule(t)` gives the metric value. Returns [(t, replicas)]."""
    out = []
    t = start
    for value in schedule:
        r = hpa.reconcile(t, current, one(value))
        current = r.desired_replicas
        out.append((t, current, r))
        t += step
    return out


def test_tolerance_in_the_controller_and_its_explanation():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(0, 10, one(11))
    assert r.desired_replicas == 10 and not r.rescale
    assert "within tolerance" in r.reason
    up_tol = Behavior.from_dict({"scaleUp": {"tolerance": "0.05"}})
    assert HorizontalPodAutoscaler(1, 100, up_tol).reconcile(0, 10, one(11)).desired_replicas == 11


def test_status_replicas_is_what_average_value_divides_by():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    # spec 10 but only 5 pods exist: 11/(1*5) = 2.2 is outside tolerance -> ceil(11) = 11
    assert hpa.reconcile(0, 10, one(11), status_replicas=5).desired_replicas == 11


def test_max_over_metrics():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(0, 4, [([2], 1.0), ([6], 1.0), ([3], 1.0)])
    assert r.recommendation == 6 and r.desired_replicas == 6
    assert [m.replicas for m in r.metrics] == [2, 6, 3]


def test_failed_metrics_change_nothing():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(0, 4, [])
    assert r.desired_replicas == 4 and r.error and not r.scaling_active.status
    r = hpa.reconcile(15, 4, [([5], 0.0)])  # invalid target
    assert r.desired_replicas == 4 and r.scaling_active.reason == "FailedGetExternalMetric"


def test_scale_up_rate_default_policies_over_periods():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(0, 1, one(40))
    assert r.desired_replicas == 5  # max(1 + 4 pods, 1 * 2)
    assert r.scaling_limited.reason == "ScaleUpLimit" and "Pods 4/15s" in r.reason
    # 10 s later the event is still inside the 15 s period: the period started at 1
    assert hpa.reconcile(10, 5, one(40)).desired_replicas == 5
    # exactly 15 s later it is not (getReplicasChangePerPeriod counts strictly newer events)
    r = hpa.reconcile(15, 5, one(40))
    assert r.desired_replicas == 10 and "Percent 100%/15s" in r.reason


def test_without_behavior_scale_up_is_max_of_double_and_four_per_reconcile():
    hpa = HorizontalPodAutoscaler(1, 100)  # HPA without spec.behavior (KEDA's default)
    assert hpa.reconcile(0, 1, one(40)).desired_replicas == 4
    assert hpa.reconcile(5, 4, one(40)).desired_replicas == 8  # no event history here
    assert hpa.reconcile(10, 8, one(40)).desired_replicas == 16


@pytest.mark.parametrize("select,expected", [("Max", 20), ("Min", 14), ("Disabled", 10)])
def test_select_policy(select, expected):
    rules = ScalingRules(0, select, [ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)])
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(rules, Behavior.default().scale_down))
    r = hpa.reconcile(0, 10, one(30))
    assert r.desired_replicas == expected
    assert r.scaling_limited.status and r.scaling_limited.reason == "ScaleUpLimit"


def test_scale_down_percent_policy_truncates_and_uses_event_history():
    down = ScalingRules(0, "Max", [ScalingPolicy("Percent", 10, 60)])
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(Behavior.default().scale_up, down))
    r = hpa.reconcile(0, 80, one(10))
    assert r.desired_replicas == 72 and r.scaling_limited.reason == "ScaleDownLimit"
    assert hpa.reconcile(15, 72, one(10)).desired_replicas == 72  # still inside the 60 s period
    assert hpa.reconcile(45, 72, one(10)).desired_replicas == 72
    assert hpa.reconcile(60, 72, one(10)).desired_replicas == 64  # period start is now 72


def test_scale_down_select_min_keeps_the_higher_floor():
    down = ScalingRules(0, "Min", [ScalingPolicy("Pods", 5, 15), ScalingPolicy("Percent", 50, 15)])
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(Behavior.default().scale_up, down))
    assert hpa.reconcile(0, 40, one(2)).desired_replicas == 35  # Min change: -5 rather than -20
    down = ScalingRules(0, "Max", down.policies)
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(Behavior.default().scale_up, down))
    assert hpa.reconcile(0, 40, one(2)).desired_replicas == 20


def test_scale_down_is_held_for_the_stabilization_window():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    trace = drive(hpa, 10, [10] + [2] * 30)  # high at t=0, then low
    first_down = next(t for t, n, _ in trace if n < 10)
    assert first_down == 300  # samples strictly newer than now-300 count; t=0 drops out at 300
    held = [r for t, n, r in trace if 0 < t < 300]
    assert all(r.desired_replicas == 10 for r in held)
    assert all(r.able_to_scale.reason == "ScaleDownStabilized" and "scale-down stabilised" in r.reason for r in held)
    assert trace[-1][1] == 2


def test_scale_down_window_without_behavior_includes_the_cutoff_sample():
    hpa = HorizontalPodAutoscaler(1, 100)  # stabilizeRecommendation: a sample AT the cutoff still counts
    trace = drive(hpa, 10, [10] + [2] * 30)
    assert next(t for t, n, _ in trace if n < 10) == 315


def test_initial_recommendation_holds_a_scale_down_on_the_first_sync():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(1000, 10, one(2))  # recordInitialRecommendation stores 10 at t=1000
    assert r.desired_replicas == 10 and r.recommendation == 2 and r.stabilized == 10


def test_scale_up_stabilization_window_takes_the_minimum():
    up = ScalingRules(60, "Max", [ScalingPolicy("Pods", 100, 15)])
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(up, Behavior.default().scale_down))
    trace = drive(hpa, 1, [5] * 8)
    assert [n for _, n, _ in trace[:4]] == [1, 1, 1, 1]  # the initial 1 is in the window
    assert trace[0][2].able_to_scale.reason == "ScaleUpStabilized"
    assert trace[4][0] == 60 and trace[4][1] == 5
    # a dip inside the window caps the next scale-up at the dip
    hpa = HorizontalPodAutoscaler(1, 100, Behavior(up, Behavior.default().scale_down))
    trace = drive(hpa, 3, [3, 3, 3, 3, 3, 3, 8, 5, 20])
    assert [n for _, n, _ in trace] == [3, 3, 3, 3, 3, 3, 3, 3, 3]  # a 3 is always within 60 s
    assert hpa.reconcile(135, 3, one(20)).desired_replicas == 5  # window (75, 135]: 8, 5, 20
    assert hpa.reconcile(150, 5, one(20)).desired_replicas == 5  # (90, 150]: 5, 20, 20
    assert hpa.reconcile(165, 5, one(20)).desired_replicas == 20  # (105, 165]: 20s only


def test_min_max_clamp():
    hpa = HorizontalPodAutoscaler(2, 10, Behavior.default())
    r = hpa.reconcile(0, 8, one(500))
    assert r.desired_replicas == 10 and r.scaling_limited.reason == "TooManyReplicas" and "clamped to max" in r.reason
    fast_down = ScalingRules(0, "Max", [ScalingPolicy("Percent", 100, 15)])
    hpa = HorizontalPodAutoscaler(2, 10, Behavior(Behavior.default().scale_up, fast_down))
    r = hpa.reconcile(0, 5, one(0))
    assert r.desired_replicas == 2 and r.scaling_limited.reason == "TooFewReplicas"
    # outside [min, max] the HPA corrects without looking at metrics
    hpa = HorizontalPodAutoscaler(2, 10, Behavior.default())
    assert not hpa.wants_metrics(12) and not hpa.wants_metrics(1)
    r = hpa.reconcile(0, 12, [])
    assert r.desired_replicas == 10 and r.recommendation is None and r.error is None
    assert hpa.reconcile(15, 1, []).desired_replicas == 2


def test_zero_replicas_disables_scaling():
    hpa = HorizontalPodAutoscaler(1, 10, Behavior.default())
    r = hpa.reconcile(0, 0, one(50))
    assert r.desired_replicas == 0 and r.scaling_active.reason == "ScalingDisabled"


def test_commit_false_defers_the_scale_event():
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    r = hpa.reconcile(0, 1, one(40), commit=False)
    assert r.desired_replicas == 5
    # the update "failed": no event recorded, so the next sync may again add 4 from 1
    assert hpa.reconcile(5, 1, one(40), commit=False).desired_replicas == 5
    hpa.record_scale_event(5, 1, 5)
    assert hpa.reconcile(10, 5, one(40)).desired_replicas == 5


# ------------------------------------------------------------------ properties

_behaviors = st.sampled_from([None, Behavior.default()])


@settings(max_examples=150, deadline=None)
@given(
    lo=st.integers(1, 5),
    span=st.integers(0, 30),
    start=st.integers(0, 40),
    values=st.lists(st.floats(0, 80, allow_nan=False), min_size=1, max_size=40),
    behavior=_behaviors,
)
def test_property_result_always_within_min_max(lo, span, start, values, behavior):
    hi = lo + span
    hpa = HorizontalPodAutoscaler(lo, hi, behavior)
    current = start
    for i, v in enumerate(values):
        r = hpa.reconcile(i * 15.0, current, one(v))
        if current == 0:
            assert r.desired_replicas == 0  # scaling disabled
            current = lo  # KEDA would activate it
            continue
        assert lo <= r.desired_replicas <= hi
        current = r.desired_replicas


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(1, 30),
    values=st.lists(st.floats(0, 60, allow_nan=False), min_size=2, max_size=60),
    steps=st.lists(st.sampled_from([5.0, 15.0, 30.0, 60.0]), min_size=60, max_size=60),
)
def test_property_default_behavior_never_scales_below_a_recommendation_of_the_last_300s(start, values, steps):
    """With the default behavior a scale-down at t to d never happens while a recommendation
    higher than d was made within (t - 300, t] (the initial one counts: the current count)."""
    hpa = HorizontalPodAutoscaler(1, 100, Behavior.default())
    current, t = start, 0.0
    recs: list[tuple[float, int]] = [(0.0, start)]
    for v, dt in zip(values, steps):
        r = hpa.reconcile(t, current, one(v))
        recs.append((t, r.recommendation))
        if r.desired_replicas < current:
            assert all(n <= r.desired_replicas for ts, n in recs if ts > t - 300)
        current = r.desired_replicas
        t += dt


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(0, 1e6, allow_nan=False), max_size=5),
    target=st.floats(0.001, 1e3, allow_nan=False),
    current=st.integers(1, 1000),
)
def test_property_outside_tolerance_is_ceil_of_sum_over_target(values, target, current):
    values = [keda_metric_value(v) for v in values]
    target = keda_metric_value(target)
    p = external_average_value(values, target, current)
    if p.within_tolerance:
        assert p.replicas == current
    else:
        expected = math.ceil(sum(round(v * 1000) for v in values) / round(target * 1000))
        assert p.replicas == min(expected, 2**31 - 1)  # int32 cap, as replica_calculator.go
