"""The scaler's own metrics: decisions rendered at scrape time, loop and gRPC instruments, /metrics."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scaler.clock import ManualClock
from scaler.engine import Engine
from scaler.http_admin import start_http
from scaler.loop import DecisionLoop
from scaler.metrics import ScalerMetrics
from scaler.observation import Observation
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.server import start_server
from scaler.store import DecisionStore
from tests.conftest import BackgroundLoop, make_config

SIGNALS = {"request_rate": 40.0, "isl_mean": 2000.0, "osl_mean": 200.0, "kv_block_size": 16.0,
           "prefill_tokens_per_s": 80000.0, "decode_tokens_per_s": 8000.0}


class ListSource:
    """Observations of graph g1 at the clock's time; `fail` makes collect raise."""

    def __init__(self, clock) -> None:
        self.clock, self.fail = clock, False

    def collect(self, now):
        if self.fail:
            raise TimeoutError("prometheus did not answer")
        return [Observation("g1", now, SIGNALS, {"decode": {"kv_active_blocks": 20000.0, "ready_workers": 2.0}})]

    def close(self):
        pass


def samples(metrics: ScalerMetrics) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(s: dict, name: str, **labels) -> list[float]:
    return [v for (n, ls), v in s.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())]


@pytest.fixture
def running():
    config = make_config(metrics={"detail": "full"})
    clock = ManualClock(1_000_000.0)
    engine, store, metrics = Engine(config), DecisionStore(), ScalerMetrics()
    source = ListSource(clock)
    loop = DecisionLoop(engine, source, store, clock, metrics=metrics)
    metrics.watch(config, store, engine, None, clock.now)
    for _ in range(12):  # three minutes of polls: forecasts exist
        loop.tick()
        clock.advance(15)
    return config, clock, engine, store, metrics, source, loop


def test_decisions_are_exported_with_their_rule_inputs_and_forecasts(running):
    config, clock, engine, store, metrics, source, loop = running
    s = samples(metrics)
    d = store.get("g1")
    for role, rd in d.roles.items():
        assert pick(s, "pdscaler_target_replicas", graph="g1", role=role) == [rd.replicas]
        assert pick(s, "pdscaler_decision_rule", graph="g1", role=role, rule=rd.reason.rule) == [1.0]
        assert pick(s, "pdscaler_min_replicas", graph="g1", role=role) == [config.graphs["g1"].roles[role].min_replicas]
    assert pick(s, "pdscaler_observed", graph="g1", role="", signal="request_rate") == [40.0]
    assert pick(s, "pdscaler_graph_info", graph="g1", mode="active") == [1.0]
    assert pick(s, "pdscaler_ready_replicas", graph="g1", role="decode") == [2.0]
    p90 = pick(s, "pdscaler_forecast", graph="g1", series="prefill_tokens_per_s", quantile="0.9", horizon="300")
    p50 = pick(s, "pdscaler_forecast", graph="g1", series="prefill_tokens_per_s", quantile="0.5", horizon="300")
    assert len(p90) == 1 and len(p50) == 1 and p90[0] >= p50[0] > 0
    assert pick(s, "pdscaler_decision_age_seconds", graph="g1") == [15.0]  # the clock moved on after the tick
    assert pick(s, "pdscaler_decision_figure", graph="g1", role="prefill", figure="reactive_replicas")
    assert pick(s, "pdscaler_polls_total") == [12.0] and pick(s, "pdscaler_source_up") == [1.0]
    assert pick(s, "pdscaler_poll_duration_seconds_count") == [12.0]


def test_source_failure_is_counted_and_held_roles_are_flagged(running):
    config, clock, engine, store, metrics, source, loop = running
    source.fail = True
    for _ in range(8):  # 120 s without data: stale after 90 s
        loop.tick()
        clock.advance(15)
    s = samples(metrics)
    assert pick(s, "pdscaler_source_errors_total", error="TimeoutError") == [8.0]
    assert pick(s, "pdscaler_source_up") == [0.0]
    assert pick(s, "pdscaler_decision_held", graph="g1", role="prefill") == [1.0]
    assert pick(s, "pdscaler_decision_rule", graph="g1", role="prefill", rule="stale-data") == [1.0]
    assert pick(s, "pdscaler_data_age_seconds", graph="g1")[0] > config.stale_after


def test_grpc_requests_and_http_metrics_page(running):
    config, clock, engine, store, metrics, source, loop = running
    bg = BackgroundLoop()
    server = bg.run(start_server(config, store, 0, "127.0.0.1", None, [metrics.interceptor()]))
    runner, http_port = bg.run(start_http(store, list(config.graphs), "127.0.0.1", 0, metrics))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.ExternalScalerStub(ch)
            ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": "g1", "role": "decode"})
            for _ in range(3):
                stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="pdscaler-g1-decode"), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.GetMetricSpec(pb.ScaledObjectRef(name="so", scalerMetadata={"graph": "nope", "role": "x"}), timeout=5)
        page = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5)
        assert page.headers["Content-Type"].startswith("text/plain")
        text = page.read().decode()
    finally:
        bg.run(server.stop(grace=0))
        bg.run(runner.cleanup())
        bg.close()
    s = {(n, tuple(sorted(ls.items()))): v for f in text_string_to_metric_families(text) for n, ls, v, *_ in f.samples}
    assert pick(s, "pdscaler_grpc_requests_total", method="GetMetrics", code="OK") == [3.0]
    assert pick(s, "pdscaler_grpc_requests_total", method="GetMetricSpec", code="NOT_FOUND") == [1.0]
    assert pick(s, "pdscaler_grpc_request_duration_seconds_count", method="GetMetrics") == [3.0]
    assert pick(s, "pdscaler_target_replicas", graph="g1", role="decode")


DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DETAILED = ("pdscaler_observed", "pdscaler_forecast", "pdscaler_decision_figure")


def dashboard_selectors() -> list[tuple[str, dict[str, str]]]:
    """(family, {label: regex}) of every selector the bundled dashboards put on the detailed families,
    with $graph = g1 and each value of $horizon; selectors on $warm_role (no warm role here) left out."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        exprs = re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', path.read_text())
        for expr in (json.loads(f'"{e}"') for e in exprs):
            for fam, body in re.findall(r"(pdscaler_observed|pdscaler_forecast|pdscaler_decision_figure)\{([^}]*)\}", expr):
                if "$warm_role" in body:
                    continue
                for horizon in ("60", "300", "600"):
                    matchers = {k: v.replace("$graph", "g1").replace("$horizon", horizon)
                                for k, _, v in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', body)}
                    out.append((fam, matchers))
    return out


def test_dashboard_detail_exports_what_the_dashboards_query_and_less(running):
    """metrics.detail "dashboard" (the default): every series a bundled dashboard selects from the
    detailed families is there with the same value as under "full", and the page is smaller."""
    config, clock, engine, store, metrics, source, loop = running
    default = make_config()
    assert default.metrics.detail == "dashboard"
    coarse = ScalerMetrics(parts=())
    coarse.watch(default, store, engine, None, clock.now)
    full, dash = samples(metrics), samples(coarse)
    selectors = dashboard_selectors()
    assert {fam for fam, _ in selectors} == set(DETAILED)  # the dashboards do query all three

    def matching(s: dict, fam: str, matchers: dict) -> dict:
        return {k: v for k, v in s.items() if k[0] == fam
                and all(re.fullmatch(rx, dict(k[1]).get(lbl, "")) for lbl, rx in matchers.items())}

    found = 0
    for fam, matchers in selectors:
        want = matching(full, fam, matchers)
        assert matching(dash, fam, matchers) == want, (fam, matchers)
        found += len(want)
    assert found > 0
    for fam in DETAILED:
        n_full, n_dash = (sum(1 for k in s if k[0] == fam) for s in (full, dash))
        assert 0 < n_dash < n_full, fam
    assert pick(dash, "pdscaler_observed", graph="g1", role="", signal="request_rate") == []
    assert pick(dash, "pdscaler_forecast", graph="g1", series="kv_tokens") == []
    assert pick(dash, "pdscaler_target_replicas", graph="g1", role="decode") == \
        pick(full, "pdscaler_target_replicas", graph="g1", role="decode")


def test_loop_stages_are_timed_per_poll(running):
    """pdscaler_stage_seconds: one observation per poll and stage; the CPU per stage accumulates, and
    forecasting (on by default) costs CPU."""
    config, clock, engine, store, metrics, source, loop = running
    s = samples(metrics)
    for stage in ("collect", "observe", "forecast", "decide", "publish"):
        assert pick(s, "pdscaler_stage_seconds_count", stage=stage) == [12.0], stage
        assert pick(s, "pdscaler_stage_cpu_seconds_total", stage=stage)[0] >= 0.0
    assert pick(s, "pdscaler_stage_seconds_count", stage="send") == [0.0]  # only in serve's decision process
    assert pick(s, "pdscaler_stage_cpu_seconds_total", stage="forecast")[0] > 0.0
    assert pick(s, "pdscaler_stage_cpu_seconds_total", stage="decide")[0] > 0.0


def test_decision_series_text_is_what_prometheus_client_would_write(running):
    """The decision series are written by scaler/metrics.py itself (speed); parsed, the page holds the
    same samples as prometheus_client's own rendering of the same families, odd label values included."""
    from prometheus_client import CollectorRegistry, generate_latest

    from scaler.metrics import AgeCollector, DecisionCollector, _Fam, render

    config, clock, engine, store, metrics, source, loop = running
    collectors = [DecisionCollector(config, store, engine, None, clock.now), AgeCollector(store, clock.now)]
    odd = _Fam("pdscaler_odd", 'help with \\ and\na newline', ["owner"])
    for v in ('a"quote', "back\\slash", "new\nline", "ünï", ""):
        odd.add_metric([v], 1.5)
    odd.add_metric(["inf"], float("inf"))

    class Odd:
        def collect(self):
            return [odd.family()]

    def parsed(text: bytes) -> list:
        return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                      for f in text_string_to_metric_families(text.decode()) for s in f.samples)

    for c, mine in [*((c, c.render()) for c in collectors), (Odd(), render([odd]))]:
        reference = CollectorRegistry()
        reference.register(c)
        assert parsed(mine) == parsed(generate_latest(reference))
    assert len(parsed(collectors[0].render())) > 20


def test_registry_sample_lookup_sees_the_decision_series(running):
    config, clock, engine, store, metrics, source, loop = running
    want = store.get("g1").roles["decode"].replicas
    assert metrics.registry.get_sample_value("pdscaler_target_replicas", {"graph": "g1", "role": "decode"}) == want
    assert metrics.registry.get_sample_value("pdscaler_polls_total") == 12.0
    assert metrics.registry.get_sample_value("pdscaler_target_replicas", {"graph": "nope", "role": "decode"}) is None
