"""Config reloads that remove a role or a graph (issue "Never lower on missing data, bounded waits,
...", item 10): a StreamIsActive open for what is gone ends NOT_FOUND, cleanly; a graph gone exports
no series any more (its decision age would otherwise keep growing and fire the alerts on it)."""

from __future__ import annotations

import logging
import signal
import urllib.request

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scaler.engine import Engine
from scaler.http_admin import start_http
from scaler.metrics import AgeCollector, ScalerMetrics
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.server import start_server
from scaler.store import DecisionStore
from scaler.testbench.processes import wait_until
from tests.conftest import BackgroundLoop, example_config_file, make_config, metric_total
from tests.fake_prometheus import FakePrometheus


def two_graphs(**overrides):
    """Graph a (prefill, decode, warm) and graph b (prefill, decode)."""
    roles = {
        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 10},
        "decode": {"kind": "decode", "min_replicas": 2, "max_replicas": 8},
    }
    graphs = {"a": {"namespace": "ns", "roles": {**roles, "warm": {"kind": "warm", "min_replicas": 1, "max_replicas": 4}}},
              "b": {"namespace": "ns", "roles": roles}}
    return make_config(graphs=graphs, **overrides)


def without(config, graph: str, role: str | None = None):
    data = config.model_dump()
    if role is None:
        del data["graphs"][graph]
    else:
        del data["graphs"][graph]["roles"][role]
    return type(config).model_validate(data)


