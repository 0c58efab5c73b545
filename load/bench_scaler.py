"""Load benchmark of one `pdscaler serve`: many graphs, KEDA-like polling from many concurrent clients.

    python -m load.bench_scaler [--graphs 1000] [--clients 200] [--duration 60] [--json OUT]

What runs (every piece its own process, so each one's CPU can be read on its own):

- a fake Prometheus (asyncio, keep-alive HTTP/1.1) answering every instant query the scaler's
  Prometheus source sends with a plausible, slowly varying value per graph (request rate, token
  rates, means, p99 latencies, KV blocks, ready workers): the decision loop does the real work of
  every graph each poll - 17 PromQL queries, sanitising, the forecasters' update and forecast
  (forecasting on, default model), the whole policy pipeline - exactly as against a real Prometheus,
  minus Prometheus' own query time;
- the REAL scaler, `python -m scaler serve` (gRPC + HTTP /metrics), on a generated config of N graphs
  x 2 roles (prefill, decode), poll interval 15 s, warm start off (no history to fit);
- client processes (grpc.aio), `--clients` concurrent KEDA-like clients in all, each with its own
  channel, each looping over its share of the 2N ScaledObjects: GetMetricSpec, GetMetrics, IsActive
  with KEDA's ScaledObjectRef (name, namespace, the trigger metadata incl. scalerAddress);
- this process, the orchestrator: samples the scaler's CPU (user + system time of the process and
  its descendants, per thread too) and RSS every second with psutil (the peak RSS, VmHWM, from
  Linux's /proc/PID/status), and scrapes the scaler's /metrics every 10 s (as Prometheus would) for
  decision timestamps and poll durations.

Phases per scenario: `idle` (no clients: the decision loop alone), `realistic` (every ScaledObject
polled once per 15 s, evenly spread: 2N/15 cycles/s, 3 RPCs each), `saturation` (each client
loops as fast as it gets answers). Scenarios: the main one (N graphs) and baselines in the same run
(by default 10 graphs, and N graphs with forecasting off), so figures can be read as ratios on a
shared, noisy machine. The 10-graph baseline is polled, by default (`--baseline-load same`), with
the main scenario's load: as many ScaledObjects (its 20 refs repeated), as often, by as many clients,
so that the two differ only in the size of the fleet (with `own`, its 20 ScaledObjects make 4 RPC/s
and in saturation only 20 of the clients have one).

Freshness: every poll decides every graph with one timestamp, so the distinct
pdscaler_decision_timestamp_seconds values seen across scrapes are the polls' start times; a graph
is "refreshed every 15 s" when consecutive timestamps of it are at most poll_interval (+0.5 s) apart.
Scrapes (10 s) are shorter than the time a decision stays current (>= 15 s), so no poll is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from scaler.testbench.processes import ManagedProcess, ScalerProcess, serve_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
ROLES = ("prefill", "decode")
METHODS = ("GetMetricSpec", "GetMetrics", "IsActive")


# --------------------------------------------------------------------------- fake Prometheus

_GRAPH_RE = re.compile(r'dynamo_namespace="[^"]*-g(\d+)"')


_BATCH_RE = re.compile(r'dynamo_namespace=~"([^"]*)"')


def fake_result(query: str, t: float) -> list[dict]:
    """The vector answering one query: one series, or one per graph of a batched `=~"a|b"` query."""
    m = _BATCH_RE.search(query)
    if m is None:
        v = fake_value(query, t)
        return [] if v is None else [{"metric": {}, "value": [t, repr(v)]}]
    out = []
    for ns in m.group(1).split("|"):
        g = re.search(r"-g(\d+)$", ns)
        v = fake_value(query, t, int(g.group(1)) if g else 0)
        if v is not None:
            out.append({"metric": {"dynamo_namespace": ns}, "value": [t, repr(v)]})
    return out


def fake_value(query: str, t: float, g: int | None = None) -> float | None:
    """A plausible value for one of the scaler's PromQL queries at time t (None: no series)."""
    if g is None:
        m = _GRAPH_RE.search(query)
        g = int(m.group(1)) if m else 0
    base = 1.0 + (zlib.crc32(str(g).encode()) % 900) / 100.0  # 1..10 req/s per graph
    phase = (g % 17) / 17.0 * 2 * math.pi
    rate = base * (1.0 + 0.3 * math.sin(2 * math.pi * t / 1800.0 + phase)) * (1.0 + 0.05 * math.sin(t / 7.0 + g))
    mean = " / " in query
    if "dynamo_frontend_requests_total" in query:
        return rate
    if "input_sequence_tokens" in query:
        return 2000.0 if mean else rate * 2000.0
    if "output_sequence_tokens" in query:
        return 200.0 if mean else rate * 200.0
    if "time_to_first_token" in query:
        return 0.35
    if "inter_token_latency" in query:
        return 0.015 if mean else 0.025
    if "queued_requests" in query:
        return 0.5
    if "inflight_requests" in query:
        return rate * 4.0
    if "kv_cache_block_size" in query:
        return 16.0
    if "worker_active_prefill_tokens" in query:
        return 2.0 if query.startswith("count") else rate * 300.0
    if "worker_active_decode_blocks" in query:
        return 2.0
    if "kvstats_active_blocks" in query:
        return rate * 800.0
    if "kvstats_total_blocks" in query:
        return 40000.0
    if "gpu_cache_usage_percent" in query:
        return min(0.95, rate * 0.02)
    return None


