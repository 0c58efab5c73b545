"""`pdscaler render --dgd`: the ScaledObjects and config it prints, and its errors."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scaler.config import ScalerConfig
from scaler.render import RenderError, render
from test_manifests import FORMATS, KEDA_CRD, crd_schema, scaledobject_problems, strict

OVERLAY = Path(__file__).resolve().parents[1] / "manifests" / "overlays" / "dynamo-disagg"
DGD_FILE = OVERLAY / "dgd-example.yaml"


def example_dgd() -> dict:
    return yaml.safe_load(DGD_FILE.read_text())


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaler", "render", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(crd_schema(KEDA_CRD)), format_checker=FORMATS)


def test_render_prints_what_the_example_overlay_ships(validator):
    out = run_cli("--dgd", str(DGD_FILE))
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    shipped = [d for d in yaml.safe_load_all((OVERLAY / "scaledobjects.yaml").read_text()) if d]
    assert rendered == shipped
    for so in rendered:
        assert scaledobject_problems(validator, so) == []
    # The config snippet is printed as comments, so the output can be piped to kubectl apply.
    snippet = yaml.safe_load("\n".join(line[2:] for line in out.stdout.splitlines()
                                       if line.startswith("# ") and not line.startswith("# pdscaler config")))
    roles = snippet["graphs"]["vllm-disagg"]["roles"]
    assert roles["prefill"]["service"] == "VllmPrefillWorker" and roles["decode"]["service"] == "VllmDecodeWorker"
    ScalerConfig.model_validate({"kubernetes": {"enabled": True}, **snippet})  # a valid config as it stands


def test_render_options_and_v1beta1(validator, tmp_path):
    dgd = example_dgd()
    dgd["apiVersion"] = "nvidia.com/v1beta1"
    for svc in dgd["spec"]["services"].values():
        if "scalingAdapter" in svc:
            svc["scalingAdapter"] = {}  # v1beta1: present means enabled
    objects, snippet = render(dgd, "serving", scaler_address="scaler.ops:6000", min_replicas=2, max_replicas=8)
    assert [o["metadata"]["namespace"] for o in objects] == ["serving", "serving"]
    assert {o["spec"]["triggers"][0]["metadata"]["scalerAddress"] for o in objects} == {"scaler.ops:6000"}
    assert {(o["spec"]["minReplicaCount"], o["spec"]["maxReplicaCount"]) for o in objects} == {(2, 8)}
    assert all(scaledobject_problems(validator, o) == [] for o in objects)
    cfg = tmp_path / "graph.yaml"
    out = run_cli("--dgd", str(DGD_FILE), "--config-out", str(cfg), "--namespace", "serving")
    assert out.returncode == 0 and "# pdscaler config" not in out.stdout
    assert yaml.safe_load(cfg.read_text())["graphs"]["vllm-disagg"]["namespace"] == "serving"


def test_render_finds_workers_by_name_without_subcomponenttype():
    dgd = example_dgd()
    svcs = dgd["spec"]["services"]
    for svc in svcs.values():
        svc.pop("subComponentType", None)
    objects, _ = render(dgd)
    assert [o["spec"]["scaleTargetRef"]["name"] for o in objects] == [
        "vllm-disagg-vllmprefillworker", "vllm-disagg-vllmdecodeworker"]


def _without_adapter(service: str) -> dict:
    dgd = example_dgd()
    dgd["spec"]["services"][service].pop("scalingAdapter")
    return dgd


@pytest.mark.parametrize("dgd, message", [
    (_without_adapter("VllmDecodeWorker"), "no scaling adapter on VllmDecodeWorker; add `scalingAdapter: {enabled: true}`"),
    ({"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeployment", "metadata": {"name": "agg"},
      "spec": {"services": {"Frontend": {"componentType": "frontend"}, "VllmWorker": {"componentType": "worker"}}}},
     "not a disaggregated graph pdscaler can size: no prefill service"),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}, "expected a DynamoGraphDeployment"),
])
def test_render_errors_say_what_to_change(dgd, message):
    with pytest.raises(RenderError, match=re.escape(message)):
        render(dgd)


def test_render_cli_errors_exit_2(tmp_path):
    assert "cannot read" in run_cli("--dgd", str(tmp_path / "missing.yaml")).stderr
    dgd = yaml.safe_dump(_without_adapter("VllmPrefillWorker"))
    out = run_cli("--dgd", "-", stdin=dgd)
    assert out.returncode == 2 and "no scaling adapter on VllmPrefillWorker" in out.stderr and out.stdout == ""
    two = run_cli("--dgd", "-", stdin=yaml.safe_dump_all([example_dgd(), copy.deepcopy(example_dgd())]))
    assert two.returncode == 2 and "exactly one DynamoGraphDeployment" in two.stderr


def test_render_with_shards_points_each_graph_at_the_shard_the_sharded_overlay_uses():
    """The sharded overlay's ScaledObjects name the Service of the shard owning each graph
    (sharding.shard_of); render --shards computes the same address for a DGD of that name."""
    sharded = OVERLAY.parent / "sharded" / "scaledobjects.yaml"
    shipped = [d for d in yaml.safe_load_all(sharded.read_text()) if d]
    by_graph = {}
    for so in shipped:
        md = so["spec"]["triggers"][0]["metadata"]
        by_graph[(md["graph"], md["namespace"])] = md["scalerAddress"]
    assert len(set(by_graph.values())) == 2  # both shards serve some graph
    for (graph, ns), address in by_graph.items():
        dgd = example_dgd()
        dgd["metadata"]["name"] = graph
        out = run_cli("--dgd", "-", "--namespace", ns, "--shards", "2", stdin=yaml.safe_dump(dgd))
        assert out.returncode == 0, out.stderr
        objects = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert {o["spec"]["triggers"][0]["metadata"]["scalerAddress"] for o in objects} == {address}
    bad = run_cli("--dgd", "-", "--shards", "2", "--scaler-address", "x:6000", stdin=yaml.safe_dump(example_dgd()))
    assert bad.returncode == 2 and "{shard}" in bad.stderr and bad.stdout == ""
