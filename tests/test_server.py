"""The KEDA external-scaler contract over a real gRPC server on loopback."""

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scaler.engine import Engine
from scaler.observation import Observation
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.store import DecisionStore
from tests.conftest import example_config_file, grpc_server, reactive_config
from tests.fake_prometheus import FakePrometheus


@pytest.fixture
def config():
    return reactive_config()


def ref(graph="g1", role="prefill", namespace="ns", **extra):
    md = {"scalerAddress": "pdscaler:6000", **({"graph": graph} if graph else {}), **({"role": role} if role else {}), **extra}
    return pb.ScaledObjectRef(name="so", namespace=namespace, scalerMetadata=md)


@pytest.fixture
def served(config):
    engine = Engine(config)
    store = DecisionStore()
    engine.observe(Observation("g1", 0, {"request_rate": 100, "isl_mean": 2000, "osl_mean": 100, "kv_block_size": 16}, {}))
    decisions = engine.decide_all(1)
    store.publish(decisions)
    with grpc_server(config, store) as (channel, port):
        yield pb_grpc.ExternalScalerStub(channel), store, engine, channel


def test_metric_spec_is_one_spec_with_target_one_and_unique_name(served):
    stub, *_ = served
    a = stub.GetMetricSpec(ref(role="prefill"))
    b = stub.GetMetricSpec(ref(role="decode"))
    assert len(a.metricSpecs) == 1 and len(b.metricSpecs) == 1
    assert a.metricSpecs[0].targetSizeFloat == 1.0 and a.metricSpecs[0].targetSize == 1
    assert a.metricSpecs[0].metricName != b.metricSpecs[0].metricName


def test_get_metrics_returns_the_role_target(served):
    stub, store, *_ = served
    name = stub.GetMetricSpec(ref()).metricSpecs[0].metricName
    r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName=name))
    assert len(r.metricValues) == 1
    want = store.get("g1").roles["prefill"].replicas
    assert want > 2  # 100 req/s x 2000 tokens needs several replicas: not a default
    assert r.metricValues[0].metricValueFloat == float(want) and r.metricValues[0].metricValue == want
    r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(role="decode"), metricName="s1-whatever"))
    assert r.metricValues[0].metricValueFloat == float(store.get("g1").roles["decode"].replicas)


def test_answers_follow_published_decisions(served):
    stub, store, engine, _ = served
    engine.observe(Observation("g1", 2, {"request_rate": 10, "isl_mean": 2000},
                               {"prefill": {"prefill_queued_tokens": 0.0}}))
    store.publish(engine.decide_all(3))
    r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="x"))
    assert r.metricValues[0].metricValueFloat == 1.0


def test_is_active_when_target_positive(served, config):
    stub, store, engine, _ = served
    assert stub.IsActive(ref()).result is True
    zero = config.graphs["g1"].roles["prefill"].model_copy(update={"min_replicas": 0})
    cfg0 = config.model_copy(update={"graphs": {"g1": config.graphs["g1"].model_copy(update={"roles": {"prefill": zero}})}})
    store0 = DecisionStore()
    e0 = Engine(cfg0)
    e0.observe(Observation("g1", 0, {"request_rate": 0.0}, {}))
    store0.publish(e0.decide_all(1))
    with grpc_server(cfg0, store0) as (ch, _):
        assert pb_grpc.ExternalScalerStub(ch).IsActive(ref()).result is False


def test_namespace_defaults_to_the_scaledobject_and_can_be_given(served):
    stub, *_ = served
    assert stub.IsActive(ref(namespace="ns")).result
    md = {"graph": "g1", "role": "prefill", "namespace": "ns"}
    assert stub.IsActive(pb.ScaledObjectRef(name="so", namespace="other", scalerMetadata=md)).result
    with pytest.raises(grpc.RpcError) as e:
        stub.IsActive(ref(namespace="other"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "namespace 'ns'" in e.value.details()


@pytest.mark.parametrize(
    "r, code, words",
    [
        (ref(graph=None), grpc.StatusCode.INVALID_ARGUMENT, ["'graph'", "required", "g1"]),
        (ref(role=None), grpc.StatusCode.INVALID_ARGUMENT, ["'role'", "required", "decode, prefill"]),
        (ref(role="warm"), grpc.StatusCode.INVALID_ARGUMENT, ["'role'", "'warm'", "decode, prefill"]),
        (ref(role=""), grpc.StatusCode.INVALID_ARGUMENT, ["'role'"]),
        (ref(graph="nope"), grpc.StatusCode.NOT_FOUND, ["'nope'", "g1"]),
        (ref(graph="x" * 10_000), grpc.StatusCode.INVALID_ARGUMENT, ["'graph'"]),
        (ref(graph="ü" * 30), grpc.StatusCode.NOT_FOUND, ["ü"]),
    ],
)
def test_bad_metadata_errors(served, r, code, words):
    stub, *_ = served
    for call in (stub.IsActive, stub.GetMetricSpec, lambda x: stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=x))):
        with pytest.raises(grpc.RpcError) as e:
            call(r)
        assert e.value.code() == code
        for w in words:
            assert w in e.value.details(), e.value.details()
        assert len(e.value.details()) < 400


