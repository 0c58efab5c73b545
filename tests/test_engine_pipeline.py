"""The decision pipeline end to end through the embedding API: forecast above the reactive need,
safety net, floors, stabilisation, no cascade, ratio, GPU budget, the warm role, advisory mode."""

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.observation import Observation


def config(roles=None, forecast=None, **graph) -> ScalerConfig:
    roles = roles or {
        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 40},
        "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 40},
    }
    return ScalerConfig.model_validate({
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "forecast": forecast or {},
        "graphs": {"g": {"roles": roles, **graph}},
    })


def obs(t, rate, ready=None, isl=2000.0, osl=100.0, queued=0.0, **signals):
    ready = ready or {}
    roles = {"prefill": {"prefill_queued_tokens": queued}, "decode": {"kv_active_blocks": 0.0}}
    for r, n in ready.items():
        roles.setdefault(r, {})["ready_workers"] = float(n)
    return Observation("g", t, {"request_rate": rate, "isl_mean": isl, "osl_mean": osl, "kv_block_size": 16.0,
                                **signals}, roles)


def feed(e, rates, t0=0.0, step=15.0, ready=None, queued=0.0, **signals):
    """Observe `rates` every `step` seconds, deciding after each; returns the last decision and t."""
    d, t = None, t0
    for i, r in enumerate(rates):
        t = t0 + i * step
        e.observe(obs(t, r, ready, queued=queued, **signals))
        d = e.decide(t + 1)
    return d, t


def reactive_prefill(rate, isl=2000.0):
    return rate * isl / (40_000 * 0.8)


def test_forecast_adds_capacity_ahead_of_a_ramp_and_says_so():
    e = Engine(config())
    ramp = [10 + 0.5 * i for i in range(120)]  # +2 req/s per minute for 30 min
    d, _ = feed(e, ramp)
    rd = d.roles["prefill"]
    assert rd.reason.rule in ("forecast", "lead-time-floor")
    # The ramp continues during the start-up lead time: the target covers more than today's need.
    assert rd.replicas > reactive_prefill(ramp[-1]) + 0.5
    assert rd.reason.figures["predictive_replicas"] > rd.reason.figures["reactive_replicas"]
    assert any(k.startswith("forecast_prefill_tokens_per_s_p90@") for k in rd.reason.figures)


def test_forecast_never_sizes_below_the_observed_need():
    e = Engine(config())
    feed(e, [60.0] * 80)  # a steady hour...
    d, _ = feed(e, [5.0] * 3 + [60.0], t0=80 * 15)  # ...a dip the models discount, then 60 again
    need = reactive_prefill(60.0)
    assert d.replicas["prefill"] >= need


