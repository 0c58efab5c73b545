"""Per-graph demand forecasts: the derivations, and the engine carrying forecasts in its reasons."""

import numpy as np
import pytest

from forecasting.demand import DemandForecaster, fluid_queue, littles_law_kv_tokens
from scaler.engine import Engine
from scaler.observation import Observation
from tests.conftest import make_config


def test_fluid_queue_builds_and_drains():
    q = fluid_queue(0.0, np.array([150.0, 150.0, 50.0, 50.0, 50.0]), capacity=100.0, dt=1.0)
    assert q.tolist() == [50.0, 100.0, 50.0, 0.0, 0.0]
    assert fluid_queue(30.0, np.array([0.0]), 100.0, 1.0).tolist() == [0.0]


def test_littles_law_kv_tokens():
    # 10k output tokens/s at 10 ms ITL = 100 concurrent sequences, each ~2000 + 100 tokens of KV.
    assert littles_law_kv_tokens(np.array([10_000.0]), 0.010, 2000, 200)[0] == pytest.approx(210_000)


def test_kv_demand_learns_the_observed_correction():
    f = DemandForecaster("planner-constant", step_s=15)
    for i in range(40):
        f.observe(i * 15.0, {"request_rate": 10.0, "prefill_tokens_per_s": 20_000.0, "decode_tokens_per_s": 1000.0,
                             "isl_mean": 2000.0, "osl_mean": 100.0, "itl_mean": 0.01}, kv_tokens_in_use=41_000.0)
    fc = f.forecast(600.0, [300.0])
    # The formula says 1000 x 0.01 x 2050 = 20.5k; observed is twice that: the correction learns 2x.
    assert fc.kv_tokens[0.5][0] == pytest.approx(41_000, rel=0.02)
    assert fc.at("prefill_tokens_per_s", 0.5)[0] == pytest.approx(20_000, rel=0.01)


def test_engine_decisions_carry_the_forecast():
    e = Engine(make_config())
    for i in range(20):
        e.observe(Observation("g1", i * 15.0, {"request_rate": 50.0, "isl_mean": 2000.0, "osl_mean": 100.0,
                                               "itl_mean": 0.01, "kv_block_size": 16.0},
                              {"decode": {"kv_active_blocks": 1000.0}}))
    d = e.decide(300.0)
    figs = d.reasons["prefill"].figures
    assert figs["forecast_prefill_tokens_per_s_p90@300s"] >= figs["forecast_prefill_tokens_per_s_p50@300s"] > 0
    assert "forecast_kv_tokens_p90@300s" in d.reasons["decode"].figures
    assert d.forecast is not None and "prefill_tokens_per_s" in d.forecast.series


def test_engine_warm_start_fits_history():
    e = Engine(make_config())
    t = np.arange(0, 86400, 60.0)
    y = 100 + 50 * np.sin(2 * np.pi * t / 86400)
    fitted = e.warm_start("g1", {"request_rate": (t, y), "prefill_tokens_per_s": (t, y * 1000)})
    assert set(fitted) == {"request_rate", "prefill_tokens_per_s"}
    fc = e.forecast(86400.0, "g1", [300.0])
    assert fc.at("request_rate", 0.5)[0] == pytest.approx(100, rel=0.3)


def test_the_live_engine_refits_prophet_in_the_background_and_replays_do_not():
    from forecasting.prophet_model import ProphetForecaster
    from scaler.engine import Engine
    from tests.conftest import make_config

    def prophet_models(engine):
        return [m for g in engine.graphs for m in engine._forecaster(g).models.values()]

    cfg = make_config(forecast={"model": "prophet"})
    live, replay = prophet_models(Engine(cfg, live=True)), prophet_models(Engine(cfg))
    assert all(isinstance(m, ProphetForecaster) for m in live + replay)
    assert {m.model.refit for m in live} == {"background"} and {m.model.refit for m in replay} == {"sync"}


def test_the_forecaster_and_the_reactive_sizing_read_the_same_kv_figure():
    """Without active KV blocks, both derive KV in use from usage x ready workers x KV per replica."""
    from scaler.capacity import demand_values, kv_tokens_in_use

    graph = {"request_rate": 10.0, "isl_mean": 2000.0, "osl_mean": 100.0, "kv_block_size": 16.0}
    role = {"kv_usage": 0.5, "ready_workers": 4.0}
    obs = Observation("g1", 0.0, graph, {"decode": role})
    cfg = make_config().graphs["g1"]
    kv_per_replica = cfg.capacity_profile().decode.kv_tokens
    values, kv = demand_values(obs, cfg, kv_per_replica)
    assert kv == kv_tokens_in_use(graph, role, kv_per_replica) == 0.5 * 4 * kv_per_replica
    assert values["prefill_tokens_per_s"] == 20_000.0 and values["decode_tokens_per_s"] == 1000.0
    blocks = Observation("g1", 0.0, graph, {"decode": {**role, "kv_active_blocks": 1000.0}})
    assert demand_values(blocks, cfg, kv_per_replica)[1] == 16_000.0  # active blocks win when read
    idle = Observation("g1", 0.0, {"request_rate": 0.0, "prefill_tokens_per_s": 5.0}, {})
    assert demand_values(idle, cfg, kv_per_replica) == ({"request_rate": 0.0, "prefill_tokens_per_s": 0.0,
                                                          "decode_tokens_per_s": 0.0}, None)


def test_a_missing_mean_that_disables_the_kv_forecast_is_noted():
    e = Engine(make_config())
    for i in range(20):
        e.observe(Observation("g1", i * 15.0, {"request_rate": 50.0, "isl_mean": 2000.0, "osl_mean": 100.0,
                                               "kv_block_size": 16.0},
                              {"decode": {"kv_active_blocks": 1000.0}}))  # no itl_mean
    d = e.decide(300.0)
    assert any("no KV forecast: itl_mean not observed" in n for n in d.notes)
    assert "forecast_kv_tokens_p90@300s" not in d.reasons["decode"].figures
