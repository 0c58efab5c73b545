"""Fuzzing the KEDA external-scaler gRPC API over a real server on loopback (hypothesis).

Every generated ScaledObjectRef (random names and namespaces; trigger metadata with arbitrary
unicode keys and values, empty strings, huge values, graphs and roles that exist or not, extra keys)
is sent to every RPC, and the answer is checked against an oracle written from the contract in
scaler/server.py: a valid response equal to the published target, or INVALID_ARGUMENT naming the bad
key, or NOT_FOUND - never UNKNOWN or INTERNAL - with a bounded message that never echoes more than
a short prefix of a long value. Malformed protobuf bytes (random, truncated, other message types)
sent through a generic channel get gRPC's own deserialization-failure answer, and the server keeps
answering: the health service and a valid request succeed after every example.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scaler.engine import Engine
from scaler.observation import Observation
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.server import MAX_VALUE_LEN, SERVICE_NAME, metric_name
from scaler.store import DecisionStore
from tests.conftest import grpc_server, make_config

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default maximum received message size (the server keeps it)
# No error message is longer than this, whatever the request: a value is shown as the repr() of at
# most 64 characters (scaler/server.py _show), and repr() writes an unprintable one as up to 10
# ("\U00018d09"), so one shown value takes at most ~640 characters of a message.
MAX_DETAILS = 1024
ECHO = 64  # no error message repeats more than this many characters of a value it was sent
TIMEOUT = 10.0


def fuzz_config():
    """Two graphs: g1 in namespace ns (prefill, decode) and g-2 in any namespace (decode with floor 0)."""
    return make_config(forecast={"enabled": False}, graphs={
        "g1": {"namespace": "ns", "roles": {
            "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 10},
            "decode": {"kind": "decode", "min_replicas": 2, "max_replicas": 8},
        }},
        "g-2": {"roles": {"decode": {"kind": "decode", "min_replicas": 0, "max_replicas": 4}}},
    })


@pytest.fixture(scope="module")
def served():
    config = fuzz_config()
    engine, store = Engine(config), DecisionStore()
    demand = {"request_rate": 100, "isl_mean": 2000, "osl_mean": 100, "kv_block_size": 16}
    engine.observe(Observation("g1", 0, demand, {}))
    engine.observe(Observation("g-2", 0, {"request_rate": 0.0}, {}))
    store.publish(engine.decide_all(1))
    assert store.get("g1").roles["prefill"].replicas > 2 and store.get("g-2").roles["decode"].replicas == 0
    with grpc_server(config, store) as (channel, _port):
        yield config, store, channel


# --- what the server must answer ------------------------------------------------------------------


class Expected:
    """The oracle's answer for one ScaledObjectRef: replicas, or an error code and the words it must say."""

    def __init__(self, replicas=None, code=None, words=(), graph=None, role=None):
        self.replicas, self.code, self.words, self.graph, self.role = replicas, code, words, graph, role


def expect(config, store, ref: pb.ScaledObjectRef) -> Expected:
    """What resolve() must make of `ref`, written from the contract rather than from the code."""
    if ref.ByteSize() > MAX_MESSAGE - 64:
        return Expected(code=grpc.StatusCode.RESOURCE_EXHAUSTED)  # gRPC's own limit, before any handler
    md = dict(ref.scalerMetadata)
    for key in ("graph", "role", "namespace"):  # TriggerMetadata's field order: the first bad key is named
        if key not in md:
            if key != "namespace":
                return Expected(code=grpc.StatusCode.INVALID_ARGUMENT, words=(f"'{key}'", "required"))
        elif not 1 <= len(md[key]) <= MAX_VALUE_LEN:
            return Expected(code=grpc.StatusCode.INVALID_ARGUMENT, words=(f"'{key}'",))
    gcfg = config.graphs.get(md["graph"])
    if gcfg is None:
        return Expected(code=grpc.StatusCode.NOT_FOUND, words=("not configured", "g-2, g1"))
    namespace = md.get("namespace") or ref.namespace
    if gcfg.namespace and namespace and namespace != gcfg.namespace:
        return Expected(code=grpc.StatusCode.NOT_FOUND, words=(f"namespace {gcfg.namespace!r}",))
    if md["role"] not in gcfg.roles:
        return Expected(code=grpc.StatusCode.INVALID_ARGUMENT,
                        words=("'role'", "allowed values: " + ", ".join(sorted(gcfg.roles))))
    return Expected(replicas=store.get(md["graph"]).roles[md["role"]].replicas, graph=md["graph"], role=md["role"])


