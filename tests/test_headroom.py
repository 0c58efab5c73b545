"""The calibrated headroom (scaler/policy/headroom.py): the multiple of the planned need that covered
the realised peak for the asked-for share of requests, learned online from a conservative prior."""

from __future__ import annotations

import numpy as np
import pytest

from scaler.config import HeadroomConfig
from scaler.policy.headroom import Headroom

POLL = 15.0


def run(h: Headroom, plans, realised, requests, lead=30.0, window=30.0):
    """One poll per element: observe what is realised now, then plan the coming window."""
    for i, (p, r, q) in enumerate(zip(plans, realised, requests)):
        now = i * POLL
        h.observe(now, r, q)
        h.plan(now, lead, window, p)
    return h.headroom()


def test_before_any_evidence_it_is_the_prior():
    h = Headroom(HeadroomConfig(enabled=True, prior=2.0), 0.99, POLL)
    assert h.headroom() == 2.0 and h.samples == 0 and "prior" in h.why()


def test_predictable_traffic_relaxes_to_the_shortfall_it_has():
    h = Headroom(HeadroomConfig(enabled=True, prior=2.0, prior_weight=600.0), 0.99, POLL)
    n = 2000
    plans = np.full(n, 10.0)
    realised = 10.0 * (1.0 + 0.05 * np.random.default_rng(0).random(n))  # up to 5 % above the plan
    v = run(h, plans, realised, np.full(n, 100.0))
    assert 1.0 <= v < 1.1 and h.samples > 1900
    assert "settled windows" in h.why()


def test_it_is_settled_once_its_own_windows_outweigh_the_prior():
    h = Headroom(HeadroomConfig(enabled=True, prior=2.0, prior_weight=600.0), 0.99, POLL)  # 40 windows
    run(h, np.full(30, 10.0), np.full(30, 10.0), np.full(30, 1.0))
    assert 0 < h.samples < 40 and not h.settled
    h = Headroom(HeadroomConfig(enabled=True, prior=2.0, prior_weight=600.0), 0.99, POLL)
    run(h, np.full(60, 10.0), np.full(60, 10.0), np.full(60, 1.0))
    assert h.samples >= 40 and h.settled


def test_bursts_that_carry_the_requests_set_the_headroom_even_if_rare_in_time():
    """1 window in 20 holds a burst 6x the plan but 80 % of the requests: p99 of requests needs ~6x."""
    cfg = HeadroomConfig(enabled=True, prior=2.0, prior_weight=0.0)
    n = 1000
    burst = (np.arange(n) % 20) == 0
    realised = np.where(burst, 60.0, 10.0)
    requests = np.where(burst, 80.0 * 19, 20.0)
    by_requests = run(Headroom(cfg, 0.99, POLL), np.full(n, 10.0), realised, requests)
    assert by_requests == pytest.approx(6.0, rel=0.05)
    # With equal requests per poll, the median window holds no burst: the p50 is the plan.
    assert run(Headroom(cfg, 0.5, POLL), np.full(n, 10.0), realised, np.full(n, 1.0)) == pytest.approx(1.0, abs=0.02)


def test_old_windows_leave_the_window_and_bounds_apply():
    cfg = HeadroomConfig(enabled=True, prior=2.0, prior_weight=0.0, window=1500.0, max=4.0)
    h = Headroom(cfg, 0.99, POLL)
    run(h, np.full(200, 1.0), np.full(200, 30.0), np.full(200, 1.0))  # 30x: bounded to 4
    assert h.headroom() == 4.0
    for i in range(200, 400):  # then 100 polls (> the 1500 s window) of a plan that holds
        h.observe(i * POLL, 1.0, 1.0)
        h.plan(i * POLL, 30.0, 30.0, 1.0)
    assert h.headroom() == pytest.approx(1.0, abs=0.02)


