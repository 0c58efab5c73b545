"""The committed gRPC stubs match proto/externalscaler.proto, and the proto matches KEDA's contract."""

from pathlib import Path

from google.protobuf import descriptor_pb2

from scaler.rpc import externalscaler_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def _compile(tmp_path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    rc = protoc.main(
        ["protoc", f"-Iscaler/rpc={ROOT / 'proto'}", f"--descriptor_set_out={out}", "scaler/rpc/externalscaler.proto"]
    )
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def _strip_json_names(msgs) -> None:
    for m in msgs:
        for f in m.field:
            f.ClearField("json_name")
        _strip_json_names(m.nested_type)


def test_committed_stubs_are_not_stale(tmp_path):
    fresh = _compile(tmp_path).file[0]
    _strip_json_names(fresh.message_type)  # the Python generator drops json_name; nothing else differs
    committed = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh, "run `make proto` to regenerate scaler/rpc from proto/externalscaler.proto"


def test_field_numbers_match_keda_contract():
    expected = {
        "ScaledObjectRef": {"name": 1, "namespace": 2, "scalerMetadata": 3},
        "IsActiveResponse": {"result": 1},
        "GetMetricSpecResponse": {"metricSpecs": 1},
        "MetricSpec": {"metricName": 1, "targetSize": 2, "targetSizeFloat": 3},
        "GetMetricsRequest": {"scaledObjectRef": 1, "metricName": 2},
        "GetMetricsResponse": {"metricValues": 1},
        "MetricValue": {"metricName": 1, "metricValue": 2, "metricValueFloat": 3},
    }
    assert pb.DESCRIPTOR.package == "externalscaler"
    for msg, fields in expected.items():
        d = pb.DESCRIPTOR.message_types_by_name[msg]
        assert {f.name: f.number for f in d.fields} == fields, msg
    double = descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE
    assert pb.MetricSpec.DESCRIPTOR.fields_by_name["targetSizeFloat"].type == double
    assert pb.MetricValue.DESCRIPTOR.fields_by_name["metricValueFloat"].type == double
    svc = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert {m.name for m in svc.methods} == {
        "IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics", "StreamMetricSpec"
    }
