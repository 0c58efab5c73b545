"""The baselines a user would pick instead of pdscaler (planner-load, llmd-keda, static-best) and the
attainment / GPU-hours frontier (`pdscaler frontier`)."""

import json
import math

import numpy as np
import pytest

from scaler.cli import main
from scaler.testbench.sim.actuation import HpaActuator
from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.policies import DEFAULT_POLICIES, make_policy
from scaler.testbench.sim.policies.static import StaticSize
from scaler.testbench.sim.policies.static_best import search_static
from scaler.testbench.sim.replay import replay
from scaler.testbench.sim.workload import synthetic

ISL, OSL = 2000, 100
V_P = 40_000.0  # the emulated profile's prefill tokens/s per replica


def _ctx(rate, isl=ISL, osl=OSL, **kw) -> SimContext:
    return SimContext(synthetic(np.asarray(rate, float), isl, osl), **kw)


def test_the_baselines_are_in_the_default_backtest():
    assert {"planner-load", "llmd-keda", "static-best"} <= set(DEFAULT_POLICIES)


# -- planner-load ---------------------------------------------------------------------------------


def _changes(tel, role):
    d = tel.cols[f"desired_{role}"][: tel.i]
    return np.flatnonzero(np.diff(d)) + 1, np.diff(d)


def test_planner_load_adds_one_replica_at_a_time_and_nothing_while_a_change_is_pending():
    rate = np.full(1800, 20.0)
    rate[300:] = 200.0  # 10 prefill replicas' worth from minute 5: every engine's TTFT estimate breaks the SLO
    run = replay("planner-load", _ctx(rate), keep_telemetry=True)
    tel, c = run.telemetry, run.telemetry.cols
    steps, diffs = _changes(tel, "prefill")
    assert run.summary["max_replicas"]["prefill"] >= 5  # it did climb
    assert set(np.unique(diffs[diffs != 0])) <= {-1, 1}  # +-1 per change
    assert run.summary["load_changes"]["prefill_up"] >= 4
    every = sorted(set(steps) | set(_changes(tel, "decode")[0]))
    for i in every:  # each change decided with both roles settled (desired == ready) the step before
        assert c["desired_prefill"][i - 1] == c["ready_prefill"][i - 1]
        assert c["desired_decode"][i - 1] == c["ready_decode"][i - 1]
    # one change per role per decision, and none before the previous one is ready (90 s warm start)
    ups = [i for i in steps if c["desired_prefill"][i] > c["desired_prefill"][i - 1]]
    assert all(b - a >= 90 for a, b in zip(ups, ups[1:]))
    assert run.summary["adjustments_skipped_pending"] > 0


def test_planner_load_scales_down_one_step_only_when_the_survivors_stay_under_slo_times_sensitivity():
    pl = make_policy("planner-load", _ctx(np.full(60, 1.0)))
    pl.isl, pl.osl = ISL, OSL
    slo = 0.5
    est = pl.ttft_estimate
    # own prefill 2000 / 40k + 5 ms = 55 ms; under SLO x 0.8 = 0.4 s while q < 13.8k tokens
    assert est(10_000) < 0.8 * slo < est(20_000)
    assert pl._decide(2, est, 20_000, slo) == 1  # 0.555 s on every engine: over the SLO, +1
    assert pl._decide(2, est, 14_000, slo) == 0  # 0.405 s: under the SLO, over SLO x sensitivity: hold
    # 10k tokens each is under 0.4 s, but the survivor would carry 20k (0.555 s): no scale-down
    assert pl._decide(2, est, 10_000, slo) == 0
    assert pl._decide(2, est, 5_000, slo) == -1  # the survivor's 10k: 0.305 s < 0.4 s
    assert pl._decide(1, est, 0.0, slo) == 0  # never below one engine
    # with 4 engines the survivors carry 4/3 of the load: 9k each -> 12k < 13.8k: -1; 11k -> 14.7k: 0
    assert pl._decide(4, est, 9_000, slo) == -1 and pl._decide(4, est, 11_000, slo) == 0
    # decode: ITL at (scheduled + queued) KV / context; the survivors' KV must also fit the cache
    itl = pl.itl_estimate
    ctx_len = ISL + OSL / 2
    assert itl(600 * ctx_len) == pytest.approx(0.030)  # 6 ms + 40 us x 600 sequences
    assert pl._decide(3, itl, 700 * ctx_len, 0.030) == 1
    kv = float(pl.ctx.profile.kv_tokens_per_replica)
    assert pl._decide(3, itl, 10 * ctx_len, 0.030, fits=lambda x: x < kv) == -1
    assert pl._decide(3, itl, 10 * ctx_len, 0.030, fits=lambda x: False) == 0


