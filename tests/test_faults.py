"""Faults: Prometheus down, slow, empty, NaN, Inf, negative; a forecast model that raises or hangs;
a decision that fails; a config reload with an invalid file. In every case the answers stay sane
(never a scale-down on missing data), the reason is exported, and the scaler recovers by itself."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from scaler.clock import ManualClock
from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.loop import DecisionLoop
from scaler.metrics import ScalerMetrics
from scaler.reload import ConfigReloader
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.sources.prometheus import PrometheusSource
from scaler.store import DecisionStore
from scaler.testbench.processes import wait_until
from tests.conftest import example_config_file
from tests.fake_prometheus import FakePrometheus

GRAPHS = ("alpha", "beta", "gamma")
HELD = {"missing-data", "stale-data", "no-data"}


def config(url: str, timeout: str = "5s") -> ScalerConfig:
    """`timeout`: generous but for the "slow" fault, so that a loaded machine does not turn another
    fault's answers into timeouts."""
    roles = {"prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 20},
             "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 20}}
    return ScalerConfig.model_validate({
        "poll_interval": 15, "stale_after": 90,
        "source": {"kind": "prometheus", "url": url, "timeout": timeout},
        "forecast": {"enabled": False},
        "graphs": {g: {"namespace": "ns", "roles": roles} for g in GRAPHS},
    })


@pytest.fixture
def prom():
    p = FakePrometheus()
    yield p
    p.close()


def make_loop(url: str, timeout: str = "5s"):
    cfg = config(url, timeout)
    clock = ManualClock(1_000_000.0)
    metrics = ScalerMetrics()
    store = DecisionStore()
    loop = DecisionLoop(Engine(cfg), PrometheusSource(cfg), store, clock, metrics=metrics)
    return loop, clock, store, metrics


def ticks(loop, clock, n: int, prom: FakePrometheus | None = None) -> list[tuple[dict, int | None]]:
    """n polls, 15 s apart: [(decisions, queries the fake Prometheus received during the poll)]."""
    out = []
    for _ in range(n):
        before = prom.queries if prom is not None else None
        decisions = loop.tick()
        out.append((decisions, prom.queries - before if prom is not None else None))
        clock.advance(15)
    return out


@pytest.mark.parametrize("fault", [pytest.param("slow", marks=pytest.mark.slow),  # 8 polls, a 0.5 s timeout each
                                   "empty", "nan", "inf", "negative", "http500", "down"])
def test_prometheus_faults_hold_explain_and_recover(prom, fault):
    loop, clock, store, metrics = make_loop(prom.url, "0.5s" if fault == "slow" else "5s")
    ticks(loop, clock, 4)
    good = store.get("alpha").replicas
    assert good["prefill"] > 1  # 200k prefill tokens/s needs several replicas
    if fault == "down":
        prom.close()
        loop.source.close()
        loop.source = PrometheusSource(config("http://127.0.0.1:1"))
    else:
        prom.mode = fault
    expected = {"slow": "unreachable", "down": "unreachable", "nan": "NaN", "inf": "infinite",
                "negative": "below 0", "http500": "query failed", "empty": "missing"}[fault]
    during = ticks(loop, clock, 8, prom)  # two minutes: past stale_after
    for decisions, queries in during:
        if fault == "slow":  # one timeout for the first graph's query, the others are not sent this poll
            assert queries == 1, f"{fault}: a poll sent {queries} queries to a Prometheus that times out"
        for g in GRAPHS:
            d = decisions[g]
            for role, n in d.replicas.items():
                assert n >= good[role], f"{fault}: {g}/{role} scaled down on bad data ({n} < {good[role]})"
            assert {d.roles[r].reason.rule for r in d.roles} <= HELD, (fault, d.explain())
            assert expected in d.explain(), f"{fault}: the reason is exported"
    if fault != "down":  # recovery, by itself
        prom.mode = "ok"
        after = ticks(loop, clock, 2)[-1][0]
        assert all(after[g].roles[r].reason.rule not in HELD for g in GRAPHS for r in after[g].roles)
        assert after["alpha"].notes == ()


def test_a_forecast_model_that_raises_leaves_a_reactive_decision():
    from tests.conftest import make_config

    cfg = make_config()
    engine = Engine(cfg)
    models = engine._forecaster("g1").models

    def boom(*a, **k):
        raise RuntimeError("model exploded")

    from scaler.observation import Observation

    obs = {"request_rate": 40.0, "isl_mean": 2000.0, "osl_mean": 200.0, "kv_block_size": 16.0,
           "prefill_tokens_per_s": 80_000.0, "decode_tokens_per_s": 8000.0}
    for i in range(5):
        engine.observe(Observation("g1", 100.0 + 15 * i, obs, {}))
    models["prefill_tokens_per_s"].predict = boom
    d = engine.decide(180.0, "g1")
    assert any("forecast failed (RuntimeError: model exploded)" in n for n in d.notes)
    assert d.forecast is None and d.replicas["prefill"] >= 2  # sized on the observed 80k tokens/s
    models["prefill_tokens_per_s"].update = boom
    engine.observe(Observation("g1", 200.0, obs, {}))  # the observation is not lost
    assert engine.latest("g1").at == 200.0


def test_a_failing_decision_keeps_the_last_one_and_other_graphs_go_on(prom):
    loop, clock, store, metrics = make_loop(prom.url)
    ticks(loop, clock, 3)
    before = store.get("beta").replicas
    real = loop.engine.decide

    def flaky(now, graph=None):
        if graph == "beta":
            raise ZeroDivisionError("bug")
        return real(now, graph)

    loop.engine.decide = flaky
    decisions = loop.tick()
    assert decisions["beta"].replicas == before and "decision failed" in decisions["beta"].notes[-1]
    assert decisions["alpha"].at == clock.now()
    assert metrics.decide_errors.labels("beta")._value.get() == 1


def test_a_hung_loop_turns_unhealthy_and_recovers(prom):
    """A model or source that hangs blocks the loop: answers keep the last decisions, health says why."""
    from aiohttp import web  # noqa: F401  (the HTTP side port is aiohttp)

    from scaler.http_admin import start_http
    from tests.conftest import BackgroundLoop

    loop, clock, store, metrics = make_loop(prom.url)
    loop.tick()
    bg = BackgroundLoop()
    runner, port = bg.run(start_http(store, list(GRAPHS), "127.0.0.1", 0, metrics, health=loop.healthy))
    try:
        clock.advance(loop.engine.config.stuck_after + 1)  # no poll completed since
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert e.value.code == 503 and b"no decision-loop poll completed" in e.value.read()
        loop.tick()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    finally:
        bg.run(runner.cleanup())
        bg.close()


def test_config_reloader_keeps_the_old_config_on_an_invalid_file(tmp_path):
    path = tmp_path / "c.yaml"
    base = {"graphs": {"a": {"roles": {"p": {"kind": "prefill"}}}}}
    path.write_text(yaml.safe_dump(base))
    applied, counted = [], []
    from scaler.config import load_config

    r = ConfigReloader(path, load_config(path), applied.append, counted.append)
    assert r.check() is None  # unchanged file: nothing to do
    path.write_text(yaml.safe_dump({"graphs": {"a": {"roles": {"p": {"kind": "prefill", "max_replicas": 0}}}}}))
    assert r.check() is False and applied == [] and counted == ["invalid"]
    assert r.current.graphs["a"].roles["p"].max_replicas == 16
    base["graphs"]["b"] = {"roles": {"d": {"kind": "decode"}}}
    path.write_text(yaml.safe_dump(base))
    assert r.check() is True and list(applied[-1].graphs) == ["a", "b"] and counted[-1] == "applied"


@pytest.mark.slow  # a real serve, two reloads (its reloader looks every 2 s)
def test_serve_reloads_its_config_file_and_rejects_an_invalid_one(tmp_path, serve):
    path = example_config_file(tmp_path / "pdscaler.yaml")
    example = path.read_text()
    proc = serve(path, prometheus_url="http://127.0.0.1:1")
    channel = grpc.insecure_channel(proc.grpc_address)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ExternalScalerStub(channel)

        def spec(graph: str):
            ref = pb.ScaledObjectRef(name="so", namespace="dynamo", scalerMetadata={"graph": graph, "role": "prefill"})
            return stub.GetMetricSpec(ref, timeout=1)

        with pytest.raises(grpc.RpcError) as e:
            spec("second")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        data = yaml.safe_load(example)
        data["graphs"]["second"] = data["graphs"]["example"]
        since = proc.lines
        path.write_text(yaml.safe_dump(data))
        proc.wait_for_output(r"config reloaded \(file changed\): graphs example, second", 30, since=since)
        assert spec("second").metricSpecs[0].metricName == "pdscaler-second-prefill"
        since = proc.lines
        path.write_text(example.replace("max_replicas: 16", "max_replicas: -3", 1))  # invalid
        proc.wait_for_output(r"config reload \(file changed\) rejected", 30, since=since)
        metrics_url = proc.http_url + "/metrics"
        # The reloader counts the rejection just after logging it.
        wait_until(lambda: 'pdscaler_config_reloads_total{result="invalid"} 1.0' in
                   urllib.request.urlopen(metrics_url, timeout=5).read().decode(), 10, "the rejection counted")
        assert spec("second").metricSpecs  # the old (valid) config still runs
        metrics = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        assert 'pdscaler_config_reloads_total{result="invalid"} 1.0' in metrics
        assert 'pdscaler_config_reloads_total{result="applied"} 1.0' in metrics
    finally:
        channel.close()
        proc.stop()
    output = proc.output()
    assert "config reload (file changed) rejected" in output and "max_replicas" in output, output