def test_the_engine_sizes_on_the_median_times_the_headroom_and_says_so():
    from scaler.config import ScalerConfig
    from scaler.engine import Engine
    from scaler.observation import Observation

    cfg = ScalerConfig.model_validate({
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "forecast": {"model": "holt", "max_growth": None, "headroom": {"enabled": True, "prior": 3.0}},
        "graphs": {"g": {"roles": {"prefill": {"kind": "prefill", "max_replicas": 100},
                                   "decode": {"kind": "decode", "max_replicas": 100}}}},
    })
    e = Engine(cfg)
    for i in range(8):
        e.observe(Observation("g", i * POLL, {"request_rate": 40.0, "isl_mean": 2000.0, "osl_mean": 100.0,
                                              "kv_block_size": 16.0},
                              {"prefill": {"prefill_queued_tokens": 0.0}, "decode": {"kv_active_blocks": 0.0}}))
        d = e.decide(i * POLL + 1)
    rd = d.roles["prefill"]
    # 80k tokens/s = 2 replicas at full capacity; the prior 3x on the plan: about 6.
    assert rd.reason.figures["headroom"] == pytest.approx(3.0, rel=0.05)
    assert rd.reason.rule == "forecast" and "p50 x headroom" in rd.reason.message
    assert 5 <= rd.replicas <= 7


def test_evidence_above_the_prior_counts_at_once_below_it_the_prior_relaxes_slowly():
    """A cold start: the prior is a floor until evidence shows less is enough, never a cap on what
    the first bursts showed."""
    cfg = HeadroomConfig(enabled=True, prior=2.0, prior_weight=3600.0)
    high = Headroom(cfg, 0.99, POLL)
    run(high, np.full(10, 1.0), np.full(10, 12.0), np.full(10, 100.0))  # a few windows at 12x the plan
    assert high.headroom() == pytest.approx(12.0, rel=0.02)
    low = Headroom(cfg, 0.99, POLL)
    run(low, np.full(10, 10.0), np.full(10, 10.0), np.full(10, 100.0))  # a few windows exactly on plan
    assert 1.9 < low.headroom() < 2.0  # the prior still weighs ~96 %


# --- attainment feedback (scaler/policy/attainment.py) ------------------------------------------------

from scaler.capacity_profile import flat_profile as _flat  # noqa: E402
from scaler.policy.attainment import AttainmentFeedback, ttft_limit  # noqa: E402


def flat_profile(tokens_per_s=40_000.0):
    return _flat(tokens_per_s, 10_000.0, 1e6)


def test_ttft_limit_is_net_of_the_long_prompts_own_prefill_time():
    p = flat_profile()
    assert ttft_limit(0.5, {}, p) == 0.5  # no ISL signal: the SLO
    assert ttft_limit(0.5, {"isl_mean": 2000.0, "isl_p99": 8000.0}, p) == 0.5  # own p99 0.2 s: the SLO
    # p99 prompt 80k tokens = 2 s of its own prefill, plus the 0.45 s of queueing the SLO leaves a 2k prompt
    assert ttft_limit(0.5, {"isl_mean": 2000.0, "isl_p99": 80_000.0}, p) == pytest.approx(2.45)


def test_feedback_rises_on_capacity_breaches_and_decays_back_within_bounds():
    f = AttainmentFeedback(0.99, rate=0.2, gain_max=3.0)
    assert f.gain == 1.0
    f.observe(None, 0.5, 100.0)  # no data: no evidence
    f.observe(0.3, 0.5, 0.0)  # no traffic: no evidence
    assert f.gain == 1.0 and "no poll" in f.why()
    for _ in range(3):
        f.observe(2.0, 0.5, 100.0)
    assert f.gain == pytest.approx(np.exp(3 * 0.2 * 0.99))
    for _ in range(20):
        f.observe(9.0, 0.5, 100.0)
    assert f.gain == 3.0  # bounded
    good = 0
    while f.gain > 1.0:
        f.observe(0.2, 0.5, 100.0)
        good += 1
    # Down by rate x (1 - attainment) per good poll: ~99 good polls undo one breach.
    assert 0.9 * np.log(3.0) / (0.2 * 0.01) < good < 1.1 * np.log(3.0) / (0.2 * 0.01) + 1
    assert f.gain == 1.0  # never below 1: it only corrects a shortfall


