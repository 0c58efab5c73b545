"""`pdscaler demo`: the whole loop on one machine, no cluster and no Prometheus needed.

The emulated serving graph replays a real trace (the Azure LLM code trace, shipped in the project)
on a virtual clock running `speedup` times faster than wall time. pdscaler's real decision loop
scrapes the emulator's /metrics, its real gRPC server answers an in-process KEDA + HPA emulation,
which applies the targets to the emulator's /scale subresources over HTTP. Every component runs on
the same virtual clock, so start-up delays, polling intervals and stabilisation windows keep their
real proportions. The terminal shows a live view and ends with a summary.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from scaler.clock import VirtualClock
from scaler.config import ScalerConfig
from scaler.testbench.emulator.app import Emulator
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.engine import Engine
from scaler.testbench.hpa import Behavior
from scaler.testbench.keda import ExternalScalerClient, HttpScaleTarget, ScaledObjectEmulator, ScaledObjectSpec
from scaler.loop import DecisionLoop
from scaler.server import start_server
from scaler.sources.scrape import ScrapeSource
from scaler.store import DecisionStore
from scaler.testbench.traces import TraceRequest, bundled_trace, load_trace, scale_rate

GRAPH, NAMESPACE = "demo", "default"
ADAPTERS = {"prefill": f"{GRAPH}-prefillworker", "decode": f"{GRAPH}-decodeworker"}
# SLOs of the summary: MLPerf Inference's interactive Llama-3.1-8B scenario (TTFT 0.5 s, TPOT 30 ms).
SLO_TTFT_S, SLO_ITL_S = 0.5, 0.030


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
    return ScalerConfig.model_validate(
        {
            "poll_interval": 15,
            "stale_after": 90,
            "source": {"kind": "scrape", "targets": {GRAPH: [metrics_url]}, "rate_window": 60},
            "graphs": {
                GRAPH: {
                    "namespace": NAMESPACE,
                    "roles": {
                        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": max_replicas["prefill"],
                                    "component": "PrefillWorker"},
                        "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": max_replicas["decode"],
                                   "component": "DecodeWorker"},
                    },
                }
            },
        }
    )


def load_demo_trace(opts: DemoOptions) -> list[TraceRequest]:
    path = bundled_trace(opts.trace) if opts.trace in ("azure-code", "azure-conv") else opts.trace
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
    controllers = {
        role: ScaledObjectEmulator(
            ScaledObjectSpec(
                name=f"{GRAPH}-{role}",
                namespace=NAMESPACE,
                metadata={"scalerAddress": f"127.0.0.1:{port}", "graph": GRAPH, "role": role},
                min_replica_count=1,
                max_replica_count=opts.max_replicas[role],
                behavior=Behavior.default(),
            ),
            client,
            HttpScaleTarget(emulator.url, _scale_path(adapter)),
            clock,
        )
        for role, adapter in ADAPTERS.items()
    }
    targets = [c.target for c in controllers.values()]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in controllers.values()]
    replay = emulator.replay(trace, start_at=clock.now())
    view = LiveView(opts.ui, port, trace, opts)
    wall0 = time.monotonic()
    end_virtual = trace[-1].t + 120.0  # let the tail drain
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
    print(summary(emulator, rows, opts))
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
        f"  requests finished {sim.finished}, still in the graph {sim.in_system}",
        f"  TTFT <= {SLO_TTFT_S}s: {_share(ttft <= SLO_TTFT_S)}   p99 TTFT {_q(ttft, 0.99):.2f}s",
        f"  ITL  <= {SLO_ITL_S * 1000:.0f}ms: {_share(itl <= SLO_ITL_S)}   p99 ITL {_q(itl, 0.99) * 1000:.1f}ms",
        f"  GPU-hours {gpu_h:.2f} (static at the peak of {peak['prefill']}P+{peak['decode']}D: {static_h:.2f})",
        "  (a one-hour trace starts cold: no history to forecast from; `pdscaler backtest` compares policies)",
    ]
    return "\n".join(lines)


def _share(mask: np.ndarray) -> str:
    return "-" if mask.size == 0 else f"{mask.mean():.1%}"


def _q(x: np.ndarray, q: float) -> float:
    return float(np.quantile(x, q)) if x.size else math.nan
