"""End-to-end run on loopback: a real Prometheus, the emulated graph, pdscaler, locust and KEDA.

    python -m load.e2e [--out DIR] [--plot FILE]        (also: make e2e, which runs the test)

What runs (all on 127.0.0.1, ephemeral ports, real time):
- the emulated Dynamo graph (scaler/testbench/emulator; no GPUs here): OpenAI API, Dynamo's metric names,
  scale subresources; replicas start in `STARTUP_S` instead of the published ~90 s so that the run
  fits in CI's time (the proportions of the policy are kept: the scaler is told the same start-up);
- a real Prometheus server (Debian package `prometheus`) scraping the emulator and the scaler
  every second;
- `pdscaler serve` as its own process, reading Prometheus (source kind prometheus) and exporting
  its own /metrics;
- locust, headless, with the burst shape of load/shapes.py against the emulator's frontend;
- the in-process KEDA + HPA emulation (scaler/testbench/keda.py, scaler/testbench/hpa.py) polling pdscaler over gRPC
  and applying the targets to the emulator's scale subresources, with the HPA behavior the shipped
  ScaledObjects carry (scaler/render.py).
Afterwards every series comes back from Prometheus' HTTP API: the result holds them for the
assertions of tests/test_e2e.py, and `plot()` draws demand, forecast and replicas per role.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scaler.testbench.processes import ManagedProcess, free_port, serve_process, wait_until

REPO = Path(__file__).resolve().parents[1]
GRAPH, NAMESPACE = "demo", "default"
ADAPTERS = {"prefill": f"{GRAPH}-prefillworker", "decode": f"{GRAPH}-decodeworker"}
STARTUP_S = 15.0  # emulated model load (published: ~90 s); the scaler's config says the same
POLL_S = 2.0
# Traffic: 3 req/s of 4,000-token prompts (12k prefill tokens/s, one replica at 30 % of 40k), then
# 6x for 40 s (72k tokens/s: three replicas at the 0.8 utilisation target), then back.
RATE, BURST_FACTOR, BURST_AT, BURST_FOR, DURATION = 3.0, 6.0, 30.0, 40.0, 110.0
ISL, OSL = 4000, 20


@dataclass
class E2EResult:
    start: float  # epoch seconds when locust started
    burst: tuple[float, float]  # epoch seconds
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> [(t, v)]
    queries: dict[str, int] = field(default_factory=dict)  # dashboard query -> series returned
    query_errors: dict[str, str] = field(default_factory=dict)
    locust: dict = field(default_factory=dict)
    # A second scaler started after the load (a restart, or a second replica behind the same address):
    # per role, [(scaler A's answer, scaler B's answer)] sampled once a second from B's first answer on
    # (as soon as B's /healthz says its first answers are ready, as KEDA reaches it through the readiness probe).
    ha: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    prometheus_url: str = ""
    # `pdscaler backtest --prometheus` over the run, against this Prometheus: its rc, stderr and JSON
    # report, and the emulator's ready replicas per role over the span it simulated, once a second.
    backtest: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise RuntimeError("the `prometheus` binary is missing: `make test` installs the Debian package "
                           "(apt-get install prometheus)")
    return path


def scaler_config(prometheus_url: str) -> dict:
    startup = {"warm": f"{STARTUP_S:g}s", "cold": f"{2 * STARTUP_S:g}s", "learn": False}
    return {
        "poll_interval": f"{POLL_S:g}s",
        "stale_after": "20s",
        "source": {"kind": "prometheus", "url": prometheus_url, "timeout": "1s", "rate_window": "15s"},
        "forecast": {"warm_start": "10m", "warm_start_step": "2s"},
        "graphs": {GRAPH: {"namespace": NAMESPACE, "roles": {
            "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 6, "component": "PrefillWorker",
                        "startup": startup, "stabilisation": {"scale_down": "20s"},
                        "safety_net": {"cooldown": "10s"}},
            "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 4, "component": "DecodeWorker",
                       "startup": startup, "stabilisation": {"scale_down": "20s"}},
            "warm": {"kind": "warm", "min_replicas": 0, "max_replicas": 2},
        }}},
    }


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
               "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [addr]}]}
                                  for job, addr in targets.items()]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log = workdir / "prometheus.log"
        self.argv = [prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                     "--log.level=warn"]
        self.proc: ManagedProcess | None = None
        self.restart()

    def restart(self) -> None:
        """Start the server (again, on the same port and data after a kill); ready when /-/ready answers."""
        self.proc = ManagedProcess(self.argv, name="prometheus", log_path=self.log, append_log=self.proc is not None,
                                   ready=lambda: _ready(f"{self.url}/-/ready"), start_timeout=30).start()

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        body = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        if body.get("status") != "success":
            raise ValueError(body.get("error", body))
        return body["data"]["result"]

    def range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = _get_json(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}", timeout=15)
        if body.get("status") != "success":
            raise ValueError(body.get("error", body))
        return body["data"]["result"]

    def wait_scraped(self, after: float, timeout: float = 30.0) -> None:
        """Until every target has been scraped, successfully, at or after epoch second `after`."""
        def done() -> bool:
            rows = self.query("up")
            return bool(rows) and all(float(r["value"][1]) == 1.0 for r in rows) and \
                min(float(v[1]) for v in (r["value"] for r in self.query("timestamp(up)"))) >= after
        wait_until(done, timeout, "prometheus scraping every target", interval=0.2)

    def stop(self) -> None:
        self.proc.stop()


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200


# The series the result keeps (name -> PromQL), read back over the whole run.
SERIES = {
    "demand_prefill": f'pdscaler_observed{{graph="{GRAPH}",role="",signal="prefill_tokens_per_s"}}',
    "forecast_prefill_p50": f'pdscaler_forecast{{graph="{GRAPH}",series="prefill_tokens_per_s",quantile="0.5",horizon="60"}}',
    "forecast_prefill_p90": f'pdscaler_forecast{{graph="{GRAPH}",series="prefill_tokens_per_s",quantile="0.9",horizon="60"}}',
    "target_prefill": f'pdscaler_target_replicas{{graph="{GRAPH}",role="prefill"}}',
    "target_decode": f'pdscaler_target_replicas{{graph="{GRAPH}",role="decode"}}',
    "target_warm": f'pdscaler_target_replicas{{graph="{GRAPH}",role="warm"}}',
    "min_prefill": f'pdscaler_min_replicas{{graph="{GRAPH}",role="prefill"}}',
    "min_decode": f'pdscaler_min_replicas{{graph="{GRAPH}",role="decode"}}',
    "min_warm": f'pdscaler_min_replicas{{graph="{GRAPH}",role="warm"}}',
    "ready_prefill": 'pdscaler_emulator_replicas{role="prefill",state="ready"}',
    "ready_decode": 'pdscaler_emulator_replicas{role="decode",state="ready"}',
    "ttft_p99": 'histogram_quantile(0.99, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket[15s])))',
}


def _locust(emulator_url: str, workdir: Path) -> ManagedProcess:
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(REPO / "load" / "locustfile.py"), "--headless",
           "--host", emulator_url, "--shape", "burst", "--rate", f"{RATE:g}", "--burst-factor", f"{BURST_FACTOR:g}",
           "--burst-at", f"{BURST_AT:g}", "--burst-for", f"{BURST_FOR:g}", "--duration", f"{DURATION:g}",
           "--isl", str(ISL), "--osl", str(OSL), "--arrivals", "uniform", "--json-file", str(workdir / "locust"),
           "--loglevel", "WARNING"]
    return ManagedProcess(cmd, name="locust", cwd=REPO, env=env, log_path=workdir / "locust.log").start()


async def _run(workdir: Path, dashboard_queries) -> E2EResult:
    from scaler.clock import SystemClock
    from scaler.testbench.emulator.app import Emulator
    from scaler.testbench.emulator.profile import EmulatorProfile
    from scaler.testbench.hpa import Behavior
    from scaler.testbench.keda import ExternalScalerClient, HttpScaleTarget, ScaledObjectEmulator, ScaledObjectSpec
    from scaler.render import hpa_behavior

    clock = SystemClock()
    emulator = Emulator(EmulatorProfile(startup_delay_s=STARTUP_S), clock=clock, graph=GRAPH, namespace=NAMESPACE)
    await emulator.start("127.0.0.1", 0)
    http_port = free_port()  # named in Prometheus' scrape config before the scaler starts
    prom = Prometheus(workdir, {"emulator": emulator.url.removeprefix("http://"), "pdscaler": f"127.0.0.1:{http_port}"})
    (workdir / "pdscaler.yaml").write_text(yaml.safe_dump(scaler_config(prom.url), sort_keys=False))
    scaler = serve_process(workdir / "pdscaler.yaml", http_port=http_port, cwd=REPO, log_path=workdir / "pdscaler.log")
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    targets: list = []
    client = locust = None
    try:
        await asyncio.to_thread(scaler.start)
        await asyncio.to_thread(scaler.wait_healthy, 60)
        grpc_port = scaler.grpc_port
        client = ExternalScalerClient(scaler.grpc_address)
        for role, adapter in ADAPTERS.items():
            spec = ScaledObjectSpec(
                name=f"{GRAPH}-{role}", namespace=NAMESPACE,
                metadata={"scalerAddress": f"127.0.0.1:{grpc_port}", "graph": GRAPH, "role": role},
                min_replica_count=1, max_replica_count=8, polling_interval=POLL_S, hpa_sync_period=POLL_S,
                behavior=Behavior.from_dict(hpa_behavior()))
            path = f"/apis/nvidia.com/v1alpha1/namespaces/{NAMESPACE}/dynamographdeploymentscalingadapters/{adapter}/scale"
            targets.append(HttpScaleTarget(emulator.url, path))
            tasks.append(asyncio.create_task(ScaledObjectEmulator(spec, client, targets[-1], clock).run(stop)))
        t = time.time()
        await asyncio.to_thread(prom.wait_scraped, t + 3)  # a few scrapes before the load
        start = time.time()
        locust = _locust(emulator.url, workdir)
        rc = await asyncio.to_thread(locust.wait, DURATION + 90)
        end = time.time()
        ha = await _second_scaler(workdir, grpc_port)
        await asyncio.to_thread(prom.wait_scraped, time.time() + 1)  # the last scrapes
        result = E2EResult(start=start, burst=(start + BURST_AT, start + BURST_AT + BURST_FOR), prometheus_url=prom.url,
                           ha=ha)
        try:
            result.locust = {"rc": rc, "stats": json.loads((workdir / "locust.json").read_text())}
        except (OSError, ValueError) as e:
            result.locust = {"rc": rc, "error": str(e)}
        for name, expr in SERIES.items():
            rows = prom.range(expr, start - 5, end, 1.0)
            result.series[name] = [(float(t), float(v)) for row in rows[:1] for t, v in row["values"]]
        result.backtest = await asyncio.to_thread(backtest_from_prometheus, prom, workdir, start - 5)
        # Over the run, as a dashboard shows a time range: an instant query at the end would find no
        # warm-pool figure if the last poll happened to be held for missing data (seen once in CI-like runs).
        for expr in dashboard_queries:
            try:
                result.queries[expr] = sum(1 for row in prom.range(expr, start, end, 5.0) if row.get("values"))
            except (ValueError, OSError) as e:
                result.query_errors[expr] = str(e)
        return result
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for target in targets:
            await target.close()
        if client is not None:
            await client.close()
        if locust is not None:
            await asyncio.to_thread(locust.stop)
        await asyncio.to_thread(scaler.stop)
        prom.stop()
        await emulator.stop()


BACKTEST_STEP_S = 5.0  # range-query step of the backtest over the run (5 scrapes per rate window)


def backtest_from_prometheus(prom: Prometheus, workdir: Path, since: float) -> dict:
    """`pdscaler backtest --prometheus` over the run (from `since` to now, on the step grid) with the
    run's config, and what the emulator exported of its ready replicas over the span it simulated."""
    import subprocess

    end = (time.time() // BACKTEST_STEP_S) * BACKTEST_STEP_S
    span = end - -(-since // BACKTEST_STEP_S) * BACKTEST_STEP_S
    out = workdir / "backtest.json"
    cmd = [sys.executable, "-m", "scaler", "backtest", "--prometheus", prom.url, "--config", str(workdir / "pdscaler.yaml"),
           "--graph", GRAPH, "--end", f"{end:.0f}", "--range", f"{span:.0f}s", "--step", f"{BACKTEST_STEP_S:g}s",
           "--warm-start", f"{STARTUP_S:g}s", "--cold-start", f"{2 * STARTUP_S:g}s",
           "--policies", "as-run,oracle,static-peak,pdscaler", "--json", str(out), "--plot", str(workdir / "backtest.png"),
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    (workdir / "backtest.log").write_text(proc.stdout + proc.stderr)
    result = {"rc": proc.returncode, "stderr": proc.stderr, "table": proc.stdout, "step_s": BACKTEST_STEP_S}
    if proc.returncode == 0:
        report = json.loads(out.read_text())
        result["report"] = report
        a, b = report["prometheus"]["sim_start"], report["prometheus"]["sim_end"]
        for role in ("prefill", "decode"):  # the value at t stands for (t - 1, t]
            rows = prom.range(f'pdscaler_emulator_replicas{{role="{role}",state="ready"}}', a + 1, b, 1.0)
            result[f"ready_{role}"] = [(float(t), float(v)) for row in rows[:1] for t, v in row["values"]]
    return result


async def _answers(client, port: int) -> dict[str, float]:
    from scaler.testbench.keda import ScaledObjectRef

    out = {}
    for role in ("prefill", "decode", "warm"):
        ref = ScaledObjectRef(name=f"{GRAPH}-{role}", namespace=NAMESPACE,
                              metadata={"scalerAddress": f"127.0.0.1:{port}", "graph": GRAPH, "role": role})
        out[role] = (await client.get_metrics(ref, f"pdscaler-{GRAPH}-{role}"))[0]
    return out


async def _second_scaler(workdir: Path, port_a: int, samples: int = 8) -> dict[str, list[tuple[float, float]]]:
    """Start a second `pdscaler serve` on the same config (it warm-starts from Prometheus' history) and,
    from the moment it says it is healthy (its first answers ready: decided on data after the warm
    start), compare both scalers' answers once a second."""
    from scaler.testbench.keda import ExternalScalerClient

    proc = serve_process(workdir / "pdscaler.yaml", name="pdscaler serve (B)", cwd=REPO,
                         log_path=workdir / "pdscaler-b.log")
    a, b = ExternalScalerClient(f"127.0.0.1:{port_a}"), None
    pairs: dict[str, list[tuple[float, float]]] = {}
    try:
        await asyncio.to_thread(proc.start)
        await asyncio.to_thread(proc.wait_healthy, 60)
        port_b = proc.grpc_port
        b = ExternalScalerClient(proc.grpc_address)
        for _ in range(samples):
            ra, rb = await asyncio.gather(_answers(a, port_a), _answers(b, port_b))
            for role in ra:
                pairs.setdefault(role, []).append((ra[role], rb[role]))
            await asyncio.sleep(1)
    finally:
        await a.close()
        if b is not None:
            await b.close()
        await asyncio.to_thread(proc.stop)
    return pairs


def run(workdir: Path | None = None, dashboard_queries: list[str] | None = None) -> E2EResult:
    """The whole run (about two and a half minutes); `workdir` keeps logs, configs and Prometheus' data."""
    if dashboard_queries is None:
        try:
            from dashboards.queries import dashboard_queries as dq

            dashboard_queries = sorted({expr for _, _, expr in dq(NAMESPACE, GRAPH)})
        except ImportError:
            dashboard_queries = []
    prometheus_binary()
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="pdscaler-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(workdir, dashboard_queries))


def plot(result: E2EResult, path: Path | None = None):
    """Demand and its forecast, and the replicas of each role, over the run (burst shaded); written
    to `path` when given. Returns the matplotlib Figure. Replica axes have integer ticks; each
    panel's legend is right of it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    t0 = result.start

    def xy(name: str, shift: float = 0.0):
        pts = result.series.get(name, [])
        return [t - t0 + shift for t, _ in pts], [v for _, v in pts]

    def legend(ax) -> None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)

    fig = Figure(figsize=(11.5, 8), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    b0, b1 = result.burst[0] - t0, result.burst[1] - t0
    for i, ax in enumerate(axes):  # the burst named once, in the first legend
        ax.axvspan(b0, b1, color="tab:red", alpha=0.08, lw=0,
                   label=f"locust burst ({BURST_FACTOR:g}x the rate)" if i == 0 else None)
        ax.grid(alpha=0.3)
    ax = axes[0]
    x, y = xy("demand_prefill")
    ax.plot(x, [v / 1000 for v in y], color="black", label="prefill tokens/s observed\n(Dynamo counts at first token)")
    x50, y50 = xy("forecast_prefill_p50", 60.0)
    x90, y90 = xy("forecast_prefill_p90", 60.0)
    ax.plot(x50, [v / 1000 for v in y50], color="tab:blue", label="forecast p50, made 60 s earlier\n(drawn at the time it predicted)")
    if x90:
        ax.fill_between(x50[:len(y90)], [v / 1000 for v in y50[:len(y90)]], [v / 1000 for v in y90[:len(y50)]],
                        color="tab:blue", alpha=0.2, lw=0, label="forecast p50 to p90")
    ax.set_ylabel("k tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title("pdscaler end to end: real Prometheus, emulated Dynamo graph, locust burst, KEDA/HPA emulation",
                 fontsize=11)
    legend(ax)
    for ax, role in zip(axes[1:], ("prefill", "decode")):
        top = 1.0
        for name, style, label in ((f"target_{role}", "-", "target (pdscaler's answer)"),
                                   (f"ready_{role}", "--", "ready (emulator)")):
            x, y = xy(name)
            top = max([top, *y])
            ax.step(x, y, style, where="post", lw=1.6 if style == "-" else 1.3, label=f"{role} {label}")
        if role == "decode":
            x, y = xy("target_warm")
            top = max([top, *y])
            ax.step(x, y, ":", where="post", lw=1.6, label="warm (GPU placeholder) target")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
        ax.set_ylim(-0.2, top + 0.5)
        ax.set_ylabel(f"{role} replicas" if role == "prefill" else "decode, warm replicas")
        legend(ax)
    axes[-1].set_xlabel("seconds since the load started")
    end = max((t for pts in result.series.values() for t, _ in pts), default=t0) - t0
    axes[-1].set_xlim(-5, end)
    if path is not None:
        fig.savefig(path, dpi=90)
    return fig


def load_result(path: Path) -> E2EResult:
    data = json.loads(Path(path).read_text())
    data["burst"] = tuple(data["burst"])
    data["series"] = {k: [tuple(p) for p in v] for k, v in data["series"].items()}
    return E2EResult(**data)


# The phases of a run, by the files it writes as it goes (the last one present is the phase).
_PHASES = (("pdscaler.log", "Prometheus and the emulator up, pdscaler serve starting"),
           ("locust.log", f"locust: the burst load, {DURATION:g} s"),
           ("pdscaler-b.log", "a second scaler, compared with the first"),
           ("backtest.log", "reading the run back from Prometheus"))


def _progress(workdir: Path):
    """Print the phase and the time so far every 10 s on stderr until the returned event is set."""
    import threading

    stop, t0 = threading.Event(), time.monotonic()

    def tick() -> None:
        while not stop.wait(10.0):
            phase = next((what for name, what in reversed(_PHASES) if (workdir / name).exists()), "starting")
            print(f"python -m load.e2e: {time.monotonic() - t0:.0f} s (about 150 s in all): {phase}",
                  file=sys.stderr, flush=True)

    threading.Thread(target=tick, name="e2e-progress", daemon=True).start()
    return stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.e2e", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for logs, configs, Prometheus data and result.json")
    p.add_argument("--plot", help="write the PNG here")
    p.add_argument("--replot", help="only draw the PNG of an earlier run's result.json")
    p.add_argument("--progress", action="store_true", default=None,
                   help="a line every 10 s on stderr: the phase and the time so far (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.replot:
        plot(load_result(Path(args.replot)), Path(args.plot or "e2e.png"))
        return 0
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pdscaler-e2e-"))
    stop = _progress(workdir) if (sys.stderr.isatty() if args.progress is None else args.progress) else None
    try:
        result = run(workdir)
    finally:
        if stop is not None:
            stop.set()
    if args.out:
        (Path(args.out) / "result.json").write_text(result.to_json())
    if args.plot:
        plot(result, Path(args.plot))
    empty = [q for q, n in result.queries.items() if n == 0] + list(result.query_errors)
    print(f"locust rc={result.locust.get('rc')}, dashboard queries: {len(result.queries) - len(empty)} with data, "
          f"{len(empty)} empty or failing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
