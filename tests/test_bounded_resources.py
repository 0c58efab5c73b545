"""The serving process's ports over real loopback: which addresses the HTTP side port answers on, and
the bounds on what a client can make it hold (metric series, concurrent RPCs, connections, echoed
names, repeated log lines). Every wait is on an answer or an event, with a generous deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scaler.testbench import processes
from tests.conftest import BackgroundLoop, example_config_file, make_config

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


def start_serve(tmp_path: Path, *args: str, default_hosts: bool = False) -> processes.ScalerProcess:
    """`pdscaler serve` started on ephemeral ports (read back from its output; scaler/testbench/processes.py).
    `default_hosts`: no --host nor --http-host, as a plain `pdscaler serve` binds."""
    config = example_config_file(tmp_path / "pdscaler.yaml")
    if not default_hosts:
        return processes.serve_process(config, prometheus_url="http://127.0.0.1:1", args=args).start()
    argv = [sys.executable, "-m", "scaler", "serve", "--config", str(config), "--port", "0", "--http-port", "0",
            "--prometheus-url", "http://127.0.0.1:1", *args]
    return processes.ScalerProcess(argv, host="127.0.0.1", http=True, name="pdscaler serve").start()


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


@pytest.mark.slow  # /healthz answers 200 after first_answer_timeout (~20 s): Prometheus is unreachable
def test_default_serve_answers_healthz_and_explain_on_ipv4_and_ipv6_loopback(tmp_path):
    serve = start_serve(tmp_path, default_hosts=True)  # --host [::], no --http-host
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


# --------------------------------------------------------------------------- 2c. HTTP connections, log lines


class _Blocking:
    """A ScalerMetrics stand-in whose page waits for `release` (a handler kept busy)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def exposition(self) -> bytes:
        self.entered.release()
        self.release.wait(DEADLINE)
        return b"# done\n"


def _http(limits, metrics=None):
    from scaler.http_admin import CAP_KEY, start_http
    from scaler.store import DecisionStore

    bg = BackgroundLoop()
    runner, port = bg.run(start_http(DecisionStore(), ["g1"], "127.0.0.1", 0, metrics, limits=limits))
    cap = runner.app[CAP_KEY]

    async def live() -> int:
        return len(cap.live)

    return bg, runner, port, lambda: bg.run(live())