def test_planner_load_on_a_falling_load_steps_down_and_then_holds_steady():
    rate = np.full(3600, 40.0)  # 2 prefill replicas' worth
    rate[:600] = 300.0  # 15 replicas' worth for the first 10 minutes
    run = replay("planner-load", _ctx(rate), keep_telemetry=True)
    c, n = run.telemetry.cols, run.telemetry.i
    steps, diffs = _changes(run.telemetry, "prefill")
    assert set(np.unique(diffs[diffs != 0])) <= {-1, 1}
    assert run.summary["load_changes"]["prefill_down"] >= 5
    assert c["desired_prefill"][n - 1] < c["desired_prefill"][600]
    # constant load at the end: no 2 <-> 1 (or N <-> N-1) oscillation in the last 15 minutes
    assert not any(i > n - 900 for i in steps)


# -- llmd-keda ------------------------------------------------------------------------------------


def test_llmd_keda_replica_counts_are_the_recipes_formula():
    pol = make_policy("llmd-keda", _ctx(np.full(600, 50.0)))
    threshold = 0.5 - ISL / V_P  # TTFT SLO - ISL / V_p = 0.45 s
    assert pol.prefill_threshold_s == pytest.approx(threshold) and not pol.threshold_floored
    window = {"prefill_queued_tokens": 90_000.0, "kv_usage": 0.5, "ready_decode": 5.0}
    want = {"prefill": math.ceil(90_000 / V_P / threshold), "decode": math.ceil(0.5 * 5 / 0.8)}
    assert want == {"prefill": 5, "decode": 4}
    assert pol.replicas_for(window) == want
    # ... and what KEDA + the HPA make of the triggers' values (outside the tolerance, scale-up)
    metrics = pol.metrics(window)
    for role in ("prefill", "decode"):
        act = HpaActuator(pol.scaled_object(role))
        assert act.sync(0.0, metrics[role], 1, 1) == min(want[role], pol.scaled_object(role).max_replicas)
    # an ISL whose prefill leaves < 50 ms of the SLO: the threshold is floored, and says so
    long = make_policy("llmd-keda", _ctx(np.full(600, 5.0), isl=19_000))
    assert long.prefill_threshold_s == 0.05 and long.threshold_floored
    assert long.stats()["prefill_threshold_floored"] is True


def test_llmd_keda_follows_a_queue_through_the_hpa():
    rate = np.full(1800, 20.0)
    rate[600:] = 150.0  # 7.5 prefill replicas' worth
    s = replay("llmd-keda", _ctx(rate)).summary
    assert s["actuation"] == "keda-hpa" and s["max_replicas"]["prefill"] >= 7


# -- static-best ----------------------------------------------------------------------------------


def test_static_best_is_the_smallest_size_reaching_the_target():
    t = np.arange(1800)
    rate = 160 + 60 * np.sin(t / 120.0)  # 5-11 prefill replicas' worth; 1-2 decode
    ctx = _ctx(rate)
    found = search_static(ctx, 0.99)
    p, d = found.sizes["prefill"], found.sizes["decode"]
    assert d >= 2 and p >= 2 and not found.bounded
    at = replay(StaticSize(ctx, p, d), ctx).summary
    assert at["ttft_attainment"] >= 0.99 and at["itl_attainment"] >= 0.99
    assert replay(StaticSize(ctx, p - 1, d), ctx).summary["ttft_attainment"] < 0.99
    assert replay(StaticSize(ctx, p, d - 1), ctx).summary["itl_attainment"] < 0.99
    s = replay("static-best", ctx).summary
    assert s["max_replicas"] == {"prefill": p, "decode": d} and s["scale_events"] == 0
    assert s["static_search"]["sizes"] == {"prefill": p, "decode": d}
    peak = replay("static-peak", ctx).summary
    assert s["gpu_hours"] <= peak["gpu_hours"]


