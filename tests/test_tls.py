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
from scaler.server import TlsFiles, start_server
from scaler.store import DecisionStore
from tests.conftest import BackgroundLoop, reactive_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str | None = None, client: bool = False) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
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
    _leaf(d, "keda", "ca", client=True)
    _leaf(d, "intruder", "other-ca", client=True)
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


def test_tls_without_client_ca_serves_any_client_over_tls(pki):
    bg, server, port = _serve(TlsFiles(str(pki / "server.crt"), str(pki / "server.key")))
    try:
        assert _ask(port, grpc.ssl_channel_credentials(_read(pki, "ca.crt"))) >= 1
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_serve_refuses_unreadable_tls_files(tmp_path):
    import sys

    cfg = tmp_path / "c.yaml"
    subprocess.run([sys.executable, "-m", "scaler", "config", "example"], stdout=cfg.open("w"), check=True, timeout=60)
    out = subprocess.run([sys.executable, "-m", "scaler", "serve", "--config", str(cfg), "--tls-cert",
                          str(tmp_path / "nope.crt"), "--tls-key", str(tmp_path / "nope.key")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read TLS file" in out.stderr and "nope.key" in out.stderr
    half = subprocess.run([sys.executable, "-m", "scaler", "serve", "--config", str(cfg), "--tls-cert", "x"],
                          capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "both --tls-cert and --tls-key" in half.stderr
