"""The Kubernetes manifests (manifests/): they build, validate against their schemas, and say what
the scaler needs and nothing more.

- `kubectl kustomize` builds the base and every overlay.
- Built-in kinds validate strictly (unknown fields are errors) against the Kubernetes OpenAPI
  schemas of kubernetes-validate; ScaledObjects against the openAPIV3Schema of KEDA's CRD
  (manifests/crds/keda.sh_scaledobjects.yaml, made strict the same way); the TriggerAuthentication
  against the part of KEDA's TriggerAuthentication schema it uses. Negative tests prove the
  validators reject broken objects.
- Security context, RBAC (RBAC_RULES, exactly), NetworkPolicy peers, the ScaledObjects' shape and
  their agreement with the overlay's pdscaler config, the warm-capacity placeholder's priority,
  and the TLS wiring.

Skipped when kubectl (with its built-in kustomize) is not installed.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KEDA_CRD = MANIFESTS / "crds" / "keda.sh_scaledobjects.yaml"
# The reference the in-repo copy was taken from, when the checkout sits beside it.
REFERENCE_CRD = REPO.parent / "shared" / "reference" / "keda.sh_scaledobjects.yaml"

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

OVERLAYS = ["base", "overlays/dynamo-disagg", "overlays/tls"]
DYNAMO_OVERLAYS = ["overlays/dynamo-disagg", "overlays/tls"]
# Fleet scale: two shards, each its own Deployment and Service (its objects are named pdscaler-shard-N,
# so the single-Deployment checks above do not apply; the sharded tests below check them against the base).
SHARDED = "overlays/sharded"

# Kubernetes versions the built-in kinds must validate against: the oldest with the HPA's
# configurable tolerance (1.33) and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.33.0", "latest"]
# Custom resources: no schema in kubernetes-validate. ScaledObject and TriggerAuthentication are
# validated below against KEDA's schemas; the others (Prometheus Operator, cert-manager) are not.
CRD_KINDS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
}

# Exactly the API calls pdscaler's Kubernetes client makes (all reads; KEDA writes replicas), all in
# the graphs' namespaces: granted by a Role in each graph's namespace.
RBAC_RULES = [
    {"apiGroups": ["nvidia.com"], "resources": ["dynamographdeploymentscalingadapters/scale"], "verbs": ["get"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get"]},
    {"apiGroups": ["nvidia.com"], "resources": ["dynamographdeployments"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["list"]},
]

# The HPA behavior every ScaledObject carries: no stabilisation and no dead band of the HPA's own
# (pdscaler stabilises), policies wide enough to pass any target in one sync.
HPA_BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "tolerance": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 1000, "periodSeconds": 15},
            {"type": "Pods", "value": 100, "periodSeconds": 15},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 0,
        "tolerance": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    },
}
SCALER_ADDRESS = "pdscaler.pdscaler.svc.cluster.local:6000"
IMAGE_NAME = "ghcr.io/pdscaler/pdscaler"
IMAGE = f"{IMAGE_NAME}:0.1.0"
TLS_DIR = "/etc/pdscaler/tls"
TLS_ARGS = ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key", "--tls-client-ca", f"{TLS_DIR}/ca.crt",
            "--tls-client-name", "keda-operator"]
REFLECTOR = "reflector.v1.k8s.emberstack.com/"


# --- building and looking up ----------------------------------------------------------------------


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {name: kustomize(MANIFESTS / name) for name in OVERLAYS + [SHARDED]}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected one {kind} {namespace or '*'}/{name}, found {len(found)}"
    return found[0]


def scaler_deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "pdscaler", "pdscaler")


def scaler_container(docs: list[dict]) -> dict:
    containers = scaler_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["pdscaler"]
    return containers[0]


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def overlay_config(docs: list[dict]):
    """The pdscaler config the overlay ships in ConfigMap pdscaler-config(-<hash>), parsed by pdscaler."""
    from scaler.config import parse_config

    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("pdscaler-config")]
    assert len(maps) == 1
    return parse_config(maps[0]["data"]["config.yaml"], source=maps[0]["metadata"]["name"])


# --- schemas --------------------------------------------------------------------------------------


def strict(schema):
    """An OpenAPI v3 structural schema as JSON Schema that, like the API server's strict field
    validation, rejects unknown fields: objects with properties and no additionalProperties or
    x-kubernetes-preserve-unknown-fields get additionalProperties: false."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def crd_schema(path: Path, version: str = "v1alpha1") -> dict:
    crd = yaml.safe_load(path.read_text())
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return v["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def scaledobject_validator() -> jsonschema.Draft7Validator:
    schema = strict(crd_schema(KEDA_CRD))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)


