"""Warm start for a fleet: `python -m load.bench_warmstart --graphs 1000` (issue 16, items 1 and 4).

Against a stand-in Prometheus that answers instant queries like load/bench_scaler.py's and range
queries (batched `=~"a|b"` ... `by (dynamo_namespace)` or one graph) with synthetic 1-minute
history per graph (a daily and weekly shape, Poisson noise, lognormal token lengths; every seventh
graph has a two-hour gap each day).

The stand-in runs in a process of its own (its CPU is not counted). Then:

1. The ratio, in this process: the slow path (one graph at a time: `PrometheusSource.history` and
   `DemandForecaster.warm_start`, as `DecisionLoop.warm_start_graph`) on `--slow-graphs` graphs and
   the fleet path (`scaler.warm_fleet.fit_chunk`: batched range queries, the batched replay) on
   `--fast-graphs` graphs, CPU seconds per series each, and the largest relative difference of the
   forecasts of the graphs both fitted.
2. The fleet: `pdscaler serve` with `--graphs` graphs (2 roles each, the default 14-day warm start),
   from its start until it logs that the fleet's warm start is done: the wall time, the CPU seconds of
   its process tree (serving process, decision process, warm-start workers), the largest RSS of the
   tree (psutil, sampled every second), and the polls completed meanwhile (the largest gap between
   two, at the 1 s sampling).

Prints a JSON summary; `--out` writes it too.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
DAY_S = 86400.0
_BATCH_RE = re.compile(r'dynamo_namespace=~"([^"]*)"')
_ONE_RE = re.compile(r'dynamo_namespace="([^"]*)"')


# --------------------------------------------------------------------------- stand-in Prometheus

def history_values(ns: str, query: str, ts: np.ndarray) -> np.ndarray | None:
    """A graph's (dynamo namespace's) history of one warm-start query at times ts (NaN: missing)."""
    if "requests_total" in query:
        kind, scale, spread = 0, 1.0, 0.0
    elif "input_sequence_tokens_sum" in query:
        kind, scale, spread = 1, 2000.0, 0.3
    elif "output_sequence_tokens_sum" in query:
        kind, scale, spread = 2, 200.0, 0.5
    else:
        return None
    g = zlib.crc32(ns.encode())
    base = 0.5 + (g % 2000) / 100.0  # 0.5..20 req/s
    phase = (g % 97) / 97.0
    amp = 0.2 + (g % 7) / 14.0
    day = 1.0 + amp * np.sin(2 * np.pi * (ts / DAY_S + phase))
    week = 1.0 - 0.3 * ((np.floor(ts / DAY_S) % 7) >= 5)
    rng = np.random.default_rng([g, kind, int(ts[0]) if len(ts) else 0])
    rng_rate = np.random.default_rng([g, 0, int(ts[0]) if len(ts) else 0])  # the same requests for all three
    n = rng_rate.poisson(base * day * week * 60.0)
    y = n / 60.0 * scale
    if spread:
        y = y * rng.lognormal(-spread * spread / 2, spread, size=len(ts))
    if g % 7 == 3:  # a two-hour gap (a scrape outage) in each day's afternoon
        y[(ts % DAY_S >= 50_000) & (ts % DAY_S < 57_200)] = np.nan
    return y


def _range_result(query: str, start: float, end: float, step: float) -> str:
    ts = np.arange(start, end + step / 2, step)
    m = _BATCH_RE.search(query)
    names = [n.replace("\\\\", "\\").replace("\\-", "-") for n in m.group(1).split("|")] if m else []
    if not m:
        one = _ONE_RE.search(query)
        names = [one.group(1)] if one else []
    parts = []
    t_strs = [f"{t:.3f}".rstrip("0").rstrip(".") for t in ts.tolist()]
    for ns in names:
        y = history_values(ns, query, ts)
        if y is None:
            continue
        vals = ",".join(f'[{t},"{v:.6g}"]' for t, v in zip(t_strs, y.tolist()) if v == v)
        metric = json.dumps({"dynamo_namespace": ns}) if m else "{}"
        parts.append(f'{{"metric":{metric},"values":[{vals}]}}')
    return '{"status":"success","data":{"resultType":"matrix","result":[' + ",".join(parts) + "]}}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _answer(self, path: str, params: dict) -> None:
        q = params.get("query", [""])[0]
        if path.endswith("/query_range"):
            body = _range_result(q, float(params["start"][0]), float(params["end"][0]),
                                 _seconds(params.get("step", ["60s"])[0])).encode()
        else:
            from load.bench_scaler import fake_result

            t = float(params.get("time", [time.time()])[0])
            body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                            "result": fake_result(q, t)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlsplit(self.path)
        self._answer(u.path, parse_qs(u.query))

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self._answer(urlsplit(self.path).path, parse_qs(self.rfile.read(n).decode()))


def _seconds(step: str) -> float:
    if step.endswith("ms"):
        return float(step[:-2]) / 1000.0
    return float(step[:-1]) if step[-1] in "s" else float(step)


def _fake_process(q) -> None:  # pragma: no cover - runs in its own process
    server = serve_fake()
    q.put(server.server_port)
    threading.Event().wait()


def start_fake_process():
    """The stand-in Prometheus in a process of its own (its CPU is not the scaler's): (process, url)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_fake_process, args=(q,), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{q.get(timeout=60)}"


def serve_fake(port: int = 0) -> ThreadingHTTPServer:
    """The stand-in Prometheus on 127.0.0.1:port (0 = ephemeral), serving in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


# --------------------------------------------------------------------------- the scaler's side

def fleet_config(graphs: int, url: str, poll_interval: float = 15.0, timeout: float | None = None) -> dict:
    roles = {"prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 32},
             "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 32}}
    source = {"kind": "prometheus", "url": url} | ({"timeout": timeout} if timeout else {})
    return {"poll_interval": poll_interval, "source": source,
            "graphs": {f"g{i:04d}": {"namespace": NAMESPACE, "roles": roles} for i in range(graphs)}}


def ratio_phase(url: str, slow_graphs: int, fast_graphs: int) -> dict:
    """Slow path vs fleet path on subsets, in this process (CPU per series), and their forecasts."""
    from forecasting.demand import FORECAST_SERIES, DemandForecaster
    from scaler.config import ScalerConfig
    from scaler.sources.prometheus import PrometheusSource
    from scaler.warm_fleet import RANGE_TIMEOUT, fit_chunk

    n = max(slow_graphs, fast_graphs)
    config = ScalerConfig.model_validate(fleet_config(n, url, timeout=RANGE_TIMEOUT))  # as the workers
    fc = config.forecast
    graphs = list(config.graphs)
    end = float(int(time.time()))
    src = PrometheusSource(config)
    wanted = [(None, name) for name in FORECAST_SERIES]
    slow, slow_series = {}, 0
    c0 = time.process_time()
    for g in graphs[:slow_graphs]:
        hist = src.history(g, wanted, end - fc.warm_start, end, fc.warm_start_step)
        f = DemandForecaster(fc.model, step_s=config.poll_interval, seed=fc.seed, quantiles=fc.quantiles)
        slow_series += len(f.warm_start({name: v for (_, name), v in hist.items()}))
        slow[g] = f
    slow_cpu = time.process_time() - c0
    c0 = time.process_time()
    fast = fit_chunk(config, graphs[:fast_graphs], end, 0.0, source=src)
    fast_cpu = time.process_time() - c0
    fast_series = sum(len(models) for models, _ in fast.values())
    src.close()
    worst = 0.0
    horizons = [0.0, 60.0, 300.0, 900.0, 3600.0]
    for g, f in slow.items():
        models, _ = fast[g]
        for name, m in models.items():
            a = f.models[name].predict(end + 15, horizons, fc.quantiles)
            b = m.predict(end + 15, horizons, fc.quantiles)
            for q in fc.quantiles:
                x, y = a.quantile(q), b.quantile(q)
                worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-9))))
    slow_ps, fast_ps = slow_cpu / max(1, slow_series), fast_cpu / max(1, fast_series)
    return {"slow": {"graphs": slow_graphs, "series": slow_series, "cpu_s": slow_cpu, "cpu_ms_per_series": 1000 * slow_ps},
            "fast": {"graphs": fast_graphs, "series": fast_series, "cpu_s": fast_cpu, "cpu_ms_per_series": 1000 * fast_ps},
            "speedup": slow_ps / fast_ps if fast_ps else math.inf,
            "max_relative_forecast_difference": worst}


def _process_kind(p, root) -> str:
    """serving (the `serve` process), decision (its child), warm-start worker (the decision process's
    children), or the multiprocessing resource tracker."""
    if p.pid == root.pid:
        return "serving"
    cmd = " ".join(p.cmdline())
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "decision" if p.ppid() == root.pid else "warm-start worker"


def fleet_phase(url: str, graphs: int, timeout: float, workdir: Path, env: dict | None = None) -> dict:
    """`pdscaler serve` on the fleet until its warm start is done: wall, CPU and RSS of the tree, polls."""
    import psutil
    import yaml

    from scaler.testbench.processes import serve_process

    cfg = workdir / "fleet.yaml"
    cfg.write_text(yaml.safe_dump(fleet_config(graphs, url), sort_keys=False))
    proc = serve_process(cfg, log_level="info", cwd=ROOT, log_path=workdir / "serve.log", start_timeout=300,
                         stop_timeout=30, env=env)
    t0 = time.monotonic()
    proc.start()
    root = psutil.Process(proc.proc.pid)
    cpu: dict[int, float] = {}
    rss_max, rss_at_done = 0.0, None
    rss_each: dict[str, float] = {}  # the largest RSS of each process of the tree, by what it is
    polls: list[tuple[float, float]] = []
    done_at = None
    done = re.compile(r"warm start of the fleet done in (\d+) s \((\d+) CPU-s in workers\)")
    import urllib.request

    try:
        proc.wait_ready(300)
        metrics = f"{proc.http_url}/metrics"
        while time.monotonic() - t0 < timeout:
            procs = [root] + root.children(recursive=True)
            rss = 0.0
            for p in procs:
                try:
                    one = p.memory_info().rss
                    rss += one
                    what = _process_kind(p, root)
                    rss_each[what] = max(rss_each.get(what, 0.0), one)
                    ct = p.cpu_times()
                    cpu[p.pid] = ct.user + ct.system
                except psutil.Error:
                    pass
            rss_max = max(rss_max, rss)
            try:
                with urllib.request.urlopen(metrics, timeout=5) as r:
                    text = r.read().decode()
                m = re.search(r"^pdscaler_polls_total (\S+)$", text, re.M)
                if m:
                    polls.append((time.monotonic() - t0, float(m.group(1))))
            except OSError:
                pass
            if done_at is None and any(done.search(line) for line in proc.output().splitlines()):
                done_at = time.monotonic() - t0
                rss_at_done = rss
            if done_at is not None and time.monotonic() - t0 > done_at + 20:
                break  # a few more polls after it
            time.sleep(1.0)
    finally:
        proc.stop()
    changes = [t for (t, n), (_, n0) in zip(polls[1:], polls) if n > n0]
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    line = next((done.search(x) for x in proc.output().splitlines() if done.search(x)), None)
    return {"graphs": graphs, "series": 3 * graphs, "all_warm_s": done_at,
            "warm_reported_s": float(line.group(1)) if line else None,
            "worker_cpu_s": float(line.group(2)) if line else None,
            "tree_cpu_s": sum(cpu.values()), "tree_rss_max_mib": rss_max / 2**20,
            "tree_rss_at_done_mib": (rss_at_done or 0) / 2**20,
            "rss_max_by_process_mib": {k: round(v / 2**20, 1) for k, v in sorted(rss_each.items())},
            "polls": polls[-1][1] if polls else 0, "poll_gap_max_s": max(gaps) if gaps else None,
            "poll_gap_mean_s": sum(gaps) / len(gaps) if gaps else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.bench_warmstart", description=__doc__.split("\n")[0])
    p.add_argument("--graphs", type=int, default=1000, help="graphs of the fleet (default 1000)")
    p.add_argument("--slow-graphs", type=int, default=5, help="graphs fitted one by one for the ratio (default 5)")
    p.add_argument("--fast-graphs", type=int, default=100, help="graphs fitted as a fleet for the ratio (default 100)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on the fleet after this (s)")
    p.add_argument("--skip-fleet", action="store_true", help="only the ratio phase")
    p.add_argument("--decision-nice", type=int, help="PDSCALER_DECISION_NICE for serve (default: its own, +10)")
    p.add_argument("--warm-nice", type=int, help="PDSCALER_WARM_NICE for serve (default: its own, +5)")
    p.add_argument("--out", help="write the JSON summary here too")
    args = p.parse_args(argv)
    for name in ("graphs", "slow_graphs", "fast_graphs"):
        if getattr(args, name) < 1:
            print(f"bench_warmstart: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    fake, url = start_fake_process()
    log = (lambda msg: print(f"bench_warmstart: {msg}", file=sys.stderr, flush=True))
    out: dict = {"command": "python -m load.bench_warmstart " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        log(f"ratio: {args.slow_graphs} graphs one by one, {args.fast_graphs} as a fleet")
        out["ratio"] = ratio_phase(url, args.slow_graphs, args.fast_graphs)
        log(json.dumps(out["ratio"]))
        if not args.skip_fleet:
            log(f"fleet: pdscaler serve with {args.graphs} graphs")
            with tempfile.TemporaryDirectory(prefix="bench-warmstart-") as d:
                env = {k: str(v) for k, v in (("PDSCALER_DECISION_NICE", args.decision_nice),
                                              ("PDSCALER_WARM_NICE", args.warm_nice)) if v is not None}
                out["fleet"] = fleet_phase(url, args.graphs, args.timeout, Path(d), env)
    finally:
        fake.terminate()
        fake.join(10)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