def _idle_connections(port: int, n: int, partial_every: int = 3) -> list[socket.socket]:
    """`n` connections that send nothing, or (every `partial_every`-th) half a request header."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % partial_every == 1:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: the header never ends
        socks.append(s)
    return socks


def _closed_by_server(socks: list[socket.socket], at_least: int) -> int:
    """Wait until at least `at_least` of `socks` see the server close them; returns how many did."""
    import select

    closed: set[int] = set()
    deadline = time.monotonic() + DEADLINE
    while len(closed) < at_least and time.monotonic() < deadline:
        readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], 0.5)
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:  # reset
                data = b""
            if data == b"":
                closed.add(socks.index(s))
    return len(closed)


def test_idle_connections_beyond_the_cap_do_not_keep_healthz_out():
    from scaler.http_admin import HttpLimits

    bg, runner, port, live = _http(HttpLimits(max_connections=20, idle_timeout=600))  # no timeout here
    socks = _idle_connections(port, 50)
    try:
        status, body = get(f"http://127.0.0.1:{port}/healthz", timeout=DEADLINE)
        assert status == 200 and body.startswith("ok")
        # every connection beyond the 20th closed the oldest idle one: at least 30 + 1 closed
        assert _closed_by_server(socks, 31) >= 31
        assert live() <= 20
    finally:
        for s in socks:
            s.close()
        bg.run(runner.cleanup())
        bg.close()


def test_idle_and_half_sent_connections_are_closed_after_the_idle_timeout():
    import http.client

    from scaler.http_admin import HttpLimits

    bg, runner, port, live = _http(HttpLimits(max_connections=100, idle_timeout=1.0))
    socks = _idle_connections(port, 50)
    kept_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        kept_alive.request("GET", "/healthz")
        assert kept_alive.getresponse().read().startswith(b"ok")  # then idle on a keep-alive connection
        assert _closed_by_server([*socks, kept_alive.sock], 51) == 51
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        deadline = time.monotonic() + DEADLINE
        while live() > 0:  # the last answer's connection ends too (urllib closes it)
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        kept_alive.close()
        for s in socks:
            s.close()
        bg.run(runner.cleanup())
        bg.close()


def test_when_every_connection_is_busy_a_new_one_is_answered_503_and_a_slow_handler_504():
    from concurrent.futures import ThreadPoolExecutor

    from scaler.http_admin import HttpLimits

    blocking = _Blocking()
    bg, runner, port, live = _http(HttpLimits(max_connections=2, idle_timeout=600, handler_timeout=600), blocking)
    try:
        with ThreadPoolExecutor(2) as pool:
            try:
                pages = [pool.submit(get, f"http://127.0.0.1:{port}/metrics", DEADLINE) for _ in range(2)]
                for _ in pages:
                    assert blocking.entered.acquire(timeout=DEADLINE)  # both handlers are busy
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                assert (status, body) == (503, "too many connections open\n")
            finally:
                blocking.release.set()
            assert [p.result(DEADLINE) for p in pages] == [(200, "# done\n")] * 2
    finally:
        blocking.release.set()
        bg.run(runner.cleanup())
        bg.close()

    slow = _Blocking()
    bg, runner, port, live = _http(HttpLimits(handler_timeout=0.2), slow)
    try:
        assert get(f"http://127.0.0.1:{port}/metrics", DEADLINE)[0] == 504
    finally:
        slow.release.set()
        bg.run(runner.cleanup())
        bg.close()


def test_repeated_log_lines_are_counted_not_repeated():
    import logging

    from scaler.server import RepeatedLinesFilter

    now = [1000.0]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    handler.addFilter(RepeatedLinesFilter(interval=60.0, kinds=4, clock=lambda: now[0]))
    logger = logging.getLogger("pdscaler.test.repeats")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        for _ in range(1000):
            logger.warning("accept failed on port %d", 9090)
        assert [r.getMessage() for r in records] == ["accept failed on port 9090"]
        logger.warning("accept failed on port %d", 6000)  # another line: through
        logger.error("accept failed on port %d", 9090)  # another level: through
        try:
            raise OSError("too many open files")
        except OSError:
            logger.exception("accept failed on port %d", 9090)  # with an exception: another kind
        assert len(records) == 4
        now[0] += 59.0
        logger.warning("accept failed on port %d", 9090)
        assert len(records) == 4  # still within the interval: counted
        now[0] += 1.0
        logger.warning("accept failed on port %d", 9090)
        assert records[-1].getMessage() == "accept failed on port 9090 (repeated 1000 times in the last 60 s)"
        logger.warning("accept failed on port %d", 9090)
        assert len(records) == 5  # the count starts again
        for i in range(10):  # at most `kinds` kinds remembered: the filter's memory is bounded
            logger.info("line %d", i)
        assert len(records) == 15
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow  # /healthz answers 200 after first_answer_timeout (~20 s): Prometheus is unreachable
def test_serve_under_a_flood_of_idle_connections_answers_grpc_and_healthz_and_logs_once(tmp_path):
    import grpc

    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc

    serve = start_serve(tmp_path, "--http-max-connections", "20", "--http-idle-timeout", "600")
    socks: list[socket.socket] = []
    try:
        wait_healthz(f"http://127.0.0.1:{serve.http_port}")
        socks = _idle_connections(serve.http_port, 50)
        assert wait_healthz(f"http://127.0.0.1:{serve.http_port}").startswith("ok")
        with grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}") as ch:
            from scaler.rpc import externalscaler_pb2 as pb

            ref = pb.ScaledObjectRef(name="so", namespace="dynamo", scalerMetadata={"graph": "example", "role": "decode"})
            stub = pb_grpc.ExternalScalerStub(ch)
            value = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="pdscaler-example-decode"),
                                    timeout=DEADLINE).metricValues[0].metricValue
            assert value >= 1
        assert _closed_by_server(socks, 30) >= 30
    finally:
        for s in socks:
            s.close()
        serve.stop()
    out = serve.output()
    assert out.count("the oldest idle one is closed for a new one") == 1, out


def test_serve_http_limits_come_from_the_command_line():
    from scaler.cli import build_parser

    args = build_parser().parse_args(["serve", "--config", "c.yaml"])
    assert (args.http_host, args.http_max_connections, args.http_idle_timeout) == (None, 256, 15.0)
    args = build_parser().parse_args(["serve", "--config", "c.yaml", "--http-host", "127.0.0.1",
                                      "--http-max-connections", "20", "--http-idle-timeout", "2.5"])
    assert (args.http_host, args.http_max_connections, args.http_idle_timeout) == ("127.0.0.1", 20, 2.5)
    for bad in (["--http-max-connections", "0"], ["--http-idle-timeout", "0"], ["--grpc-max-rpcs", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--config", "c.yaml", *bad])


# --------------------------------------------------------------------------- 2d. echoed names


def _many_graphs_config(n: int = 50):
    g1 = make_config().model_dump()["graphs"]["g1"]
    return make_config(graphs={f"g{i:02d}": g1 for i in range(n)})


def test_explain_404_shows_an_unknown_name_and_the_graph_list_cut_short():
    from scaler.http_admin import start_http
    from scaler.store import DecisionStore

    config = _many_graphs_config()
    bg = BackgroundLoop()
    runner, port = bg.run(start_http(DecisionStore(), list(config.graphs), "127.0.0.1", 0))
    name = "q" * 8000  # about what fits in aiohttp's request line
    try:
        status, body = get(f"http://127.0.0.1:{port}/explain?graph={name}")
    finally:
        bg.run(runner.cleanup())
        bg.close()
    assert status == 404
    assert f"unknown graph '{'q' * 61}...'" in body and "q" * 62 not in body
    assert "configured graphs: g00, g01," in body and "g19 and 30 more" in body and "g20" not in body
    assert len(body) < 400


def test_grpc_not_found_shows_an_unknown_name_and_the_graph_list_cut_short():
    import grpc

    from scaler.rpc import externalscaler_pb2 as pb
    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
    from scaler.server import start_server
    from scaler.store import DecisionStore

    bg = BackgroundLoop()
    server = bg.run(start_server(_many_graphs_config(), DecisionStore(), 0, "127.0.0.1"))
    try:
        with _own_connection(server.port) as ch:
            stub = pb_grpc.ExternalScalerStub(ch)
            with pytest.raises(grpc.RpcError) as e:  # the longest graph name the metadata schema admits
                stub.GetMetricSpec(pb.ScaledObjectRef(name="so", namespace="ns",
                                                      scalerMetadata={"graph": "q" * 253, "role": "prefill"}), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            details = e.value.details()
            assert f"'{'q' * 61}...'" in details and "q" * 62 not in details
            assert "g19 and 30 more" in details and "g20" not in details and len(details) < 400
            with pytest.raises(grpc.RpcError) as e:  # a ScaledObject namespace is not bounded by the schema
                stub.IsActive(pb.ScaledObjectRef(name="so", namespace="n" * 8000,
                                                 scalerMetadata={"graph": "g01", "role": "prefill"}), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert "n" * 62 not in e.value.details() and len(e.value.details()) < 400
    finally:
        bg.run(server.stop(grace=0))
        bg.close()
