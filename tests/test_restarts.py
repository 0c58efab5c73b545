"""The decision process of a real `pdscaler serve` killed (SIGKILL): the server keeps answering with the
last decisions, health turns NOT_SERVING while it is down, a new decision process is started (after
the backoff's first delay), polls resume and SERVING returns; pdscaler_decision_process_restarts_total
counts it. Loopback only; every wait is on an event (a log line, a health status, a metric)."""

from __future__ import annotations

import os
import re
import signal
import threading

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.testbench.processes import wait_until
from tests.conftest import example_config_file, metric_total
from tests.fake_prometheus import FakePrometheus

WAIT = 60.0  # s: deadlines of event waits on a shared machine; nothing is timed
STARTED = re.compile(r"decision process started \(pid (\d+)\)")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """grpc.health.v1 Watch of the server's overall health, every status it streams kept in order."""

    def __init__(self, channel) -> None:
        self.statuses: list[int] = []
        self.call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.statuses.append(r.status)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)


def answers(channel) -> dict[str, float]:
    stub = pb_grpc.ExternalScalerStub(channel)
    out = {}
    for role in ("prefill", "decode"):
        ref = pb.ScaledObjectRef(name="so", namespace="dynamo", scalerMetadata={"graph": "example", "role": role})
        r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=f"pdscaler-example-{role}"),
                            timeout=WAIT)
        out[role] = r.metricValues[0].metricValue
    return out


@pytest.fixture
def prom():
    p = FakePrometheus()
    yield p
    p.close()


def edit(cfg: dict) -> dict:
    cfg["poll_interval"] = "1s"
    cfg["forecast"]["enabled"] = False  # constant data, constant decisions
    cfg["forecast"]["warm_start"] = 0
    return cfg


def test_a_killed_decision_process_is_restarted_while_the_server_answers(tmp_path, serve, prom):
    proc = serve(example_config_file(tmp_path / "c.yaml", edit), prometheus_url=prom.url)
    metrics = proc.http_url + "/metrics"
    with grpc.insecure_channel(proc.grpc_address) as channel:
        watch = HealthWatch(channel)
        try:
            wait_until(lambda: SERVING in watch.statuses, WAIT, "SERVING", proc=proc)
            wait_until(lambda: metric_total(metrics, "pdscaler_polls_total") >= 2, WAIT, "two polls", proc=proc)
            first = int(proc.wait_for_output(STARTED, WAIT)[1])
            before = answers(channel)
            seen = len(watch.statuses)

            os.kill(first, signal.SIGKILL)
            proc.wait_for_output(r"the decision process exited \(code -9\); starting it again in 1s", WAIT)
            assert answers(channel) == before  # answered from memory, the last decisions
            wait_until(lambda: NOT_SERVING in watch.statuses[seen:], WAIT, "NOT_SERVING while it is down", proc=proc)

            second = int(proc.wait_for_output(STARTED, WAIT, count=2)[1])
            assert second != first
            wait_until(lambda: metric_total(metrics, "pdscaler_polls_total") >= 2, WAIT,
                       "two polls of the new decision process", proc=proc)
            down = watch.statuses.index(NOT_SERVING, seen)
            wait_until(lambda: SERVING in watch.statuses[down:], WAIT, "SERVING again", proc=proc)
            assert metric_total(metrics, "pdscaler_decision_process_restarts_total") == 1
            assert answers(channel) == before
        finally:
            watch.close()
    assert proc.poll() is None  # the server itself never stopped


def test_restarts_back_off_exponentially_and_boundedly():
    from scaler.worker import restart_delay

    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(10_000) == 30  # no overflow after hours of failures
