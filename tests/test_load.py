"""load/: real headless locust runs (subprocesses) against a real emulator on loopback.

Locust is never imported here: it monkey-patches the standard library with gevent on import, which
would leak into the rest of the test session. The schedules (load/schedules.py, plain Python) are
loaded by path for the unit tests.
"""

from __future__ import annotations

import csv
import json
import importlib.util
import math
import re
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from scaler.testbench.emulator.app import Emulator
from scaler.testbench.processes import ManagedProcess, free_port, wait_until
from scaler.testbench.traces import bundled_trace, load_trace
from tests.conftest import BackgroundLoop

pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust not installed")

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "load" / "locustfile.py"
CHAT = "/v1/chat/completions"


def _load_schedules():
    spec = importlib.util.spec_from_file_location("pdscaler_load_schedules", REPO / "load" / "schedules.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


schedules = _load_schedules()


# --------------------------------------------------------------------------- servers on loopback


async def _broken_app() -> tuple[web.AppRunner, str]:
    """An OpenAI look-alike that fails every way a stream can: HTTP 500, and a stream cut before [DONE]."""
    calls = {"n": 0}

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        calls["n"] += 1
        if calls["n"] % 2:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":" hi"}}]}\n\n')
        await resp.write_eof()  # no [DONE]
        return resp

    app = web.Application()
    app.add_routes([web.get("/v1/models", models), web.post(CHAT, chat)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture(scope="module")
def servers():
    """One emulator (4 prefill, 2 decode replicas so the bursty trace does not queue for long) and the
    broken server, on ephemeral loopback ports, for the whole module."""
    bg = BackgroundLoop()
    emu = Emulator(replicas={"prefill": 4, "decode": 2})
    bg.run(emu.start("127.0.0.1", 0))
    broken, broken_url = bg.run(_broken_app())
    try:
        yield SimpleNamespace(emu=emu, url=emu.url, broken_url=broken_url)
    finally:
        bg.run(broken.cleanup())
        bg.run(emu.stop())
        bg.close()


def scrape(url: str) -> dict[str, float]:
    """Emulator counters: requests, ISL sum/count, output tokens."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"requests": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "dynamo_frontend_requests_total":
                out["requests"] += s.value
            elif s.name == "dynamo_frontend_input_sequence_tokens_sum":
                out["isl_sum"] = s.value
            elif s.name == "dynamo_frontend_input_sequence_tokens_count":
                out["isl_count"] = s.value
            elif s.name == "dynamo_frontend_output_tokens_total":
                out["output_tokens"] = s.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# --------------------------------------------------------------------------- running locust


def locust_cmd(host: str, prefix: Path, *args: str, json_file: bool = True) -> list[str]:
    """--json-file: exact final stats (printed summary and error report are then left out)."""
    out = ["--json-file", str(prefix)] if json_file else ["--only-summary"]
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
            "--csv", str(prefix), *out, "--loglevel", "INFO", *args]


def locust(cmd: list[str], cwd: Path, name: str = "locust") -> ManagedProcess:
    """A locust process, started (its output kept; stopped by the test's `finally` or at exit)."""
    return ManagedProcess(cmd, name=name, cwd=cwd).start()


def run_locust(tmp_path: Path, host: str, *args: str, json_file: bool = True, timeout: float = 40) -> SimpleNamespace:
    prefix = tmp_path / "run"
    p = locust(locust_cmd(host, prefix, *args, json_file=json_file), tmp_path)
    try:
        rc = p.wait(timeout)
    finally:
        p.stop()
    return SimpleNamespace(rc=rc, log=p.output(), csv=read_csv(prefix), stats=read_stats(prefix) if json_file else None)


def read_stats(prefix: Path) -> dict[tuple[str, str], dict]:
    """Final stats from --json-file (the --csv files are rewritten once a second, not at exit, so a
    -t run's CSV can miss its last second)."""
    entries = json.loads(Path(f"{prefix}.json").read_text())
    return {(e["method"], e["name"]): e for e in entries}


def read_csv(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def count(stats, rtype: str, name: str = CHAT) -> int:
    e = stats.get((rtype, name))
    return int(e["num_requests"]) if e else 0


def fails(stats, rtype: str = "POST", name: str = CHAT) -> int:
    return int(stats[(rtype, name)]["num_failures"])


def avg_ms(stats, rtype: str, name: str = CHAT) -> float:
    e = stats[(rtype, name)]
    return e["total_response_time"] / e["num_requests"]


def max_ms(stats, rtype: str, name: str = CHAT) -> float:
    return float(stats[(rtype, name)]["max_response_time"])


def origin_of(log: str) -> float:
    m = re.search(r"origin ([0-9.]+) \(unix\)", log)
    assert m, log[-3000:]
    return float(m.group(1))


# --------------------------------------------------------------------------- schedules (no locust)


def opts(**kw) -> SimpleNamespace:
    base = dict(trace="", trace_format="", isl=100, osl=10, seed=0, speedup=1.0, trace_start=0.0,
                trace_duration=0.0, max_requests=0, rate_scale=1.0, rates="", series="", day_minutes=10.0,
                curve_start=0.0, curve_hours=24.0, peak_rate=10.0, rate=2.0, duration=60.0, burst_factor=4.0,
                burst_at=20.0, burst_for=15.0, arrivals="poisson")
    base.update(kw)
    return SimpleNamespace(**base)


def test_schedules_rates_shares_and_pool():
    s = schedules.build_burst(opts(rate=5, burst_factor=4, burst_at=3, burst_for=3, duration=9, arrivals="uniform"))
    t = np.array([a.t for a in s.arrivals])
    assert len(t) == 5 * 6 + 20 * 3
    assert ((t >= 3) & (t < 6)).sum() == 60 and (t < 3).sum() == 15
    p = schedules.build_burst(opts(rate=50, burst_factor=1, duration=100, seed=3))
    assert abs(len(p.arrivals) - 5000) < 4 * math.sqrt(5000)  # Poisson count
    assert len(s.share(0, 2)) + len(s.share(1, 2)) == len(s.arrivals)
    assert s.share(1, 2)[0] == s.arrivals[1]
    # 20 req/s for 3 s peaks at 20 arrivals per 1 s window: 20 * 1.2 + 2
    assert schedules.pool_size(s.arrivals, 1.0) == 26
    tr = schedules.build_trace(opts(trace="azure-code", trace_duration=40, speedup=8))
    expect = [r for r in load_trace(bundled_trace("azure-code")) if r.t < 40]
    assert [(a.isl, a.osl) for a in tr.arrivals] == [(r.isl, r.osl) for r in expect]
    assert tr.arrivals[-1].t == pytest.approx(expect[-1].t / 8) and tr.duration == 5.0


def write_servegen(path: Path) -> None:
    """A tiny ServeGen-format rate CSV: two series, a day at 10-minute steps, one zero (gap) window."""
    rows = ["category_model,t_s,total_rate_rps,active_clients"]
    for series, base in (("language/m-large", 200.0), ("language/m-mid", 1800.0)):
        for k in range(145):
            t = 600 * k
            rate = base * (1 + 0.5 * math.sin(2 * math.pi * t / 86_400))
            rows.append(f"{series},{t},{0.0 if k == 40 else rate:.4f},{40}")
    path.write_text("\n".join(rows) + "\n")


def test_diurnal_schedule_follows_the_curve_and_fills_gaps(tmp_path):
    rates = tmp_path / "rates.csv"
    write_servegen(rates)
    s = schedules.build_diurnal(opts(rates=str(rates), series="language/m-large", day_minutes=1.0, peak_rate=20,
                                     arrivals="uniform"))
    assert s.duration == pytest.approx(60.0)
    # Expected: the curve's mean over the day is its base (the sine averages out): 20 / 1.5 req/s peak-scaled.
    assert len(s.arrivals) == pytest.approx(60 * 20 / 1.5, rel=0.02)
    t = np.array([a.t for a in s.arrivals])
    first, third = ((t < 15).sum(), ((t >= 30) & (t < 45)).sum())
    assert first > 1.5 * third  # the sine's high quarter vs its low quarter
    window_40 = ((t >= 40 * 600 / 1440) & (t < 41 * 600 / 1440)).sum()  # the zero row is interpolated over
    assert window_40 > 0
    with pytest.raises(ValueError, match="several series"):
        schedules.build_diurnal(opts(rates=str(rates)))


# --------------------------------------------------------------------------- locust against the emulator


@pytest.mark.load  # a real locust run
def test_closed_loop_streams_ttft_itl_and_exact_isl(servers, tmp_path):
    before = scrape(servers.url)
    r = run_locust(tmp_path, servers.url, "-u", "2", "-r", "10", "-t", "4s", "--isl", "300", "--osl", "24",
                   "--html", str(tmp_path / "report.html"))
    # requests cut at -t still finish in the emulator
    wait_until(lambda: servers.emu.sim.inflight_requests == 0, 30, "the emulator's requests finished")
    d = delta(scrape(servers.url), before)
    assert r.rc == 0, r.log[-3000:]
    n = count(r.stats, "POST")
    assert n >= 5 and fails(r.stats) == 0
    assert count(r.stats, "GET", "/v1/models") == 1  # the model name was asked once
    assert count(r.stats, "TTFT") == n and count(r.stats, "ITL") == n
    ttft, itl, e2e = avg_ms(r.stats, "TTFT"), avg_ms(r.stats, "ITL"), avg_ms(r.stats, "POST")
    # Emulator profile: prefill 300 tokens at 40k tok/s + one 15 ms tick; decode ~6 ms per token.
    assert 0 < ttft < 200 and 2 < itl < 30 and e2e > ttft + 20 * itl * 0.8
    assert n <= d["requests"] <= n + 2  # plus the 2 users' requests cut by -t
    assert d["isl_sum"] == 300 * d["isl_count"]  # 1200 characters -> exactly 300 tokens
    assert d["output_tokens"] == 24 * d["requests"]  # max_tokens = OSL
    for rtype in ("TTFT", "ITL"):  # the extra rows are in locust's CSV too
        assert float(r.csv[(rtype, CHAT)]["Average Response Time"]) > 0
        assert int(r.csv[(rtype, CHAT)]["Request Count"]) > 0
    assert "TTFT" in (tmp_path / "report.html").read_text()


@pytest.mark.load  # a real locust run
def test_failures_are_counted(servers, tmp_path):
    r = run_locust(tmp_path, servers.broken_url, "-u", "1", "-t", "2s", "--osl", "4")
    n = count(r.stats, "POST")
    assert n >= 4 and fails(r.stats) == n
    assert count(r.stats, "TTFT") == 0 and count(r.stats, "ITL") == 0
    assert r.rc == 1  # locust's exit code on failures
    # the error report (printed at exit without --json-file)
    wrong = run_locust(tmp_path, servers.broken_url, "-u", "1", "-t", "2s", json_file=False)
    assert "HTTP 500" in wrong.log and "stream ended without [DONE]" in wrong.log
    wrong = run_locust(tmp_path, servers.url, "-u", "1", "-t", "1s", "--model", "no-such-model", json_file=False)
    assert "HTTP 404" in wrong.log and "model_not_found" in wrong.log and wrong.rc == 1


@pytest.mark.load  # a real locust run
def test_trace_replay_sends_the_trace(servers, tmp_path):
    trace = [x for x in load_trace(bundled_trace("azure-code")) if x.t < 40]
    before = scrape(servers.url)
    r = run_locust(tmp_path, servers.url, "--shape", "trace", "--trace", "azure-code", "--trace-duration", "40",
                   "--speedup", "8", "--latency-budget", "3", "--drain", "15")
    d = delta(scrape(servers.url), before)
    assert r.rc == 0, r.log[-3000:]
    assert count(r.stats, "POST") == len(trace) == d["requests"] == 63
    assert d["isl_sum"] == pytest.approx(sum(x.isl for x in trace), rel=0.001)
    assert count(r.stats, "TTFT") == len(trace)
    # Fidelity: every request left within a few ms of its trace time / 8, even in the trace's burst.
    assert count(r.stats, "LAG", "schedule") == len(trace)
    lag_avg, lag_max = avg_ms(r.stats, "LAG", "schedule"), max_ms(r.stats, "LAG", "schedule")
    print(f"trace replay: {len(trace)} requests, schedule lag avg {lag_avg:.1f} ms, max {lag_max:.1f} ms")
    assert lag_avg < 50 and lag_max < 250
    assert int(r.csv[("POST", CHAT)]["Request Count"]) == len(trace)  # the shape waits for the last CSV write
    # 5 s of schedule, then it stops once every request was answered (not at the end of the 15 s drain)
    assert "open-loop shape: stopping, every scheduled request answered (63)" in r.log, r.log[-3000:]


@pytest.mark.load  # a real locust run
def test_burst_steps_the_achieved_rate(servers, tmp_path):
    base, k = 5.0, 4.0
    samples: list[tuple[float, float]] = []
    prefix = tmp_path / "run"
    cmd = locust_cmd(servers.url, prefix, "--shape", "burst", "--rate", str(base), "--burst-factor", str(k),
                     "--burst-at", "3", "--burst-for", "3", "--duration", "9", "--arrivals", "uniform",
                     "--osl", "8", "--latency-budget", "2", "--drain", "10")
    p = locust(cmd, tmp_path)
    try:
        while p.poll() is None:
            samples.append((time.time(), scrape(servers.url)["requests"]))
            time.sleep(0.2)  # the sampling period of the achieved rate
        p.wait(10)
    finally:
        p.stop()
    log = p.output()
    assert p.returncode == 0, log[-3000:]
    stats = read_stats(prefix)
    assert count(stats, "POST") == 5 * 6 + 20 * 3 and fails(stats) == 0
    origin = origin_of(log)
    ts, ns = np.array([s[0] - origin for s in samples]), np.array([s[1] for s in samples])

    def rate(a: float, b: float) -> float:
        # requests are counted when they finish, ~80 ms after they are sent: shift the windows by 0.1 s
        lo, hi = np.interp([a + 0.1, b + 0.1], ts, ns)
        return (hi - lo) / (b - a)

    before, during, after = rate(0.2, 2.8), rate(3.2, 5.8), rate(6.2, 8.8)
    print(f"burst: requested {base:g} / {base * k:g} / {base:g} req/s, achieved "
          f"{before:.2f} / {during:.2f} / {after:.2f}")
    assert during > 2.5 * before and during > 2.5 * after
    assert before == pytest.approx(base, rel=0.3) and after == pytest.approx(base, rel=0.3)
    assert during == pytest.approx(base * k, rel=0.2)


@pytest.mark.load  # a real locust run
def test_diurnal_run_and_distributed_workers_split_the_schedule(servers, tmp_path):
    rates = tmp_path / "rates.csv"
    write_servegen(rates)
    port = free_port()  # the master's, named to the workers before it starts
    shape = ["--shape", "diurnal", "--rates", str(rates), "--series", "language/m-mid", "--day-minutes", "0.08",
             "--peak-rate", "12", "--arrivals", "uniform", "--osl", "8", "--latency-budget", "2", "--drain", "10"]
    expected = len(schedules.build_diurnal(opts(rates=str(rates), series="language/m-mid", day_minutes=0.08,
                                                peak_rate=12, arrivals="uniform")).arrivals)
    worker_cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
                  "--master-port", str(port)]
    workers = [locust(worker_cmd, tmp_path, f"locust worker {k}") for k in range(2)]
    try:
        before = scrape(servers.url)
        r = run_locust(tmp_path, servers.url, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                       str(port), "--expect-workers", "2", *shape)
        d = delta(scrape(servers.url), before)
        for w in workers:
            w.wait(15)
        logs = [w.output() for w in workers]
    finally:
        for w in workers:
            w.stop(timeout=5)
    assert r.rc == 0, r.log[-3000:]
    assert 30 <= expected <= 45  # 4.8 s at a mean of 12 / 1.5 req/s
    assert count(r.stats, "POST") == expected == d["requests"]
    shares = sorted(int(re.search(r"this process sends (\d+)", log).group(1)) for log in logs)
    assert sum(shares) == expected and shares[1] - shares[0] <= 1
