"""`pdscaler explain` against a real `pdscaler serve` process (gRPC + HTTP side port on loopback)."""

import json
import subprocess
import sys

import pytest

from scaler.testbench.processes import free_port, serve_process, wait_http
from tests.conftest import example_config_file


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = example_config_file(tmp_path_factory.mktemp("explain") / "c.yaml")
    with serve_process(cfg, prometheus_url="http://127.0.0.1:1") as proc:
        # Ready for these tests once the first decision is published (/healthz waits longer with
        # Prometheus unreachable: first_answer_timeout).
        wait_http(proc.http_url + "/explain?graph=example", 60, "the first decision", proc=proc)
        yield proc.http_url


def explain(*args):
    return subprocess.run([sys.executable, "-m", "scaler", "explain", *args], capture_output=True, text=True, timeout=30)


def test_explain_prints_every_role_with_its_rule_and_why(server):
    r = explain("--graph", "example", "--server", server)
    assert r.returncode == 0, r.stderr
    assert "graph example" in r.stdout
    # Prometheus is unreachable: each role holds its floor and says why.
    assert "prefill (prefill): 1 replicas" in r.stdout and "decode (decode): 1 replicas" in r.stdout
    assert "no-data" in r.stdout or "missing-data" in r.stdout


def test_explain_json_has_the_decision_fields(server):
    r = explain("--graph", "example", "--server", server, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["graph"] == "example" and set(d["roles"]) == {"prefill", "decode", "warm"}
    role = d["roles"]["prefill"]
    assert role["replicas"] == 1 and role["rule"] in ("no-data", "missing-data") and role["steps"]


def test_explain_unknown_graph_names_the_configured_ones(server):
    r = explain("--graph", "nope", "--server", server)
    assert r.returncode == 1
    assert "unknown graph 'nope'" in r.stderr and "configured graphs: example" in r.stderr


def test_explain_without_a_server_says_how_to_get_one():
    r = explain("--graph", "example", "--server", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.returncode == 2 and "cannot reach" in r.stderr and "--http-port" in r.stderr
