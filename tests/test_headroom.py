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
