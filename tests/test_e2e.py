"""End to end with a real Prometheus (load/e2e.py): locust bursts against the emulated graph,
pdscaler reads Prometheus, the KEDA/HPA emulation applies its targets. One run (~3 minutes) for
all the assertions. `make e2e` runs this file alone."""

from __future__ import annotations

import shutil

import pytest

from load import e2e

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="needs the prometheus binary (make test installs it)"),
              pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dashboards.queries import dashboard_queries

    workdir = tmp_path_factory.mktemp("e2e")
    # every query, those that may be empty on a healthy system included (they must still run)
    queries = sorted({expr for _, _, expr in dashboard_queries(e2e.NAMESPACE, e2e.GRAPH, include_optional=True)})
    result = e2e.run(workdir, queries)
    (workdir / "result.json").write_text(result.to_json())
    return result, workdir


def values(result, name, start=None, end=None):
    return [v for t, v in result.series[name] if (start is None or t >= start) and (end is None or t <= end)]


def test_load_ran_without_failures(run):
    result, _ = run
    stats = {(s["method"], s["name"]): s for s in result.locust["stats"]}
    post = stats[("POST", "/v1/chat/completions")]
    assert result.locust["rc"] == 0 and post["num_failures"] == 0
    expected = e2e.RATE * (e2e.DURATION - e2e.BURST_FOR) + e2e.RATE * e2e.BURST_FACTOR * e2e.BURST_FOR
    assert abs(post["num_requests"] - expected) <= 0.02 * expected


def test_prefill_replicas_rise_during_the_burst_and_fall_after_it(run):
    result, _ = run
    b0, b1 = result.burst
    before = values(result, "target_prefill", end=b0)
    during = values(result, "target_prefill", b0, b1)
    # The baseline needs one replica; a cold start's calibrated headroom (a 2x prior) may hold two.
    assert before and 1 <= max(before) <= 2 < max(during)
    rise_at = next(t for t, v in result.series["target_prefill"] if t >= b0 and v > max(before))
    assert rise_at - b0 <= 20, "pdscaler asked for more prefill within 20 s of the burst"
    ready_before, ready_during = values(result, "ready_prefill", end=b0), values(result, "ready_prefill", b0, b1)
    assert max(ready_during) > max(ready_before), "new replicas were serving before the burst ended"
    after = values(result, "target_prefill", b1 + 30)
    assert after and after[-1] < max(during), "and were released after it"


def test_no_target_below_its_floor(run):
    result, _ = run
    for role in ("prefill", "decode", "warm"):
        floors = dict(result.series[f"min_{role}"])
        targets = result.series[f"target_{role}"]
        assert targets
        assert all(v >= floors.get(t, 0) for t, v in targets), role


def test_every_dashboard_query_returns_data(run):
    """Every query Prometheus answers without error; every one returns data but those the dashboards
    mark as needing what this run has not (dashboards.build.OPTIONAL, with the reason: e.g. cluster
    reads, off here)."""
    from dashboards.queries import dashboard_queries

    result, _ = run
    assert result.queries, "no dashboard queries were run"
    assert result.query_errors == {}
    required = {expr for _, _, expr in dashboard_queries(e2e.NAMESPACE, e2e.GRAPH)}
    assert required < set(result.queries)
    empty = sorted(q for q, n in result.queries.items() if n == 0)
    assert [q for q in empty if q in required] == []


def test_the_run_draws_its_picture(run):
    result, workdir = run
    png = workdir / "e2e.png"
    e2e.plot(result, png)
    assert png.stat().st_size > 20_000


def test_a_second_scaler_answers_like_the_first(run):
    """Restart / HA: a second `pdscaler serve` on the same config warm-starts from Prometheus' history
    and, from its first answer on (once its /healthz, the readiness probe, says so), answers every role
    as the running one does (KEDA round-robins)."""
    result, _ = run
    assert set(result.ha) == {"prefill", "decode", "warm"}
    for role, pairs in result.ha.items():
        assert len(pairs) >= 5 and all(a == b for a, b in pairs), (role, pairs)


def test_backtest_from_prometheus_replays_the_run(run):
    """`pdscaler backtest --prometheus` over the run, against the Prometheus that recorded it (serve's
    queries as range queries at a 5 s step): as-run's ready GPU-hours, read and replayed, are the
    ready replicas Prometheus recorded, integrated over time (each replica change may move the
    step-wise integral by up to a step, plus a scrape interval either side); the requests replayed
    are those locust sent; the
    pdscaler row is there, and the attainment Dynamo's histograms recorded."""
    result, workdir = run
    bt = result.backtest
    assert bt["rc"] == 0, bt["stderr"]
    report, step = bt["report"], bt["step_s"]
    runs = report["policies"]
    assert list(runs) == ["as-run", "oracle", "static-peak", "pdscaler"]
    span = report["prometheus"]["sim_end"] - report["prometheus"]["sim_start"]
    seconds = changes = 0.0
    for role in ("prefill", "decode"):
        ready = [v for _, v in bt[f"ready_{role}"]]
        assert len(ready) == span  # one sample a second (the emulator's own gauge)
        seconds += sum(ready)  # one GPU per replica
        changes += sum(abs(b - a) for a, b in zip(ready, ready[1:]))
    assert changes > 0, "the burst changed the replicas"
    tolerance = changes * (step + 2) / 3600
    assert runs["as-run"]["recorded_ready_gpu_hours"] == pytest.approx(seconds / 3600, abs=tolerance)
    assert runs["as-run"]["ready_gpu_hours"] == pytest.approx(seconds / 3600, abs=tolerance)  # replayed as it ran
    assert runs["as-run"]["gpu_hours"] >= runs["as-run"]["ready_gpu_hours"]  # plus start-ups and idle nodes
    stats = {(s["method"], s["name"]): s for s in result.locust["stats"]}
    sent = stats[("POST", "/v1/chat/completions")]["num_requests"]
    burst_rate = e2e.RATE * e2e.BURST_FACTOR
    for name, s in runs.items():
        assert s["requests"] == pytest.approx(sent, abs=burst_rate * step), name
    assert runs["pdscaler"]["gpu_hours"] > 0 and 0 <= runs["pdscaler"]["ttft_attainment"] <= 1
    ttft = report["recorded"]["ttft"]
    assert ttft["observations"] == pytest.approx(sent, abs=burst_rate * step) and 0 <= ttft["attainment"] <= 1
    assert "as-run" in bt["table"] and (workdir / "backtest.png").stat().st_size > 20_000