# The part of KEDA's TriggerAuthentication CRD (keda.sh/v1alpha1, config/crd/bases in the KEDA
# repository) the TLS overlay uses: spec.secretTargetRef. Strict, like the ScaledObject's.
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "name", "parameter"],
                        "additionalProperties": False,
                        "properties": {
                            "key": {"type": "string"},
                            "name": {"type": "string"},
                            "parameter": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def scaledobject_problems(validator: jsonschema.Draft7Validator, so: dict) -> list[str]:
    problems = schema_errors(validator, so)
    # The CRD's x-kubernetes-validations rule (CEL), by hand: minReplicaCount <= maxReplicaCount.
    spec = so.get("spec", {})
    lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        problems.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    return problems


# --- build and schema validation ------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS + [SHARDED])
def test_kustomize_builds(built, name):
    docs = built[name]
    assert docs
    keys = [(d["apiVersion"].split("/")[0], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
            for d in docs]
    assert len(keys) == len(set(keys)), "duplicate objects"


def test_keda_crd_copy_matches_reference():
    if not REFERENCE_CRD.exists():
        pytest.skip("the shared reference CRD is not beside this checkout")
    assert yaml.safe_load(KEDA_CRD.read_text()) == yaml.safe_load(REFERENCE_CRD.read_text())
    assert "kedacore/keda" in KEDA_CRD.read_text().split("apiVersion:")[0], "attribution header"


def test_keda_crd_is_not_deployed():
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        assert "crds" not in kustomization.read_text()


@pytest.mark.parametrize("name", OVERLAYS + [SHARDED])
def test_builtin_kinds_validate_strictly(built, name):
    import kubernetes_validate

    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for doc in built[name]:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[doc["kind"]]
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.message} "
                            f"at {'.'.join(map(str, e.path))}")


@pytest.mark.parametrize("name", OVERLAYS + [SHARDED])
def test_scaledobjects_match_keda_crd(built, name, scaledobject_validator):
    for so in of_kind(built[name], "ScaledObject"):
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert scaledobject_problems(scaledobject_validator, so) == [], so["metadata"]["name"]


def test_trigger_authentication_matches_schema(built):
    tas = of_kind(built["overlays/tls"], "TriggerAuthentication")
    assert tas
    for ta in tas:
        jsonschema.validate(ta, TRIGGER_AUTHENTICATION_SCHEMA)


def _broken(so: dict, how: str) -> dict:
    so = copy.deepcopy(so)
    spec = so["spec"]
    if how == "trigger-without-type":
        del spec["triggers"][0]["type"]
    elif how == "max-as-string":
        spec["maxReplicaCount"] = "16"
    elif how == "misspelled-field":
        spec["pollingIntervall"] = spec.pop("pollingInterval")
    elif how == "fallback-without-replicas":
        del spec["fallback"]["replicas"]
    elif how == "metadata-value-not-string":
        spec["triggers"][0]["metadata"]["enableTLS"] = True
    elif how == "no-triggers":
        spec["triggers"] = []
    elif how == "min-above-max":
        spec["minReplicaCount"] = spec["maxReplicaCount"] + 1
    elif how == "bad-tolerance":
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["tolerance"] = "ten percent"
    elif how == "int32-overflow":
        spec["pollingInterval"] = 2**31
    return so


@pytest.mark.parametrize("how", [
    "trigger-without-type", "max-as-string", "misspelled-field", "fallback-without-replicas",
    "metadata-value-not-string", "no-triggers", "min-above-max", "bad-tolerance", "int32-overflow",
])
def test_broken_scaledobject_is_rejected(built, scaledobject_validator, how):
    so = one(built["overlays/dynamo-disagg"], "ScaledObject", "vllm-disagg-prefill", "dynamo")
    assert scaledobject_problems(scaledobject_validator, so) == []
    assert scaledobject_problems(scaledobject_validator, _broken(so, how)) != []


def test_broken_trigger_authentication_is_rejected(built):
    ta = copy.deepcopy(of_kind(built["overlays/tls"], "TriggerAuthentication")[0])
    del ta["spec"]["secretTargetRef"][0]["key"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ta, TRIGGER_AUTHENTICATION_SCHEMA)