class _PromProtocol(asyncio.Protocol):
    def __init__(self, stats: dict) -> None:
        self.buf = b""
        self.stats = stats

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:")), 0)
            if len(rest) < length:
                return  # wait for the whole body (a POSTed query)
            body, self.buf = rest[:length], rest[length:]
            try:
                _, target, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            self.transport.write(self._answer(target, body.decode("latin-1")))

    def _answer(self, target: str, form: str = "") -> bytes:
        url = urlsplit(target)
        q = parse_qs(url.query) | parse_qs(form)
        now = time.time()
        if url.path == "/api/v1/query":
            t = float(q.get("time", [now])[0])
            result = fake_result(q.get("query", [""])[0], t)
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        elif url.path == "/api/v1/query_range":
            body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})
        else:
            body = json.dumps({"status": "success", "data": {}})
        self.stats["queries"] += 1
        raw = body.encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(raw)).encode() + b"\r\n\r\n" + raw)


def run_fake_prometheus(port: int) -> None:
    async def main() -> None:
        stats = {"queries": 0}
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _PromProtocol(stats), "127.0.0.1", port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)  # the port bound (0 = ephemeral)
        await stop.wait()
        server.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- clients (KEDA-like)


def run_clients(spec_path: str) -> None:
    """One client process: spec (JSON) says the address, refs per client, mode, start and duration."""
    spec = json.loads(Path(spec_path).read_text())
    out = asyncio.run(_clients(spec))
    Path(spec["out"]).write_text(json.dumps(out))


