"""`pdscaler demo`: the whole loop on one machine, no cluster and no Prometheus needed.

The emulated serving graph replays a real trace (the Azure LLM code trace, shipped in the project)
on a virtual clock running `speedup` times faster than wall time. pdscaler's real decision loop
scrapes the emulator's /metrics, its real gRPC server answers an in-process KEDA + HPA emulation,
which applies the targets to the emulator's /scale subresources over HTTP. Every component runs on
the same virtual clock, so start-up delays, polling intervals and stabilisation windows keep their
real proportions. The KEDA + HPA emulation runs the ScaledObjects pdscaler ships
(manifests/overlays/dynamo-disagg/scaledobjects.yaml, built by `pdscaler render`: stabilisation
windows 0, tolerance 0, pollingInterval 15, fallback), not Kubernetes' defaults.

The terminal shows a live view (plain progress lines when stdout is not a terminal or with
--no-ui) and ends with a summary: the live figures, then the same span of the same trace replayed
by `pdscaler backtest`'s simulator under pdscaler and the baselines (reactive-ttft, llmd-keda,
planner-load, static-best, oracle), so the live run can be read against what the alternatives
would have done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

import numpy as np

from scaler.clock import VirtualClock
from scaler.config import ScalerConfig
from scaler.testbench.emulator.app import Emulator
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.engine import Engine
from scaler.testbench.hpa import Behavior
from scaler.testbench.keda import (
    ExternalScalerClient,
    Fallback,
    HttpScaleTarget,
    ScaledObjectEmulator,
    ScaledObjectSpec,
)
from scaler.loop import DecisionLoop
from scaler.server import start_server
from scaler.sources.scrape import ScrapeSource
from scaler.store import DecisionStore
from scaler.testbench.traces import TraceRequest, load_trace, resolve_trace, scale_rate

GRAPH, NAMESPACE = "demo", "default"
ADAPTERS = {"prefill": f"{GRAPH}-prefillworker", "decode": f"{GRAPH}-decodeworker"}
# SLOs of the summary: MLPerf Inference's interactive Llama-3.1-8B scenario (TTFT 0.5 s, TPOT 30 ms).
SLO_TTFT_S, SLO_ITL_S = 0.5, 0.030
# The policies of the simulated table, in the order printed (`pdscaler backtest --policies`).
SIM_POLICIES = ("pdscaler", "reactive-ttft", "llmd-keda", "planner-load", "static-best", "oracle")


@dataclass
class DemoOptions:
    duration: float | None = None  # wall seconds; None = until the trace has been replayed and drained
    speedup: float = 30.0
    grpc_port: int = 0
    ui: bool = True
    trace: str = "azure-code"
    rate_scale: float = 10.0
    start: float = 0.0  # trace seconds to skip
    max_replicas: dict[str, int] = field(default_factory=lambda: {"prefill": 16, "decode": 8})


def demo_config(metrics_url: str, max_replicas: dict[str, int]) -> ScalerConfig:
    return ScalerConfig.model_validate(demo_config_dict(metrics_url, max_replicas))


def demo_config_dict(metrics_url: str, max_replicas: dict[str, int]) -> dict[str, Any]:
    """The demo's pdscaler config; also the simulated pdscaler's (merged over the backtest's own)."""
    return {
        "poll_interval": 15,
        "stale_after": 90,
        "source": {"kind": "scrape", "targets": {GRAPH: [metrics_url]}, "rate_window": 60},
        "graphs": {
            GRAPH: {
                "namespace": NAMESPACE,
                # the emulated hardware's profile, as an operator gives their own (Dynamo's profiler)
                "profile": str(resources.files("scaler").joinpath("data/profile.emulated.yaml")),
                "roles": {
                    "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": max_replicas["prefill"],
                                "component": "PrefillWorker"},
                    "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": max_replicas["decode"],
                               "component": "DecodeWorker"},
                },
            }
        },
    }


def demo_scaled_objects(scaler_address: str, max_replicas: dict[str, int]) -> dict[str, ScaledObjectSpec]:
    """The ScaledObject of each role, as `pdscaler render` writes it for a Dynamo graph (the objects
    manifests/overlays/dynamo-disagg ships; tests/test_render.py keeps the two equal), read back into
    what the KEDA + HPA emulation runs: its HPA behavior, pollingInterval and fallback."""
    from scaler.render import scaled_object

    return {
        role: scaled_object_spec(scaled_object(
            name=f"{GRAPH}-{role}", namespace=NAMESPACE,
            target={"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeploymentScalingAdapter",
                    "name": adapter},
            graph=GRAPH, role=role, min_replicas=1, max_replicas=max_replicas[role], scaler_address=scaler_address))
        for role, adapter in ADAPTERS.items()
    }