def test_safety_net_scales_up_at_once_past_the_scale_up_window():
    roles = {"prefill": {"kind": "prefill", "max_replicas": 40, "stabilisation": {"scale_up": "10m"}},
             "decode": {"kind": "decode"}}
    e = Engine(config(roles, forecast={"enabled": False}))
    d, t = feed(e, [30.0] * 5, ready={"prefill": 2, "decode": 1})
    base = d.replicas["prefill"]
    # Demand unchanged, but the observed p99 TTFT breaks the SLO (0.5 s): a slower GPU, a burst.
    # The queue holds 0.6 s of the ready replicas' work: the breach is queueing, not long prompts.
    e.observe(obs(t + 15, 30.0, {"prefill": base, "decode": 1}, queued=0.6 * base * 40_000, ttft_p99=2.0))
    d = e.decide(t + 16)
    assert d.roles["prefill"].reason.rule == "safety-net"
    assert d.replicas["prefill"] == base + max(1, -(-base // 2))
    assert "ttft_p99=2 > 0.5" in d.roles["prefill"].reason.message


def test_scale_up_window_delays_a_rise_and_scale_down_window_holds_a_fall():
    roles = {"prefill": {"kind": "prefill", "max_replicas": 40,
                         "stabilisation": {"scale_up": "60s", "scale_down": "300s"}},
             "decode": {"kind": "decode"}}
    e = Engine(config(roles, forecast={"enabled": False}))
    d, t = feed(e, [16.0] * 3)
    low = d.replicas["prefill"]
    d, t = feed(e, [160.0] * 2, t0=t + 15)  # 30 s of a burst: within the 60 s window
    assert d.replicas["prefill"] == low and d.roles["prefill"].reason.rule == "stabilisation"
    d, t = feed(e, [160.0] * 4, t0=t + 15)  # persists past 60 s: acted on
    high = d.replicas["prefill"]
    assert high == -(-int(reactive_prefill(160.0) * 100) // 100)
    d, t = feed(e, [16.0] * 10, t0=t + 15)  # 150 s of calm: still held (300 s window)
    assert d.replicas["prefill"] == high
    d, t = feed(e, [16.0] * 12, t0=t + 15)  # past 300 s: released
    assert d.replicas["prefill"] == low


def test_no_cascade_holds_the_queue_while_replicas_start_not_the_arriving_demand():
    e = Engine(config(forecast={"enabled": False}))
    d, t = feed(e, [80.0] * 2, ready={"prefill": 1, "decode": 1})
    asked = d.replicas["prefill"]
    assert asked == math.ceil(reactive_prefill(80.0))
    # Still starting (ready 1 of `asked`) while the queue they are meant for grows: hold, do not pile on.
    d, t = feed(e, [80.0] * 2, t0=t + 15, ready={"prefill": 1, "decode": 1}, queued=2_000_000.0)
    rd = d.roles["prefill"]
    assert rd.replicas == asked and rd.reason.rule == "no-cascade"
    assert rd.reason.figures["reactive_replicas"] > asked + 1  # the queue alone would have asked for more
    # The ARRIVING demand grows while they start: that need is not queued behind them, it is acted on.
    d, t = feed(e, [120.0] * 2, t0=t + 15, ready={"prefill": 1, "decode": 1})
    assert d.replicas["prefill"] == math.ceil(reactive_prefill(120.0)) > asked
    # Once they are ready the queue's need is acted on too.
    d, t = feed(e, [120.0], t0=t + 15, ready={"prefill": 8, "decode": 1}, queued=2_000_000.0)
    assert d.replicas["prefill"] > math.ceil(reactive_prefill(120.0))


def test_scheduled_floor_in_its_time_zone():
    roles = {"prefill": {"kind": "prefill", "schedule": [
                 {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "20:00", "min_replicas": 6}]},
             "decode": {"kind": "decode"}}
    e = Engine(config(roles, forecast={"enabled": False}, timezone="Europe/Paris"))
    monday_10_paris = datetime(2026, 11, 23, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    d, _ = feed(e, [1.0], t0=monday_10_paris)
    assert d.replicas["prefill"] == 6 and d.roles["prefill"].reason.rule == "scheduled-floor"
    e2 = Engine(config(roles, forecast={"enabled": False}, timezone="Europe/Paris"))
    sunday = datetime(2026, 11, 22, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    d, _ = feed(e2, [1.0], t0=sunday)
    assert d.replicas["prefill"] == 1


def test_gpu_budget_scales_both_roles_down_proportionally():
    e = Engine(config(forecast={"enabled": False}, gpu_budget=8))
    d, _ = feed(e, [100.0], osl=2000.0)  # prefill ~6.25 -> 7, decode 25 -> way over
    assert sum(d.replicas.values()) <= 8
    assert {r.rule for r in d.reasons.values()} == {"gpu-budget"}


def test_ratio_bounds_raise_the_starved_role():
    e = Engine(config(forecast={"enabled": False}, prefill_decode_ratio={"min": 1.0}))
    d, _ = feed(e, [10.0], osl=1500.0)  # decode-heavy: decode well above prefill
    assert d.replicas["prefill"] >= d.replicas["decode"]
    assert d.roles["prefill"].reason.rule == "ratio"


def test_warm_role_keeps_gpus_for_the_forecast_within_the_cold_start_time():
    cold = {"cold": "390s"}  # nodes take minutes to provision: what the placeholders are for
    roles = {"prefill": {"kind": "prefill", "max_replicas": 60, "startup": cold},
             "decode": {"kind": "decode", "max_replicas": 60, "startup": cold},
             "warm": {"kind": "warm", "min_replicas": 0, "max_replicas": 20}}
    # The fixed margin (no calibrated headroom, whose 2x prior already covers this ramp's next 390 s in
    # the serving targets): the forecast beyond the warm start-up is the warm pool's alone.
    e = Engine(config(roles, forecast={"headroom": {"enabled": False}}))
    ramp = [10 + 1.0 * i for i in range(120)]
    d, _ = feed(e, ramp)
    w = d.roles["warm"]
    assert w.replicas > 0 and w.reason.rule == "warm-pool"
    serving = sum(d.replicas[r] for r in ("prefill", "decode"))
    assert w.reason.figures["serving_gpus"] == serving
    assert w.replicas == w.reason.figures["forecast_gpus"] - serving


def test_advisory_mode_answers_current_replicas_and_exports_the_advice():
    e = Engine(config(forecast={"enabled": False}, mode="advisory"))
    d, _ = feed(e, [100.0], ready={"prefill": 3, "decode": 2})
    rd = d.roles["prefill"]
    assert rd.replicas == 3 and rd.advised == 7
    assert "advisory: would ask for 7" in d.explain()


def test_never_scales_down_on_missing_data_even_with_a_forecast():
    e = Engine(config())
    d, t = feed(e, [100.0] * 20)
    held = d.replicas["prefill"]
    e.observe(Observation("g", t + 15, {"kv_block_size": 16.0}, {}))  # request_rate missing
    d = e.decide(t + 16)
    assert d.replicas["prefill"] == held and d.roles["prefill"].reason.rule == "missing-data"
    d = e.decide(t + 500)  # and then nothing at all: stale
    assert d.replicas["prefill"] == held and d.roles["prefill"].reason.rule == "stale-data"


def test_explain_lists_the_steps_in_order():
    roles = {"prefill": {"kind": "prefill", "max_replicas": 3}, "decode": {"kind": "decode"}}
    e = Engine(config(roles, forecast={"enabled": False}))
    d, _ = feed(e, [100.0])
    steps = d.roles["prefill"].steps
    assert steps[0].startswith("capacity: 7") and steps[-1].startswith("max-replicas: 7 -> 3")


@pytest.mark.parametrize("bad, where", [
    ({"mode": "sometimes"}, "graphs.g.mode"),
    ({"timezone": "Mars/Olympus"}, "graphs.g.timezone"),
    ({"prefill_decode_ratio": {"min": 2, "max": 1}}, "graphs.g.prefill_decode_ratio"),
])
def test_policy_config_errors_name_the_path(bad, where):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as ei:
        config(**bad)
    assert where in ".".join(str(p) for p in ei.value.errors()[0]["loc"]) or where.split(".")[-1] in str(ei.value)


def test_safety_net_ignores_slow_latency_on_an_idle_pool_and_does_not_compound():
    e = Engine(config(forecast={"enabled": False}))
    # 5 req/s x 2000 tokens on 4 ready replicas: 6 % load. A p99 TTFT of 2 s there comes from long
    # prompts or a stale window, not from capacity: no emergency.
    d, t = feed(e, [5.0] * 3, ready={"prefill": 4, "decode": 1}, ttft_p99=2.0)
    assert d.roles["prefill"].reason.rule != "safety-net"
    # Loaded and breaching: one step from the READY count...
    q = 2.0 * 4 * 40_000  # 2 s of queued work on 4 replicas
    d, t = feed(e, [60.0], t0=t + 15, ready={"prefill": 4, "decode": 1}, queued=q, ttft_p99=2.0)
    assert d.roles["prefill"].reason.rule == "safety-net" and d.replicas["prefill"] == 6
    # ...and while those are starting, a breach that persists asks for no more.
    d, t = feed(e, [60.0] * 4, t0=t + 15, ready={"prefill": 4, "decode": 1}, queued=q, ttft_p99=2.0)
    assert d.replicas["prefill"] == 6


def test_safety_net_steps_again_only_after_its_replicas_served_a_cooldown():
    e = Engine(config(forecast={"enabled": False}))
    d, t = feed(e, [60.0], ready={"prefill": 4, "decode": 1}, queued=2.0 * 4 * 40_000, ttft_p99=2.0)
    assert d.replicas["prefill"] == 6
    # Warm start-up 90 s + cooldown 60 s: no second step before 150 s, even with all 6 ready.
    q = 2.0 * 6 * 40_000
    d, t = feed(e, [60.0] * 9, t0=t + 15, ready={"prefill": 6, "decode": 1}, queued=q, ttft_p99=2.0)  # 135 s
    assert d.replicas["prefill"] == 6
    d, t = feed(e, [60.0] * 2, t0=t + 15, ready={"prefill": 6, "decode": 1}, queued=q, ttft_p99=2.0)  # 165 s
    assert d.replicas["prefill"] == 9  # the second step, taken from the 6 ready


def test_a_role_never_falls_while_an_input_it_may_be_lowered_on_is_missing():
    """Prometheus keeps answering but stops returning one role's driving series: the queue of
    prefill, the KV of decode. The target may still rise on what is there, never fall."""
    from scaler.policy.rule import Rule

    e = Engine(config(forecast={"enabled": False}))
    d, t = feed(e, [160.0] * 3, ready={"prefill": 10, "decode": 1})
    high = d.replicas["prefill"]
    assert high == 10 and d.roles["prefill"].reason.rule == Rule.CAPACITY

    def without(t, rate, role, signal):
        o = obs(t, rate, {"prefill": 10, "decode": 1})
        o.roles[role].pop(signal)
        return o

    e.observe(without(t + 400, 100.0, "prefill", "prefill_queued_tokens"))  # past the scale-down window
    d = e.decide(t + 401)
    rd = d.roles["prefill"]
    assert d.replicas["prefill"] == high and rd.reason.rule == Rule.MISSING_DATA
    assert "prefill_queued_tokens" in rd.reason.message and "never scale down" in rd.reason.message
    e.observe(without(t + 415, 400.0, "prefill", "prefill_queued_tokens"))  # a rise still goes through
    d = e.decide(t + 416)
    assert d.replicas["prefill"] > high and any("may rise, not fall" in s for s in d.roles["prefill"].steps)
    e.observe(obs(t + 800, 16.0, {"prefill": 10, "decode": 1}))  # the series is back: the fall is allowed
    d = e.decide(t + 801)
    assert d.replicas["prefill"] < high


def test_decode_never_falls_on_its_token_rate_alone_when_the_kv_series_are_gone():
    from scaler.policy.rule import Rule

    e = Engine(config(forecast={"enabled": False}))
    for i in range(3):
        o = obs(i * 15.0, 100.0, {"decode": 5}, osl=100.0)
        o.roles["decode"]["kv_active_blocks"] = 4 * 896_000 / 16  # 4 replicas' worth of KV in use
        e.observe(o)
        d = e.decide(i * 15.0 + 1)
    held = d.replicas["decode"]
    assert held >= 5
    o = obs(400.0, 100.0, {"decode": 5}, osl=100.0)
    o.roles["decode"].pop("kv_active_blocks")  # kvstats gone; the token rate alone would need 2
    e.observe(o)
    d = e.decide(401.0)
    assert d.replicas["decode"] == held and d.roles["decode"].reason.rule == Rule.MISSING_DATA
    assert "KV in use" in d.roles["decode"].reason.message


def test_a_one_poll_spike_is_not_believed_but_a_sustained_rise_scales_on_its_second_poll():
    """A 1000x demand spike in one poll (a counter reset read as a rate) is taken as 10x until the
    next poll confirms it: the target does not jump to max_replicas and stay there for the
    scale-down window, nor does the forecast carry it; the same rise sustained is sized in full."""
    from scaler.policy.rule import Rule

    roles = {"prefill": {"kind": "prefill", "max_replicas": 400}, "decode": {"kind": "decode", "max_replicas": 400}}
    e = Engine(config(roles))
    d, t = feed(e, [16.0] * 40)  # 10 minutes of steady traffic: 1 prefill replica's worth
    steady = d.replicas["prefill"]
    e.observe(obs(t + 15, 16_000.0))  # one poll at 1000x
    d = e.decide(t + 16)
    assert d.replicas["prefill"] < 40 and any("one-poll outlier" in n for n in d.notes)
    d, t2 = feed(e, [16.0] * 18, t0=t + 30)  # back to normal; 4.5 min later
    fc = d.roles["prefill"].reason.figures
    assert d.replicas["prefill"] <= 2 * steady + 1 and fc.get("predictive_replicas", 0.0) < 5, fc
    # The same jump sustained: the second poll confirms it and the target follows in full.
    e2 = Engine(config(roles))
    d, t = feed(e2, [16.0] * 40)
    d, t = feed(e2, [1600.0, 1600.0], t0=t + 15)
    assert d.replicas["prefill"] >= reactive_prefill(1600.0) and not any("outlier" in n for n in d.notes)
    assert d.roles["prefill"].reason.rule in (Rule.CAPACITY, Rule.FORECAST, Rule.LEAD_TIME_FLOOR)


def test_the_first_decision_never_cuts_the_running_replicas_at_once():
    """An embedder that never calls adopt_replicas: 10 replicas running at low demand stay until the
    scale-down window has passed, then fall."""
    e = Engine(config(forecast={"enabled": False}))
    d, t = feed(e, [16.0], ready={"prefill": 10, "decode": 3})
    assert d.replicas["prefill"] == 10 and d.roles["prefill"].reason.rule == "stabilisation"
    d, t = feed(e, [16.0] * 22, t0=t + 15, ready={"prefill": 10, "decode": 3})  # 330 s later
    assert d.replicas["prefill"] == 1


def test_no_cascade_compares_with_the_replicas_asked_for_not_its_own_last_target():
    """The HPA's 10 % tolerance swallowed the engine's +1 (17 -> 18): the scale subresource still says
    17, all 17 are ready, nothing is starting. A rise to 22 must go through, not wait for the 18th."""
    e = Engine(config(forecast={"enabled": False}))
    running = {"desired_replicas": 17.0, "ready_replicas": 17.0}

    def poll(t, rate):
        o = obs(t, rate)
        o.roles["prefill"].update(running)
        e.observe(o)
        return e.decide(t + 1)

    poll(0.0, 17.0 * 32_000 / 2000)  # 17 replicas' worth
    d = poll(15.0, 18.0 * 32_000 / 2000)
    assert d.replicas["prefill"] == 18  # asked for; the HPA does not act on it (within its tolerance)
    d = poll(30.0, 22.0 * 32_000 / 2000)
    assert d.replicas["prefill"] == 22 and d.roles["prefill"].reason.rule == "capacity"
    running["ready_replicas"] = 15.0  # two replicas of the 17 asked for are starting: a queue is held at 17
    o = obs(45.0, 17.0 * 32_000 / 2000, queued=3_000_000.0)
    o.roles["prefill"].update(running)
    e.observe(o)
    d = e.decide(46.0)
    assert d.replicas["prefill"] == 17 and d.roles["prefill"].reason.rule == "no-cascade"