async def _clients(spec: dict) -> dict:
    import grpc

    from scaler.rpc import externalscaler_pb2 as pb
    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc

    address, mode, period = spec["address"], spec["mode"], spec["period"]
    lat: dict[str, list[float]] = {m: [] for m in METHODS}
    errors: dict[str, int] = {}
    lag: list[float] = []  # realistic pacing: how late each cycle started against its schedule (ms)
    cycles = 0

    def ref_of(graph: str, role: str):
        meta = {"scalerAddress": address, "graph": graph, "role": role}
        return pb.ScaledObjectRef(name=f"{graph}-{role}", namespace=NAMESPACE, scalerMetadata=meta)

    async def call(method: str, fn, req) -> None:
        t0 = time.perf_counter()
        try:
            await fn(req)
        except grpc.aio.AioRpcError as e:
            key = f"{method}:{e.code().name}"
            errors[key] = errors.get(key, 0) + 1
            return
        lat[method].append((time.perf_counter() - t0) * 1000.0)

    async def client(refs: list[tuple[str, str]], rng: random.Random) -> None:
        nonlocal cycles
        channel = grpc.aio.insecure_channel(address)
        stub = pb_grpc.ExternalScalerStub(channel)
        await channel.channel_ready()
        built = [(ref_of(g, r), f"pdscaler-{g}-{r}") for g, r in refs]
        start, end = spec["start"], spec["start"] + spec["duration"]
        while time.time() < start:
            await asyncio.sleep(min(0.05, start - time.time()))
        step = period / len(built)  # realistic: each ref once per period, spread evenly
        next_at = start + rng.uniform(0, step)
        i = rng.randrange(len(built))
        while True:
            if mode == "realistic":
                now = time.time()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                if next_at >= end:
                    break
                lag.append(max(0.0, time.time() - next_at) * 1000.0)
                next_at += step
            elif time.time() >= end:
                break
            ref, metric = built[i % len(built)]
            i += 1
            # KEDA's cycle: GetMetricSpec, then GetMetrics, then IsActive (scalers_cache.go).
            await call("GetMetricSpec", stub.GetMetricSpec, ref)
            await call("GetMetrics", stub.GetMetrics, pb.GetMetricsRequest(scaledObjectRef=ref, metricName=metric))
            await call("IsActive", stub.IsActive, ref)
            cycles += 1
        await channel.close()

    refs = [tuple(r) for r in spec["refs"]]
    n = spec["clients"]
    shares = [refs[k::n] for k in range(n)]
    rng = random.Random(spec["seed"])
    await asyncio.gather(*(client(s, random.Random(rng.random())) for s in shares if s))
    return {"lat": {m: [round(x, 4) for x in v] for m, v in lat.items()}, "errors": errors,
            "cycles": cycles, "lag": [round(x, 2) for x in lag]}


# --------------------------------------------------------------------------- /proc readings


def _process(pid: int):
    import psutil

    return psutil.Process(pid)