def long_values(ref: pb.ScaledObjectRef) -> list[str]:
    values = [ref.name, ref.namespace, *ref.scalerMetadata.keys(), *ref.scalerMetadata.values()]
    return [v for v in values if len(v) > ECHO]


def check_error(e: grpc.RpcError, want: Expected, ref: pb.ScaledObjectRef) -> None:
    code, details = e.code(), e.details() or ""
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), details
    assert code == want.code, (code, details, want.code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return
    for w in want.words:
        assert w in details, (w, details)
    assert len(details) <= MAX_DETAILS, len(details)
    for v in long_values(ref):
        assert v[:ECHO + 1] not in details, "a long value is echoed in the error message"


def call_all(stub: pb_grpc.ExternalScalerStub, ref: pb.ScaledObjectRef, metric: str, want: Expected) -> None:
    """Every RPC on `ref`: each answers as `want` says."""
    unary = [
        ("IsActive", lambda: stub.IsActive(ref, timeout=TIMEOUT)),
        ("GetMetricSpec", lambda: stub.GetMetricSpec(ref, timeout=TIMEOUT)),
        ("GetMetrics", lambda: stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric),
                                                timeout=TIMEOUT)),
    ]
    for name, call in unary:
        try:
            r = call()
        except grpc.RpcError as e:
            check_error(e, want, ref)
            continue
        assert want.code is None, (name, "answered", r, "but expected", want.code)
        if name == "IsActive":
            assert r.result is (want.replicas > 0)
        elif name == "GetMetricSpec":
            assert len(r.metricSpecs) == 1 and r.metricSpecs[0].targetSizeFloat == 1.0
            assert r.metricSpecs[0].metricName == metric_name(want.graph, want.role)
        else:  # whatever metricName was asked, the value is the role's target
            assert len(r.metricValues) == 1
            assert r.metricValues[0].metricValueFloat == float(want.replicas) == r.metricValues[0].metricValue
            assert r.metricValues[0].metricName == metric_name(want.graph, want.role)
    for name in ("StreamIsActive", "StreamMetricSpec"):  # opened, first answer read, closed
        stream = getattr(stub, name)(ref, timeout=TIMEOUT)
        try:
            first = next(stream)
        except grpc.RpcError as e:
            check_error(e, want, ref)
            continue
        finally:
            stream.cancel()
        assert want.code is None, (name, "answered", first, "but expected", want.code)
        if name == "StreamIsActive":
            assert first.result is (want.replicas > 0)
        else:
            assert first.metricSpecs[0].metricName == metric_name(want.graph, want.role)


def assert_healthy(config, store, channel) -> None:
    """The health service says SERVING and a valid request gets the published target."""
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        assert h.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.ExternalScalerStub(channel)
    ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": "g1", "role": "prefill"})
    r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="s0-pdscaler"), timeout=TIMEOUT)
    assert r.metricValues[0].metricValue == store.get("g1").roles["prefill"].replicas


# --- generated requests ---------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=40)  # any unicode protobuf can carry (no surrogates)


@st.composite
def huge(draw) -> str:
    """A long value: a unicode unit repeated up to about `size` UTF-8 bytes (up to 1 MB)."""
    unit = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=4))
    size = draw(st.sampled_from([MAX_VALUE_LEN + 1, 1000, 70_000, 1_000_000]))
    return unit * max(1, size // len(unit.encode()))


value = st.one_of(text, st.just(""), huge())
extra_key = st.one_of(text, st.sampled_from([
    "scalerAddress", "Graph", "graph ", "__class__", "__dict__", "model_config", "model_fields",
    "__pydantic_extra__", "_private", "", "metricName",
]))


def field(good: list[str], odd: list[str]):
    """A metadata value: mostly one that exists, else absent (None), a near miss, or anything."""
    return st.sampled_from(["good"] * 4 + ["absent", "odd", "odd", "any"]).flatmap(lambda kind: {
        "good": st.sampled_from(good), "absent": st.none(), "odd": st.sampled_from(odd), "any": value}[kind])


@st.composite
def scaled_object_refs(draw) -> pb.ScaledObjectRef:
    md = draw(st.dictionaries(extra_key, value, max_size=3))
    for key, values in (
        ("graph", field(["g1", "g-2"], ["G1", "g1 ", "missing", "ü" * 30, "g" * 254])),
        ("role", field(["prefill", "decode"], ["warm", "Prefill", "prefill\x00", "r" * 253])),
        ("namespace", st.one_of(st.none(), field(["ns"], ["other", "NS", "n" * 254]))),
    ):
        v = draw(values)  # None: the key is absent
        if v is not None:
            md[key] = v
        else:
            md.pop(key, None)
    name = draw(st.one_of(st.just("so"), text, huge()))
    namespace = draw(st.one_of(st.sampled_from(["ns", "other", ""]), text, huge()))
    return pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=md)


