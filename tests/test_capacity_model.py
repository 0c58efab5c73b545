"""Capacity profile (curves, file, emulated profile), the bounded online correction, and the
start-up time learned from rollouts."""

from importlib import resources

import pytest
import yaml

from scaler.capacity import DecodeDemand, PrefillDemand, decode_need, prefill_need
from scaler.capacity_profile import ProfileError, load_profile
from scaler.testbench.emulator.profile import capacity_profile
from scaler.config import DecodeCapacity, PrefillCapacity
from scaler.correction import CapacityCorrection
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.startup import StartupTracker

PROFILE = """
prefill:
  tokens_per_s: [{isl: 1000, tokens_per_s: 40000}, {isl: 9000, tokens_per_s: 20000}]
decode:
  kv_tokens: 500000
  tokens_per_s: [{context: 1000, tokens_per_s: 12000}, {context: 5000, tokens_per_s: 8000}]
"""


def test_curves_interpolate_and_hold_flat_beyond_the_ends(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PROFILE)
    p = load_profile(f)
    assert p.prefill.throughput(5000) == pytest.approx(30000)
    assert p.prefill.throughput(100) == 40000 and p.prefill.throughput(20000) == 20000
    # Decode: linear in the time per token between points (harmonic), below the chord's 10,000.
    assert p.decode.throughput(3000) == pytest.approx(2 / (1 / 12000 + 1 / 8000))
    assert p.decode.throughput(500) == 12000 and p.decode.throughput(9000) == 8000


def test_decode_interpolation_follows_the_convex_curve_not_its_chord():
    """Where the KV cache bounds the batch, a replica's decode tokens/s is b / itl(b) with b = KV / context:
    its time per token is affine in the context, so the harmonic interpolation of the shipped profile
    lands on the emulated hardware's own curve between the profile's points; the chord over-promises."""
    e = EmulatorProfile()
    p = capacity_profile(e, 0.5, 0.03).decode
    kv = float(e.kv_tokens_per_replica)
    for ctx in (6144.0, 12288.0, 24576.0):
        b = kv / ctx
        assert b < e.decode.max_num_seqs  # KV-bound here
        true = b / e.decode.itl(b)
        assert p.throughput(ctx) == pytest.approx(true, rel=0.015)  # the profile rounds the batch
        lo, hi = max(c for c in (4096.0, 8192.0, 16384.0, 32768.0) if c < ctx), min(
            c for c in (4096.0, 8192.0, 16384.0, 32768.0) if c > ctx)
        chord = p.throughput(lo) + (p.throughput(hi) - p.throughput(lo)) * (ctx - lo) / (hi - lo)
        assert chord > true * 1.02  # 2.8-5 % over here


def test_longer_prompts_need_more_prefill_replicas_per_token(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PROFILE)
    p = load_profile(f)
    short = prefill_need(PrefillDemand(100_000, 0, 1000), p.prefill, PrefillCapacity())
    long = prefill_need(PrefillDemand(100_000, 0, 9000), p.prefill, PrefillCapacity())
    assert long.replicas == pytest.approx(2 * short.replicas)
    d = decode_need(DecodeDemand(450_000, 1000, 3000), p.decode, DecodeCapacity())
    assert d.term == "kv" and d.replicas == pytest.approx(450_000 / (500_000 * 0.8))


def test_profile_errors_name_the_field(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PROFILE.replace("kv_tokens: 500000", "kv_tokens: -1"))
    with pytest.raises(ProfileError, match=r"decode\.kv_tokens"):
        load_profile(f)
    f.write_text(PROFILE.replace("isl: 9000", "isl: 1000"))
    with pytest.raises(ProfileError, match="duplicate isl"):
        load_profile(f)


def test_shipped_emulated_profile_is_the_derivation():
    shipped = yaml.safe_load(resources.files("scaler").joinpath("data/profile.emulated.yaml").read_text())
    derived = capacity_profile(EmulatorProfile(), ttft_target_s=0.5, itl_target_s=0.03)
    assert shipped == derived.model_dump(mode="json")
    # KV binds at long contexts: throughput falls once max_num_seqs x context exceeds the KV cache.
    assert derived.decode.throughput(32768) < derived.decode.throughput(1024) / 3


def test_correction_learns_a_slower_gpu_bounded_and_smoothly():
    c = CapacityCorrection(min_factor=0.5, halflife_s=600)
    for i in range(4):  # 1 min of TTFT at twice the target while under capacity
        c.update(i * 15.0, observed_s=1.0, target_s=0.5, load=0.8)
    assert 0.9 < c.factor < 1.0  # moved a little, not halved by one interval
    for i in range(4, 400):
        c.update(i * 15.0, observed_s=1.0, target_s=0.5, load=0.8)
    assert c.factor == pytest.approx(0.5, abs=0.01)  # persistent: fully learned, never below the bound
    for i in range(400, 1400):
        c.update(i * 15.0, observed_s=0.2, target_s=0.5, load=0.8)
    assert 0.99 < c.factor <= 1.0  # recovers, never above 1