def test_broken_builtin_is_rejected(built):
    import kubernetes_validate

    deployment = copy.deepcopy(scaler_deployment(built["base"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- the scaler's Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_scaler_deployment_security(built, name):
    deployment = scaler_deployment(built[name])
    pod = deployment["spec"]["template"]["spec"]
    c = scaler_container(built[name])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 65532) == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged", False)
    # A writable /tmp (Prophet, cmdstan) and HOME there.
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == "/tmp"
    # It reads the API with its own service account.
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "pdscaler"
    sa = one(built[name], "ServiceAccount", "pdscaler", "pdscaler")
    assert sa.get("automountServiceAccountToken", True) is True


@pytest.mark.parametrize("name", OVERLAYS)
def test_scaler_deployment_shape(built, name):
    deployment = scaler_deployment(built[name])
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    c = scaler_container(built[name])
    assert spec["replicas"] == 2
    assert selects(spec["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert c["image"] == IMAGE
    assert c["args"][:7] == ["serve", "--config", "/etc/pdscaler/config.yaml", "--port", "6000", "--http-port", "9090"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 6000, "http": 9090}
    res = c["resources"]
    assert res["requests"]["cpu"] == "250m" and res["requests"]["memory"] == "512Mi"
    assert res["limits"]["memory"] == "1Gi"
    # Spread across nodes.
    spread = [t for t in pod.get("topologySpreadConstraints", []) if t["topologyKey"] == "kubernetes.io/hostname"]
    assert spread and all(selects(t["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])
                          for t in spread)
    # The config is mounted where --config reads it.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    config_volume = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/pdscaler"]]
    sources = config_volume["projected"]["sources"]
    assert sources[0]["configMap"]["name"].startswith("pdscaler-config")
    configmaps = {d["metadata"]["name"] for d in of_kind(built[name], "ConfigMap")}
    assert sources[0]["configMap"]["name"] in configmaps


def test_image_is_set_in_one_place(built):
    """pdscaler's image is named once, in the base Deployment: no overlay overrides it (no `images:`,
    no patch), so a kustomize `images:` entry in your own overlay is the one change that retags it."""
    mentions = [f.relative_to(MANIFESTS).as_posix() for f in MANIFESTS.rglob("*.yaml")
                if IMAGE_NAME in f.read_text()]
    assert mentions == ["base/deployment.yaml"]
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        assert "images" not in (yaml.safe_load(kustomization.read_text()) or {}), kustomization
    for name in OVERLAYS:
        assert scaler_container(built[name])["image"] == IMAGE, name


def test_digest_pinning_as_the_readme_shows(tmp_path):
    """README, "Pin the image by digest": an overlay of the tls overlay with `images:` and `digest:`
    replaces the tag with the digest in the scaler's Deployment and touches no other image."""
    digest = "sha256:" + "0123456789abcdef" * 4
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / "overlays/tls", tmp_path)],
        "images": [{"name": IMAGE_NAME, "newName": "myregistry.azurecr.io/pdscaler", "digest": digest}],
    }))
    docs = kustomize(tmp_path)
    assert scaler_container(docs)["image"] == f"myregistry.azurecr.io/pdscaler@{digest}"
    warm = one(docs, "Deployment", "pdscaler-warm-capacity", "dynamo")
    assert [c["image"] for c in warm["spec"]["template"]["spec"]["containers"]] == ["registry.k8s.io/pause:3.10"]
    readme = (REPO / "README.md").read_text()
    assert f"name: {IMAGE_NAME}" in readme and "digest: sha256:" in readme


@pytest.mark.parametrize("name", ["base", "overlays/dynamo-disagg"])
def test_probes_are_native_grpc(built, name):
    c = scaler_container(built[name])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": 6000}, probe


@pytest.mark.parametrize("name", ["base", "overlays/dynamo-disagg"])
def test_container_args_parse(built, name):
    """The Deployment's args are a valid `pdscaler` command line (the image's ENTRYPOINT is pdscaler)."""
    from scaler.cli import build_parser

    args = build_parser().parse_args(scaler_container(built[name])["args"])
    assert (args.command, args.config, args.port, args.http_port) == ("serve", "/etc/pdscaler/config.yaml", 6000, 9090)


def test_dockerfile_matches_deployment(built):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim\b", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["pdscaler"\]', dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] == str(65532)
    assert "command" not in scaler_container(built["base"]), "args only: the image's ENTRYPOINT runs pdscaler"
    # Everything the Dockerfile copies from the build context passes .dockerignore's allowlist.
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for src in line.split()[:-1]:
            assert src.rstrip("/") in allowed, src
            assert (REPO / src).exists(), src


# --- RBAC, Service, PDB, NetworkPolicy, ServiceMonitor --------------------------------------------


def _canonical(rules: list[dict]) -> list[tuple]:
    return sorted((tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r.get("resources", []))),
                   tuple(sorted(r.get("verbs", []))), tuple(sorted(r.get("resourceNames", []))),
                   tuple(sorted(r.get("nonResourceURLs", [])))) for r in rules)


SCALER_SUBJECT = {"kind": "ServiceAccount", "name": "pdscaler", "namespace": "pdscaler"}


