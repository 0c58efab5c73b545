"""A fresh `pdscaler serve` (a restart, or a second replica) never serves the floor while it could know
better: with cluster reads on it adopts the replicas that run as soon as the API has been read, even
while its metrics collection hangs, and reports NOT_SERVING (gRPC health and /healthz) until then;
without them, until a poll decided on data. Real processes on loopback: a stand-in Kubernetes API
(tests/test_kube.py), a stand-in Prometheus (tests/fake_prometheus.py). Every wait is on an answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scaler.policy.rule import HELD
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.testbench.processes import wait_until
from tests.fake_prometheus import FakePrometheus
from tests.test_kube import NS, FakeApiServer

GRAPH, NAMESPACE = "vllm-disagg", "dynamo"
SCALES = [f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmprefillworker/scale",
          f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmdecodeworker/scale"]
RUNNING = {"prefill": 4, "decode": 6}  # tests/data/k8s: the scale subresources' spec.replicas
WAIT = 60.0  # s: deadlines of event waits (the machine is shared); nothing is timed


def kubeconfig(path, url: str):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def config_file(tmp_path, prometheus_url: str, kube_url: str | None) -> str:
    cfg = {
        "poll_interval": "2s",
        "first_answer_timeout": "10m",  # ready on the first answers, never on this timeout here
        "source": {"kind": "prometheus", "url": prometheus_url, "timeout": "10m"},  # a hung query stays hung
        "forecast": {"warm_start": 0},
        "graphs": {GRAPH: {"namespace": NAMESPACE, "roles": {
            "prefill": {"kind": "prefill"},
            "decode": {"kind": "decode", "service": "VllmDecodeWorker"},
        }}},
    }
    if kube_url is not None:
        cfg["kubernetes"] = {"enabled": True, "timeout": "2s", "interval": "0.2s",
                             "kubeconfig": str(kubeconfig(tmp_path / "kubeconfig", kube_url))}
    path = tmp_path / "pdscaler.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT).status


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=WAIT) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def answers(channel) -> dict[str, float]:
    stub = pb_grpc.ExternalScalerStub(channel)
    out = {}
    for role in RUNNING:
        ref = pb.ScaledObjectRef(name="so", namespace=NAMESPACE, scalerMetadata={"graph": GRAPH, "role": role})
        r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=f"pdscaler-{GRAPH}-{role}"),
                            timeout=WAIT)
        out[role] = r.metricValues[0].metricValue
    return out


def explain(url: str) -> dict:
    with urllib.request.urlopen(url + f"/explain?graph={GRAPH}&format=json", timeout=WAIT) as r:
        return json.loads(r.read())


@pytest.fixture
def prom():
    p = FakePrometheus()
    yield p
    p.close()


@pytest.fixture
def api():
    s = FakeApiServer()
    yield s
    s.close()


def test_a_restart_with_prometheus_hung_adopts_the_running_replicas_before_serving(tmp_path, serve, prom, api):
    prom.mode = "hang"  # the metrics collection never completes in this test
    for path in SCALES:
        api.faults[path] = 403  # the replicas cannot be read yet
    proc = serve(config_file(tmp_path, prom.url, api.url))
    with grpc.insecure_channel(proc.grpc_address) as channel:
        wait_until(lambda: prom.held.is_set() and sum(p.split("?")[0] in SCALES for _, p in api.requests) >= 4,
                   WAIT, "a hung metrics query and two cluster reads", proc=proc)
        # Nothing known yet: the floor is all there is to answer, and health says not to ask.
        assert health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert healthz(proc.http_url) == 503
        assert answers(channel) == {"prefill": 1, "decode": 1}
        api.faults.clear()  # the API answers: 4 prefill and 6 decode replicas run
        wait_until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, WAIT, "SERVING", proc=proc)
        assert prom.holding >= 1  # the metrics query still hangs: adoption did not wait on it
        assert answers(channel) == RUNNING
        assert healthz(proc.http_url) == 200
        roles = explain(proc.http_url)["roles"]
        assert {r: roles[r]["rule"] for r in RUNNING} == {"prefill": "no-data", "decode": "no-data"}
    assert "adopted the cluster's replicas" in proc.output()


def test_with_prometheus_answering_the_first_served_answer_is_what_runs(tmp_path, serve, prom, api):
    """Cluster reads on, Prometheus healthy and the demand low: from the first SERVING on, the replicas
    that run (adopted inside the scale-down window), not the floor nor the low need."""
    prom.demand = 100.0  # tokens/s: one replica of each role would do
    proc = serve(config_file(tmp_path, prom.url, api.url))
    with grpc.insecure_channel(proc.grpc_address) as channel:
        wait_until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, WAIT, "SERVING", proc=proc)
        assert answers(channel) == RUNNING
        wait_until(lambda: prom.queries > 0, WAIT, "a poll of the metrics", proc=proc)
        assert answers(channel) == RUNNING


def test_without_cluster_reads_serving_waits_for_a_poll_decided_on_data(tmp_path, serve, prom):
    """The second scaler of `make e2e`: its first served answer is decided on data, not the floor."""
    prom.mode = "hang"
    proc = serve(config_file(tmp_path, prom.url, None))
    with grpc.insecure_channel(proc.grpc_address) as channel:
        wait_until(prom.held.is_set, WAIT, "a hung metrics query", proc=proc)
        assert health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert healthz(proc.http_url) == 503
        prom.mode = "ok"
        prom.released.set()  # the hung query ends without an answer; the next poll gets data
        wait_until(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, WAIT, "SERVING", proc=proc)
        roles = explain(proc.http_url)["roles"]
        assert not {roles[r]["rule"] for r in RUNNING} & {str(r) for r in HELD}, roles
        assert healthz(proc.http_url) == 200


def test_without_cluster_reads_the_first_answers_wait_for_the_warm_start():
    """In-process: the poll before the warm start (a cold forecast) does not make the loop ready; the
    first poll after it does, so a second replica's first answers use a warm forecast like the first's."""
    import threading

    from scaler.clock import ManualClock
    from scaler.config import ScalerConfig
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.observation import Observation
    from scaler.store import DecisionStore

    class Source:
        keeps_history = True

        def __init__(self) -> None:
            self.warmed = threading.Event()

        def collect(self, now):
            return [Observation("g", now, {"request_rate": 20.0, "prefill_tokens_per_s": 40_000.0, "isl_mean": 2000.0},
                                {"prefill": {"prefill_queued_tokens": 0.0, "ready_workers": 2.0}})]

        def history(self, graph, wanted, start, end, step):
            self.warmed.set()
            return {}

        def close(self):
            pass

    cfg = ScalerConfig.model_validate({"poll_interval": 15, "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
                                       "graphs": {"g": {"roles": {"prefill": {"kind": "prefill"}}}}})
    clock, src = ManualClock(1_000_000.0), Source()
    loop = DecisionLoop(Engine(cfg), src, DecisionStore(), clock)
    loop.start()
    try:
        wait_until(lambda: loop.ticks >= 1 and src.warmed.is_set(), WAIT, "a first poll, then the warm start")
        assert not loop.ready.is_set()  # decided on data, but before the warm start
        clock.advance(15)
        wait_until(loop.ready.is_set, WAIT, "ready after the next poll")
        assert loop.ticks == 2
    finally:
        loop.stop()