def scaled_object_spec(so: Mapping[str, Any]) -> ScaledObjectSpec:
    """A ScaledObject manifest (one external trigger) as the emulation's ScaledObjectSpec; unset
    fields take KEDA's defaults."""
    spec = so["spec"]
    fb = spec.get("fallback")
    return ScaledObjectSpec(
        name=so["metadata"]["name"],
        namespace=so["metadata"].get("namespace", "default"),
        metadata=dict(spec["triggers"][0].get("metadata") or {}),
        min_replica_count=int(spec.get("minReplicaCount", 0)),
        max_replica_count=int(spec.get("maxReplicaCount", 100)),
        polling_interval=float(spec.get("pollingInterval", 30)),
        cooldown_period=float(spec.get("cooldownPeriod", 300)),
        initial_cooldown_period=float(spec.get("initialCooldownPeriod", 0)),
        behavior=Behavior.from_scaled_object_spec(spec),
        fallback=Fallback(int(fb["failureThreshold"]), int(fb["replicas"]), fb.get("behavior", "static"))
        if fb else None,
    )


def load_demo_trace(opts: DemoOptions) -> list[TraceRequest]:
    path = resolve_trace(opts.trace)
    reqs = [TraceRequest(r.t - opts.start, r.isl, r.osl) for r in load_trace(path) if r.t >= opts.start]
    return scale_rate(reqs, opts.rate_scale, seed=0)


@dataclass
class Row:
    t: float
    rate: float
    demand_ktok: float
    queued: float
    kv: float
    ttft_p99: float
    roles: dict[str, tuple[int, int, int]]  # role -> (target, desired, ready)
    reason: str


def run_demo(opts: DemoOptions) -> int:
    try:
        return asyncio.run(_demo(opts))
    except KeyboardInterrupt:
        return 130


async def _demo(opts: DemoOptions) -> int:
    # The live view shows every decision; the loop's per-decision log lines would only repeat it.
    logging.getLogger("pdscaler.loop").setLevel(logging.WARNING)
    trace = load_demo_trace(opts)
    if not trace:
        print("pdscaler demo: the trace has no requests after --start", file=sys.stderr)
        return 2
    clock = VirtualClock(speedup=opts.speedup, origin=0.0)
    emulator = Emulator(EmulatorProfile(), clock=clock, graph=GRAPH, namespace=NAMESPACE)
    await emulator.start("127.0.0.1", 0)
    config = demo_config(f"{emulator.url}/metrics", opts.max_replicas)
    store, engine = DecisionStore(), Engine(config)
    loop = DecisionLoop(engine, ScrapeSource(config), store, clock)
    server = await start_server(config, store, opts.grpc_port, "127.0.0.1")
    port = server.port
    loop.start()
    client = ExternalScalerClient(f"127.0.0.1:{port}")
    specs = demo_scaled_objects(f"127.0.0.1:{port}", opts.max_replicas)
    controllers = {
        role: ScaledObjectEmulator(specs[role], client, HttpScaleTarget(emulator.url, _scale_path(adapter)), clock)
        for role, adapter in ADAPTERS.items()
    }
    targets = [c.target for c in controllers.values()]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in controllers.values()]
    replay_t0 = clock.now()  # trace time 0 on the virtual clock
    replay = emulator.replay(trace, start_at=replay_t0)
    # rich's Live needs a terminal: piped (`make demo | tee demo.log`, CI) it would print nothing
    # until its last frame, so the plain progress lines are printed instead.
    view = LiveView(opts.ui and sys.stdout.isatty(), port, trace, opts)
    wall0 = time.monotonic()
    end_virtual = replay_t0 + trace[-1].t + 120.0  # let the tail drain
    rows: list[Row] = []
    try:
        with view:
            while True:
                await asyncio.sleep(0.25)
                row = _row(clock.now(), engine, store, emulator)
                rows.append(row)
                view.update(row)
                if opts.duration is not None and time.monotonic() - wall0 >= opts.duration:
                    break
                if opts.duration is None and replay.done() and clock.now() >= end_virtual:
                    break
    finally:
        stop.set()
        replay.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop.stop()
        await client.close()
        for t in targets:
            await t.close()
        await server.stop(grace=0)
        await emulator.stop()
    live = summary(emulator, rows, opts)
    # The same span of the trace: all of it, or what a run cut short by --duration played.
    played = rows[-1].t - replay_t0 if rows else 0.0
    span = None if opts.duration is None else max(1.0, min(played, trace[-1].t + 1.0))
    print(live + "\n", flush=True)
    try:
        sim = simulated_table(opts, span, emulator.profile)
    except Exception as e:  # noqa: BLE001 - the live run's summary stands without the simulation
        sim = f"simulated (pdscaler backtest, same trace): failed: {type(e).__name__}: {e}"
    print(sim)
    return 0