def granted_rules(docs: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """The rules pdscaler's service account holds: (cluster-wide, {namespace: rules}), through
    ClusterRoleBindings, and RoleBindings to a Role or a ClusterRole."""
    cluster_roles = {r["metadata"]["name"]: r for r in of_kind(docs, "ClusterRole")}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    cluster_wide: list[dict] = []
    per_namespace: dict[str, list[dict]] = {}
    for b in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        if SCALER_SUBJECT not in b.get("subjects", []):
            continue
        ref = b["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        if ref["kind"] == "ClusterRole":
            rules = cluster_roles[ref["name"]]["rules"]
        else:
            assert b["kind"] == "RoleBinding" and ref["kind"] == "Role"
            rules = roles[(b["metadata"]["namespace"], ref["name"])]["rules"]
        if b["kind"] == "ClusterRoleBinding":
            cluster_wide += rules
        else:
            per_namespace.setdefault(b["metadata"]["namespace"], []).extend(rules)
    return cluster_wide, per_namespace


@pytest.mark.parametrize("name", OVERLAYS)
def test_rbac_is_exactly_what_the_scaler_calls(built, name):
    """Every read pdscaler makes is in a graph's namespace (tests/test_kube.py), so it holds exactly
    RBAC_RULES in each configured graph's namespace, nothing in any other namespace and nothing
    cluster-wide (no ClusterRoleBinding: it would let it list pods, read scale subresources... of
    every namespace)."""
    docs = built[name]
    cluster_wide, per_namespace = granted_rules(docs)
    assert cluster_wide == []
    assert not of_kind(docs, "ClusterRoleBinding") and not of_kind(docs, "ClusterRole")
    graph_namespaces = {g.namespace for g in overlay_config(docs).graphs.values()}
    assert set(per_namespace) == graph_namespaces == {"dynamo"}
    for namespace, rules in per_namespace.items():
        assert len(rules) == len(RBAC_RULES), namespace
        assert _canonical(rules) == _canonical(RBAC_RULES), namespace
        for rule in rules:
            assert set(rule["verbs"]) <= {"get", "list"} and "*" not in rule["resources"] + rule["apiGroups"]
    # One Role and one RoleBinding per graph namespace, both named pdscaler, and nothing else.
    assert sorted((r["kind"], r["metadata"]["namespace"], r["metadata"]["name"])
                  for r in of_kind(docs, "Role") + of_kind(docs, "RoleBinding")) == sorted(
        (kind, ns, "pdscaler") for ns in graph_namespaces for kind in ("Role", "RoleBinding"))
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pdscaler"}
        assert binding["subjects"] == [SCALER_SUBJECT]


def test_rbac_counts_cluster_wide_grants(built):
    """granted_rules sees a ClusterRoleBinding (the shape the manifests had), so the test above
    would catch one coming back."""
    docs = copy.deepcopy(built["base"])
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"},
                 "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "x"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
                 "subjects": [SCALER_SUBJECT]})
    cluster_wide, _ = granted_rules(docs)
    assert cluster_wide == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]


