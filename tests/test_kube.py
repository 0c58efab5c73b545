"""Cluster reads against a local HTTP server answering with API-shaped JSON (tests/data/k8s),
including 403, 404, timeouts and refused connections; ownership warnings; the loop's merge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from scaler.clock import ManualClock
from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.kube.api import KubeApi, KubeError
from scaler.kube.ownership import conflicts
from scaler.kube.replicas import ClusterReading, RoleReplicas, count_ready_pods, dgd_state, parse_scale, with_replicas
from scaler.kube.targets import TargetError, find_service, role_targets, scaling_adapter_enabled
from scaler.kube.watcher import ClusterWatcher
from scaler.loop import DecisionLoop
from scaler.observation import Observation
from scaler.store import DecisionStore

DATA = Path(__file__).parent / "data" / "k8s"
NS = "/apis/nvidia.com/v1alpha1/namespaces/dynamo"
PATHS = {
    f"{NS}/dynamographdeployments/vllm-disagg": "dgd.json",
    f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmprefillworker/scale": "scale_prefill.json",
    f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmdecodeworker/scale": "scale_decode.json",
    "/apis/apps/v1/namespaces/dynamo/deployments/pdscaler-warm-capacity/scale": "scale_warm.json",
    "/api/v1/namespaces/dynamo/pods": "pods_warm.json",
    "/apis/autoscaling/v2/namespaces/dynamo/horizontalpodautoscalers": "hpas.json",
    "/apis/keda.sh/v1alpha1/namespaces/dynamo/scaledobjects": "scaledobjects.json",
}


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


class FakeApiServer:
    """Serves PATHS; `faults[path] = 403 | 404 | "hang"` changes one answer. Records every request.
    A "hang" holds the request open, unanswered, until close(); `holding` counts those held now."""

    def __init__(self) -> None:
        self.faults: dict[str, object] = {}
        self.requests: list[tuple[str, str]] = []
        self.released = threading.Event()
        self.holding = 0
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self):
                fake.requests.append((self.command, self.path))
                path = self.path.split("?")[0]
                fault = fake.faults.get(path)
                if fault == "hang":
                    with lock:
                        fake.holding += 1
                    fake.released.wait()
                    with lock:
                        fake.holding -= 1
                    return
                if self.command != "GET":
                    code, body = 405, {"kind": "Status", "code": 405}
                elif isinstance(fault, int):
                    code, body = fault, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": fault,
                                         "reason": {403: "Forbidden", 404: "NotFound"}.get(fault, "Error")}
                elif path in PATHS:
                    code, body = 200, load(PATHS[path])
                else:
                    code, body = 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
                raw = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass

            do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def config(**kube) -> ScalerConfig:
    return ScalerConfig.model_validate({
        "kubernetes": {"enabled": True, "timeout": "0.5s", **kube},
        "graphs": {"vllm-disagg": {"namespace": "dynamo", "roles": {
            "prefill": {"kind": "prefill"},  # service found in the DGD by subComponentType
            "decode": {"kind": "decode", "service": "VllmDecodeWorker"},
            "warm": {"kind": "warm", "min_replicas": 0, "max_replicas": 4,
                     "scale_target": {"api_version": "apps/v1", "kind": "Deployment", "name": "pdscaler-warm-capacity"}},
        }}},
    })


@pytest.fixture
def api_server():
    s = FakeApiServer()
    yield s
    s.close()


def watcher(server: FakeApiServer, cfg: ScalerConfig | None = None) -> ClusterWatcher:
    cfg = cfg or config()
    return ClusterWatcher(cfg, KubeApi.at(server.url, timeout=cfg.kubernetes.timeout), ManualClock(1000.0))


# --- pure parsers ----------------------------------------------------------------------------------

def test_parsers_read_api_shapes():
    rr = parse_scale(load("scale_prefill.json"))
    assert (rr.desired, rr.current) == (4, 4)
    assert rr.selector.startswith("nvidia.com/dynamo-graph-deployment-name=vllm-disagg")
    # Ready, not terminating: the pending pod and the one being deleted do not count.
    assert count_ready_pods(load("pods_warm.json")) == 1
    state = dgd_state(load("dgd.json"))
    assert state.ready is False and state.state == "pending" and "4/6" in state.message
    with pytest.raises(ValueError, match="Scale"):
        parse_scale({"kind": "Deployment"})


def test_rollout_and_starting_replicas():
    assert RoleReplicas(desired=6, ready=4, updated=6).rolling_out
    assert RoleReplicas(desired=6, ready=4, updated=6).starting == 2
    assert not RoleReplicas(desired=4, ready=4, updated=4).rolling_out
    assert RoleReplicas(desired=None, ready=4).starting is None


def test_targets_from_the_dgd():
    dgd = load("dgd.json")
    assert find_service(dgd, "prefill") == "VllmPrefillWorker"
    assert scaling_adapter_enabled(dgd, "VllmDecodeWorker")
    cfg = config()
    t = role_targets("vllm-disagg", cfg.graphs["vllm-disagg"], dgd)
    assert t["prefill"].ref.name == "vllm-disagg-vllmprefillworker"
    assert t["prefill"].ref.scale_path("dynamo") == (
        f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmprefillworker/scale")
    assert t["warm"].ref.scale_path("dynamo") == "/apis/apps/v1/namespaces/dynamo/deployments/pdscaler-warm-capacity/scale"
    # Worker names are the fallback when subComponentType is absent; two candidates are an error.
    by_name = {"spec": {"services": {"Frontend": {"componentType": "frontend"}, "PrefillWorker": {}, "DecodeWorker": {}}}}
    assert find_service(by_name, "decode") == "DecodeWorker"
    two = {"spec": {"services": {"PrefillA": {"subComponentType": "prefill"}, "PrefillB": {"subComponentType": "prefill"}}}}
    with pytest.raises(TargetError, match="PrefillA, PrefillB"):
        find_service(two, "prefill")
    with pytest.raises(TargetError, match="no decode service.*Frontend"):
        find_service({"spec": {"services": {"Frontend": {"componentType": "frontend"}}}}, "decode")
    # v1alpha1 needs enabled: true; v1beta1's empty object means on.
    assert not scaling_adapter_enabled({"apiVersion": "nvidia.com/v1alpha1", "spec": {"services": {"A": {"scalingAdapter": {}}}}}, "A")
    assert scaling_adapter_enabled({"apiVersion": "nvidia.com/v1beta1", "spec": {"services": {"A": {"scalingAdapter": {}}}}}, "A")


def test_ownership_flags_other_scalers_only():
    cfg = config()
    targets = {r: t.ref for r, t in role_targets("vllm-disagg", cfg.graphs["vllm-disagg"], load("dgd.json")).items()}
    found = conflicts("vllm-disagg", targets, load("hpas.json")["items"], load("scaledobjects.json")["items"],
                      planners=["Planner"])
    got = {(c.role, c.owner_kind, c.owner) for c in found}
    # Ours: the prefill ScaledObject, its KEDA HPA, and the warm one (scaleTargetRef defaults to apps/v1 Deployment).
    assert ("prefill", "ScaledObject", "dynamo/vllm-agg-ttft") in got  # the AKS example's TTFT trigger
    assert ("decode", "HorizontalPodAutoscaler", "dynamo/decode-ttft") in got  # v1beta1 names the same adapter
    assert ("prefill", "Planner", "Planner") in got and ("decode", "Planner", "Planner") in got
    assert not any(owner in ("dynamo/vllm-disagg-prefill", "dynamo/keda-hpa-vllm-disagg-prefill", "dynamo/pdscaler-warm",
                             "dynamo/frontend") for _, _, owner in got)
    assert not any(role == "warm" for role, _, _ in got)  # the Planner does not scale our placeholder


# --- against the local API server --------------------------------------------------------------------

def test_watcher_reads_replicas_ready_and_rollout(api_server):
    w = watcher(api_server)
    reading = w.poll(now=1000.0)["vllm-disagg"]
    assert reading.errors == ()
    r = reading.roles
    assert (r["prefill"].desired, r["prefill"].ready) == (4, 4)
    assert (r["decode"].desired, r["decode"].ready, r["decode"].updated) == (6, 4, 6) and r["decode"].rolling_out
    assert (r["warm"].desired, r["warm"].ready) == (2, 1)  # Ready pods of the Deployment's selector
    assert reading.dgd.ready is False
    pod_queries = [p for m, p in api_server.requests if p.startswith("/api/v1/namespaces/dynamo/pods")]
    assert pod_queries and parse_qs(urlsplit(pod_queries[0]).query)["labelSelector"] == [
        "app.kubernetes.io/name=pdscaler-warm-capacity"]
    assert {m for m, _ in api_server.requests} == {"GET"}  # read-only
    assert any("Planner" not in c and "vllm-agg-ttft" in c for c in reading.conflicts)


@pytest.mark.parametrize("fault, expect", [(403, "403 forbidden"), (404, "404 not found"), ("hang", "timed out after 0.5s")])
def test_watcher_reports_api_faults_per_role(api_server, fault, expect):
    path = f"{NS}/dynamographdeploymentscalingadapters/vllm-disagg-vllmdecodeworker/scale"
    api_server.faults[path] = fault
    w = watcher(api_server)
    reading = w.read_graph("vllm-disagg", 1000.0)
    if fault == "hang":  # the timeout bounds the read: it returned while the server still holds the request
        assert api_server.holding == 1
    assert [p for _, p in api_server.requests if p.split("?")[0] == path] == [path]  # no retries pile up
    assert "decode" not in reading.roles and "prefill" in reading.roles and "warm" in reading.roles
    assert any(e.startswith("decode: GET ") and expect in e for e in reading.errors), reading.errors


def test_watcher_without_the_dgd_still_reads_explicit_targets(api_server):
    api_server.faults[f"{NS}/dynamographdeployments/vllm-disagg"] = 404
    reading = watcher(api_server).read_graph("vllm-disagg", 1000.0)
    assert "decode" in reading.roles and "warm" in reading.roles  # named service, explicit target
    # No DGD status to read readiness from: the Ready pods of the adapter's selector are counted instead.
    selectors = [parse_qs(urlsplit(p).query)["labelSelector"][0] for _, p in api_server.requests if "/pods?" in p]
    assert "nvidia.com/dynamo-graph-deployment-name=vllm-disagg,nvidia.com/dynamo-component=VllmDecodeWorker" in selectors
    assert reading.roles["decode"].ready is not None
    assert any("role 'prefill' names no service" in e for e in reading.errors)
    assert any(e.startswith("DGD: GET") and "404" in e for e in reading.errors)


def test_ownership_list_forbidden_is_reported_and_keeps_last_answer(api_server):
    w = watcher(api_server)
    assert w.check_ownership("vllm-disagg")
    api_server.faults["/apis/keda.sh/v1alpha1/namespaces/dynamo/scaledobjects"] = 403
    w.check_ownership("vllm-disagg")
    reading = w.read_graph("vllm-disagg", 1000.0)
    assert any("ownership" in e and "403" in e for e in reading.errors)
    assert reading.conflicts  # the last complete answer stands


def test_unreachable_api_server_is_a_note_not_a_crash():
    cfg = config(timeout="0.3s")
    w = ClusterWatcher(cfg, KubeApi.at("http://127.0.0.1:9", timeout=0.3), ManualClock(0.0))
    reading = w.poll(now=0.0)["vllm-disagg"]
    assert reading.roles == {} and any("connection refused" in e or "timed out" in e for e in reading.errors)
    assert w.first_poll.is_set()


def test_kubeconfig_auth_sends_the_users_token(api_server, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": api_server.url}}],
        "users": [{"name": "u", "user": {"token": "s3cret-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))
    cfg = config(kubeconfig=str(kubeconfig))
    api = KubeApi.from_config(cfg.kubernetes)
    assert api.get(f"{NS}/dynamographdeployments/vllm-disagg")["kind"] == "DynamoGraphDeployment"
    with pytest.raises(KubeError, match="404"):
        api.get(f"{NS}/dynamographdeployments/nope")


# --- the loop: merge, adopt, warn ---------------------------------------------------------------------

def test_stale_cluster_reading_is_ignored_with_a_note():
    obs = Observation("g", 100.0, {}, {"decode": {"ready_workers": 3.0}})
    reading = ClusterReading("g", 10.0, {"decode": RoleReplicas(desired=6, ready=5)})
    merged = with_replicas(obs, reading, now=101.0, stale_after=90.0)
    assert "desired_replicas" not in merged.roles["decode"] and "91s old" in merged.errors[-1]
    fresh = with_replicas(obs, reading, now=50.0, stale_after=90.0)
    assert fresh.roles["decode"]["desired_replicas"] == 6 and fresh.roles["decode"]["ready_replicas"] == 5


class _NoMetrics:
    def collect(self, now):
        raise ConnectionError("prometheus unreachable")

    def close(self):
        pass


def test_restarted_scaler_holds_the_clusters_replicas_when_metrics_are_missing(api_server):
    """Without cluster reads a scaler that starts blind answers the floor; with them it holds what runs."""
    cfg = config()
    clock = ManualClock(1000.0)
    w = ClusterWatcher(cfg, KubeApi.at(api_server.url, timeout=0.5), clock)
    w.poll()
    store = DecisionStore()
    loop = DecisionLoop(Engine(cfg), _NoMetrics(), store, clock, cluster=w)
    assert store.get("vllm-disagg").replicas["decode"] == 1  # before the first tick: the floor
    d = loop.tick()["vllm-disagg"]
    assert d.replicas["prefill"] == 4 and d.replicas["decode"] == 6
    assert "never scale down on missing data" in d.roles["decode"].reason.message
    assert any("vllm-agg-ttft" in wmsg for wmsg in d.warnings)  # ownership warning reaches the decision
    assert "WARNING: ownership: ScaledObject dynamo/vllm-agg-ttft" in d.explain()
    blind = DecisionLoop(Engine(cfg), _NoMetrics(), DecisionStore(), clock).tick()["vllm-disagg"]
    assert blind.replicas["decode"] == 1


def test_config_needs_namespaces_for_cluster_reads():
    with pytest.raises(ValueError, match="namespace for every graph.*'g'"):
        ScalerConfig.model_validate({"kubernetes": {"enabled": True},
                                     "graphs": {"g": {"roles": {"p": {"kind": "prefill"}}}}})
    with pytest.raises(ValueError, match="not both"):
        ScalerConfig.model_validate({"graphs": {"g": {"roles": {"p": {
            "kind": "prefill", "service": "A", "scale_target": {"api_version": "apps/v1", "kind": "Deployment", "name": "x"}}}}}})


def _rbac_need(method: str, path: str) -> tuple[str, str, str, str]:
    """(namespace, apiGroup, resource[/subresource], verb) of one API request, as RBAC sees it."""
    parts = urlsplit(path).path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces", path  # every read is namespaced
    namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {"GET": "get" if len(rest) > 1 else "list"}[method]
    return namespace, group, resource, verb


def test_the_manifests_grant_exactly_what_the_cluster_reads_use(api_server):
    """Every RBAC rule of manifests/base is used, and nothing used is missing (least privilege); every
    call is in a graph's namespace, so the manifests' Role in each graph namespace (no ClusterRole)
    covers them (tests/test_manifests.py checks the Role's rules are RBAC_RULES)."""
    from test_manifests import RBAC_RULES

    cfg = config()
    w = watcher(api_server, cfg)
    w.poll(now=1000.0)
    api_server.faults[f"{NS}/dynamographdeployments/vllm-disagg"] = 404  # the pods fallback for DGD roles too
    w.poll(now=2000.0)
    needs = {_rbac_need(m, p) for m, p in api_server.requests}
    assert {ns for ns, *_ in needs} == {g.namespace for g in cfg.graphs.values()}
    used = {need[1:] for need in needs}
    granted = {(g, r, v) for rule in RBAC_RULES for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert used == granted


def test_adopted_replicas_keep_the_scale_down_window(api_server):
    """A restarted scaler that adopted 6 decode replicas does not drop them before the window passes."""
    cfg = config()
    clock = ManualClock(1000.0)
    w = ClusterWatcher(cfg, KubeApi.at(api_server.url, timeout=0.5), clock)
    w.poll()
    engine = Engine(cfg)
    loop = DecisionLoop(engine, _NoMetrics(), DecisionStore(), clock, cluster=w)
    loop.tick()
    low = {"request_rate": 0.5, "isl_mean": 100.0, "osl_mean": 10.0, "kv_block_size": 16.0,
           "prefill_tokens_per_s": 50.0, "decode_tokens_per_s": 5.0}
    window = cfg.graphs["vllm-disagg"].roles["decode"].stabilisation.scale_down
    for step in range(int(window // 15) + 3):
        clock.advance(15)
        engine.observe(Observation("vllm-disagg", clock.now(), low, {"decode": {"kv_active_blocks": 10.0, "ready_workers": 6.0}}))
        d = engine.decide(clock.now(), "vllm-disagg")
        if clock.now() - 1000.0 < window:
            assert d.replicas["decode"] == 6, (step, d.explain())
    assert d.replicas["decode"] < 6  # after the window, the low demand is acted on
