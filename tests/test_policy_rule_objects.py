"""The rule objects of the pipeline (scaler/policy/), each on its own: what it binds, what it notes,
and the state it keeps between decisions."""

from __future__ import annotations

import json

import numpy as np

from scaler.config import GraphConfig, RoleConfig
from scaler.observation import Observation
from scaler.policy import advisory, missing_data
from scaler.policy.cascade import NoCascade
from scaler.policy.context import RoleContext, Target
from scaler.policy.floors import Floors
from scaler.policy.forecast_cap import ForecastCap
from scaler.policy.rule import HELD, Rule
from scaler.policy.safety_net import SafetyNet
from scaler.policy.stabilisation import Stabilisation
from scaler.policy.warm_pool import size_warm_pool

HORIZONS = np.arange(0.0, 481.0, 15.0)


def graph(roles: dict | None = None, **kw) -> GraphConfig:
    return GraphConfig.model_validate({"roles": roles or {"prefill": {"kind": "prefill"},
                                                         "decode": {"kind": "decode"}}, **kw})


def ctx(g: GraphConfig, role: str = "prefill", now: float = 1000.0, current: int = 4, signals=None,
        role_signals=None, lead_s: float = 90.0, cold_s: float = 390.0, has_warm: bool = False,
        warm_s: float = 90.0) -> RoleContext:
    return RoleContext(now=now, role=role, config=g.roles[role], graph=g, profile=g.capacity_profile(),
                       signals=signals or {}, role_signals=role_signals or {}, forecast=None, horizons=HORIZONS,
                       quantile=0.9, current=current, previous=current, lead_s=lead_s, warm_s=warm_s,
                       cold_s=cold_s, has_warm_role=has_warm)


def target(value: int, role: str = "prefill", kind: str = "prefill", figures=None, needs=None) -> Target:
    return Target(role, kind, value, Rule.CAPACITY, "need", figures=figures or {}, forecast_needs=needs)


def test_rule_names_are_one_kebab_case_spelling_and_serialise_as_it():
    assert all(r.value == r.value.lower() and "_" not in r.value for r in Rule)
    assert json.dumps({"rule": Rule.MIN_REPLICAS}) == '{"rule": "min-replicas"}'
    assert f"{Rule.GPU_BUDGET}: x" == "gpu-budget: x"
    assert {r for r in Rule if r.held} == HELD == {Rule.NO_DATA, Rule.STALE_DATA, Rule.MISSING_DATA}


def test_target_bind_records_a_step_only_when_the_value_moves():
    t = target(3)
    t.bind(3, Rule.RATIO, "same")
    assert t.steps == [] and t.rule == Rule.CAPACITY
    t.bind(5, Rule.RATIO, "raised")
    assert t.steps == ["ratio: 3 -> 5 (raised)"] and (t.value, t.rule, t.message) == (5, Rule.RATIO, "raised")


def test_forecast_cap_is_a_multiple_of_the_highest_need_in_its_window():
    cap = ForecastCap(max_growth=2.0, window_s=600.0)
    assert cap.cap(0.0, 5.0) == 10.0
    assert cap.cap(300.0, 2.0) == 10.0  # the 5 is still within the window
    assert cap.cap(601.0, 2.0) == 4.0  # it has left it
    assert cap.cap(602.0, 0.1) == 4.0
    assert ForecastCap(2.0, 600.0).cap(0.0, 0.0) == 2.0  # at least one replica's worth
    needs, bound = ForecastCap(2.0, 600.0).apply(0.0, 3.0, np.array([1.0, 9.0, np.nan]))
    assert bound == 6.0 and needs[1] == 6.0 and needs[0] == 1.0 and np.isnan(needs[2])
    needs, bound = ForecastCap(2.0, 600.0).apply(0.0, 3.0, np.array([1.0, 5.0]))
    assert bound is None and list(needs) == [1.0, 5.0]
    assert ForecastCap(None, 600.0).apply(0.0, 3.0, np.array([100.0]))[1] is None