# --- tests ---------------------------------------------------------------------------------------


@FUZZ
@given(ref=scaled_object_refs(), metric=st.one_of(st.just(""), text, st.sampled_from(["s0-pdscaler-g1-prefill"])))
def test_every_rpc_answers_by_the_contract(served, ref, metric):
    config, store, channel = served
    want = expect(config, store, ref)
    event((want.code.name if want.code else 'OK') + ' ' + ''.join(want.words[:1]))
    call_all(pb_grpc.ExternalScalerStub(channel), ref, metric, want)
    assert_healthy(config, store, channel)


@pytest.mark.parametrize("md, ns, code, key", [
    ({"graph": "x" * 1_000_000, "role": "prefill"}, "ns", grpc.StatusCode.INVALID_ARGUMENT, "'graph'"),
    ({"graph": "g1", "role": "ß" * 1_000_000}, "ns", grpc.StatusCode.INVALID_ARGUMENT, "'role'"),
    ({"graph": "g1", "role": "prefill", "namespace": "n" * 254}, "ns", grpc.StatusCode.INVALID_ARGUMENT, "'namespace'"),
    ({"graph": "g1", "role": "prefill", "namespace": ""}, "ns", grpc.StatusCode.INVALID_ARGUMENT, "'namespace'"),
    ({"graph": "g1", "role": "prefill"}, "😀" * 100_000, grpc.StatusCode.NOT_FOUND, "namespace 'ns'"),
    ({"graph": "🚀" * 253, "role": "prefill"}, "ns", grpc.StatusCode.NOT_FOUND, "not configured"),
    ({"graph": "g1", "role": "r" * 253}, "ns", grpc.StatusCode.INVALID_ARGUMENT, "'role'"),
    ({"graph": "g-2", "role": "prefill"}, "anywhere", grpc.StatusCode.INVALID_ARGUMENT, "allowed values: decode"),
])
def test_huge_and_unicode_values_are_named_not_echoed(served, md, ns, code, key):
    config, store, channel = served
    ref = pb.ScaledObjectRef(name="so", namespace=ns, scalerMetadata=md)
    want = expect(config, store, ref)
    assert want.code == code and key in want.words  # the oracle agrees with the hand-written case
    call_all(pb_grpc.ExternalScalerStub(channel), ref, "m", want)
    assert_healthy(config, store, channel)


