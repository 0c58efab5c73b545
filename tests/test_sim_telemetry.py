"""What policies observe in the replay: Prometheus-like windows over the fluid model's steps."""

import numpy as np
import pytest

from scaler.config import ScalerConfig
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.observation import sanitize
from scaler.testbench.sim.context import SimContext
from scaler.capacity_profile import flat_profile, profile_yaml
from scaler.testbench.sim.engine_config import GRAPH, engine_config
from scaler.testbench.sim.sizing import decode_tokens_per_s_per_replica
from scaler.testbench.sim.fluid import FluidGraph
from scaler.signals import GRAPH_SIGNALS, role_signals
from scaler.testbench.sim.policies.pdscaler import observation
from scaler.testbench.sim.telemetry import Telemetry, weighted_quantile
from scaler.testbench.sim.workload import synthetic


def _run(rate, isl, osl, prefill, decode, seconds):
    prof = EmulatorProfile()
    g = FluidGraph(prof, now=0.0, replicas={"prefill": prefill, "decode": decode})
    tel = Telemetry(seconds, 1.0, 0.0, prof)
    for _ in range(seconds):
        tel.record(g.step(1.0, rate, isl, osl), isl, osl, 0, prefill + decode)
    return tel


def test_window_reports_rates_means_quantiles_and_gauges_of_a_steady_load():
    tel = _run(50, 1000, 100, prefill=2, decode=1, seconds=120)
    w = tel.window(60)
    assert w["request_rate"] == pytest.approx(50)
    assert w["prefill_tokens_per_s"] == pytest.approx(50_000)
    assert w["isl_mean"] == pytest.approx(1000) and w["osl_mean"] == pytest.approx(100)
    assert w["ttft_p99"] == pytest.approx(1000 / 40_000 + 0.005)  # no queue: ISL / tokens_per_s + KV transfer
    assert 0.006 < w["itl_p99"] < 0.03
    assert w["ready_prefill"] == 2 and w["ready_decode"] == 1
    assert w["kv_active_blocks"] == pytest.approx(w["kv_usage"] * w["kv_total_blocks"])
    assert w["prefill_queued_tokens"] == pytest.approx(50 * 1000 * 1000 / 40_000)  # only the tokens in progress


def test_overload_shows_as_queued_tokens_and_a_high_ttft_p99():
    tel = _run(50, 2000, 100, prefill=2, decode=1, seconds=60)  # 100k tokens/s against 80k
    w = tel.window(60)
    assert w["prefill_queued_tokens"] > 50 * 20_000
    assert w["ttft_p99"] > 10


def test_what_pdscaler_is_fed_passes_the_engines_sanitizer_and_the_config_validates():
    ctx = SimContext(synthetic(np.full(10, 1.0), 100, 10))
    ScalerConfig.model_validate(engine_config(ctx))
    w = _run(50, 1000, 100, 2, 1, 90).window(60)
    obs = observation(90.0, w)
    assert sanitize(obs).errors == ()
    # Every signal of the product but the frontend's in-flight gauge (the fluid model has none).
    assert set(obs.signals) == {s.name for s in GRAPH_SIGNALS} - {"inflight_requests"}
    for role in ("prefill", "decode"):
        assert set(obs.roles[role]) == {s.name for s in role_signals(role)}


def test_pdscaler_in_the_replay_knows_the_simulated_hardware_as_the_baselines_do(tmp_path):
    """The baselines size on the simulated hardware (ctx.profile); pdscaler gets its capacity profile at
    the replay's SLOs (what Dynamo's profiler would measure on it), not the config's flat defaults
    (10k decode tokens/s against the emulated 15.8k at 30 ms); `--profile` still replaces it."""
    from scaler.testbench.emulator.profile import EmulatorProfile, capacity_profile

    hw = EmulatorProfile()
    ctx = SimContext(synthetic(np.full(10, 1.0), 100, 10), itl_slo=0.012)  # an SLO that binds the batch
    got = engine_config(ctx).graphs[GRAPH].capacity_profile()
    assert got == capacity_profile(hw, ctx.ttft_slo, 0.012)
    assert got.decode.throughput(1000) == pytest.approx(
        float(decode_tokens_per_s_per_replica(hw, np.array([900.0]), np.array([200.0]), 0.012)[0]), rel=0.01)
    assert got.decode.throughput(1000) < capacity_profile(hw, ctx.ttft_slo, 0.03).decode.throughput(1000)
    flat = tmp_path / "flat.yaml"
    flat.write_text(profile_yaml(flat_profile(40_000, 10_000, 896_000)))
    mine = SimContext(ctx.workload, profile_path=str(flat))
    assert engine_config(mine).graphs[GRAPH].capacity_profile().decode.throughput(1000) == 10_000


def test_weighted_quantile():
    v, w = np.array([3.0, 1.0, 2.0]), np.array([1.0, 98.0, 1.0])
    assert weighted_quantile(v, w, 0.5) == 1.0
    assert weighted_quantile(v, w, 0.99) == 2.0
    assert weighted_quantile(v, w, 1.0) == 3.0