def test_static_best_takes_static_peaks_attainment_when_the_target_is_out_of_reach():
    # 30k-token prompts take 0.75 s to prefill on one replica: no size meets a 0.5 s TTFT
    ctx = _ctx(np.full(600, 2.0), isl=30_000)
    found = search_static(ctx, 0.99)
    assert found.targets["ttft"] == 0.0 and found.sizes["prefill"] == 1


# -- the frontier ---------------------------------------------------------------------------------


def test_frontier_returns_points_per_policy_and_the_headline(tmp_path):
    from scaler.testbench.sim.frontier import run_frontier

    t = np.arange(900)
    ctx = _ctx(60 + 30 * np.sin(t / 90.0))
    policies = ["oracle", "static", "reactive-ttft", "llmd-keda", "planner-load", "pdscaler"]
    fr = run_frontier("synthetic", ctx, policies)
    groups = fr.by_policy()
    assert set(groups) == set(policies)
    assert len(groups["oracle"]) == 1 and len(groups["reactive-ttft"]) == 5 and len(groups["planner-load"]) == 5
    assert len(groups["pdscaler"]) >= 16 and len(groups["static"]) >= 4
    for pts in groups.values():
        assert any(p.pareto for p in pts)
    doc = json.loads(json.dumps(fr.to_json(), allow_nan=False))
    h = doc["headline"]
    assert h["oracle"]["gpu_hours"] > 0 and h["target"] == 0.99
    # static-best is on the static line and reaches the target, so some baseline does
    assert h["baseline"] is not None and h["baseline"]["gpu_hours"] <= min(
        p["gpu_hours"] for p in doc["policies"]["static"] if "(static-best)" in p["knob"])
    assert doc["static_best"]["sizes"]["prefill"] >= 1
    text = fr.table()
    assert "pdscaler at >= 99%" in text and "cheapest baseline at >= 99%" in text and "oracle:" in text
    fr.plot(str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_frontier_knobs_go_over_the_users_config():
    from scaler.testbench.sim.frontier import pdscaler_overrides

    user = {"forecast": {"model": "auto"}, "graphs": {"mine": {"roles": {
        "p": {"kind": "prefill", "max_replicas": 40}, "d": {"kind": "decode"}}}}}
    doc = pdscaler_overrides(user, forecast={"quantile": 0.7, "quantiles": [0.5, 0.7, 0.9]},
                             roles={"prefill": {"prefill": {"target_utilization": 0.9}}})
    assert doc["forecast"] == {"model": "auto", "quantile": 0.7, "quantiles": [0.5, 0.7, 0.9]}
    assert doc["graphs"]["mine"]["roles"]["p"] == {"kind": "prefill", "max_replicas": 40,
                                                   "prefill": {"target_utilization": 0.9}}
    assert user["graphs"]["mine"]["roles"]["p"] == {"kind": "prefill", "max_replicas": 40}  # not mutated
    fresh = pdscaler_overrides(None, slo={"attainment": 0.95})
    assert fresh["graphs"]["sim"]["slo"] == {"attainment": 0.95}
    assert {r["kind"] for r in fresh["graphs"]["sim"]["roles"].values()} == {"prefill", "decode"}


def test_frontier_cli(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert main(["frontier", "--trace", "azure-code", "--duration", "300", "--rate-scale", "5",
                 "--policies", "oracle,static,planner-load", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("frontier ") and "cheapest baseline" in text
    doc = json.loads(out.read_text())
    assert set(doc["policies"]) == {"oracle", "static", "planner-load"}
    assert main(["frontier", "--trace", "azure-code", "--duration", "60", "--policies", "nope",
                 "--no-progress"]) == 2
    assert "unknown frontier policy" in capsys.readouterr().err
