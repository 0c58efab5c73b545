"""`pdscaler backtest --prometheus`: a graph's history read back from Prometheus (serve's queries as range
queries), turned into a workload and the replicas that ran, replayed; and its one-line errors. Against
tests/fake_prometheus.py over loopback (the real Prometheus: tests/test_e2e.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from scaler.cli import main
from scaler.config import ScalerConfig
from scaler.testbench.sim import history as hist
from scaler.testbench.sim.sizing import decode_tokens_per_s_per_replica
from tests.fake_prometheus import FakePrometheus

STEP = 60.0
END = 1_800_000_000.0  # a multiple of the step
N = 10
START = END - N * STEP
RATES = [2.0] * 5 + [4.0] * 5  # req/s per step
PREFILL = [1, 1, 1, 2, 2, 2, 2, 2, 1, 1]
DECODE = [1] * 10
ISL, OSL = 2000.0, 200.0


def history_of(rates=RATES, prefill=PREFILL, decode=DECODE, isl=ISL, osl=OSL, inflight=(4,) * N, skip=()):
    """A `ranges` answer: per query, the series of a graph whose steps are the lists above (None: no
    sample; `skip`: the signals with no series at all)."""

    def answer(query, start, end, step):
        if "worker_active_prefill_tokens" in query:
            values, name = prefill, "prefill"
        elif "worker_active_decode_blocks" in query:
            values, name = decode, "decode"
        elif "input_sequence_tokens" in query:
            values, name = [isl] * N, "isl"
        elif "output_sequence_tokens" in query:
            values, name = [osl] * N, "osl"
        elif "inflight_requests" in query:
            values, name = inflight, "inflight"
        else:
            values, name = rates, "rate"
        if name in skip:
            return []
        out = []
        t = start
        while t <= end + 1e-6:
            k = int(round((t - START) / STEP)) - 1
            if 0 <= k < N and values[k] is not None:
                out.append([t, str(values[k])])
            t += step
        return [{"metric": {}, "values": out}] if out else []

    return answer


@pytest.fixture
def prom():
    fake = FakePrometheus()
    fake.ranges = history_of()
    yield fake
    fake.close()


def _config(**source) -> ScalerConfig:
    roles = {"p": {"kind": "prefill", "component": "PrefillWorker"}, "d": {"kind": "decode"}}
    return ScalerConfig.model_validate({"source": {"kind": "prometheus", **source},
                                        "graphs": {"chat": {"namespace": "prod", "roles": roles}}})


def _read(url, config=None, **kw):
    cfg, graph = hist.history_config(config or _config(), "chat", None, url, STEP)
    return hist.read_history(cfg, graph, START, END, STEP, **kw)


def test_the_history_becomes_the_workload_and_the_replicas_that_ran(prom, monkeypatch):
    monkeypatch.setattr(hist, "RANGE_POINTS", 3)  # a range cut into requests of 3 points
    h = _read(prom.url)
    assert h.requests == 6 * 4  # six series, four requests each
    rep = hist.to_workload(h, dt=1.0)
    wl = rep.workload
    assert wl.n_sim == N * 60 and wl.sim_t0 == START and wl.start == 0
    assert wl.rate.sum() * wl.dt == pytest.approx(sum(r * STEP for r in RATES))
    assert np.all(wl.isl == ISL) and np.all(wl.osl == OSL)
    assert list(rep.replicas["prefill"][::60]) == PREFILL and list(rep.replicas["decode"][::60]) == DECODE
    assert len(rep.replicas["prefill"]) == wl.n_sim


def test_range_queries_are_the_ones_serve_sends_with_the_step_as_rate_window(prom):
    override = "sum(rate(my_requests{{{sel}}}[{window}]))"
    h = _read(prom.url, _config(queries={"request_rate": override}))
    assert h.queries[(None, "request_rate")] == 'sum(rate(my_requests{dynamo_namespace="prod-chat"}[60s]))'
    assert h.queries[("prefill", "ready_workers")] == \
        'count(dynamo_frontend_worker_active_prefill_tokens{dynamo_namespace="prod-chat",worker_type="prefill"})'
    assert set(h.queries.values()) <= set(prom.seen)


def test_without_a_config_the_graph_has_dynamos_defaults(prom):
    cfg, graph = hist.history_config(None, "demo", "default", prom.url, STEP)
    assert graph == "demo" and cfg.source.url == prom.url and cfg.source.rate_window == STEP
    qs = hist.queries(cfg, graph)
    assert qs[("decode", "ready_workers")] == \
        'count(dynamo_frontend_worker_active_decode_blocks{dynamo_namespace="default-demo",worker_type="decode"})'


def test_the_attainment_dynamos_histograms_recorded(prom):
    buckets = {"0.1": 10.0, "0.5": 50.0, "1": 90.0, "+Inf": 100.0}
    prom.series = [({"dynamo_namespace": "prod-chat", "le": le}, n) for le, n in buckets.items()]
    prom.series.append(({"dynamo_namespace": "prod-other", "le": "+Inf"}, 1000.0))  # another graph's
    rec = _read(prom.url, slo=(0.75, 0.03)).recorded
    assert rec["ttft"]["attainment"] == pytest.approx(0.7) and rec["ttft"]["observations"] == 100
    assert rec["itl"]["attainment"] == pytest.approx(0.03) and rec["itl"]["counts"] == "inter-token gaps"
    assert rec["ttft"]["query"] in prom.seen and f"[{END - START:.0f}s]" in rec["ttft"]["query"]


def test_gaps_in_the_history(prom):
    rates = list(RATES)
    rates[0] = None  # the graph's series start one step late
    rates[6] = None  # one step without a sample
    prefill = list(PREFILL)
    prefill[3] = None  # no worker reported while requests were recorded: none ready
    prom.ranges = history_of(rates=rates, prefill=prefill)
    rep = hist.to_workload(_read(prom.url))
    assert rep.workload.sim_t0 == START + STEP and rep.workload.n_sim == 9 * 60
    assert rep.workload.rate.sum() == pytest.approx(sum(r for r in rates if r) * STEP)
    assert list(rep.replicas["prefill"][::60]) == [1, 1, 0, 2, 2, 2, 2, 1, 1]
    assert any("1 of 9 steps without a request_rate" in n for n in rep.notes)
    assert any("start at" in n for n in rep.notes)


def test_arrivals_are_the_completions_plus_the_rise_of_the_requests_in_flight(prom):
    """Dynamo counts a request when it ends: in an overload the completions stay at what the graph
    serves while the requests in flight pile up; the arrivals are both."""
    inflight = [0, 0, 0, 60, 120, 120, 60, 0, 0, 0]
    prom.ranges = history_of(inflight=inflight)
    rate = hist.to_workload(_read(prom.url)).workload.rate[::60]
    rise = np.diff([0, *inflight]) / STEP
    assert list(rate) == pytest.approx(list(np.asarray(RATES) + rise))
    assert rate.sum() * STEP == pytest.approx(sum(RATES) * STEP)  # nothing left in flight at the end
    prom.ranges = history_of(skip=("inflight",))
    rep = hist.to_workload(_read(prom.url))
    assert list(rep.workload.rate[::60]) == RATES and any("no inflight_requests" in n for n in rep.notes)


def test_history_before_the_range_is_kept_for_the_warm_start(prom):
    h = _read(prom.url, history_s=4 * STEP)  # the fake has no data before START: trimmed
    rep = hist.to_workload(h)
    assert rep.workload.start == 0 and rep.workload.n_sim == N * 60
    assert all(len(v) == N + 4 and np.isnan(v[:4]).all() for v in h.series.values())
    series = {k: v[4:] for k, v in h.series.items()}
    h = hist.History(h.url, h.graph, START, STEP, N, 4, series, h.queries)  # the first 4 steps as history
    rep = hist.to_workload(h)
    assert rep.workload.start == 4 * 60 and rep.workload.n_sim == 6 * 60
    assert len(rep.replicas["prefill"]) == 6 * 60 and rep.replicas["prefill"][0] == PREFILL[4]


def test_as_run_replays_the_replicas_as_they_were_ready():
    """Each recorded replica is started a warm start-up before it was seen ready, on a GPU kept Ready
    (several at once too); those seen ready within the first warm start-up started before the range:
    they start with it, on GPUs kept Ready, and are ready a warm start-up in."""
    from scaler.testbench.sim.context import SimContext
    from scaler.testbench.sim.nodes import NodeSettings
    from scaler.testbench.sim.workload import synthetic

    n = 1200
    prefill = np.ones(n, int)
    prefill[30:] = 3  # seen ready 30 s in: started before the range
    prefill[600:900] = 7  # four more at 600 s, freed at 900 s
    decode = np.full(n, 2)
    ctx = SimContext(synthetic(np.full(n, 1.0), 1000, 100), nodes=NodeSettings(90.0, 210.0, 600.0))
    s = hist.replay_as_run(ctx, {"prefill": prefill, "decode": decode}).summary
    assert s["recorded_ready_gpu_hours"] == pytest.approx((prefill.sum() + decode.sum()) / 3600)
    late = 2 * (90 - 30) / 3600  # the two seen ready 30 s in, ready 90 s in
    assert s["ready_gpu_hours"] == pytest.approx(s["recorded_ready_gpu_hours"] - late)
    assert s["cold_starts"] == 0 and s["warm_starts"] == 2 + 4
    assert s["max_replicas"]["prefill"] == 7


def test_share_within_an_slo_from_histogram_buckets():
    b = {0.1: 10.0, 0.5: 50.0, 1.0: 90.0, math.inf: 100.0}
    assert hist.share_within(b, 0.5) == (0.5, 100.0)
    assert hist.share_within(b, 0.75) == (pytest.approx(0.7), 100.0)  # linear within (0.5, 1]
    assert hist.share_within(b, 0.05) == (pytest.approx(0.05), 100.0)
    assert hist.share_within(b, 5.0) == (0.9, 100.0)  # above the last finite bound: what is below it
    assert math.isnan(hist.share_within({0.5: 3.0}, 0.5)[0])  # no +Inf bucket: no total


def test_the_simulated_hardware_follows_the_graphs_capacity_profile(prom):
    profile = {"prefill": {"tokens_per_s": [{"isl": 512, "tokens_per_s": 50000}, {"isl": 4096, "tokens_per_s": 30000}]},
               "decode": {"itl_target_s": 0.02, "kv_tokens": 500000,
                          "tokens_per_s": [{"context": 1024, "tokens_per_s": 12000},
                                           {"context": 8192, "tokens_per_s": 6000}]}}
    cfg = ScalerConfig.model_validate({"graphs": {"chat": {"namespace": "prod", "profile": profile, "roles": {
        "p": {"kind": "prefill"}, "d": {"kind": "decode"}}}}})
    rep = hist.to_workload(_read(prom.url, cfg))
    hw, note = hist.hardware(cfg.graphs["chat"], rep.workload)
    cp = cfg.graphs["chat"].capacity_profile()
    assert hw.prefill.tokens_per_s == pytest.approx(cp.prefill.throughput(ISL))
    per_replica = decode_tokens_per_s_per_replica(hw, np.array([ISL]), np.array([OSL]), 0.02)[0]
    assert per_replica == pytest.approx(cp.decode.throughput(ISL + OSL / 2), rel=1e-6)
    assert hw.kv_tokens_per_replica == pytest.approx(500000, abs=16)
    assert "capacity profile" in note


def _backtest(url, tmp_path, *extra, config=None):
    cfg = tmp_path / "pdscaler.yaml"
    cfg.write_text(yaml.safe_dump(config or {"graphs": {"chat": {"namespace": "prod", "roles": {
        "prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}}}}))
    return main(["backtest", "--prometheus", url, "--config", str(cfg), "--end", f"{END:.0f}", "--range", "10m",
                 "--step", "1m", "--no-progress", *extra])


def test_backtest_reports_as_run_beside_pdscaler(prom, tmp_path, capsys):
    out = tmp_path / "bt.json"
    assert _backtest(prom.url, tmp_path, "--policies", "as-run,oracle,pdscaler", "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "backtest of graph chat from Prometheus" in table and "as-run" in table
    assert "hardware: the emulated H200" in table
    report = json.loads(out.read_text())
    runs = report["policies"]
    assert list(runs) == ["as-run", "oracle", "pdscaler"]
    ran = sum((p + d) * STEP for p, d in zip(PREFILL, DECODE)) / 3600
    s = runs["as-run"]
    assert s["recorded_ready_gpu_hours"] == pytest.approx(ran)
    assert s["ready_gpu_hours"] == pytest.approx(ran)  # the fluid model's ready replicas are the recorded ones
    assert s["cold_starts"] == 0 and s["warm_starts"] == 1  # the second prefill replica, started in time
    # billed: the second prefill replica's GPU from the range's start (a balloon pod provisions its node
    # ahead: the node takes 210 s, it is ready at 180 s) to its end (a freed node is kept 10 min)
    assert s["gpu_hours"] == pytest.approx(ran + (N * STEP - 5 * STEP) / 3600)
    for name in runs:
        assert runs[name]["requests"] == pytest.approx(sum(RATES) * STEP)
    assert report["prometheus"]["sim_start"] == START and report["prometheus"]["sim_end"] == END
    assert report["recorded"] == {}  # the fake has no histograms (the plot: tests/test_e2e.py)


@pytest.mark.parametrize("case, message", [
    ("unreachable", "cannot reach Prometheus at http://127.0.0.1:1"),
    ("no-ready", "has no ready_workers of the decode role of graph 'chat'"),
    ("no-rate", "has no request_rate of graph 'chat'"),
    ("idle", "no requests to graph 'chat'"),
    ("no-isl", "has no isl_mean of graph 'chat'"),
    ("http500", "refused the request_rate query (HTTP 500)"),
    ("two-series", "gave 2 series where 1 is expected"),
    ("unknown-graph", "unknown graph 'nope'; configured graphs: chat"),
    ("short-step", "has no value in 6 of 10 steps: rate() needs two samples in each 60s window"),
    ("both", "give --trace or --prometheus, not both"),
    ("step-dt", "--step (90s) must be a whole multiple of --dt (60s)"),
])
def test_what_stops_a_backtest_from_prometheus_is_one_line(prom, tmp_path, capsys, case, message):
    url, extra = prom.url, []
    if case == "unreachable":
        url = "http://127.0.0.1:1"
    elif case == "no-ready":
        prom.ranges = history_of(skip=("decode",))
    elif case == "no-rate":
        prom.ranges = history_of(skip=("rate",))
    elif case == "idle":
        prom.ranges = history_of(rates=[0.0] * N)
    elif case == "no-isl":
        prom.ranges = history_of(skip=("isl",))
    elif case == "http500":
        prom.mode = "http500"
    elif case == "two-series":
        one = history_of()
        prom.ranges = lambda *a: one(*a) * 2
    elif case == "short-step":  # a window too short for the scrape interval: most steps without a rate
        prom.ranges = history_of(rates=[2.0, None, None, 2.0, None, None, 2.0, None, None, 2.0])
    elif case == "unknown-graph":
        extra = ["--graph", "nope"]
    elif case == "both":
        extra = ["--trace", "azure-code"]
    elif case == "step-dt":
        extra = ["--step", "90s", "--dt", "60"]
    assert _backtest(url, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pdscaler backtest: ") and message in err, err


def test_backtest_needs_a_trace_or_prometheus(capsys):
    assert main(["backtest", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == \
        "pdscaler backtest: give --trace (a trace to replay) or --prometheus URL (a graph's own history)"