@pytest.mark.parametrize("name", OVERLAYS)
def test_service_pdb_and_servicemonitor(built, name):
    docs = built[name]
    pod_labels = scaler_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service", "pdscaler", "pdscaler")
    assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"grpc": (6000, "grpc"), "http": (9090, "http")}
    assert SCALER_ADDRESS == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:6000"
    pdb = one(docs, "PodDisruptionBudget", "pdscaler", "pdscaler")
    assert pdb["spec"]["minAvailable"] == 1 and selects(pdb["spec"]["selector"], pod_labels)
    sm = one(docs, "ServiceMonitor", "pdscaler", "pdscaler")
    assert selects(sm["spec"]["selector"], svc["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["pdscaler"]}
    assert [(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] == [("http", "/metrics")]


@pytest.mark.parametrize("name", OVERLAYS)
def test_networkpolicy_admits_only_keda_and_prometheus(built, name):
    docs = built[name]
    nps = of_kind(docs, "NetworkPolicy")
    assert len(nps) == 1
    spec = nps[0]["spec"]
    assert nps[0]["metadata"]["namespace"] == "pdscaler"
    assert selects(spec["podSelector"], scaler_deployment(docs)["spec"]["template"]["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"], "egress is deliberately open (API server, Prometheus, DNS)"

    def peer(namespace: str, app: str) -> dict:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": app}}}

    assert spec["ingress"] == [
        {"from": [peer("keda", "keda-operator")], "ports": [{"protocol": "TCP", "port": 6000}]},
        {"from": [peer("monitoring", "prometheus")], "ports": [{"protocol": "TCP", "port": 9090}]},
    ]


# --- the pdscaler config and the ScaledObjects ----------------------------------------------------


@pytest.mark.parametrize("path", ["base/config.yaml", "overlays/dynamo-disagg/config.yaml"])
def test_config_files_are_valid(path):
    from scaler.config import load_config

    config = load_config(MANIFESTS / path)
    assert config.source.kind == "prometheus"
    assert config.source.url == "http://prometheus-operated.monitoring:9090"
    assert config.kubernetes.enabled is True


@pytest.mark.parametrize("name,graph", [("base", "example"), ("overlays/dynamo-disagg", "vllm-disagg"),
                                        ("overlays/tls", "vllm-disagg")])
def test_configmap_carries_the_overlays_config(built, name, graph):
    config = overlay_config(built[name])
    assert list(config.graphs) == [graph]
    source = "base/config.yaml" if name == "base" else "overlays/dynamo-disagg/config.yaml"
    cm = [d for d in of_kind(built[name], "ConfigMap") if d["metadata"]["name"].startswith("pdscaler-config")][0]
    assert cm["metadata"]["namespace"] == "pdscaler"
    assert cm["data"]["config.yaml"] == (MANIFESTS / source).read_text()


def _expected_target(config, graph_name: str, role_name: str) -> dict:
    graph = config.graphs[graph_name]
    role = graph.roles[role_name]
    scale_target = getattr(role, "scale_target", None)
    if scale_target is not None:
        return {"apiVersion": scale_target.api_version, "kind": scale_target.kind, "name": scale_target.name}
    service = getattr(role, "service", None)
    assert service, f"role {role_name} names neither a DGD service nor a scale target"
    dgd = getattr(graph, "dgd", None) or graph_name
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeploymentScalingAdapter",
            "name": f"{dgd}-{service.lower()}"}


@pytest.mark.parametrize("name", DYNAMO_OVERLAYS)
def test_scaledobjects_agree_with_the_config(built, name):
    docs = built[name]
    config = overlay_config(docs)
    sos = of_kind(docs, "ScaledObject")
    seen = set()
    for so in sos:
        spec = so["spec"]
        (trigger,) = spec["triggers"]
        md = trigger["metadata"]
        graph = config.graphs.get(md["graph"])
        assert graph is not None, f"{so['metadata']['name']}: graph {md['graph']!r} is not configured"
        assert md["role"] in graph.roles, f"{so['metadata']['name']}: role {md['role']!r} not in {list(graph.roles)}"
        assert md["namespace"] == graph.namespace == so["metadata"]["namespace"]
        assert md["scalerAddress"] == SCALER_ADDRESS
        role = graph.roles[md["role"]]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (role.min_replicas, role.max_replicas)
        assert spec["scaleTargetRef"] == _expected_target(config, md["graph"], md["role"])
        assert so["metadata"]["name"] == f"{md['graph']}-{md['role']}"
        seen.add((md["graph"], md["role"]))
    # Every configured role is scaled by exactly one ScaledObject.
    assert len(seen) == len(sos)
    assert seen == {(g, r) for g, gc in config.graphs.items() for r in gc.roles}


@pytest.mark.parametrize("name", DYNAMO_OVERLAYS)
def test_scaledobject_shape(built, name):
    sos = {so["metadata"]["name"]: so for so in of_kind(built[name], "ScaledObject")}
    assert set(sos) == {"vllm-disagg-prefill", "vllm-disagg-decode", "vllm-disagg-warm"}
    targets = {
        "vllm-disagg-prefill": ("nvidia.com/v1alpha1", "DynamoGraphDeploymentScalingAdapter", "vllm-disagg-vllmprefillworker", 1, 16),
        "vllm-disagg-decode": ("nvidia.com/v1alpha1", "DynamoGraphDeploymentScalingAdapter", "vllm-disagg-vllmdecodeworker", 1, 16),
        "vllm-disagg-warm": ("apps/v1", "Deployment", "pdscaler-warm-capacity", 0, 4),
    }
    for so_name, so in sos.items():
        spec = so["spec"]
        api, kind, target, lo, hi = targets[so_name]
        assert so["metadata"]["namespace"] == "dynamo"
        assert spec["scaleTargetRef"] == {"apiVersion": api, "kind": kind, "name": target}
        assert spec["pollingInterval"] == 15
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (lo, hi)
        assert spec["fallback"] == {"failureThreshold": 3, "replicas": 1, "behavior": "currentReplicasIfHigher"}
        assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": HPA_BEHAVIOR}}
        (trigger,) = spec["triggers"]
        assert (trigger["type"], trigger["name"], trigger["metricType"]) == ("external", "pdscaler", "AverageValue")
        md = {k: v for k, v in trigger["metadata"].items() if k != "enableTLS"}
        assert md == {"scalerAddress": SCALER_ADDRESS, "graph": "vllm-disagg",
                      "role": so_name.removeprefix("vllm-disagg-"), "namespace": "dynamo"}
        if name == "overlays/dynamo-disagg":
            assert "enableTLS" not in trigger["metadata"] and "authenticationRef" not in trigger


def test_dgd_example_has_the_adapters_the_scaledobjects_target(built):
    dgd = yaml.safe_load((MANIFESTS / "overlays/dynamo-disagg/dgd-example.yaml").read_text())
    assert (dgd["apiVersion"], dgd["kind"]) == ("nvidia.com/v1alpha1", "DynamoGraphDeployment")
    assert dgd["metadata"] == {"name": "vllm-disagg", "namespace": "dynamo"}
    services = dgd["spec"]["services"]
    assert services["Frontend"]["componentType"] == "frontend"
    for svc, sub in (("VllmPrefillWorker", "prefill"), ("VllmDecodeWorker", "decode")):
        s = services[svc]
        assert (s["componentType"], s["subComponentType"]) == ("worker", sub)
        assert s["scalingAdapter"] == {"enabled": True}
        assert s["resources"]["limits"]["gpu"] == "1"
    adapters = {f"{dgd['metadata']['name']}-{k.lower()}" for k, s in services.items()
                if s.get("scalingAdapter", {}).get("enabled")}
    targets = {so["spec"]["scaleTargetRef"]["name"] for so in of_kind(built["overlays/dynamo-disagg"], "ScaledObject")
               if so["spec"]["scaleTargetRef"]["kind"] == "DynamoGraphDeploymentScalingAdapter"}
    assert targets == adapters
    # The DGD is the input of `pdscaler render --dgd`, not a resource of the overlay.
    kustomization = yaml.safe_load((MANIFESTS / "overlays/dynamo-disagg/kustomization.yaml").read_text())
    assert "dgd-example.yaml" not in kustomization["resources"]
    assert not of_kind(built["overlays/dynamo-disagg"], "DynamoGraphDeployment")


@pytest.mark.parametrize("name", DYNAMO_OVERLAYS)
def test_warm_capacity_placeholder_has_the_lowest_priority(built, name):
    docs = built[name]
    deployment = one(docs, "Deployment", "pdscaler-warm-capacity", "dynamo")
    pod = deployment["spec"]["template"]["spec"]
    pc = one(docs, "PriorityClass", pod["priorityClassName"])
    assert pc["metadata"]["name"] == "pdscaler-warm-capacity"
    assert pc["value"] == -10 and pc["value"] < 0
    assert pc["preemptionPolicy"] == "Never" and pc["globalDefault"] is False
    # No other object claims a priority at or below the placeholder's.
    others = [d for d in of_kind(docs, "PriorityClass") if d is not pc]
    assert all(d["value"] > pc["value"] for d in others)
    assert "replicas" not in deployment["spec"], "KEDA owns the placeholder's replicas"
    (c,) = pod["containers"]
    assert c["image"] == "registry.k8s.io/pause:3.10"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    so = one(docs, "ScaledObject", "vllm-disagg-warm", "dynamo")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pdscaler-warm-capacity"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_scaled_target_sets_replicas(built, name):
    """A workload a ScaledObject scales must not carry spec.replicas: every `kubectl apply` of the
    manifests would reset what KEDA (through the HPA) set, until the next HPA sync."""
    docs = built[name]
    scaled = {(so["metadata"]["namespace"], so["spec"]["scaleTargetRef"].get("apiVersion", "apps/v1"),
               so["spec"]["scaleTargetRef"].get("kind", "Deployment"), so["spec"]["scaleTargetRef"]["name"])
              for so in of_kind(docs, "ScaledObject")}
    workloads = {(d["metadata"].get("namespace"), d["apiVersion"], d["kind"], d["metadata"]["name"]): d
                 for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for key in scaled & set(workloads):
        assert "replicas" not in workloads[key]["spec"], f"{key[2]} {key[0]}/{key[3]} sets spec.replicas"
    if name in DYNAMO_OVERLAYS:
        assert ("dynamo", "apps/v1", "Deployment", "pdscaler-warm-capacity") in scaled & set(workloads)


# --- TLS ------------------------------------------------------------------------------------------


def test_tls_wiring(built):
    docs = built["overlays/tls"]
    certs = {c["metadata"]["name"]: c for c in of_kind(docs, "Certificate")}
    server = certs["pdscaler-server"]
    client = certs["pdscaler-keda-client"]
    assert server["metadata"]["namespace"] == "pdscaler"
    assert set(server["spec"]["dnsNames"]) >= {"pdscaler.pdscaler.svc", "pdscaler.pdscaler.svc.cluster.local"}
    assert SCALER_ADDRESS.rsplit(":", 1)[0] in server["spec"]["dnsNames"]
    assert "server auth" in server["spec"]["usages"] and "client auth" in client["spec"]["usages"]
    # One CA signs both ends: each side verifies the other against its own secret's ca.crt.
    assert server["spec"]["issuerRef"] == client["spec"]["issuerRef"]
    issuer = server["spec"]["issuerRef"]
    ca_issuer = one(docs, issuer["kind"], issuer["name"], "pdscaler")
    ca_cert = [c for c in certs.values() if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    assert len(ca_cert) == 1 and ca_cert[0]["spec"]["isCA"] is True

    # The scaler mounts its server certificate and passes the TLS flags.
    deployment = scaler_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    c = scaler_container(docs)
    assert c["args"][7:] == TLS_ARGS
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/pdscaler"]]
    secrets = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
    assert len(secrets) == 1 and secrets[0]["name"] == server["spec"]["secretName"]
    # Restarted on renewal where stakater/Reloader runs (the server reads its certificate at start-up).
    annotations = deployment["metadata"].get("annotations", {})
    assert annotations["secret.reloader.stakater.com/reload"] == server["spec"]["secretName"]
    projected = {f"/etc/pdscaler/{i['path']}": i["key"] for i in secrets[0]["items"]}
    assert projected == {f"{TLS_DIR}/tls.crt": "tls.crt", f"{TLS_DIR}/tls.key": "tls.key", f"{TLS_DIR}/ca.crt": "ca.crt"}
    # gRPC probes cannot speak TLS: they use the HTTP port's /healthz.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe

    # KEDA reads its client certificate through a TriggerAuthentication beside the ScaledObjects,
    # from the copy Reflector keeps of the secret cert-manager issues in pdscaler.
    (ta,) = of_kind(docs, "TriggerAuthentication")
    assert ta["metadata"]["namespace"] == "dynamo" and client["metadata"]["namespace"] == "pdscaler"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
    secret = client["spec"]["secretName"]
    assert refs == {"caCert": (secret, "ca.crt"), "tlsClientCert": (secret, "tls.crt"), "tlsClientKey": (secret, "tls.key")}
    sos = of_kind(docs, "ScaledObject")
    assert len(sos) == 3
    for so in sos:
        assert so["metadata"]["namespace"] == ta["metadata"]["namespace"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["authenticationRef"] == {"name": ta["metadata"]["name"], "kind": "TriggerAuthentication"}


def test_tls_args_parse(built):
    from scaler.cli import build_parser, tls_client_names

    args = build_parser().parse_args(scaler_container(built["overlays/tls"])["args"])
    assert (args.command, args.config, args.port) == ("serve", "/etc/pdscaler/config.yaml", 6000)
    assert (args.tls_cert, args.tls_key, args.tls_client_ca) == (
        f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt")
    assert tls_client_names(args) == ("keda-operator",)


def test_tls_issuers_are_namespaced(built):
    """No ClusterIssuer: one would sign a certificate for any namespace allowed to create a
    Certificate, and every such certificate would pass the scaler's CA check. The CA, its Issuers
    and every Certificate live in namespace pdscaler."""
    docs = built["overlays/tls"]
    assert not of_kind(docs, "ClusterIssuer")
    issuers = of_kind(docs, "Issuer")
    certs = of_kind(docs, "Certificate")
    assert {i["metadata"]["name"] for i in issuers} == {"pdscaler-selfsigned", "pdscaler-ca"}
    assert {c["metadata"]["name"] for c in certs} == {"pdscaler-ca", "pdscaler-server", "pdscaler-keda-client"}
    for obj in issuers + certs:
        assert obj["metadata"]["namespace"] == "pdscaler", obj["metadata"]["name"]
    for cert in certs:
        ref = cert["spec"]["issuerRef"]
        assert (ref.get("group"), ref["kind"]) == ("cert-manager.io", "Issuer"), cert["metadata"]["name"]
        one(docs, "Issuer", ref["name"], cert["metadata"]["namespace"])  # an Issuer of the same namespace
    ca_issuer = one(docs, "Issuer", "pdscaler-ca", "pdscaler")
    (ca,) = [c for c in certs if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True and ca["spec"]["issuerRef"]["name"] == "pdscaler-selfsigned"
    # Only the client certificate's secret leaves pdscaler, and only to the TriggerAuthentication's namespace.
    (ta,) = of_kind(docs, "TriggerAuthentication")
    for cert in certs:
        annotations = cert["spec"].get("secretTemplate", {}).get("annotations", {})
        reflected = {k: v for k, v in annotations.items() if k.startswith(REFLECTOR)}
        if cert["metadata"]["name"] != "pdscaler-keda-client":
            assert reflected == {}, cert["metadata"]["name"]
            continue
        # Reflector's namespace lists are unanchored regular expressions (empty: every namespace).
        only = f"^{re.escape(ta['metadata']['namespace'])}$"
        assert reflected == {
            REFLECTOR + "reflection-allowed": "true",
            REFLECTOR + "reflection-allowed-namespaces": only,
            REFLECTOR + "reflection-auto-enabled": "true",
            REFLECTOR + "reflection-auto-namespaces": only,
        }
        assert re.search(only, "dynamo") and not re.search(only, "dynamo-test") and not re.search(only, "my-dynamo")


def test_tls_client_name_is_kedas_certificate(built):
    """The scaler admits exactly the name the overlay issues to KEDA, which is also serve's default."""
    from scaler.cli import build_parser, tls_client_names
    from scaler.server import DEFAULT_CLIENT_NAMES

    docs = built["overlays/tls"]
    client = one(docs, "Certificate", "pdscaler-keda-client", "pdscaler")
    server = one(docs, "Certificate", "pdscaler-server", "pdscaler")
    names = tls_client_names(build_parser().parse_args(scaler_container(docs)["args"]))
    client_names = {client["spec"]["commonName"], *client["spec"].get("dnsNames", [])}
    assert set(names) <= client_names and names == (client["spec"]["commonName"],) == DEFAULT_CLIENT_NAMES
    # The server's own certificate is not a client name (it could not pass as KEDA).
    assert not set(names) & {server["spec"]["commonName"], *server["spec"]["dnsNames"]}


# --- the sharded overlay --------------------------------------------------------------------------

SHARD_LABEL = "pdscaler.io/shard"


def _without_shard(deployment: dict) -> dict:
    """A shard's Deployment with what makes it that shard taken out: its name, the shard label (object,
    selector, pod template), PDSCALER_SHARD_INDEX and the config's hashed ConfigMap name."""
    d = copy.deepcopy(deployment)
    d["metadata"]["name"] = "pdscaler"
    for labels in (d["metadata"]["labels"], d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]):
        labels.pop(SHARD_LABEL)
    (container,) = d["spec"]["template"]["spec"]["containers"]
    container["env"] = [e for e in container["env"] if e["name"] != "PDSCALER_SHARD_INDEX"]
    for source in d["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]:
        source["configMap"]["name"] = "pdscaler-config"
    return d


def _shard_objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["labels"][SHARD_LABEL]: d for d in of_kind(docs, kind)}


def test_sharded_deployments_are_the_base_but_for_their_shard(built):
    docs = built[SHARDED]
    base = copy.deepcopy(scaler_deployment(built["base"]))
    for source in base["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]:
        source["configMap"]["name"] = "pdscaler-config"
    deployments = _shard_objects(docs, "Deployment")
    assert set(deployments) == {"0", "1"}
    maps = [d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")]
    assert len(maps) == 1  # one config for every shard
    for index, d in deployments.items():
        assert d["metadata"]["name"] == f"pdscaler-shard-{index}"
        assert d["spec"]["selector"]["matchLabels"][SHARD_LABEL] == index
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert {"name": "PDSCALER_SHARD_INDEX", "value": index} in container["env"]
        assert d["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["configMap"]["name"] == maps[0]
        assert _without_shard(d) == base, index


def test_sharded_services_and_pdbs_select_their_shard_only(built):
    docs = built[SHARDED]
    pods = {i: d["spec"]["template"]["metadata"]["labels"] for i, d in _shard_objects(docs, "Deployment").items()}
    base_ports = one(built["base"], "Service", "pdscaler", "pdscaler")["spec"]["ports"]
    services, pdbs = _shard_objects(docs, "Service"), _shard_objects(docs, "PodDisruptionBudget")
    assert set(services) == set(pdbs) == {"0", "1"}
    for index in ("0", "1"):
        other = "1" if index == "0" else "0"
        svc, pdb = services[index], pdbs[index]
        assert svc["metadata"]["name"] == pdb["metadata"]["name"] == f"pdscaler-shard-{index}"
        assert selects({"matchLabels": svc["spec"]["selector"]}, pods[index])
        assert not selects({"matchLabels": svc["spec"]["selector"]}, pods[other])
        assert selects(pdb["spec"]["selector"], pods[index]) and not selects(pdb["spec"]["selector"], pods[other])
        assert svc["spec"]["ports"] == base_ports
        sm = one(docs, "ServiceMonitor", "pdscaler", "pdscaler")  # one ServiceMonitor scrapes every shard
        assert selects(sm["spec"]["selector"], svc["metadata"]["labels"])
    (np_,) = of_kind(docs, "NetworkPolicy")
    assert all(selects(np_["spec"]["podSelector"], labels) for labels in pods.values())


def test_sharded_scaledobjects_point_at_the_shard_that_owns_their_graph(built, monkeypatch):
    """Each shard's config (the one ConfigMap, with its Deployment's PDSCALER_SHARD_INDEX) owns a
    share of the graphs; every ScaledObject's scalerAddress is the Service of the shard owning its
    graph, and every role of every graph has one."""
    docs = built[SHARDED]
    owned = {}
    for index in ("0", "1"):
        monkeypatch.setenv("PDSCALER_SHARD_INDEX", index)
        config = overlay_config(docs)
        assert config.sharding.shards == 2 and config.sharding.index == int(index)
        owned[index] = config
    assert owned["0"].graphs and owned["1"].graphs and not set(owned["0"].graphs) & set(owned["1"].graphs)
    seen = set()
    for so in of_kind(docs, "ScaledObject"):
        (trigger,) = so["spec"]["triggers"]
        md = trigger["metadata"]
        (index,) = [i for i, c in owned.items() if md["graph"] in c.graphs]
        assert md["scalerAddress"] == f"pdscaler-shard-{index}.pdscaler.svc.cluster.local:6000", so["metadata"]["name"]
        config = owned[index]
        role = config.graphs[md["graph"]].roles[md["role"]]
        assert md["namespace"] == config.graphs[md["graph"]].namespace == so["metadata"]["namespace"]
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (role.min_replicas, role.max_replicas)
        assert so["spec"]["scaleTargetRef"] == _expected_target(config, md["graph"], md["role"])
        seen.add((md["graph"], md["role"]))
    assert seen == {(g, r) for c in owned.values() for g, gc in c.graphs.items() for r in gc.roles}
    assert len(seen) == len(of_kind(docs, "ScaledObject"))
