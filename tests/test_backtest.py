"""The replay simulator and `pdscaler backtest`: policies, HPA semantics, report, CLI."""

import json
import math

import numpy as np
import pytest

from scaler.cli import main
from scaler.testbench.sim.actuation import HpaActuator, ScaledObject
from scaler.testbench.sim.backtest import run_backtest
from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.replay import replay
from scaler.testbench.sim.workload import synthetic

ISL, OSL = 2000, 100


def _ctx(rate, **kw) -> SimContext:
    return SimContext(synthetic(np.asarray(rate, float), ISL, OSL), **kw)


def test_oracle_never_breaches_a_smooth_ramp_with_known_delays():
    t = np.arange(3 * 3600)
    rate = 10 + 290 * np.clip(np.minimum(t, 3 * 3600 - t) / 3600, 0, 1)  # up to 300 req/s and back
    ctx = _ctx(rate)
    s = replay("oracle", ctx).summary
    assert s["ttft_attainment"] == 1.0 and s["itl_attainment"] == 1.0
    assert s["max_replicas"]["prefill"] == math.ceil(300 * ISL / 40_000)
    # the ramp outgrows the nodes: balloon pods provisioned them ahead, so every start was warm
    assert s["max_replicas"]["warm"] > 0 and s["cold_starts"] == 0 and s["warm_starts"] > 0
    # it pays for much less than the peak all the time
    peak = replay("static-peak", ctx).summary
    assert s["gpu_hours"] < 0.85 * peak["gpu_hours"]


def test_static_peak_breaches_nothing_and_costs_peak_times_hours():
    rate = np.full(7200, 50.0)
    rate[3000:3300] = 180.0
    s = replay("static-peak", _ctx(rate)).summary
    assert s["ttft_attainment"] == 1.0 and s["itl_attainment"] == 1.0
    need_p, need_d = math.ceil(180 * ISL / 40_000), 2  # 18k decode tokens/s > one replica's ~15.8k
    assert s["max_replicas"] == {"prefill": need_p, "decode": need_d}
    assert s["gpu_hours"] == pytest.approx((need_p + need_d) * 2.0)
    assert s["scale_events"] == 0


def test_reactive_ttft_breaches_on_a_burst_shorter_than_the_start_up_delay_and_the_oracle_does_not():
    rate = np.full(3600, 20.0)
    rate[1800:1860] = 200.0  # 60 s: over before a replica started at its onset (90 s) is ready
    ctx = _ctx(rate)
    reactive = replay("reactive-ttft", ctx).summary
    oracle = replay("oracle", ctx).summary
    assert reactive["ttft_attainment"] < 0.95
    assert reactive["p99_ttft_s"] > 1.0
    assert reactive["scale_events"] > 0  # it did react, too late
    assert oracle["ttft_attainment"] == 1.0


def test_planner_sizes_a_steady_load_by_throughput():
    s = replay("planner", _ctx(np.full(1800, 100.0))).summary
    assert s["max_replicas"]["prefill"] == 5  # 100 x 2000 / 40k
    assert s["ttft_attainment"] == 1.0


def test_hpa_tolerance_swallows_a_one_replica_change_at_ten_replicas():
    act = HpaActuator(ScaledObject())
    assert act.sync(0.0, 11.0, 10, 10) == 10 and act.held == 1  # |11/10 - 1| <= 0.1
    assert act.sync(15.0, 12.0, 10, 10) == 12
    assert act.sync(30.0, 3.0, 12, 12) == 3  # no stabilisation, no rate limit


def test_json_report_schema():
    rate = np.full(1200, 40.0)
    bt = run_backtest("synthetic", _ctx(rate), ["oracle", "static-peak", "reactive-ttft"])
    doc = json.loads(json.dumps(bt.to_json(), allow_nan=False))
    assert doc["trace"] == "synthetic"
    assert set(doc["policies"]) == {"oracle", "static-peak", "reactive-ttft"}
    for p in doc["policies"].values():
        for key in ("ttft_attainment", "itl_attainment", "gpu_hours", "p99_ttft_s"):
            assert isinstance(p[key], float)
        assert 0 <= p["ttft_attainment"] <= 1 and 0 <= p["itl_attainment"] <= 1
        assert isinstance(p["scale_events"], int)
        assert set(p["max_replicas"]) >= {"prefill", "decode"}
        assert all(isinstance(v, int) for v in p["max_replicas"].values())
    assert doc["policies"]["oracle"]["gpu_hours_vs_oracle"] == 1.0
    assert "static-peak" in bt.table()