def proc_children(pid: int) -> list[int]:
    """Every live descendant of pid (the scaler's decision worker and refit workers)."""
    import psutil

    try:
        return [c.pid for c in _process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    import psutil

    try:
        t = _process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _thread_name(pid: int, tid: int) -> str:
    try:  # psutil has no thread names; Linux keeps them here
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "thread"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed 'name/tid' (the main thread runs the asyncio event loop)."""
    import psutil

    try:
        threads = _process(pid).threads()
    except psutil.Error:
        return {}
    return {("main (event loop)" if t.id == pid else f"{_thread_name(pid, t.id)}/{t.id}"): t.user_time + t.system_time
            for t in threads}


def mem_kib(pid: int) -> dict[str, int]:
    """VmRSS (psutil) and VmHWM, the peak RSS (Linux /proc: psutil does not report it), in KiB."""
    import psutil

    out = {}
    try:
        out["VmRSS"] = _process(pid).memory_info().rss // 1024
    except psutil.Error:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["VmHWM"] = int(line.split()[1])
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- the scaler and its /metrics


def write_config(path: Path, graphs: int, prom_url: str, forecast: bool, poll_interval: float) -> list[str]:
    import yaml

    names = [f"g{i:04d}" for i in range(graphs)]
    roles = {
        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 32},
        "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 32},
    }
    config = {
        "poll_interval": poll_interval,
        "source": {"kind": "prometheus", "url": prom_url},
        "forecast": {"enabled": forecast, "warm_start": 0},
        "graphs": {g: {"namespace": NAMESPACE, "roles": roles} for g in names},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return names


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)')
_WANTED = ("pdscaler_decision_timestamp_seconds", "pdscaler_poll_duration_seconds", "pdscaler_decide_duration_seconds",
           "pdscaler_source_collect_duration_seconds", "pdscaler_polls_total", "pdscaler_source_errors_total",
           "pdscaler_stage_seconds_sum", "pdscaler_stage_seconds_count", "pdscaler_stage_cpu_seconds_total")
STAGES = ("collect", "observe", "forecast", "decide", "publish", "send")  # scaler/metrics.py's


def scrape(url: str) -> tuple[dict, float, int]:
    """The scaler's /metrics: {name: {labels: value}} for the series we read, scrape seconds, bytes."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    took = time.perf_counter() - t0
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        m = _SAMPLE_RE.match(line)
        if m:
            out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out, took, len(text)


@dataclass
class Monitor:
    """Samples the scaler's (and the helpers') CPU and memory every second, /metrics every 10 s."""

    pid: int
    metrics_url: str
    others: dict[str, int] = field(default_factory=dict)  # name -> pid (fake Prometheus, clients)
    scrape_every: float = 10.0
    samples: list[dict] = field(default_factory=list)
    scrapes: list[dict] = field(default_factory=list)

    def start(self) -> "Monitor":
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        next_scrape = time.time()
        while not self._stop.is_set():
            now = time.time()
            kids = proc_children(self.pid)
            mem = mem_kib(self.pid)
            self.samples.append({
                "t": now, "cpu": cpu_seconds(self.pid), "children_cpu": sum(cpu_seconds(k) for k in kids),
                "children_rss_kib": sum(mem_kib(k).get("VmRSS", 0) for k in kids),
                "rss_kib": mem.get("VmRSS", 0), "hwm_kib": mem.get("VmHWM", 0),
                "threads": thread_cpu(self.pid),
                "others": {n: cpu_seconds(p) + sum(cpu_seconds(k) for k in proc_children(p))
                           for n, p in list(self.others.items())},
            })
            if now >= next_scrape:
                next_scrape = now + self.scrape_every
                try:
                    series, took, size = scrape(self.metrics_url)
                    self.scrapes.append({"t": time.time(), "took": took, "bytes": size, "series": series})
                except OSError as e:
                    self.scrapes.append({"t": time.time(), "error": str(e)})
            self._stop.wait(1.0)


def start_scaler(config: Path, log: Path, switch_interval: float | None) -> ScalerProcess:
    """The scaler, started (its gRPC and HTTP ports are the ones it bound, read from its output)."""
    python = None
    if switch_interval is not None:  # an experiment: the same serve, with a shorter GIL switch interval
        python = [sys.executable, "-c", f"import sys; sys.setswitchinterval({switch_interval!r}); "
                                        "from scaler.cli import main; sys.exit(main(sys.argv[1:]))"]
    return serve_process(config, log_level="warning", python=python, cwd=ROOT, log_path=log, start_timeout=120,
                         stop_timeout=30).start()


def wait_for(cond, timeout: float, what: str, proc: ManagedProcess | None = None) -> None:
    wait_until(cond, timeout, what, interval=0.25, proc=proc)


def polls_done(metrics_url: str) -> float:
    series, _, _ = scrape(metrics_url)
    return series.get("pdscaler_polls_total", {}).get("", 0.0)


# --------------------------------------------------------------------------- summaries


def percentiles(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]

    return {"n": len(s), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1], "mean": sum(s) / len(s)}


def window(samples: list[dict], t0: float, t1: float) -> list[dict]:
    return [s for s in samples if t0 <= s["t"] <= t1]


def resources(mon: Monitor, t0: float, t1: float) -> dict:
    w = window(mon.samples, t0, t1)
    if len(w) < 2:
        return {}
    dt = w[-1]["t"] - w[0]["t"]
    rss = [s["rss_kib"] / 1024 for s in w]
    threads = {}
    for name, sec in w[-1]["threads"].items():
        used = sec - w[0]["threads"].get(name, 0.0)
        if used / dt >= 0.005:
            threads[name] = round(100 * used / dt, 1)
    return {
        "cpu_pct": round(100 * (w[-1]["cpu"] - w[0]["cpu"]) / dt, 1),  # % of one core
        "children_cpu_pct": round(100 * (w[-1]["children_cpu"] - w[0]["children_cpu"]) / dt, 1),
        "cpu_pct_by_thread": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "rss_mib_mean": round(sum(rss) / len(rss), 1), "rss_mib_max": round(max(rss), 1),
        "rss_mib_peak_hwm": round(w[-1]["hwm_kib"] / 1024, 1),
        "children_rss_mib_max": round(max(s["children_rss_kib"] for s in w) / 1024, 1),
        "others_cpu_pct": {n: round(100 * (w[-1]["others"].get(n, 0) - w[0]["others"].get(n, 0)) / dt, 1)
                           for n in w[-1]["others"]},
    }


