"""load/bench_scaler.py, run tiny: a real `pdscaler serve`, a fake Prometheus, KEDA-like clients.

Checks the report's shape and that no request failed; no timing assertions (shared machine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scaler.testbench.processes import ManagedProcess

pytestmark = pytest.mark.load
ROOT = Path(__file__).resolve().parent.parent


def test_bench_scaler_tiny_run(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "load.bench_scaler", "--graphs", "5", "--clients", "5", "--duration", "5",
           "--idle", "4", "--poll-interval", "2", "--scrape-every", "1", "--baseline-graphs", "0",
           "--no-forecast-baseline", "--json", str(out)]
    p = ManagedProcess(cmd, name="load.bench_scaler", cwd=ROOT).start()
    try:
        rc = p.wait(240)
    finally:
        p.stop(timeout=30)  # and its scaler, fake Prometheus and clients with it (descendants)
    log = p.output()
    assert rc == 0, log[-3000:]
    assert "| main (5 graphs) | saturation |" in log

    report = json.loads(out.read_text())
    assert report["settings"]["clients"] == 5
    (main,) = report["results"]
    assert main["graphs"] == 5 and main["roles"] == 10 and main["forecast"] is True
    assert main["scaler_exit_code"] == 0
    assert main["rss_mib_peak_hwm"] > 0
    phases = {ph["mode"]: ph for ph in main["phases"]}
    assert set(phases) == {"idle", "realistic", "saturation"}
    for mode in ("realistic", "saturation"):
        ph = phases[mode]
        assert ph["errors"] == {} and ph["failed_client_processes"] == []
        assert ph["requests"] > 0 and ph["cycles"] > 0
        for method in ("GetMetricSpec", "GetMetrics", "IsActive", "all"):
            lat = ph["latency_ms"][method]
            assert lat["n"] > 0 and {"p50", "p90", "p99", "max"} <= set(lat)
    assert phases["realistic"]["schedule_lag_ms"]["n"] > 0
    for ph in phases.values():
        sc = ph["scaler"]
        assert {"cpu_pct", "rss_mib_mean", "rss_mib_max", "cpu_pct_by_thread"} <= set(sc)
        assert sc["rss_mib_max"] > 0
        fr = ph["freshness"]
        assert {"graphs_refreshed_within_interval", "refresh_interval_s", "poll", "decide", "collect"} <= set(fr)
    whole = main["freshness_whole_run"]
    assert whole["graphs_seen"] == 5 and whole["poll"]["polls"] >= 1
    stages = whole["stages"]  # the decision loop's stages, from the decision process's counters
    for stage in ("collect", "observe", "forecast", "decide", "publish", "send"):
        assert stages[stage]["n"] >= 1, stage
    assert stages["forecast"]["cpu_s_per"] > 0 and stages["send"]["cpu_s_per"] > 0
    assert abs(sum(stages[st]["share_of_loop_cpu_pct"] for st in ("collect", "observe", "forecast", "decide",
                                                                  "publish", "send")) - 100) < 1
    assert "| main (5 graphs) | " in log.split("loop CPU % of a core |", 1)[1]
