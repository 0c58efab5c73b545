"""The pure prefill/decode simulation (scaler.testbench.emulator.model), driven with explicit times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaler.testbench.emulator.model import GraphSim
from scaler.testbench.emulator.profile import DecodeProfile, EmulatorProfile, PrefillProfile
from scaler.testbench.traces import bundled_trace, load_trace, scale_rate

PROFILE = EmulatorProfile()
PREFILL_S = 4000 / PROFILE.prefill.tokens_per_s  # 0.1 s for a 4000-token prompt
TTFT_ALONE = PREFILL_S + PROFILE.kv_transfer_s


class Recorder:
    def __init__(self) -> None:
        self.first: float | None = None
        self.tokens: list[tuple[int, float]] = []
        self.done: float | None = None

    def on_first_token(self, t: float) -> None:
        self.first = t

    def on_tokens(self, n: int, t: float) -> None:
        self.tokens.append((n, t))

    def on_done(self, t: float) -> None:
        self.done = t


def assert_conserved(sim: GraphSim) -> None:
    assert sim.submitted == sim.finished + sim.in_system
    assert sim.inflight_requests == sim.in_system
    assert len(sim.finished_arrays()) == sim.finished


def test_profile_defaults_match_the_published_figures():
    p = EmulatorProfile()
    assert p.decode.itl(100) == pytest.approx(0.010)
    assert 100 / p.decode.itl(100) == pytest.approx(10_000)
    assert p.kv_blocks_per_replica == 56457
    with pytest.raises(ValueError):
        EmulatorProfile(prefil={})  # extra="forbid" catches typos


def test_single_request_timing_and_listener():
    sim = GraphSim(PROFILE, 100.0)
    rec = Recorder()
    req = sim.submit(4000, 101, 100.0, rec)
    sim.advance(105.0)
    assert rec.first == pytest.approx(100.0 + TTFT_ALONE, abs=1e-9)  # prefill is event-exact
    assert sum(n for n, _ in rec.tokens) == 100
    assert [t for _, t in rec.tokens] == sorted(t for _, t in rec.tokens)
    # 100 decode tokens alone on a replica: 100 * itl(1), within a tick.
    assert rec.done == pytest.approx(rec.first + 100 * PROFILE.decode.itl(1), abs=PROFILE.tick_s)
    assert req.done == rec.done and req.ttft == pytest.approx(TTFT_ALONE)
    f = sim.finished_arrays()
    assert f.ttft[0] == pytest.approx(TTFT_ALONE) and f.osl[0] == 101
    assert f.itl[0] == pytest.approx(PROFILE.decode.itl(1), rel=0.01)
    assert sim.output_tokens == 101


def test_prefill_is_an_m_g_n_queue():
    sim = GraphSim(PROFILE, 0.0, {"prefill": 2, "decode": 1})
    reqs = [sim.submit(4000, 1, 0.0) for _ in range(5)]
    sim.advance(2.0)
    ttfts = [r.ttft for r in reqs]
    # Two servers, FIFO, a request is never split: pairs finish together.
    expected = [PREFILL_S * k + PROFILE.kv_transfer_s for k in (1, 1, 2, 2, 3)]
    assert ttfts == pytest.approx(expected, abs=1e-9)
    # osl == 1: done at the first token, never enters decode.
    assert all(r.done == r.first_token for r in reqs)
    assert sim.finished_arrays().itl.tolist() == pytest.approx([math.nan] * 5, nan_ok=True)


def test_overload_grows_ttft_and_a_new_replica_helps_exactly_startup_delay_later():
    profile = EmulatorProfile(startup_delay_s=10.05)
    ready_at = 20.0 + profile.startup_delay_s  # 30.05: off the 0.1 s service grid of the old replica
    sim = GraphSim(profile, 0.0, {"prefill": 1, "decode": 2})
    gap = PREFILL_S / 1.5  # arrivals at 1.5x one replica's capacity
    arrivals = np.arange(0.0, 60.0, gap)
    reqs = []
    for t in arrivals:
        if t >= 20.0 and sim.replicas("prefill").desired == 1:
            sim.set_replicas("prefill", 3, 20.0)
            assert sim.replicas("prefill").starting == 2
        if t >= ready_at and sim.now < ready_at:
            sim.advance(ready_at - 1e-6)
            assert sim.replicas("prefill") == (3, 1, 2, 0)
            sim.advance(ready_at)
            assert sim.replicas("prefill") == (3, 3, 0, 0)
        reqs.append(sim.submit(4000, 2, float(t)))
        assert_conserved(sim)
    sim.advance(90.0)
    assert_conserved(sim)
    assert sim.finished == len(reqs)
    ttft = np.array([r.ttft for r in reqs])
    first = np.sort([r.first_token for r in reqs])
    assert ttft[0] == pytest.approx(TTFT_ALONE)
    # One replica until ready_at: the backlog grows ~0.5 s per second, one first token per 0.1 s.
    at10 = ttft[(arrivals > 9) & (arrivals < 10)]
    assert at10.min() > 4.0 and at10.max() < 5.5
    single = first[first < ready_at + TTFT_ALONE - 1e-9]
    assert np.diff(single).min() >= PREFILL_S - 1e-9
    # Both new replicas take queued work at exactly ready_at.
    assert np.sum(np.abs(first - (ready_at + TTFT_ALONE)) < 1e-9) == 2
    # With 3 replicas (2x the arrival rate) the queue drains; late arrivals see an idle pool.
    assert ttft[arrivals > 50].max() == pytest.approx(TTFT_ALONE, abs=1e-6)


def test_kv_admission_limit_and_fifo_decode_queue():
    profile = EmulatorProfile(kv_blocks_per_replica=100)  # 1600 tokens per decode replica
    sim = GraphSim(profile, 0.0, {"prefill": 3, "decode": 1})
    recs = [Recorder() for _ in range(3)]
    reqs = [sim.submit(600, 200, 0.0, rec) for rec in recs]  # 50 blocks each: two fit
    sim.advance(0.2)
    assert sim.decode_waiting == 1
    (w,) = sim.workers("decode")
    assert w.active_blocks == 100 and w.usage == 1.0 and w.running == 2 and w.waiting == 1
    assert sim.decode_kv_usage() == 1.0
    sim.advance(10.0)
    assert_conserved(sim)
    assert sim.finished == 3
    # The third request only started decoding once a slot's blocks were freed.
    third_second_token = recs[2].tokens[0][1]
    assert third_second_token >= min(r.done for r in reqs[:2]) - 1e-9
    assert reqs[2].mean_itl > 1.5 * reqs[0].mean_itl  # the wait shows up as inter-token latency


def test_max_num_seqs_limits_the_batch():
    profile = EmulatorProfile(decode=DecodeProfile(max_num_seqs=2))
    sim = GraphSim(profile, 0.0, {"prefill": 4, "decode": 1})
    for _ in range(4):
        sim.submit(100, 50, 0.0)
    sim.advance(0.1)
    assert sim.workers("decode")[0].running == 2 and sim.decode_waiting == 2


def test_itl_grows_with_batch_size():
    def mean_itl(batch: int) -> float:
        sim = GraphSim(PROFILE, 0.0, {"prefill": batch, "decode": 1})
        for _ in range(batch):
            sim.submit(1000, 201, 0.0)
        sim.advance(20.0)
        assert sim.finished == batch
        return float(np.mean(sim.finished_arrays().itl))

    one, hundred = mean_itl(1), mean_itl(100)
    assert one == pytest.approx(PROFILE.decode.itl(1), rel=0.02)
    assert hundred == pytest.approx(PROFILE.decode.itl(100), rel=0.02)  # 10 ms: the Dynamo profile point


def test_scale_down_cancels_starting_then_drains_ready_replicas():
    profile = EmulatorProfile(startup_delay_s=30.0)
    sim = GraphSim(profile, 0.0, {"prefill": 1, "decode": 2})
    long_reqs = [sim.submit(100, 2000, 0.0) for _ in range(3)]  # ~12 s of decode each
    sim.advance(1.0)
    busy = [w.running for w in sim.workers("decode")]
    assert sorted(busy) == [1, 2]
    sim.set_replicas("decode", 4, 1.0)
    assert sim.replicas("decode") == (4, 2, 2, 0)
    sim.set_replicas("decode", 1, 2.0)  # cancels both starting ones, drains the less busy ready one
    c = sim.replicas("decode")
    assert (c.desired, c.ready, c.starting, c.draining) == (1, 1, 0, 1)
    assert [w.running for w in sim.workers("decode")] == [2]  # views show ready workers only
    # New work never lands on the draining replica.
    late = sim.submit(100, 1000, 2.0)
    sim.advance(3.0)
    assert late.stage == "decode" and sim.workers("decode")[0].running == 3
    sim.advance(40.0)
    assert_conserved(sim)
    assert all(r.done is not None for r in long_reqs) and late.done is not None
    assert sim.replicas("decode") == (1, 1, 0, 0)  # drained replica removed once idle


def test_draining_prefill_replica_finishes_its_request():
    sim = GraphSim(PROFILE, 0.0, {"prefill": 2, "decode": 1})
    big = sim.submit(40_000, 1, 0.0)  # 1 s of prefill on one replica
    sim.set_replicas("prefill", 1, 0.1)  # the idle one is removed, the busy one... kept (it is the only one)
    assert sim.replicas("prefill") == (1, 1, 0, 0)
    sim.set_replicas("prefill", 0, 0.2)
    assert sim.replicas("prefill").draining == 1
    queued = sim.submit(1000, 1, 0.3)
    sim.advance(5.0)
    assert big.first_token == pytest.approx(1.0 + PROFILE.kv_transfer_s)
    assert queued.first_token is None and sim.prefill_waiting == 1  # nobody left to serve it
    assert sim.replicas("prefill") == (0, 0, 0, 0)
    assert_conserved(sim)


def test_gpu_seconds_count_starting_ready_and_draining_replicas():
    profile = EmulatorProfile(startup_delay_s=10.0, prefill=PrefillProfile(gpus_per_replica=2))
    sim = GraphSim(profile, 0.0)  # 1 prefill (2 GPUs) + 1 decode (1 GPU)
    sim.advance(100.0)
    assert sim.gpu_seconds == pytest.approx(300.0)
    sim.set_replicas("decode", 2, 100.0)  # the starting replica costs from now
    sim.advance(150.0)
    assert sim.gpu_seconds == pytest.approx(300.0 + 50 * 4)


def test_views_attribute_the_prefill_queue_to_ready_workers():
    sim = GraphSim(PROFILE, 0.0, {"prefill": 2, "decode": 1})
    for _ in range(5):
        sim.submit(1000, 1, 0.0)
    ws = sim.workers("prefill")
    # 2 in service + 3 queued (3000 tokens) spread over the 2 workers.
    assert [w.active_prefill_tokens for w in ws] == [1000 + 1500, 1000 + 1500]
    assert [w.waiting for w in ws] == [2, 1]
    assert sim.prefill_queued_tokens == 3000 and sim.prefill_pending_tokens == 5000
    assert sim.queued_requests == 5


@pytest.mark.timeout(120)  # a guard only (~0.5 s); its speed is not asserted here
def test_replaying_a_scaled_trace_conserves_requests():
    reqs = scale_rate(load_trace(bundled_trace("azure-code")), 3)  # ~26k requests over 57 min
    sim = GraphSim(PROFILE, 0.0, {"prefill": 3, "decode": 1})
    for i, r in enumerate(reqs):
        sim.submit(r.isl, r.osl, r.t)
        if i % 5000 == 0:
            assert_conserved(sim)
    sim.advance(reqs[-1].t + 120.0)
    assert sim.finished == len(reqs)
    assert_conserved(sim)
