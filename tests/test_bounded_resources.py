"""The serving process's ports over real loopback: which addresses the HTTP side port answers on, and
the bounds on what a client can make it hold (metric series, concurrent RPCs, connections, echoed
names, repeated log lines). Every wait is on an answer or an event, with a generous deadline."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BackgroundLoop, make_config

DEADLINE = 60.0  # s: generous, the machine is shared


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Serve:
    """`pdscaler serve` as a child, on ephemeral ports read back from its start-up lines."""

    HTTP_LINE = re.compile(r"explain and metrics on http://.+:(\d+)/explain")
    GRPC_LINE = re.compile(r"KEDA external scaler on .+:(\d+) for graphs")

    def __init__(self, tmp_path: Path, *args: str) -> None:
        config = tmp_path / "pdscaler.yaml"
        config.write_text(subprocess.run([sys.executable, "-m", "scaler", "config", "example"], capture_output=True,
                                         text=True, check=True, timeout=60).stdout)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scaler", "serve", "--config", str(config), "--port", "0", "--http-port", "0",
             "--prometheus-url", "http://127.0.0.1:1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.http_port = int(self.wait_for(self.HTTP_LINE).group(1))
            self.grpc_port = int(self.wait_for(self.GRPC_LINE).group(1))
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append("")  # EOF
            self.cond.notify_all()

    def wait_for(self, pattern: re.Pattern) -> re.Match:
        deadline = time.monotonic() + DEADLINE
        with self.cond:
            while True:
                for line in self.lines:
                    if m := pattern.search(line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    pytest.fail(f"serve: no line matching {pattern.pattern!r}:\n" + "".join(self.lines))
                self.cond.wait(left)

    def output(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_healthz(url: str) -> str:
    """Until `url`/healthz answers 200 (connection refused and 503 count as not yet)."""
    deadline = time.monotonic() + DEADLINE
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = get(url + "/healthz", timeout=5)
            if status == 200:
                return body
            last = f"{status} {body}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.2)
    pytest.fail(f"{url}/healthz did not answer 200: {last}")


# --------------------------------------------------------------------------- 1. both address families


def test_default_serve_answers_healthz_and_explain_on_ipv4_and_ipv6_loopback(tmp_path):
    serve = Serve(tmp_path)  # the defaults: --host [::], no --http-host
    try:
        assert wait_healthz(f"http://127.0.0.1:{serve.http_port}").startswith("ok")
        r = subprocess.run([sys.executable, "-m", "scaler", "explain", "--server", f"http://127.0.0.1:{serve.http_port}",
                            "--graph", "example"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "graph example" in r.stdout
        if ipv6_loopback():
            status, body = get(f"http://[::1]:{serve.http_port}/healthz")
            assert status == 200 and body.startswith("ok")
    finally:
        serve.stop()
    assert "every address, IPv4 and IPv6" in serve.output()


def test_http_host_binds_that_address_alone():
    from scaler.http_admin import start_http
    from scaler.store import DecisionStore

    bg = BackgroundLoop()
    runner, port = bg.run(start_http(DecisionStore(), ["g1"], "127.0.0.1", 0))
    try:
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        if ipv6_loopback():
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(ConnectionRefusedError):
                s.settimeout(10)
                s.connect(("::1", port))
    finally:
        bg.run(runner.cleanup())
        bg.close()


@pytest.mark.parametrize("host", [None, "::"])
def test_all_addresses_in_process_is_one_port_for_both_families(host):
    from scaler.http_admin import start_http
    from scaler.store import DecisionStore

    bg = BackgroundLoop()
    runner, port = bg.run(start_http(DecisionStore(), ["g1"], host, 0))
    try:
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        if ipv6_loopback():
            assert get(f"http://[::1]:{port}/healthz")[0] == 200
    finally:
        bg.run(runner.cleanup())
        bg.close()


# --------------------------------------------------------------------------- 2a. metric series


def _samples(text: str, name: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_unknown_grpc_methods_share_one_metric_series():
    import random
    import string

    import grpc

    from scaler.http_admin import start_http
    from scaler.metrics import ScalerMetrics
    from scaler.server import start_server
    from scaler.store import DecisionStore

    config, store, metrics = make_config(), DecisionStore(), ScalerMetrics(parts=("server",))
    bg = BackgroundLoop()
    server = bg.run(start_server(config, store, 0, "127.0.0.1", None, [metrics.interceptor()]))
    runner, http_port = bg.run(start_http(store, list(config.graphs), "127.0.0.1", 0, metrics))
    rng = random.Random(7)
    names = ["".join(rng.choices(string.ascii_letters, k=200)) for _ in range(6)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            for i, name in enumerate(names):
                path = f"/{name}.Svc/{name}" if i % 2 else f"/externalscaler.ExternalScaler/{name}"
                with pytest.raises(grpc.RpcError) as e:
                    ch.unary_unary(path)(b"", timeout=10)
                assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        _, page = get(f"http://127.0.0.1:{http_port}/metrics")
    finally:
        bg.run(server.stop(grace=0))
        bg.run(runner.cleanup())
        bg.close()
    series = _samples(page, "pdscaler_grpc_requests_total")
    assert series == {(("code", "UNIMPLEMENTED"), ("method", "unknown")): float(len(names))}
    assert not any(name in page for name in names)


# --------------------------------------------------------------------------- 2b. concurrent RPCs


def _ref(graph="g1", role="prefill"):
    from scaler.rpc import externalscaler_pb2 as pb

    return pb.ScaledObjectRef(name="so", namespace="ns", scalerMetadata={"graph": graph, "role": role})


def _get_metrics(stub):
    from scaler.rpc import externalscaler_pb2 as pb

    return stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=_ref(), metricName="pdscaler-g1-prefill"), timeout=10)


def _in_process_server(limits):
    from scaler.server import start_server
    from scaler.store import DecisionStore

    bg = BackgroundLoop()
    server = bg.run(start_server(make_config(), DecisionStore(), 0, "127.0.0.1", None, (), limits))
    return bg, server


def _own_connection(port: int):
    import grpc

    # a channel of its own (not the process-wide subchannel pool): its own HTTP/2 connection
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def test_rpcs_beyond_max_concurrent_rpcs_are_resource_exhausted():
    import grpc

    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
    from scaler.server import GrpcLimits

    bg, server = _in_process_server(GrpcLimits(max_concurrent_rpcs=3, max_streams_per_connection=100))
    try:
        with _own_connection(server.port) as ch:
            stub = pb_grpc.ExternalScalerStub(ch)
            streams = [stub.StreamIsActive(_ref(), timeout=DEADLINE) for _ in range(3)]
            for s in streams:
                assert next(s).result is True  # open and answered: 3 RPCs in progress
            with pytest.raises(grpc.RpcError) as e:
                _get_metrics(stub)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            streams[0].cancel()
            deadline = time.monotonic() + DEADLINE  # the cancel reaches the server in its own time
            while True:
                try:
                    assert _get_metrics(stub).metricValues[0].metricValue == 1
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "a slot never came free"
                    time.sleep(0.1)
            for s in streams[1:]:
                s.cancel()
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_streams_beyond_max_streams_per_connection_wait_for_one_to_end():
    import grpc

    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
    from scaler.server import GrpcLimits

    bg, server = _in_process_server(GrpcLimits(max_concurrent_rpcs=100, max_streams_per_connection=2))
    try:
        with _own_connection(server.port) as ch, _own_connection(server.port) as other:
            stub = pb_grpc.ExternalScalerStub(ch)
            open_streams = [stub.StreamIsActive(_ref(), timeout=DEADLINE) for _ in range(2)]
            for s in open_streams:
                assert next(s).result is True
            # The third stream on this connection is held by the client until one ends: its deadline passes
            # unanswered. (Its deadline is short so the test is; a slow machine only makes it pass more surely.)
            with pytest.raises(grpc.RpcError) as e:
                next(stub.StreamIsActive(_ref(), timeout=2))
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # another connection has its own streams
            assert _get_metrics(pb_grpc.ExternalScalerStub(other)).metricValues[0].metricValue == 1
            open_streams[0].cancel()
            waiting = stub.StreamIsActive(_ref(), timeout=DEADLINE)
            assert next(waiting).result is True  # a stream ended: the next one goes
            waiting.cancel()
            open_streams[1].cancel()
    finally:
        bg.run(server.stop(grace=0))
        bg.close()


def test_serve_grpc_limits_come_from_the_command_line():
    from scaler.cli import build_parser

    args = build_parser().parse_args(["serve", "--config", "c.yaml"])
    assert (args.grpc_max_rpcs, args.grpc_max_streams_per_connection) == (4096, 4096)
    args = build_parser().parse_args(["serve", "--config", "c.yaml", "--grpc-max-rpcs", "10",
                                      "--grpc-max-streams-per-connection", "5"])
    assert (args.grpc_max_rpcs, args.grpc_max_streams_per_connection) == (10, 5)
