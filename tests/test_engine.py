"""The decision core, reactive part: capacity rule, bounds, and safe answers on missing, stale or bad
data. Forecasting and scale-down stabilisation are off here (tests/test_engine_pipeline.py covers
them), so each assertion isolates the capacity rule."""

import math

import pytest

from scaler.engine import Engine, UnknownGraph
from scaler.policy.rule import Rule
from scaler.observation import Observation
from tests.conftest import make_config, reactive_config


def obs(at, rate=10.0, isl=2000.0, osl=200.0, queued_tokens=0.0, kv_blocks=None, graph="g1", **extra):
    roles = {"prefill": {"prefill_queued_tokens": queued_tokens}, "decode": {"kv_active_blocks": kv_blocks or 0.0}}
    signals = {"request_rate": rate, "isl_mean": isl, "osl_mean": osl, "kv_block_size": 16.0, **extra}
    return Observation(graph=graph, at=at, signals=signals, roles=roles)


@pytest.fixture
def config():
    return reactive_config()


def test_prefill_capacity_rule_sizes_on_arrival_tokens(config):
    e = Engine(config)
    # 100 req/s x 2000 tokens = 200k tokens/s; one replica: 40k x 0.8 = 32k usable -> 6.25 -> 7.
    e.observe(obs(0, rate=100))
    d = e.decide(now=1)
    assert d.replicas["prefill"] == 7
    r = d.reasons["prefill"]
    assert r.rule == "capacity"
    assert r.figures["demand_tokens_per_s"] == pytest.approx(200_000)
    assert r.inputs["request_rate"] == 100


def test_prefill_backlog_adds_capacity(config):
    e = Engine(config)
    e.observe(obs(0, rate=10, queued_tokens=0))
    base = e.decide(1).replicas["prefill"]
    e.observe(obs(2, rate=10, queued_tokens=3_000_000))  # 3M tokens to drain in 30 s = 100k tokens/s
    d = e.decide(3)
    assert d.replicas["prefill"] > base
    assert "backlog" in d.reasons["prefill"].message


def test_decode_sized_on_kv_or_throughput_whichever_binds(config):
    e = Engine(config.model_copy(update={"outlier_factor": None}))  # jumps in one poll on purpose
    # KV: 100k blocks x 16 = 1.6M tokens / (896k x 0.8) = 2.23 -> 3; throughput: 10 x 200 = 2k tok/s -> 0.25.
    e.observe(obs(0, rate=10, osl=200, kv_blocks=100_000))
    d = e.decide(1)
    assert d.replicas["decode"] == 3
    assert "kv" in d.reasons["decode"].message
    # Throughput binds: 300 req/s x 200 = 60k tok/s / 8k = 7.5 -> 8 (max 8).
    e.observe(obs(2, rate=300, osl=200, kv_blocks=10))
    d = e.decide(3)
    assert d.replicas["decode"] == 8
    assert d.reasons["decode"].rule == "capacity"


def test_bounds_name_the_rule(config):
    e = Engine(config.model_copy(update={"outlier_factor": None}))  # jumps in one poll on purpose
    e.observe(obs(0, rate=0.0))
    d = e.decide(1)
    assert d.replicas == {"prefill": 1, "decode": 2}
    assert d.reasons["decode"].rule == Rule.MIN_REPLICAS
    e.observe(obs(2, rate=10_000))
    d = e.decide(3)
    assert d.replicas["prefill"] == 10 and d.reasons["prefill"].rule == Rule.MAX_REPLICAS


def test_no_data_answers_the_floor_with_reason(config):
    d = Engine(config).decide(now=100)
    assert d.replicas == {"prefill": 1, "decode": 2}
    assert all(r.rule == "no-data" for r in d.reasons.values())
    assert "no observation yet" in str(d.reasons["prefill"])


def test_answering_the_floors_builds_no_forecast_models():
    """The serving process's first answers (and a reload's check) come from an Engine that never
    observes: it must not build a fleet's forecasters (~270 MB at 1,000 graphs); the first
    observation builds a graph's."""
    e = Engine(make_config())
    assert all(r.rule == "no-data" for r in e.decide(now=100).reasons.values())
    assert e._forecasters == {}
    e.observe(obs(100))
    assert list(e._forecasters) == ["g1"]
    with pytest.raises(UnknownGraph):
        e.forecast(100, "nope")