def ref(graph: str, role: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": graph, "role": role})


class Served:
    """A real gRPC server on 127.0.0.1 with its servicer at hand, reloaded as `pdscaler serve`'s apply
    does: the servicer's config swapped, then the decision process's next poll published (decisions
    of the configured graphs only)."""

    def __init__(self, config) -> None:
        self.store, self.bg = DecisionStore(), BackgroundLoop()
        self.store.publish(Engine(config).decide_all(0.0))
        self.running = self.bg.run(start_server(config, self.store, 0, "127.0.0.1"))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        self.stub = pb_grpc.ExternalScalerStub(self.channel)

    def reload(self, new, publish: bool = True) -> None:
        async def swap():
            self.running.scaler.config = new

        self.bg.run(swap())
        if publish:
            self.store.publish(Engine(new).decide_all(15.0))

    def close(self) -> None:
        self.channel.close()
        self.bg.run(self.running.stop(grace=0))
        self.bg.close()


@pytest.fixture
def served():
    made: list[Served] = []

    def start(config) -> Served:
        made.append(Served(config))
        return made[-1]

    yield start
    for s in made:
        s.close()


def no_traceback(records) -> None:
    bad = [r for r in records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("publish", [True, False], ids=["then-a-poll", "no-poll-yet"])
def test_stream_for_a_role_a_reload_removed_ends_not_found(served, caplog, publish):
    caplog.set_level(logging.DEBUG)
    cfg = two_graphs()
    s = served(cfg)
    stream = s.stub.StreamIsActive(ref("a", "warm"), timeout=10)
    assert next(stream).result is True  # warm floor 1
    s.reload(without(cfg, "a", "warm"), publish=publish)
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    assert "'warm'" in e.value.details() and "no longer configured" in e.value.details()
    no_traceback(caplog.records)
    # The others go on: a stream for a role that stays is untouched.
    assert s.stub.IsActive(ref("a", "prefill"), timeout=5).result is True


@pytest.mark.parametrize("publish", [True, False], ids=["then-a-poll", "no-poll-yet"])
def test_stream_for_a_graph_a_reload_removed_ends_not_found(served, caplog, publish):
    caplog.set_level(logging.DEBUG)
    cfg = two_graphs()
    s = served(cfg)
    stream = s.stub.StreamIsActive(ref("b", "decode"), timeout=10)
    kept = s.stub.StreamIsActive(ref("a", "decode"), timeout=10)
    assert next(stream).result is True and next(kept).result is True
    s.reload(without(cfg, "b"), publish=publish)
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    assert "'b'" in e.value.details() and "no longer configured" in e.value.details()
    no_traceback(caplog.records)
    kept.cancel()


@pytest.mark.slow  # a real serve and a reload
def test_serve_ends_the_stream_of_a_role_removed_by_sighup_with_not_found(tmp_path, serve):
    path = example_config_file(tmp_path / "pdscaler.yaml")
    proc = serve(path, prometheus_url="http://127.0.0.1:1")
    channel = grpc.insecure_channel(proc.grpc_address)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ExternalScalerStub(channel)
        meta = {"graph": "example", "role": "warm"}
        stream = stub.StreamIsActive(pb.ScaledObjectRef(name="so", namespace="dynamo", scalerMetadata=meta), timeout=60)
        assert next(stream).result is False  # the warm pool's floor is 0
        data = yaml.safe_load(path.read_text())
        del data["graphs"]["example"]["roles"]["warm"]
        since = proc.lines
        path.write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
        assert "role 'warm' of graph 'example' is no longer configured" in e.value.details()
        proc.wait_for_output(r"StreamIsActive for graph 'example' role 'warm' ended", 10, since=since)
        ref = pb.ScaledObjectRef(name="so", namespace="dynamo", scalerMetadata={"graph": "example", "role": "prefill"})
        assert stub.IsActive(ref, timeout=5).result is True  # the others are served on
    finally:
        channel.close()
        proc.stop()
    output = proc.output()
    assert "Traceback" not in output and "KeyError" not in output, output


def graphs_on(text: str) -> dict[str, set[str]]:
    """{series name: the graphs it has samples for} of a /metrics page."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if "graph" in s.labels:
                out.setdefault(s.name, set()).add(s.labels["graph"])
    return out


def with_graph(text: str, graph: str) -> list[str]:
    return sorted(name for name, graphs in graphs_on(text).items() if graph in graphs)


class FakeCluster:
    """A ClusterWatcher's read side: a reading and an ownership conflict per graph it was told of."""

    def __init__(self, graphs) -> None:
        from scaler.kube.ownership import Conflict

        self.readings = {g: type("Reading", (), {"at": 0.0})() for g in graphs}
        self.found = {g: (Conflict(role="decode", owner_kind="HorizontalPodAutoscaler", owner="other", detail="x"),) for g in graphs}

    def snapshot(self):
        return dict(self.readings)

    def conflicts(self):
        return dict(self.found)


def test_a_graph_a_reload_removed_has_no_series_on_metrics(served):
    """In one process as in serve: the servicer's config swapped, the decision collector's config
    swapped (the decision process's reload), /metrics scraped over loopback."""
    cfg = two_graphs()
    s = served(cfg)
    metrics = ScalerMetrics()
    metrics.registry.register(AgeCollector(s.store, lambda: 30.0))
    collector = metrics.watch(cfg, s.store, None, FakeCluster(cfg.graphs), lambda: 30.0, ages=False)
    for g in cfg.graphs:  # per-graph instruments of the decision loop
        metrics.fit_seconds.labels(g).observe(0.1)
        metrics.decide_errors.labels(g).inc()
        metrics.cluster_errors.labels(g).inc()
    runner, port = s.bg.run(start_http(s.store, list(cfg.graphs), "127.0.0.1", 0, metrics))
    try:
        def page() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        before = with_graph(page(), "b")
        for name in ("pdscaler_decision_age_seconds", "pdscaler_target_replicas", "pdscaler_graph_info",
                     "pdscaler_ownership_conflicts", "pdscaler_cluster_reading_age_seconds",
                     "pdscaler_model_fit_duration_seconds_count", "pdscaler_decide_errors_total"):
            assert name in before, before
        new = without(cfg, "b")
        s.reload(new)  # the serving side, then the decision process's next poll
        collector.config = new  # the decision process's side of the reload (scaler/worker.py)
        text = page()
        assert with_graph(text, "b") == []
        assert "pdscaler_decision_age_seconds" in with_graph(text, "a")
        assert "pdscaler_decide_errors_total" in with_graph(text, "a")
        # A poll that still carried b (sent before the decision process had reloaded) brings nothing back.
        s.store.publish(Engine(cfg).decide_all(30.0))
        assert with_graph(page(), "b") == []
    finally:
        s.bg.run(runner.cleanup())


@pytest.mark.slow  # a real serve and a reload
def test_serve_exports_nothing_of_a_graph_removed_by_sighup(tmp_path, serve):
    prom = FakePrometheus()
    path = example_config_file(tmp_path / "pdscaler.yaml",
                               edit=lambda d: {**d, "poll_interval": "1s",
                                               "graphs": {**d["graphs"], "second": d["graphs"]["example"]}})
    try:
        proc = serve(path, prometheus_url=prom.url)
        url = proc.http_url + "/metrics"

        def page() -> str:
            return urllib.request.urlopen(url, timeout=5).read().decode()

        # The ages (serving process) and the decision series (decision process, after its first poll).
        wait_until(lambda: {"pdscaler_decision_age_seconds", "pdscaler_target_replicas"} <= set(with_graph(page(), "second")),
                   30, "graph second's series", proc=proc)
        data = yaml.safe_load(path.read_text())
        del data["graphs"]["second"]
        since = proc.lines
        path.write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        # SIGHUP, or the reloader's own look at the file (every 2 s) if it came first.
        proc.wait_for_output(r"config reloaded \((SIGHUP|file changed)\): graphs example$", 20, since=since)
        assert not {"pdscaler_decision_age_seconds", "pdscaler_data_age_seconds"} & set(with_graph(page(), "second"))
        # The decision series go with the decision process's next poll (1 s).
        wait_until(lambda: not with_graph(page(), "second"), 10, "no series of graph second", proc=proc)
        text = page()
        assert {"pdscaler_decision_age_seconds", "pdscaler_target_replicas"} <= set(with_graph(text, "example"))
        polls = metric_total(url, "pdscaler_polls_total")
        wait_until(lambda: metric_total(url, "pdscaler_polls_total") >= polls + 2, 10, "two more polls", proc=proc)
        assert with_graph(page(), "second") == []  # nothing of second came back
    finally:
        prom.close()