def test_feedback_weighs_quiet_polls_less():
    loud, quiet = AttainmentFeedback(0.99, 0.2, 8.0), AttainmentFeedback(0.99, 0.2, 8.0)
    for f in (loud, quiet):
        for _ in range(50):
            f.observe(0.2, 0.5, 100.0)  # the usual poll: 100 requests
    loud.observe(2.0, 0.5, 100.0)
    quiet.observe(2.0, 0.5, 5.0)
    assert loud.gain == pytest.approx(np.exp(0.2 * 0.99))
    assert 1.0 < quiet.gain < 1.02


def engine_with_feedback():
    from scaler.engine import Engine
    from scaler.config import ScalerConfig

    cfg = ScalerConfig.model_validate({
        "forecast": {"model": "holt", "headroom": {"enabled": True, "prior": 1.0, "feedback_rate": 0.5}},
        "graphs": {"g": {"roles": {"prefill": {"kind": "prefill", "max_replicas": 100}, "decode": {"kind": "decode"}}}},
    })
    return Engine(cfg)


def poll(e, t, ttft_p99, isl_p99=2000.0, ready=10.0, desired=10.0):
    from scaler.observation import Observation

    o = Observation("g", t, {"request_rate": 100.0, "isl_mean": 2000.0, "isl_p99": isl_p99, "osl_mean": 100.0,
                             "kv_block_size": 16.0, "ttft_p99": ttft_p99},
                    {"prefill": {"prefill_queued_tokens": 0.0, "ready_workers": ready, "ready_replicas": ready,
                                 "desired_replicas": desired},
                     "decode": {"kv_active_blocks": 0.0, "ready_workers": 2.0}})
    e.observe(o)
    return e.decide(t + 1).roles["prefill"].reason


def test_the_engine_raises_the_gain_on_capacity_misses_only():
    # TTFT breaches on a loaded pool: the gain rises and the reason says why.
    e = engine_with_feedback()
    for i in range(6):
        r = poll(e, i * 15.0, ttft_p99=3.0)
    assert r.figures["attainment_gain"] > 2.0 and "attainment gain" in r.message
    # The same TTFT from 200k-token prompts (5 s of their own prefill): no replica would fix it.
    e = engine_with_feedback()
    for i in range(6):
        r = poll(e, i * 15.0, ttft_p99=3.0, isl_p99=200_000.0)
    assert r.figures["attainment_gain"] == 1.0
    # Breaches while replicas asked for are still starting are the start-up's, not the sizing's.
    e = engine_with_feedback()
    for i in range(6):
        r = poll(e, i * 15.0, ttft_p99=3.0, ready=10.0, desired=14.0)
    assert r.figures["attainment_gain"] == 1.0


def test_a_queue_while_replicas_start_is_the_start_ups_not_the_forecasts():
    """The headroom learns the realised peak need, queue included; but a queue that forms while the
    replicas asked for are still starting (a cold start) is not demand the forecast missed: it counts
    the arriving demand then, and a day of such queues does not inflate the headroom."""
    from scaler.observation import Observation

    def run(desired: float) -> float:
        e = engine_with_feedback()
        r = None
        for i in range(400):  # 100 min of steady demand; a 4M-token queue forms every 10 minutes
            queued = 4e6 if i % 40 == 20 else 0.0
            o = Observation("g", i * 15.0, {"request_rate": 100.0, "isl_mean": 2000.0, "isl_p99": 2000.0,
                                            "osl_mean": 100.0, "kv_block_size": 16.0, "ttft_p99": 0.1},
                            {"prefill": {"prefill_queued_tokens": queued, "ready_workers": 10.0,
                                         "ready_replicas": 10.0, "desired_replicas": desired if queued else 10.0},
                             "decode": {"kv_active_blocks": 0.0, "ready_workers": 2.0}})
            e.observe(o)
            r = e.decide(i * 15.0 + 1).roles["prefill"].reason
        return r.figures["headroom"]

    steady_queue = run(desired=10.0)  # the pool stood as asked: the queue is a burst the plan missed
    starting = run(desired=14.0)  # replicas were starting: the queue is theirs
    assert steady_queue > 1.5  # (5 + 3.3) / 5 replicas: the queue's 30-s drain on top of the arrivals
    assert starting < 1.1
