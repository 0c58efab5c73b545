"""`pdscaler explain` against a real `pdscaler serve` process (gRPC + HTTP side port on loopback)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("explain") / "c.yaml"
    cfg.write_text(subprocess.run([sys.executable, "-m", "scaler", "config", "example"], capture_output=True,
                                  text=True, check=True).stdout)
    grpc_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaler", "serve", "--config", str(cfg), "--port", str(grpc_port), "--host", "127.0.0.1",
         "--http-port", str(http_port), "--prometheus-url", "http://127.0.0.1:1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("serve did not come up: " + proc.communicate()[0])
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.communicate(timeout=10)


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