def test_stream_is_active_sends_current_then_changes(config):
    roles = {"prefill": config.graphs["g1"].roles["prefill"].model_copy(update={"min_replicas": 0})}
    cfg0 = config.model_copy(update={"graphs": {"g1": config.graphs["g1"].model_copy(update={"roles": roles})}})
    engine, store = Engine(cfg0), DecisionStore()
    engine.observe(Observation("g1", 0, {"request_rate": 0.0}, {}))
    store.publish(engine.decide_all(1))
    with grpc_server(cfg0, store) as (channel, _):
        stream = pb_grpc.ExternalScalerStub(channel).StreamIsActive(ref())
        assert next(stream).result is False  # the current state, at once
        engine.observe(Observation("g1", 2, {"request_rate": 50.0, "isl_mean": 1000.0}, {}))
        threading.Timer(0.2, lambda: store.publish(engine.decide_all(3))).start()
        assert next(stream).result is True  # pushed when the decision changes
        stream.cancel()


def test_stream_metric_spec_sends_the_spec_at_once(served):
    stub, *_ = served
    stream = stub.StreamMetricSpec(ref())
    msg = next(stream)
    assert msg.metricSpecs[0].targetSizeFloat == 1.0
    assert msg == stub.GetMetricSpec(ref())
    stream.cancel()


def test_health_service(served):
    *_, channel = served
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", "externalscaler.ExternalScaler"):
        assert h.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING


def test_serve_answers_at_once_with_the_floor_when_prometheus_hangs_or_is_unreachable(tmp_path, serve):
    """`pdscaler serve` with the example config: floor answers, not waits, while its decision loop is
    blocked on a Prometheus query that hangs, and once Prometheus is unreachable."""
    prom = FakePrometheus()
    prom.mode = "hang"
    cfg = example_config_file(tmp_path / "c.yaml",
                              edit=lambda d: {**d, "source": {**d["source"], "timeout": "600s"}})  # blocked for long
    try:
        proc = serve(cfg, prometheus_url=prom.url)
        channel = grpc.insecure_channel(proc.grpc_address)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ExternalScalerStub(channel)
        r = ref(graph="example", role="decode", namespace="dynamo")
        assert prom.held.wait(60), "the decision loop never queried Prometheus"
        for _ in range(20):
            out = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r, metricName="x"), timeout=10)
            assert out.metricValues[0].metricValueFloat == 1.0  # the example's floor
        # Every answer came while the loop's query was held open (the source waits up to 600 s for it):
        # none of them waited on the decision loop.
        assert prom.holding >= 1 and not prom.released.is_set()
        since = proc.lines
        prom.close()  # the held query fails, and Prometheus is gone from now on
        proc.wait_for_output("prometheus unreachable", 60, since=since)
        for _ in range(5):
            out = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r, metricName="x"), timeout=10)
            assert out.metricValues[0].metricValueFloat == 1.0
        channel.close()
        proc.stop()
    finally:
        prom.close()
    output = proc.output()
    assert "prometheus unreachable" in output, output  # the reason says why it holds


def _fleet(n: int, shards: int | None = None, index: int = 0, extra: int = 0):
    from scaler.config import ScalerConfig

    roles = {"prefill": {"kind": "prefill", "min_replicas": 1}, "decode": {"kind": "decode", "min_replicas": 1}}
    data = {"source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
            "graphs": {f"graph-{i}": {"namespace": "ns", "roles": roles} for i in range(n + extra)}}
    if shards is not None:
        data["sharding"] = {"shards": shards, "index": index}
    return ScalerConfig.model_validate(data)


def test_two_shards_each_answer_their_own_graphs_and_name_the_other_shard():
    """sharding {shards: 2, index: 0|1} over loopback: every graph is answered by exactly one shard;
    the other says NOT_FOUND naming the shard that serves it; together they serve the whole fleet."""
    from contextlib import ExitStack

    full = _fleet(12)
    shards = [_fleet(12, 2, i) for i in (0, 1)]
    owned = [set(c.graphs) for c in shards]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == set(full.graphs)
    with ExitStack() as stack:
        stubs = []
        for c in shards:
            store = DecisionStore()
            store.publish(Engine(c).decide_all(1))
            channel, _ = stack.enter_context(grpc_server(c, store))
            stubs.append(pb_grpc.ExternalScalerStub(channel))
        for graph in full.graphs:
            mine = 0 if graph in owned[0] else 1
            r = stubs[mine].GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(graph=graph), metricName="m"))
            assert r.metricValues[0].metricValue == 1  # the floor: no data yet
            assert stubs[mine].IsActive(ref(graph=graph, role="decode")).result is True
            with pytest.raises(grpc.RpcError) as e:
                stubs[1 - mine].GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(graph=graph), metricName="m"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert f"served by shard {mine} of 2" in e.value.details() and f"(shard {1 - mine})" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # not configured anywhere: the usual NOT_FOUND
            stubs[0].GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(graph="nope"), metricName="m"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "not configured" in e.value.details()


def test_shard_assignment_is_stable_as_the_fleet_grows():
    """A graph's shard depends on its namespace and name only: adding graphs moves none of the others."""
    before = [set(_fleet(12, 3, i).graphs) for i in range(3)]
    after = [set(_fleet(12, 3, i, extra=8).graphs) for i in range(3)]
    for b, a in zip(before, after):
        assert b <= a
    assert sum(len(a) for a in after) == 20


def test_bad_sharding_is_one_clear_config_error():
    from scaler.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="sharding.index 2 is not below sharding.shards 2"):
        parse_config("sharding: {shards: 2, index: 2}\ngraphs: {g1: {roles: {p: {kind: prefill}}}}\n")
    with pytest.raises(ConfigError, match="owns none of the 1 configured graphs"):
        parse_config("sharding: {shards: 40, index: %d}\ngraphs: {g1: {roles: {p: {kind: prefill}}}}\n"
                     % next(i for i in range(40) if i != _shard_of_g1()))


def _shard_of_g1() -> int:
    from scaler.config import ShardingConfig

    return ShardingConfig(shards=40, index=0).shard_of("g1")