def test_a_message_over_the_size_limit_is_refused_by_grpc_and_the_server_lives(served):
    config, store, channel = served
    ref = pb.ScaledObjectRef(name="so", namespace="ns",
                             scalerMetadata={"graph": "g1", "role": "prefill", "pad": "p" * (MAX_MESSAGE + 10)})
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.ExternalScalerStub(channel).IsActive(ref, timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_healthy(config, store, channel)


# --- malformed protobuf ---------------------------------------------------------------------------

METHODS = {  # method -> (request type, streaming answer, answer type)
    "IsActive": (pb.ScaledObjectRef, False, pb.IsActiveResponse),
    "GetMetricSpec": (pb.ScaledObjectRef, False, pb.GetMetricSpecResponse),
    "GetMetrics": (pb.GetMetricsRequest, False, pb.GetMetricsResponse),
    "StreamIsActive": (pb.ScaledObjectRef, True, pb.IsActiveResponse),
    "StreamMetricSpec": (pb.ScaledObjectRef, True, pb.GetMetricSpecResponse),
}

# grpc.aio answers a request its deserializer cannot parse with UNKNOWN ("Unexpected <class
# 'google.protobuf.message.DecodeError'>: Error parsing message ..."); the synchronous server and other
# languages' servers say INTERNAL. Either way the handler never runs and the server carries on.
DESERIALIZATION_FAILURE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

valid_refs = st.builds(
    lambda g, r, ns: pb.ScaledObjectRef(name="so", namespace=ns, scalerMetadata={"graph": g, "role": r}),
    st.sampled_from(["g1", "g1", "g-2", "nope"]), st.sampled_from(["prefill", "decode", "decode", "x"]),
    st.sampled_from(["ns", ""]))


@st.composite
def malformed(draw) -> bytes:
    """Bytes that may or may not parse: random, truncated or corrupted valid messages, other types."""
    ref = draw(valid_refs)
    valid = draw(st.sampled_from([ref.SerializeToString(),
                                  pb.GetMetricsRequest(scaledObjectRef=ref, metricName="m").SerializeToString()]))
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "other-type", "appended"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return valid[:draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "flipped":
        i = draw(st.integers(0, len(valid) - 1))
        return valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1:]
    if kind == "other-type":
        return draw(st.sampled_from([
            pb.GetMetricsResponse(metricValues=[pb.MetricValue(metricName="x", metricValue=3)]).SerializeToString(),
            pb.IsActiveResponse(result=True).SerializeToString(),
            pb.MetricSpec(metricName="m", targetSize=-1, targetSizeFloat=1.5).SerializeToString(),
            health_pb2.HealthCheckRequest(service="externalscaler.ExternalScaler").SerializeToString(),
            b"\x08\x96\x01",  # field 1 as a varint where a string or message is expected
            b"\x1a\x05\x0a\x03\xff\xfe\xfd",  # a map entry whose key is not UTF-8
            b"\x12\x02\xc3\x28",  # a namespace / metricName that is not UTF-8
        ]))
    return valid + draw(st.binary(min_size=1, max_size=20))


def raw(kind, path: str):
    """A generic callable on `path` that sends and returns bytes as they are."""
    return kind(path, request_serializer=None, response_deserializer=None)


def parse(request_type, data: bytes):
    try:
        return request_type.FromString(data)
    except DecodeError:
        return None


@FUZZ
@given(data=malformed(), method=st.sampled_from(sorted(METHODS)))
def test_malformed_protobuf_gets_grpcs_answer_and_the_server_lives(served, data, method):
    config, store, channel = served
    request_type, streaming, answer_type = METHODS[method]
    path = f"/{SERVICE_NAME}/{method}"
    parsed = parse(request_type, data)
    ref = None if parsed is None else parsed.scaledObjectRef if request_type is pb.GetMetricsRequest else parsed
    want = None if ref is None else expect(config, store, ref)
    event("unparseable" if want is None else want.code.name if want.code else "OK")
    try:
        if streaming:
            stream = raw(channel.unary_stream, path)(data, timeout=TIMEOUT)
            try:
                answer = next(stream)
            finally:
                stream.cancel()
        else:
            answer = raw(channel.unary_unary, path)(data, timeout=TIMEOUT)
    except grpc.RpcError as e:
        if want is None:  # the bytes do not parse: gRPC's deserialization failure, bounded
            assert e.code() in DESERIALIZATION_FAILURE, (e.code(), e.details())
            assert len(e.details() or "") <= MAX_DETAILS
        else:  # they parse: answered like the message they parse to
            check_error(e, want, ref)
    else:
        assert want is not None and want.code is None, (data, answer)
        answer = answer_type.FromString(answer)  # the answer to the message the bytes parse to
        if answer_type is pb.IsActiveResponse:
            assert answer.result is (want.replicas > 0)
        elif answer_type is pb.GetMetricsResponse:
            assert [v.metricValue for v in answer.metricValues] == [want.replicas]
        else:
            assert [m.metricName for m in answer.metricSpecs] == [metric_name(want.graph, want.role)]
    assert_healthy(config, store, channel)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(service=st.sampled_from([SERVICE_NAME, "externalscaler.externalscaler", "grpc.health.v1.Health", "x.Y"]),
       method=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), min_size=1,
                      max_size=30),
       data=st.binary(max_size=50))
def test_unknown_methods_are_unimplemented(served, service, method, data):
    config, store, channel = served
    known = set(METHODS) if service == SERVICE_NAME else {"Check", "Watch"} if "health" in service else set()
    if method in known:
        return
    with pytest.raises(grpc.RpcError) as e:
        raw(channel.unary_unary, f"/{service}/{method}")(data, timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, (e.value.code(), e.value.details())
    assert_healthy(config, store, channel)