def test_safety_net_steps_from_ready_once_per_start_up_and_cooldown():
    g = graph({"prefill": {"kind": "prefill", "safety_net": {"queued_requests": 10, "cooldown": 60}}})
    net = SafetyNet(g.roles["prefill"].safety_net, g)
    breach = dict(signals={"queued_requests": 50}, role_signals={"ready_workers": 4})
    t = target(3)
    net.apply(ctx(g, now=1000.0, **breach), t)
    assert (t.value, t.rule, t.emergency) == (6, Rule.SAFETY_NET, True)  # 4 ready + 50 %
    t = target(3)
    net.apply(ctx(g, now=1100.0, current=6, **breach), t)  # 100 s later: the step (90 s + 60 s) is settling
    assert t.value == 3 and not t.emergency and "still starting or settling" in t.steps[-1]
    t = target(3)
    net.apply(ctx(g, now=1151.0, current=6, **breach), t)
    assert t.value == 6 and not t.emergency  # asks no more than already asked for: no new step taken
    assert net.stepped_at == 1000.0
    quiet = target(3)
    SafetyNet(g.roles["prefill"].safety_net, g).apply(ctx(g, signals={"queued_requests": 5}), quiet)
    assert quiet.value == 3 and quiet.steps == []


def test_safety_net_counts_a_latency_breach_only_under_load():
    g = graph({"prefill": {"kind": "prefill"}}, slo={"ttft_s": 0.5})
    slow = dict(signals={"ttft_p99": 3.0}, role_signals={"ready_workers": 4})
    idle = target(1, figures={"demand_tokens_per_s": 1000.0, "tokens_per_s_per_replica": 40_000.0})
    SafetyNet(g.roles["prefill"].safety_net, g).apply(ctx(g, **slow), idle)
    assert idle.value == 1  # a slow p99 on an idle pool is the prompts' own length
    busy = target(4, figures={"demand_tokens_per_s": 120_000.0, "tokens_per_s_per_replica": 40_000.0})
    SafetyNet(g.roles["prefill"].safety_net, g).apply(ctx(g, **slow), busy)
    assert busy.value == 6 and busy.rule == Rule.SAFETY_NET


def test_stabilisation_holds_a_fall_for_its_window_but_never_an_emergency():
    g = graph({"prefill": {"kind": "prefill", "stabilisation": {"scale_down": 300}}})
    rule = Stabilisation(g.roles["prefill"].stabilisation)
    rule.remember(0.0, 8)  # adopted at a restart
    t = target(3)
    rule.apply(ctx(g, now=100.0, current=8), t)
    assert (t.value, t.rule) == (8, Rule.STABILISATION)
    t = target(3)
    rule.apply(ctx(g, now=301.0, current=8), t)
    assert t.value == 3  # the 8 has left the window
    up = Stabilisation(graph({"prefill": {"kind": "prefill", "stabilisation": {"scale_up": 60}}}).roles["prefill"].stabilisation)
    t = target(9)
    t.emergency = True
    up.apply(ctx(g, now=0.0, current=4), t)
    assert t.value == 9 and t.steps == []