def freshness(mon: Monitor, t0: float, t1: float, graphs: list[str], interval: float) -> dict:
    """Per graph: the intervals between consecutive decision timestamps seen in [t0, t1], and ages."""
    scr = [s for s in mon.scrapes if t0 <= s["t"] <= t1 and "series" in s]
    seen: dict[str, list[float]] = {}
    ages = []
    for s in scr:
        for labels, ts in s["series"].get("pdscaler_decision_timestamp_seconds", {}).items():
            g = labels.split('"')[1] if '"' in labels else labels
            lst = seen.setdefault(g, [])
            if not lst or lst[-1] != ts:
                lst.append(ts)
            ages.append(s["t"] - ts)
    gaps = [b - a for lst in seen.values() for a, b in zip(lst, lst[1:])]
    worst = {g: max((b - a for a, b in zip(lst, lst[1:])), default=math.inf) for g, lst in seen.items()}
    ok = sum(1 for g in graphs if worst.get(g, math.inf) <= interval + 0.5)

    def hist(prefix: str) -> dict:
        if len(scr) < 2:
            return {}
        a, b = scr[0]["series"], scr[-1]["series"]
        n = b.get(prefix + "_count", {}).get("", 0) - a.get(prefix + "_count", {}).get("", 0)
        total = b.get(prefix + "_sum", {}).get("", 0) - a.get(prefix + "_sum", {}).get("", 0)
        buckets_b, buckets_a = b.get(prefix + "_bucket", {}), a.get(prefix + "_bucket", {})
        top = None
        for labels in sorted(buckets_b, key=lambda k: float(k.split('"')[1].replace("+Inf", "inf"))):
            if buckets_b[labels] - buckets_a.get(labels, 0) >= n and n > 0:
                top = labels.split('"')[1]
                break
        return {"polls": int(n), "mean_s": round(total / n, 3) if n else None, "max_le_s": top}

    gap = percentiles(gaps)
    return {
        "stages": stage_figures(scr),
        "graphs_seen": len(seen), "graphs": len(graphs), "scrapes": len(scr),
        "graphs_refreshed_within_interval": ok,
        "refresh_interval_s": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in gap.items()},
        "decision_age_at_scrape_s_max": round(max(ages), 2) if ages else None,
        "poll": hist("pdscaler_poll_duration_seconds"),
        "collect": hist("pdscaler_source_collect_duration_seconds"),
        "decide": hist("pdscaler_decide_duration_seconds"),
        "metrics_scrape_s_max": round(max((s["took"] for s in scr), default=0.0), 3),
        "metrics_scrape_bytes": scr[-1]["bytes"] if scr else None,
    }


def stage_figures(scr: list[dict]) -> dict:
    """Per decision-loop stage, between the first and last scrape: polls (sends), wall and CPU seconds
    per poll, the stage's CPU as % of one core, and its share of the loop's CPU (all stages)."""
    if len(scr) < 2:
        return {}
    a, b = scr[0]["series"], scr[-1]["series"]
    dt = scr[-1]["t"] - scr[0]["t"]

    def delta(name: str, stage: str) -> float:
        key = f'{{stage="{stage}"}}'
        return b.get(name, {}).get(key, 0.0) - a.get(name, {}).get(key, 0.0)

    cpu = {st: delta("pdscaler_stage_cpu_seconds_total", st) for st in STAGES}
    total = sum(cpu.values())
    out = {}
    for st in STAGES:
        n = delta("pdscaler_stage_seconds_count", st)
        out[st] = {"n": int(n), "wall_s_per": round(delta("pdscaler_stage_seconds_sum", st) / n, 4) if n else None,
                   "cpu_s_per": round(cpu[st] / n, 4) if n else None,
                   "cpu_pct_of_core": round(100 * cpu[st] / dt, 2) if dt > 0 else None,
                   "share_of_loop_cpu_pct": round(100 * cpu[st] / total, 1) if total > 0 else None}
    out["loop_cpu_pct_of_core"] = round(100 * total / dt, 2) if dt > 0 else None
    return out