def test_stale_data_holds_and_never_scales_down(config):
    e = Engine(config)
    e.observe(obs(0, rate=100))
    high = e.decide(1).replicas["prefill"]
    assert high > 1
    d = e.decide(now=1 + config.stale_after + 1)  # no new data since t=0
    assert d.replicas["prefill"] == high
    assert d.reasons["prefill"].rule == "stale-data"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -5.0, 1e12, "x"])
def test_bad_values_are_dropped_and_the_decision_holds(config, bad):
    e = Engine(config)
    e.observe(obs(0, rate=100))
    high = e.decide(1).replicas["prefill"]
    e.observe(obs(2, rate=bad))
    d = e.decide(3)
    assert d.replicas["prefill"] == high  # never scale down on unusable data
    assert d.reasons["prefill"].rule == "missing-data"
    assert any("request_rate" in n for n in d.notes)


def test_zero_traffic_without_isl_scales_to_floor(config):
    e = Engine(config)
    e.observe(obs(0, rate=100))
    e.decide(1)
    e.observe(Observation(graph="g1", at=2, signals={"request_rate": 0.0, "kv_block_size": 16.0},
                          roles={"prefill": {"prefill_queued_tokens": 0.0}, "decode": {"kv_active_blocks": 0.0}}))
    d = e.decide(3)
    assert d.replicas["prefill"] == 1
    assert d.reasons["prefill"].rule == Rule.MIN_REPLICAS


def test_older_observation_is_ignored(config):
    e = Engine(config)
    e.observe(obs(10, rate=100))
    e.observe(obs(5, rate=1))
    assert e.latest("g1").at == 10


def test_unknown_graph(config):
    e = Engine(config)
    with pytest.raises(UnknownGraph, match="configured graphs: g1"):
        e.observe(obs(0, graph="nope"))
    with pytest.raises(UnknownGraph):
        e.decide(0, "nope")


def test_decide_is_a_pure_function_of_observations_and_now():
    a, b = Engine(make_config()), Engine(make_config())  # forecasting on: deterministic too
    for e in (a, b):
        e.observe(obs(0, rate=55, kv_blocks=5000))
    assert a.decide(7).replicas == b.decide(7).replicas
    assert a.decide(7).explain() == b.decide(7).explain()


def test_explain_is_readable(config):
    e = Engine(config)
    e.observe(obs(0, rate=100))
    text = e.decide(1).explain()
    assert "prefill (prefill): 7 replicas - capacity" in text
    assert "demand_tokens_per_s=2e+05" in text


def test_two_replicas_fed_the_same_inputs_give_the_same_answers():
    """HA: KEDA round-robins between scaler replicas; fed the same observations, every decision of a
    long bursty run (forecasts, safety net, stabilisation all active) is identical."""
    import numpy as np

    a, b = Engine(make_config()), Engine(make_config())
    rng = np.random.default_rng(7)
    for i in range(240):  # an hour of 15 s polls, with bursts
        rate = 20 + 15 * np.sin(i / 20) + (80 if 100 <= i < 110 else 0) + rng.normal(0, 3)
        o = obs(15.0 * i, rate=max(0.0, rate), kv_blocks=float(rng.integers(1000, 50_000)),
                queued_tokens=float(rng.integers(0, 200_000)))
        a.observe(o)
        b.observe(o)
        da, db = a.decide(15.0 * i + 1), b.decide(15.0 * i + 1)
        assert da.to_dict() == db.to_dict(), i


def test_an_over_full_kv_cache_is_a_signal_not_dropped_as_absurd(config):
    """kv_usage 1.6 (more KV asked for than the pool holds) trips the KV safety net; 60 (a percent-valued
    series, not a share) is dropped with a note."""
    e = Engine(config.model_copy(update={"outlier_factor": None}))
    o = obs(0, rate=10, osl=200)
    o.roles["decode"].update({"kv_usage": 1.6, "ready_workers": 2.0})
    e.observe(o)
    d = e.decide(1)
    assert d.roles["decode"].reason.rule == Rule.SAFETY_NET and "kv_usage=1.6" in d.roles["decode"].reason.message
    o = obs(2, rate=10, osl=200)
    o.roles["decode"].update({"kv_usage": 60.0, "ready_workers": 2.0})
    e.observe(o)
    assert any("kv_usage=60 is absurd" in n for n in e.decide(3).notes)