def test_cli_end_to_end_on_a_slice_of_a_bundled_trace(tmp_path, capsys):
    out, png = tmp_path / "bt.json", tmp_path / "bt.png"
    rc = main(["backtest", "--trace", "azure-code", "--rate-scale", "10", "--duration", "10m", "--start", "5m",
               "--policies", "static-peak,oracle,reactive-ttft,pdscaler", "--json", str(out), "--plot", str(png),
               "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "pdscaler" in table and "oracle" in table
    doc = json.loads(out.read_text())
    assert list(doc["policies"]) == ["static-peak", "oracle", "reactive-ttft", "pdscaler"]
    assert doc["workload"]["simulated_s"] == 600
    assert doc["policies"]["pdscaler"]["engine_calls"] == 39  # every 15 s of 10 minutes, once data exists
    assert doc["policies"]["static-peak"]["ttft_attainment"] == 1.0
    assert png.stat().st_size > 10_000


def test_cli_rejects_an_unknown_policy(capsys):
    assert main(["backtest", "--trace", "azure-code", "--duration", "60", "--policies", "nope", "--no-progress"]) == 2
    assert "unknown policies" in capsys.readouterr().err


def test_config_overrides_reach_the_engine_and_bad_configs_name_the_field(tmp_path, capsys):
    from scaler.config import RoleConfig, ScalerConfig, Slo
    from scaler.testbench.sim.engine_config import GRAPH, merge_overrides

    user = {"forecast": {"quantile": 0.5}, "source": {"kind": "scrape", "targets": {}},
            "graphs": {"mine": {"gpu_budget": 12, "roles": {
                "p": {"kind": "prefill", "stabilisation": {"scale_down": "2m"}}, "w": {"kind": "warm", "max_replicas": 3}}}}}
    generated = ScalerConfig.model_validate({"poll_interval": 15, "graphs": {GRAPH: {"slo": {"ttft_s": 0.5}, "roles": {
        "prefill": {"kind": "prefill", "max_replicas": 50}, "decode": {"kind": "decode"}, "warm": {"kind": "warm"}}}}})
    merged = merge_overrides(generated, user)
    g = merged.graphs[GRAPH]
    assert merged.forecast.quantile == 0.5 and merged.source == generated.source  # the simulator is the source
    assert g.gpu_budget == 12 and g.slo == Slo(ttft_s=0.5)
    assert g.roles["prefill"] == RoleConfig(kind="prefill", max_replicas=50, stabilisation={"scale_down": "2m"})
    assert g.roles["warm"].max_replicas == 3 and g.roles["decode"] == generated.graphs[GRAPH].roles["decode"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("graphs:\n  g:\n    roles:\n      p: {kind: prefill, max_replicas: -3}\n")
    assert main(["backtest", "--trace", "azure-code", "--duration", "60", "--policies", "pdscaler",
                 "--config", str(bad), "--no-progress"]) == 2
    assert "graphs.g.roles.p.max_replicas" in capsys.readouterr().err


def test_compare_sees_a_moved_figure_and_ignores_timings():
    from scaler.testbench.sim.compare import differences

    before = {"wall_s": 1.0, "policies": {"pdscaler": {"gpu_hours": 18.8, "engine_ms_per_call": 0.4,
                                                       "decision_rules": {"prefill:forecast": 10}}}}
    timing_only = {"wall_s": 9.0, "policies": {"pdscaler": {"gpu_hours": 18.8, "engine_ms_per_call": 3.0,
                                                            "decision_rules": {"prefill:forecast": 10}}}}
    assert differences(before, timing_only) == []
    moved = {"wall_s": 1.0, "policies": {"pdscaler": {"gpu_hours": 19.0, "decision_rules": {"prefill:capacity": 10}}}}
    assert differences(before, moved) == ["/policies/pdscaler/decision_rules/prefill:capacity: only in after",
                                          "/policies/pdscaler/decision_rules/prefill:forecast: only in before",
                                          "/policies/pdscaler/gpu_hours: 18.8 -> 19.0"]
