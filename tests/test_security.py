"""No secrets in logs: a Prometheus password in the URL and a Kubernetes bearer token never appear
in what `pdscaler serve` prints, even at debug level and while both endpoints fail."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from scaler.testbench.processes import free_port, wait_until
from tests.conftest import metric_total

SECRET_PASSWORD = "pw-3f9c2b7e"
SECRET_TOKEN = "tok-8d1a6c4f0b"


@pytest.mark.slow  # a real serve, several 1 s polls
def test_serve_logs_no_credentials(tmp_path, serve):
    dead = free_port()  # nothing listens: every request fails and is logged
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{dead}"}}],
        "users": [{"name": "u", "user": {"token": SECRET_TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    example = yaml.safe_load(subprocess.run([sys.executable, "-m", "scaler", "config", "example"],
                                            capture_output=True, text=True, check=True, timeout=60).stdout)
    example["kubernetes"] = {"enabled": True, "kubeconfig": str(kubeconfig), "timeout": "0.5s", "interval": "1s",
                             "ownership_interval": "1s"}
    example["poll_interval"] = "1s"
    for role in example["graphs"]["example"]["roles"].values():
        role.pop("scale_target", None)
    cfg = tmp_path / "pdscaler.yaml"
    cfg.write_text(yaml.safe_dump(example))
    proc = serve(cfg, log_level="debug", prometheus_url=f"http://admin:{SECRET_PASSWORD}@127.0.0.1:{dead}")
    # Both failures logged, then several polls (and cluster reads, on the same 1 s cadence), all failing.
    for failure in ("prometheus unreachable", "GET /apis/", "connection refused or unreachable"):
        proc.wait_for_output(re.escape(failure), 60)
    polls = metric_total(proc.http_url + "/metrics", "pdscaler_polls_total")
    wait_until(lambda: metric_total(proc.http_url + "/metrics", "pdscaler_polls_total") >= polls + 3, 60,
               "three more polls")
    proc.stop()
    out = proc.output()
    assert "prometheus unreachable" in out, out[-2000:]  # the failures were logged...
    assert "GET /apis/" in out and "connection refused or unreachable" in out, out[-2000:]
    assert SECRET_PASSWORD not in out
    assert SECRET_TOKEN not in out