def test_a_settled_forecast_shortens_the_scale_down_window_but_keeps_what_it_needs_until_a_replica_is_back():
    g = graph()  # defaults: scale_down 300 s, forecast_scale_down 60 s, decision window 60 s
    needs = np.where(HORIZONS <= 150.0, 5.0, 2.0)  # the forecast needs 5 until +150 s, then 2

    def fall(settled: bool, forecast_needs=None) -> Target:
        rule = Stabilisation(g.roles["prefill"].stabilisation)
        rule.remember(0.0, 8)
        t = target(3, needs=forecast_needs)
        t.forecast_settled = settled
        rule.apply(ctx(g, now=100.0, current=8, warm_s=90.0), t)
        return t

    assert fall(settled=False, forecast_needs=needs).value == 8  # the HPA's 300 s hold
    assert fall(settled=True).value == 8  # settled, but no forecast: still held
    t = fall(settled=True, forecast_needs=needs)
    # The 8 recommended 100 s ago has left the 60 s window, but a replica released now is back only
    # 90 + 60 s later, and the forecast needs 5 until then.
    assert (t.value, t.rule) == (5, Rule.STABILISATION) and "within 150s" in t.message
    t = fall(settled=True, forecast_needs=np.full(len(HORIZONS), 2.0))
    assert t.value == 3  # the forecast needs less than the recommendation: the fall goes through
    off = graph({"prefill": {"kind": "prefill", "stabilisation": {"forecast_scale_down": None}}})
    rule = Stabilisation(off.roles["prefill"].stabilisation)
    rule.remember(0.0, 8)
    t = target(3, needs=np.full(len(HORIZONS), 2.0))
    t.forecast_settled = True
    rule.apply(ctx(off, now=100.0, current=8), t)
    assert t.value == 8  # turned off: always the scale-down window


def test_no_cascade_holds_while_replicas_start_unless_an_emergency():
    g = graph()
    starting = dict(current=6, role_signals={"ready_workers": 4})
    t = target(8)
    NoCascade(True).apply(ctx(g, **starting), t)
    assert (t.value, t.rule) == (6, Rule.NO_CASCADE)
    t = target(8)
    t.emergency = True
    NoCascade(True).apply(ctx(g, **starting), t)
    assert t.value == 8
    t = target(8)
    NoCascade(False).apply(ctx(g, **starting), t)
    assert t.value == 8


def test_lead_time_floor_looks_as_far_as_the_start_up_the_graph_has():
    g = graph()
    needs = np.where(HORIZONS <= 90, 2.0, np.where(HORIZONS <= 390, 7.0, 20.0))
    cold = target(2, needs=needs)
    Floors().apply(ctx(g, has_warm=False), cold)
    assert (cold.value, cold.rule) == (7, Rule.LEAD_TIME_FLOOR)  # within the cold start-up (390 s)
    warm = target(2, needs=needs)
    Floors().apply(ctx(g, has_warm=True), warm)
    assert warm.value == 2  # balloon pods keep nodes warm: only the warm start-up counts


def test_scheduled_floor_binds_with_its_window_in_the_message():
    from datetime import datetime, timezone

    g = graph({"prefill": {"kind": "prefill", "schedule": [{"start": "08:00", "end": "20:00", "min_replicas": 5}]}})
    monday_9h = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc).timestamp()
    t = target(2, needs=np.full(len(HORIZONS), np.nan))
    Floors().apply(ctx(g, now=monday_9h), t)
    assert (t.value, t.rule) == (5, Rule.SCHEDULED_FLOOR) and t.message.startswith("08:00-20:00")


def test_warm_pool_holds_the_gpus_the_forecast_needs_beyond_the_serving_targets():
    g = graph({"prefill": {"kind": "prefill", "gpus_per_replica": 2}, "decode": {"kind": "decode"},
               "warm": {"kind": "warm", "gpus_per_replica": 2, "min_replicas": 0, "max_replicas": 3}},
              decision_window=60)
    serving = {"prefill": target(3, needs=np.where(HORIZONS <= 450, 6.0, 40.0)),
               "decode": target(2, role="decode", kind="decode", needs=np.full(len(HORIZONS), 1.5))}
    t = size_warm_pool("warm", g.roles["warm"], g, serving, HORIZONS)
    # within 390 + 60 s: 6 x 2 + 2 x 1 = 14 GPUs needed, 3 x 2 + 2 = 8 held: 3 pods of 2 GPUs
    assert (t.value, t.rule) == (3, Rule.WARM_POOL) and t.figures == {"forecast_gpus": 14.0, "serving_gpus": 8.0}
    serving["prefill"] = target(3, needs=np.full(len(HORIZONS), 30.0))
    capped = size_warm_pool("warm", g.roles["warm"], g, serving, HORIZONS)
    assert (capped.value, capped.rule) == (3, Rule.MAX_REPLICAS)