def test_correction_ignores_overload_and_idle():
    c = CapacityCorrection()
    for i in range(200):
        c.update(i * 15.0, observed_s=5.0, target_s=0.5, load=1.5)  # under-provisioned: not the profile's fault
        c.update(i * 15.0 + 1, observed_s=5.0, target_s=0.5, load=0.1)  # too little load to judge
    assert c.factor == 1.0


def test_the_lead_is_what_starts_take_not_the_kind_they_are_meant_to_be():
    """With `startup.lead: observed`: balloon pods are meant to make starts warm; where they do not
    cover the rises, starts are cold and the lead a rise is planned on follows them (the 90th
    percentile of recent starts, within the warm and cold times in use); before evidence, and by
    default, it is the configured time."""
    s = StartupTracker(warm_s=90, cold_s=300, alpha=0.3, observed_lead=True)
    default = StartupTracker(warm_s=90, cold_s=300, alpha=0.3)
    assert s.lead_s(90.0) == 90.0
    t = 0.0
    for i in range(6):  # mostly cold starts (300 s), one warm in six
        for tracker in (s, default):
            tracker.observe(t, target=i + 1, ready=i)
            tracker.observe(t + (90 if i == 0 else 300), target=i + 1, ready=i + 1)
        t += 1000
    assert s.lead_s(90.0) == pytest.approx(300.0, abs=1)
    assert default.lead_s(90.0) == 90.0
    for i in range(6, 30):  # the warm pool now covers them: warm starts
        s.observe(t, target=i + 1, ready=i)
        s.observe(t + 95, target=i + 1, ready=i + 1)
        t += 1000
    assert s.lead_s(90.0) < 100
    fixed = StartupTracker(warm_s=90, cold_s=300, learn=False, observed_lead=True)
    assert fixed.lead_s(300.0) == 300.0


def test_correction_learns_a_faster_gpu_only_from_capacity_shown():
    """Replicas that served 1.5x the profile's capacity for whole windows within the ITL target have
    shown it: the factor rises to what they served (no further), within max_factor, and stays there
    while latency holds; a breach at or under capacity brings it back down."""
    c = CapacityCorrection(max_factor=2.0)
    for i in range(40):  # 10 min at 1.5x the profile, 8 replicas throughout, ITL well within 30 ms
        c.update(i * 15.0, observed_s=0.016, target_s=0.03, load=1.5 / c.factor, ready=8)
    assert c.factor == pytest.approx(1.5, rel=0.02)
    for i in range(40, 200):  # sized on it now: load under 1, latency fine: no drift either way
        c.update(i * 15.0, observed_s=0.016, target_s=0.03, load=0.9, ready=10)
    assert c.factor == pytest.approx(1.5, rel=0.02)
    for i in range(200, 600):  # the hardware got slower: breaches under capacity
        c.update(i * 15.0, observed_s=0.06, target_s=0.03, load=0.9, ready=10)
    assert c.factor < 1.0


def test_correction_takes_no_rise_from_a_changing_pool_a_breach_or_a_wild_reading():
    # The ready count changed within the window: its rate was served by more replicas than the count.
    c = CapacityCorrection(shown_over_s=60)
    for i in range(40):
        c.update(i * 15.0, observed_s=0.016, target_s=0.03, load=1.5, ready=8 + i % 2)
    assert c.factor == 1.0
    # Above capacity and breaching: under-provisioned, not a faster GPU.
    for i in range(40, 80):
        c.update(i * 15.0, observed_s=0.05, target_s=0.03, load=1.5, ready=8)
    assert c.factor == 1.0
    # No ready count (unknown pool): nothing shown.
    for i in range(80, 120):
        c.update(i * 15.0, observed_s=0.016, target_s=0.03, load=1.5)
    assert c.factor == 1.0
    # A wild load reading: bounded by max_factor.
    for i in range(120, 200):
        c.update(i * 15.0, observed_s=0.016, target_s=0.03, load=50.0, ready=8)
    assert c.factor == pytest.approx(2.0)


def test_startup_tracker_learns_warm_and_cold_times():
    s = StartupTracker(warm_s=90, cold_s=390, alpha=0.5)
    s.observe(0, target=1, ready=1)
    s.observe(15, target=3, ready=1)  # two more asked at t=15
    s.observe(135, target=3, ready=2)  # one ready after 120 s: a warm start
    assert s.warm_s == pytest.approx(105) and s.cold_s == 390
    s.observe(615, target=3, ready=3)  # the other after 600 s: a cold start
    assert s.cold_s == pytest.approx(495)
    s.observe(630, target=5, ready=3)
    s.observe(645, target=3, ready=3)  # cancelled before ready: no sample
    s.observe(700, target=3, ready=3)
    assert s.samples == 2
