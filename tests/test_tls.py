"""TLS and mTLS on the gRPC port, as KEDA uses them (enableTLS plus caCert / tlsClientCert /
tlsClientKey from a TriggerAuthentication), with certificates made by openssl for the test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.server import DEFAULT_CLIENT_NAMES, TlsFiles, start_server
from scaler.store import DecisionStore
from scaler.testbench.processes import ProcessFailed, serve_process
from tests.conftest import BackgroundLoop, example_config_file, reactive_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str | None = None, client: bool = False, cn: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn or name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(("subjectAltName=" + san + "\n" if san else "")
                   + f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", san="DNS:localhost,IP:127.0.0.1")
    # KEDA's client certificate as the tls overlay issues it (CN keda-operator, DEFAULT_CLIENT_NAMES).
    _leaf(d, "keda", "ca", client=True, cn="keda-operator")
    _leaf(d, "intruder", "other-ca", client=True, cn="keda-operator")
    # Signed by the same CA, but for someone else: the CA alone does not make a client KEDA.
    _leaf(d, "neighbour", "ca", client=True, cn="payments-api")
    # The allowed name only as a DNS subjectAltName, the CN being something else.
    _leaf(d, "by-san", "ca", san="DNS:scaler-client.example", client=True, cn="not-a-listed-name")
    return d


def _serve(tls: TlsFiles):
    config = reactive_config()
    store = DecisionStore()
    from scaler.engine import Engine

    store.publish(Engine(config).decide_all(0))
    bg = BackgroundLoop()
    server = bg.run(start_server(config, store, 0, "127.0.0.1", tls))
    return bg, server, server.port


def _ask(port: int, creds: grpc.ChannelCredentials) -> float:
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": "g1", "role": "prefill"})
        req = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="pdscaler-g1-prefill")
        return pb_grpc.ExternalScalerStub(ch).GetMetrics(req, timeout=5).metricValues[0].metricValueFloat


def _read(d: Path, name: str) -> bytes:
    return (d / name).read_bytes()


def test_mtls_admits_keda_certificate_and_refuses_others(pki):
    bg, server, port = _serve(TlsFiles(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt")))
    try:
        keda = grpc.ssl_channel_credentials(_read(pki, "ca.crt"), _read(pki, "keda.key"), _read(pki, "keda.crt"))
        assert _ask(port, keda) >= 1  # the role's target, over mTLS
        for creds in (grpc.ssl_channel_credentials(_read(pki, "ca.crt")),  # no client certificate
                      grpc.ssl_channel_credentials(_read(pki, "ca.crt"), _read(pki, "intruder.key"),
                                                   _read(pki, "intruder.crt"))):  # signed by another CA
            with pytest.raises(grpc.RpcError) as e:
                _ask(port, creds)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # plaintext
            pb_grpc.ExternalScalerStub(ch).GetMetricSpec(pb.ScaledObjectRef(), timeout=2)
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def _client(pki: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(_read(pki, "ca.crt"), _read(pki, f"{name}.key"), _read(pki, f"{name}.crt"))


def test_mtls_refuses_a_certificate_of_the_same_ca_for_another_name(pki):
    """The CA signs more than KEDA's certificate (any Certificate its Issuer admits): with mTLS only
    the configured names (default: KEDA's client certificate as the tls overlay issues it) are served,
    on every service, health included."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert DEFAULT_CLIENT_NAMES == ("keda-operator",)
    bg, server, port = _serve(TlsFiles(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt")))
    try:
        assert _ask(port, _client(pki, "keda")) >= 1
        with pytest.raises(grpc.RpcError) as e:
            _ask(port, _client(pki, "neighbour"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "payments-api" in e.value.details() and "keda-operator" not in e.value.details()
        with grpc.secure_channel(f"localhost:{port}", _client(pki, "neighbour")) as ch:
            with pytest.raises(grpc.RpcError) as e:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": "g1", "role": "prefill"})
            with pytest.raises(grpc.RpcError) as e:  # a stream is refused before its first message
                next(iter(pb_grpc.ExternalScalerStub(ch).StreamIsActive(ref, timeout=5)))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with grpc.secure_channel(f"localhost:{port}", _client(pki, "keda")) as ch:
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            ref = pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": "g1", "role": "prefill"})
            assert next(iter(pb_grpc.ExternalScalerStub(ch).StreamIsActive(ref, timeout=5))).result is True
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_mtls_names_match_the_cn_or_a_dns_san(pki):
    tls = TlsFiles(str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt"),
                   client_names=("scaler-client.example", "payments-api"))
    bg, server, port = _serve(tls)
    try:
        assert _ask(port, _client(pki, "by-san")) >= 1  # DNS SAN
        assert _ask(port, _client(pki, "neighbour")) >= 1  # CN
        with pytest.raises(grpc.RpcError) as e:
            _ask(port, _client(pki, "keda"))  # keda-operator is not in this list
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_mtls_needs_client_names():
    with pytest.raises(ValueError, match="client name"):
        TlsFiles("s.crt", "s.key", "ca.crt", client_names=())


def test_serve_tls_client_name_flags():
    from scaler.cli import build_parser, tls_client_names

    base = ["serve", "--config", "c.yaml", "--tls-cert", "s.crt", "--tls-key", "s.key", "--tls-client-ca", "ca.crt"]
    assert tls_client_names(build_parser().parse_args(base)) == DEFAULT_CLIENT_NAMES
    args = build_parser().parse_args(base + ["--tls-client-name", "a,b", "--tls-client-name", " c "])
    assert tls_client_names(args) == ("a", "b", "c")


def test_serve_refuses_client_names_without_client_ca(tmp_path, pki):
    cfg = example_config_file(tmp_path / "c.yaml")
    with pytest.raises(ProcessFailed) as out:
        serve_process(cfg, args=["--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                                 "--tls-client-name", "x"]).start()
    assert out.value.returncode == 2 and "--tls-client-name needs --tls-client-ca" in out.value.output


def test_tls_without_client_ca_serves_any_client_over_tls(pki):
    bg, server, port = _serve(TlsFiles(str(pki / "server.crt"), str(pki / "server.key")))
    try:
        assert _ask(port, grpc.ssl_channel_credentials(_read(pki, "ca.crt"))) >= 1
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_serve_refuses_unreadable_tls_files(tmp_path):
    cfg = example_config_file(tmp_path / "c.yaml")
    with pytest.raises(ProcessFailed) as out:
        serve_process(cfg, args=["--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(tmp_path / "nope.key")]
                      ).start()
    assert out.value.returncode == 2 and "cannot read TLS file" in out.value.output and "nope.key" in out.value.output
    with pytest.raises(ProcessFailed) as half:
        serve_process(cfg, args=["--tls-cert", "x"]).start()
    assert half.value.returncode == 2 and "both --tls-cert and --tls-key" in half.value.output
