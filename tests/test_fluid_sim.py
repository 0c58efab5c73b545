"""The fluid pool model: conservation, queueing under overload, start-up delays, decode limits."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.sim.fluid import FluidGraph


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=120))
def test_conservation_every_request_finishes_or_is_counted(steps):
    g = FluidGraph(EmulatorProfile(), now=0.0)
    for i, (rate, p, d) in enumerate(steps):
        if i % 10 == 0:
            g.set_replicas("prefill", p, g.now)
            g.set_replicas("decode", d, g.now)
        g.step(1.0, rate, isl=2000, osl=100)
    assert g.arrived == pytest.approx(g.finished + g.unfinished_requests, rel=1e-9, abs=1e-6)


def test_overload_builds_a_queue_and_ttft_that_drain_after_scale_up():
    prof = EmulatorProfile()
    g = FluidGraph(prof, now=0.0, replicas={"prefill": 1, "decode": 1})
    # 30 req/s x 2000 tokens = 60k tokens/s against one 40k replica: 20k tokens/s of backlog.
    for _ in range(60):
        r = g.step(1.0, 30, 2000, 10)
    assert r.prefill_backlog_tokens == pytest.approx(60 * 20_000)
    assert r.ttft_s > 25
    g.set_replicas("prefill", 3, g.now)
    for _ in range(int(prof.startup_delay_s) - 1):
        r = g.step(1.0, 30, 2000, 10)
    assert r.ready["prefill"] == 1 and r.desired["prefill"] == 3  # still starting
    for _ in range(120):
        r = g.step(1.0, 30, 2000, 10)
    assert r.ready["prefill"] == 3 and r.prefill_backlog_tokens == 0
    assert r.ttft_s < 0.1


def test_decode_itl_grows_with_load_and_stalls_past_capacity():
    g = FluidGraph(EmulatorProfile(), now=0.0, replicas={"prefill": 8, "decode": 1})
    light = g.step(1.0, 1, 500, 100)
    for _ in range(5):
        heavy = g.step(1.0, 100, 500, 100)  # 10k tokens/s of decode: about 10 ms ITL
    assert light.itl_s < heavy.itl_s < 0.02
    for _ in range(5):
        over = g.step(1.0, 400, 500, 100)  # 40k tokens/s: beyond one replica's ~15.8k
    assert math.isinf(over.itl_s) and over.decode_stalled_share > 0.5 and over.decode_backlog_tokens > 0


def test_gpu_seconds_count_starting_replicas():
    g = FluidGraph(EmulatorProfile(), now=0.0, replicas={"prefill": 1, "decode": 1})
    g.set_replicas("prefill", 3, 0.0)
    for _ in range(10):
        g.step(1.0, 0, 1, 1)
    assert g.gpu_seconds == pytest.approx(10 * 4)