def stage_table(results: list[dict]) -> str:
    """The decision loop's CPU per stage, per scenario (over the whole run)."""
    head = "| scenario | " + " | ".join(f"{st} CPU s/poll (share)" for st in STAGES) + " | loop CPU % of a core |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        st = r.get("freshness_whole_run", {}).get("stages", {})
        if not st:
            continue
        cells = [f"{st[k]['cpu_s_per']} ({st[k]['share_of_loop_cpu_pct']} %)" if st[k]["n"] else "-" for k in STAGES]
        lines.append(f"| {r['scenario']} ({r['graphs']} graphs) | " + " | ".join(cells)
                     + f" | {st.get('loop_cpu_pct_of_core')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- orchestration


def run_phase(name: str, address: str, refs: list[tuple[str, str]], clients: int, procs: int, duration: float,
              period: float, tmp: Path, mon: Monitor) -> dict:
    import psutil

    procs = max(1, min(procs, clients))
    start = time.time() + 3.0  # every client connected before the clock starts
    machine0 = psutil.cpu_times()
    ps, outs = [], []
    for k in range(procs):
        n = clients // procs + (1 if k < clients % procs else 0)
        mine = refs[k::procs]
        out = tmp / f"{name}-{k}.json"
        spec = {"address": address, "mode": name, "period": period, "start": start, "duration": duration,
                "refs": mine, "clients": n, "seed": k, "out": str(out)}
        sp = tmp / f"{name}-{k}.spec.json"
        sp.write_text(json.dumps(spec))
        ps.append(subprocess.Popen([sys.executable, "-m", "load.bench_scaler", "--_client", str(sp)], cwd=ROOT))
        outs.append(out)
    for k, p in enumerate(ps):
        mon.others[f"clients-{k}"] = p.pid
    for p in ps:
        p.wait(timeout=duration + 120)
    machine1 = psutil.cpu_times()
    busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle)
    machine = {"load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
               "cpus_busy_pct": round(100 * busy / max(1e-9, sum(machine1) - sum(machine0)), 1)}
    for k in range(len(ps)):
        mon.others.pop(f"clients-{k}", None)
    lat: dict[str, list[float]] = {m: [] for m in METHODS}
    errors: dict[str, int] = {}
    cycles, lag, failed = 0, [], []
    for k, (p, out) in enumerate(zip(ps, outs)):
        if p.returncode != 0 or not out.exists():
            failed.append(k)
            continue
        r = json.loads(out.read_text())
        for m in METHODS:
            lat[m] += r["lat"][m]
        for e, c in r["errors"].items():
            errors[e] = errors.get(e, 0) + c
        cycles += r["cycles"]
        lag += r["lag"]
    every = [x for m in METHODS for x in lat[m]]
    return {
        "mode": name, "t0": start, "t1": start + duration, "clients": clients, "client_processes": procs,
        "cycles": cycles, "requests": len(every) + sum(errors.values()),
        "requests_per_s": round((len(every) + sum(errors.values())) / duration, 1),
        "errors": errors, "failed_client_processes": failed,
        "latency_ms": {m: _round(percentiles(lat[m])) for m in METHODS} | {"all": _round(percentiles(every))},
        "schedule_lag_ms": _round(percentiles(lag)) if lag else None,
        "machine": machine,
    }