def _scale_path(adapter: str) -> str:
    return f"/apis/nvidia.com/v1alpha1/namespaces/{NAMESPACE}/dynamographdeploymentscalingadapters/{adapter}/scale"


def _row(now: float, engine: Engine, store: DecisionStore, emulator: Emulator) -> Row:
    obs = engine.latest(GRAPH)
    decision = store.get(GRAPH)
    snap = emulator.snapshot()
    sig = obs.signals if obs else {}
    roles = {}
    for role in ADAPTERS:
        target = decision.roles[role].replicas if decision else 0
        r = snap["replicas"][role]
        roles[role] = (target, r["desired"], r["ready"])
    reason = str(decision.roles["prefill"].reason) if decision else ""
    rate = sig.get("request_rate", math.nan)
    return Row(
        t=now,
        rate=rate,
        demand_ktok=rate * sig.get("isl_mean", 0.0) / 1000 if rate == rate else math.nan,
        queued=snap["queued_requests"],
        kv=snap["decode_kv_usage"],
        ttft_p99=sig.get("ttft_p99", math.nan),
        roles=roles,
        reason=reason,
    )


def _fmt_t(t: float) -> str:
    return f"{int(t // 60):3d}:{int(t % 60):02d}"


class LiveView:
    """A live terminal table (rich), or plain log lines with --no-ui."""

    def __init__(self, ui: bool, port: int, trace: list[TraceRequest], opts: DemoOptions) -> None:
        self.ui, self.port, self.opts = ui, port, opts
        self.rows: list[Row] = []
        self.last_line_t = -math.inf
        self.header = (
            f"pdscaler demo: {opts.trace} x{opts.rate_scale:g} ({len(trace)} requests, "
            f"{trace[-1].t / 60:.0f} min) at {opts.speedup:g}x; gRPC on 127.0.0.1:{port} "
            f"(graph {GRAPH}, roles prefill, decode)"
        )
        self._live = None

    def __enter__(self) -> "LiveView":
        if self.ui:
            from rich.live import Live

            self._live = Live(self._render(), refresh_per_second=4, transient=False)
            self._live.__enter__()
        else:
            print(self.header, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, row: Row) -> None:
        if self.ui:
            if not self.rows or row.t - self.rows[-1].t >= 30:
                self.rows.append(row)
            self.current = row
            self._live.update(self._render(row))
        elif row.t - self.last_line_t >= 60:
            self.last_line_t = row.t
            c = self._cells(row)
            p, d = row.roles["prefill"], row.roles["decode"]
            print(
                f"t={c[0]} rate={c[1]}/s prefill_demand={c[2]}k tok/s queued={c[3]} kv={c[4]} ttft_p99={c[5]} "
                f"prefill target={p[0]} desired={p[1]} ready={p[2]} decode target={d[0]} desired={d[1]} "
                f"ready={d[2]} | {row.reason}",
                flush=True,
            )

    def _render(self, current: Row | None = None):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.header, title_justify="left", expand=False)
        for col in ("time", "req/s", "prefill kTok/s", "queued", "KV", "TTFT p99",
                    "prefill tgt/cur/ready", "decode tgt/cur/ready"):
            table.add_column(col, justify="right")
        for r in self.rows[-18:]:
            table.add_row(*self._cells(r))
        parts = [table]
        if current is not None:
            parts.append(Text(f"now {_fmt_t(current.t)}  " + "  ".join(self._cells(current)[1:])))
            parts.append(Text(f"prefill: {current.reason}", overflow="ellipsis", no_wrap=True))
        return Group(*parts)

    @staticmethod
    def _cells(r: Row) -> list[str]:
        def f(x, fmt):
            return "-" if x != x else format(x, fmt)

        return [
            _fmt_t(r.t), f(r.rate, ".1f"), f(r.demand_ktok, ".1f"), f(r.queued, ".0f"), f(r.kv, ".1%"),
            f(r.ttft_p99, ".2f") + ("s" if r.ttft_p99 == r.ttft_p99 else ""),
            "{}/{}/{}".format(*r.roles["prefill"]), "{}/{}/{}".format(*r.roles["decode"]),
        ]