def test_advisory_answers_what_runs_and_carries_the_advice():
    active, advising = graph(), graph(mode="advisory")
    assert advisory.answer(active, "prefill", 7, {"desired_replicas": 3}) == (7, None)
    assert advisory.answer(advising, "prefill", 7, {"desired_replicas": 3}) == (3, 7)
    assert advisory.answer(advising, "prefill", 7, {"ready_workers": 2}) == (2, 7)
    assert advisory.answer(advising, "prefill", 7, {}) == (1, 7)  # min_replicas


def test_missing_data_names_why_and_holds_never_lower():
    assert missing_data.untrusted(10.0, None, 60.0) == (Rule.NO_DATA, "no observation yet")
    old = Observation(graph="g", at=0.0, signals={}, roles={})
    rule, why = missing_data.untrusted(100.0, old, 60.0)
    assert rule == Rule.STALE_DATA and "100s old" in why
    assert missing_data.untrusted(30.0, old, 60.0) is None
    rc = RoleConfig(kind="decode", min_replicas=2, max_replicas=9)
    t = missing_data.held("decode", rc, 5, Rule.MISSING_DATA, "missing kv_active_blocks")
    assert (t.value, t.held, t.rule) == (5, True, Rule.MISSING_DATA) and "never scale down" in t.message
    assert missing_data.held("decode", rc, None, Rule.NO_DATA, "x").value == 2  # the floor


def test_outlier_filter_holds_a_one_poll_jump_until_the_next_poll_confirms_it():
    from scaler.policy.outlier import OutlierFilter

    g = graph()
    f = OutlierFilter(10.0, g.capacity_profile())

    def poll(at, rate, tokens):
        o = f.apply(Observation("g", at, {"request_rate": rate, "isl_mean": 2000.0,
                                          "prefill_tokens_per_s": tokens, "queued_requests": 7.0}, {}))
        return o.signals, o.errors

    poll(0, 20.0, 40_000.0)
    s, notes = poll(15, 20_000.0, 40_000_000.0)  # 1000x in one poll
    assert s["request_rate"] == 20.0 and s["prefill_tokens_per_s"] == 40_000.0 and s["queued_requests"] == 7.0
    assert len(notes) == 2 and "one-poll outlier: prefill_tokens_per_s" in notes[1]
    s, notes = poll(30, 20_000.0, 40_000_000.0)  # the next poll confirms it: believed in full
    assert s["prefill_tokens_per_s"] == 40_000_000.0 and notes == ()
    # From idle, up to 10 replicas' worth passes at once (one prefill replica serves 40k tokens/s).
    f = OutlierFilter(10.0, g.capacity_profile())
    poll(0, 0.0, 0.0)
    assert poll(15, 150.0, 300_000.0) == ({"request_rate": 150.0, "isl_mean": 2000.0,
                                           "prefill_tokens_per_s": 300_000.0, "queued_requests": 7.0}, ())
    off = OutlierFilter(None, g.capacity_profile())
    o = Observation("g", 0.0, {"request_rate": 1.0}, {})
    assert off.apply(o) is o


def test_a_rise_within_the_hpa_tolerance_is_rounded_up_to_one_it_acts_on():
    from scaler.policy.hpa_tolerance import HpaTolerance, smallest_rise

    g = graph()
    assert smallest_rise(17, 0.1) == 19 and smallest_rise(5, 0.1) == 6 and smallest_rise(10, 0.1) == 12
    t = target(18)
    HpaTolerance(0.1).apply(ctx(g, current=17, role_signals={"desired_replicas": 17.0}), t)
    assert (t.value, t.rule) == (19, Rule.HPA_TOLERANCE) and "within the HPA's 0.1 tolerance" in t.message
    for value, current, tol in ((25, 17, 0.1), (16, 17, 0.1), (18, 17, 0.0)):  # beyond it, a fall, no tolerance
        t = target(value)
        HpaTolerance(tol).apply(ctx(g, current=current), t)
        assert t.value == value and t.steps == []