def _round(d: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass
class Scenario:
    name: str
    graphs: int
    forecast: bool = True
    switch_interval: float | None = None
    load_refs: int | None = None  # clients poll this many ScaledObjects (the graphs' refs, repeated): the same load


def run_scenario(sc: Scenario, args: argparse.Namespace, prom_url: str, prom_pid: int, tmp: Path) -> dict:
    cfg = tmp / f"{sc.name}.yaml"
    names = write_config(cfg, sc.graphs, prom_url, sc.forecast, args.poll_interval)
    log = tmp / f"{sc.name}.log"
    t_launch = time.time()
    proc = start_scaler(cfg, log, sc.switch_interval)
    metrics_url = f"{proc.http_url}/metrics"
    result: dict = {"scenario": sc.name, "graphs": sc.graphs, "roles": 2 * sc.graphs, "forecast": sc.forecast,
                    "switch_interval": sc.switch_interval}
    mon = Monitor(proc.pid, metrics_url, {"fake-prometheus": prom_pid}, args.scrape_every)
    try:
        proc.wait_healthy(120)
        result["ready_s"] = round(time.time() - t_launch, 2)
        mon.start()
        # The first poll, then one more: forecasters have data, the loop is in its steady rhythm.
        wait_for(lambda: polls_done(metrics_url) >= 2, 10 * args.poll_interval + 300, "two polls", proc)
        result["two_polls_s"] = round(time.time() - t_launch, 2)
        refs = [(g, r) for g in names for r in ROLES]
        if sc.load_refs:  # a small fleet under the main scenario's load: each ref polled as often, repeated
            refs = (refs * math.ceil(sc.load_refs / len(refs)))[:sc.load_refs]
        result["scaledobjects_polled"] = len(refs)
        address = proc.grpc_address
        phases = []
        if args.idle > 0:
            t0 = time.time()
            time.sleep(args.idle)
            phases.append({"mode": "idle", "t0": t0, "t1": time.time(), "requests_per_s": 0.0})
        for mode in args.modes:
            phases.append(run_phase(mode, address, refs, args.clients, args.client_processes, args.duration,
                                    args.poll_interval, tmp, mon))
        time.sleep(1.5)
        mon.stop()
        for ph in phases:
            ph["scaler"] = resources(mon, ph["t0"], ph["t1"])
            ph["freshness"] = freshness(mon, ph["t0"], ph["t1"] + 1.0, names, args.poll_interval)
        result["phases"] = phases
        # Over the whole run (polls can be longer than a phase): from the first load phase to the end.
        result["freshness_whole_run"] = freshness(mon, phases[0]["t0"], time.time(), names, args.poll_interval)
        result["rss_mib_peak_hwm"] = round(mem_kib(proc.pid).get("VmHWM", 0) / 1024, 1)
    finally:
        proc.stop()  # SIGTERM, SIGKILL after 30 s
        if getattr(mon, "_thread", None) is not None and mon._thread.is_alive():
            mon.stop()
    result["scaler_exit_code"] = proc.returncode
    tail = log.read_text().strip().splitlines()[-5:] if log.exists() else []
    result["scaler_log_tail"] = tail
    return result


def table(results: list[dict]) -> str:
    head = ("| scenario | phase | req/s | errors | GetMetrics p50 / p99 / max ms | all RPCs p50 / p90 / p99 ms "
            "| scaler CPU % (1 core = 100) | RSS MiB (steady / peak) | poll s (mean / max<=) | refresh p50 / max s "
            "| graphs refreshed <= interval | machine load 1m / CPUs busy % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for ph in r.get("phases", []):
            lm = ph.get("latency_ms", {})
            gm, al = lm.get("GetMetrics", {}), lm.get("all", {})
            sc, fr = ph.get("scaler", {}), ph.get("freshness", {})
            poll = fr.get("poll", {})
            ref = fr.get("refresh_interval_s", {})
            errs = sum(ph.get("errors", {}).values())
            lat_gm = f"{gm.get('p50', '-')} / {gm.get('p99', '-')} / {gm.get('max', '-')}" if gm.get("n") else "-"
            lat_all = f"{al.get('p50', '-')} / {al.get('p90', '-')} / {al.get('p99', '-')}" if al.get("n") else "-"
            lines.append(
                f"| {r['scenario']} ({r['graphs']} graphs{'' if r['forecast'] else ', no forecast'}) | {ph['mode']} "
                f"| {ph.get('requests_per_s', 0):g} | {errs} | {lat_gm} | {lat_all} | {sc.get('cpu_pct', '-')} "
                f"| {sc.get('rss_mib_mean', '-')} / {r.get('rss_mib_peak_hwm', '-')} "
                f"| {poll.get('mean_s', '-')} / {poll.get('max_le_s', '-')} "
                f"| {ref.get('p50', '-')} / {ref.get('max', '-')} "
                f"| {fr.get('graphs_refreshed_within_interval', '-')}/{r['graphs']} "
                f"| {ph.get('machine', {}).get('load_avg_1m_at_end', '-')} / {ph.get('machine', {}).get('cpus_busy_pct', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.bench_scaler", description=__doc__.split("\n\n")[0])
    p.add_argument("--graphs", type=int, default=1000, help="graphs in the main scenario (x 2 roles)")
    p.add_argument("--clients", type=int, default=200, help="concurrent KEDA-like clients (one channel each)")
    p.add_argument("--client-processes", type=int, default=2, help="processes the clients are spread over")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per load phase")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of the no-load phase (0 = skip)")
    p.add_argument("--modes", default="realistic,saturation",
                   help="load phases, in order: realistic (each ScaledObject every poll interval), saturation")
    p.add_argument("--poll-interval", type=float, default=15.0, help="the scaler's poll_interval, and KEDA's period")
    p.add_argument("--scrape-every", type=float, default=10.0, help="seconds between scrapes of the scaler's /metrics")
    p.add_argument("--baseline-graphs", type=int, default=10, help="graphs of the small baseline scenario (0 = none)")
    p.add_argument("--baseline-load", choices=("same", "own"), default="same",
                   help="the small baseline's clients: 'same' = the main scenario's load (as many ScaledObjects "
                        "polled, its few graphs' refs repeated: same RPC/s and concurrency, so only the fleet's "
                        "size differs); 'own' = only its own 2 x baseline-graphs ScaledObjects (4 RPC/s at 10 "
                        "graphs; the rows before issue 16)")
    p.add_argument("--no-forecast-baseline", action="store_true",
                   help="skip the baseline of the main graphs with forecasting off")
    p.add_argument("--switch-interval", type=float, action="append", default=[],
                   help="also run the main scenario with sys.setswitchinterval(X) in the scaler (an experiment)")
    p.add_argument("--json", help="write every figure as JSON to this file")
    p.add_argument("--_fake-prometheus", type=int, dest="fake_prometheus", help=argparse.SUPPRESS)
    p.add_argument("--_client", dest="client", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake_prometheus is not None:
        run_fake_prometheus(args.fake_prometheus)
        return 0
    if args.client:
        run_clients(args.client)
        return 0
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("realistic", "saturation")]
    if bad:
        p.error(f"unknown modes {bad}; known: realistic, saturation")

    scenarios = [Scenario("main", args.graphs)]
    scenarios += [Scenario(f"main-switch-{x:g}", args.graphs, switch_interval=x) for x in args.switch_interval]
    if args.baseline_graphs:
        scenarios.append(Scenario("small", args.baseline_graphs,
                                  load_refs=2 * args.graphs if args.baseline_load == "same" else None))
    if not args.no_forecast_baseline:
        scenarios.append(Scenario("no-forecast", args.graphs, forecast=False))

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scaler-") as d:
        tmp = Path(d)
        with ManagedProcess([sys.executable, "-m", "load.bench_scaler", "--_fake-prometheus", "0"],
                            name="fake Prometheus", cwd=ROOT, ready=r"^ready (\d+)$") as prom:
            prom_url = f"http://127.0.0.1:{prom.ready_match[1]}"
            for sc in scenarios:
                print(f"bench_scaler: scenario {sc.name} ({sc.graphs} graphs, forecast "
                      f"{'on' if sc.forecast else 'off'})...", file=sys.stderr, flush=True)
                results.append(run_scenario(sc, args, prom_url, prom.pid, tmp))
    report = {
        "command": "python -m load.bench_scaler " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"clients": args.clients, "client_processes": args.client_processes, "duration_s": args.duration,
                     "poll_interval_s": args.poll_interval, "modes": args.modes},
        "results": results,
    }
    print(table(results))
    print()
    print(stage_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