def summary(emulator: Emulator, rows: list[Row], opts: DemoOptions) -> str:
    sim = emulator.sim
    done = sim.finished_arrays()
    ttft, itl = done.ttft, done.itl[~np.isnan(done.itl)]
    span_h = (rows[-1].t - rows[0].t) / 3600 if len(rows) > 1 else 0.0
    peak = {role: max((r.roles[role][1] for r in rows), default=0) for role in ADAPTERS}
    gpu_h = sim.gpu_seconds / 3600
    static_h = sum(peak.values()) * span_h  # one GPU per replica in the demo profile
    lines = [
        "",
        f"summary over {span_h * 60:.1f} virtual minutes ({opts.trace} x{opts.rate_scale:g} at {opts.speedup:g}x):",
        "live (the emulated graph, pdscaler's loop and gRPC server, KEDA + HPA with the shipped ScaledObjects):",
        f"  requests finished {sim.finished}, still in the graph {sim.in_system}",
        f"  TTFT <= {SLO_TTFT_S}s: {_share(ttft <= SLO_TTFT_S)}   p99 TTFT {_q(ttft, 0.99):.2f}s",
        f"  ITL  <= {SLO_ITL_S * 1000:.0f}ms: {_share(itl <= SLO_ITL_S)}   p99 ITL {_q(itl, 0.99) * 1000:.1f}ms",
        f"  GPU-hours {gpu_h:.2f} (static at the peak of {peak['prefill']}P+{peak['decode']}D: {static_h:.2f}), "
        f"max replicas {peak['prefill']}P/{peak['decode']}D",
        "  (a one-hour trace starts cold: no history to forecast from)",
    ]
    return "\n".join(lines)


def simulated_backtest(opts: DemoOptions, duration_s: float | None, profile: EmulatorProfile | None = None):
    """`pdscaler backtest`'s replay of the demo's workload: the same trace, rate scale, start and span
    (None: the whole trace), the same hardware profile and SLOs, and a cluster like the emulated one
    (every replica starts in the profile's startup_delay_s, a GPU is released when its replica goes:
    no node provisioning, no idle nodes). The pdscaler policy runs the demo's config (its role
    bounds) merged over the backtest's; the baselines are capped at the demo's largest role maximum.
    The equivalent command: `pdscaler backtest --trace <trace> --rate-scale <k> --start <s>s
    [--duration <d>s] --cold-start 90s --scale-down-unneeded 0s --max-replicas 16 --policies ...`
    with --config set to the demo's config."""
    from scaler.testbench.sim.backtest import run_backtest
    from scaler.testbench.sim.context import SimContext
    from scaler.testbench.sim.nodes import NodeSettings
    from scaler.testbench.sim.workload import load_workload

    profile = profile or EmulatorProfile()
    workload = load_workload(opts.trace, rate_scale=opts.rate_scale, history_s=0.0).sliced(opts.start, duration_s)
    nodes = NodeSettings(warm_start_s=profile.startup_delay_s, node_provision_s=0.0, scale_down_unneeded_s=0.0)
    ctx = SimContext(workload, profile=profile, ttft_slo=SLO_TTFT_S, itl_slo=SLO_ITL_S, nodes=nodes,
                     max_replicas=max(opts.max_replicas.values()),
                     engine_overrides=demo_config_dict("http://127.0.0.1:1/metrics", opts.max_replicas))
    return run_backtest(opts.trace, ctx, list(SIM_POLICIES))


def simulated_table(opts: DemoOptions, duration_s: float | None, profile: EmulatorProfile | None = None) -> str:
    """The simulated policies as a small table, labelled as such, with how to read it."""
    bt = simulated_backtest(opts, duration_s, profile)
    wl = bt.ctx.workload
    minutes = wl.n_sim * wl.dt / 60
    cols = ("policy", f"TTFT<={SLO_TTFT_S:g}s", f"ITL<={SLO_ITL_S * 1000:.0f}ms", "GPU-h", "p99 TTFT", "max P/D")
    rows = []
    for name in SIM_POLICIES:
        s = bt.runs[name].summary
        mx = s["max_replicas"]
        rows.append((name, f"{s['ttft_attainment']:.1%}", f"{s['itl_attainment']:.1%}", f"{s['gpu_hours']:.2f}",
                     f"{s['p99_ttft_s']:.2f}s", f"{mx['prefill']}/{mx['decode']}"))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells) -> str:
        return "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths)))

    start = f" from minute {opts.start / 60:g}" if opts.start else ""
    lines = [
        f"simulated (pdscaler backtest, same trace): {opts.trace} x{opts.rate_scale:g}, {minutes:.1f} trace "
        f"minutes{start}, fluid model, every replica start {bt.ctx.nodes.warm_start_s:g}s as in the emulator:",
        line(cols),
        *(line(r) for r in rows),
        "  how to read: the same requests through the backtest's simulator; pdscaler's row should sit near the live "
        "figures above, and a policy does better with higher SLO shares at fewer GPU-hours (oracle: knows the demand)",
    ]
    return "\n".join(lines)


def _share(mask: np.ndarray) -> str:
    return "-" if mask.size == 0 else f"{mask.mean():.1%}"


def _q(x: np.ndarray, q: float) -> float:
    return float(np.quantile(x, q)) if x.size else math.nan
