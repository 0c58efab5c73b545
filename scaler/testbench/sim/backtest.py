"""`pdscaler backtest`: several policies replayed over the same trace, side by side.

Every policy sees the same workload (same Poisson draws), the same simulated hardware
(EmulatorProfile: the published Dynamo profile figures), the same GPU nodes model and SLOs
(scaler/testbench/sim/replay.py). The report: a table (stdout), JSON (`to_json`, one object per policy with
ttft_attainment, itl_attainment, gpu_hours, scale_events, p99_ttft_s, max_replicas and extras),
and a PNG (demand, replicas per role per policy, SLO breaches over time).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaler.testbench.sim.context import SimContext
from scaler.testbench.sim.replay import PLOT_POINTS, RunResult, downsample, replay


@dataclass
class Backtest:
    trace: str
    ctx: SimContext
    runs: dict[str, RunResult] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        wl = self.ctx.workload
        policies = {}
        oracle = self.runs.get("oracle")
        for name, run in self.runs.items():
            s = {k: _finite(v) for k, v in run.summary.items()}
            if oracle is not None and oracle.summary["gpu_hours"] > 0:
                s["gpu_hours_vs_oracle"] = run.summary["gpu_hours"] / oracle.summary["gpu_hours"]
            policies[name] = s
        return {
            "trace": self.trace,
            "workload": {
                "name": wl.name, "dt_s": wl.dt, "simulated_s": wl.n_sim * wl.dt, "history_s": wl.start * wl.dt,
                "notes": list(wl.notes),
            },
            "slo": {"ttft_s": self.ctx.ttft_slo, "itl_s": self.ctx.itl_slo},
            "nodes": {"warm_start_s": self.ctx.nodes.warm_start_s, "node_provision_s": self.ctx.nodes.node_provision_s,
                      "scale_down_unneeded_s": self.ctx.nodes.scale_down_unneeded_s},
            "wall_s": self.wall_s,
            "policies": policies,
        }

    def table(self) -> str:
        cols = ("policy", "TTFT ok", "ITL ok", "GPU-h", "vs oracle", "replica GPU-h", "scale ev", "p99 TTFT",
                "max P/D/warm", "cold/warm starts", "wall")
        rows = []
        oracle = self.runs.get("oracle")
        base = oracle.summary["gpu_hours"] if oracle else math.nan
        for name, run in self.runs.items():
            s = run.summary
            mx = s["max_replicas"]
            rows.append((
                name, f"{s['ttft_attainment']:.2%}", f"{s['itl_attainment']:.2%}", f"{s['gpu_hours']:.1f}",
                f"{s['gpu_hours'] / base:.2f}x" if base and base == base else "-", f"{s['replica_gpu_hours']:.1f}",
                str(s["scale_events"]), f"{s['p99_ttft_s']:.2f}s",
                f"{mx['prefill']}/{mx['decode']}/{mx.get('warm', 0)}", f"{s['cold_starts']}/{s['warm_starts']}",
                f"{s['wall_s']:.1f}s",
            ))  # fmt: skip
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        wl = self.ctx.workload
        head = (f"backtest {Path(self.trace).name} ({wl.name}): {wl.n_sim * wl.dt / 3600:.1f} h simulated at dt={wl.dt:g}s, "
                f"SLO TTFT {self.ctx.ttft_slo:g}s ITL {self.ctx.itl_slo * 1000:g}ms")
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        for r in rows:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ctx, wl = self.ctx, self.ctx.workload
        n = wl.n_sim
        hours = downsample(np.arange(n) * wl.dt / 3600, PLOT_POINTS)
        fig, axes = plt.subplots(4, 1, figsize=(13, 12), sharex=True)
        ax = axes[0]
        ax.plot(hours, downsample(ctx.sim("rate"), PLOT_POINTS), color="black", lw=0.8, label="request rate (mean)")
        ax.set_ylabel("req/s")
        ax2 = ax.twinx()
        for role, color in (("prefill", "tab:blue"), ("decode", "tab:orange")):
            ax2.plot(hours, downsample(ctx.need[role], PLOT_POINTS, "max"), color=color, lw=0.6, alpha=0.6,
                     label=f"{role} replicas needed (max)")
        ax2.set_ylabel("replicas needed")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{Path(self.trace).name} ({wl.name}): demand")
        for ax, role in ((axes[1], "prefill"), (axes[2], "decode")):
            for name, run in self.runs.items():
                ax.plot(hours, run.series[f"desired_{role}"], lw=0.8, label=name)
            ax.set_ylabel(f"{role} replicas")
            ax.set_yscale("symlog", linthresh=10)
            ax.legend(fontsize=8, ncol=4)
        ax = axes[3]
        for name, run in self.runs.items():
            ax.plot(hours, run.series["ttft_breach_share"], lw=0.8, label=name)
        ax.set_ylabel("share TTFT > SLO")
        ax.set_xlabel("hours")
        ax.legend(fontsize=8, ncol=4)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.integer)):
        return _finite(v.item())
    return v


def run_backtest(trace: str, ctx: SimContext, policies: list[str], progress: bool = False) -> Backtest:
    """Replay each policy in turn (sequentially: one core each would not share the telemetry)."""
    from scaler.testbench.sim.policies import POLICIES

    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    bt = Backtest(trace, ctx)
    t0 = time.perf_counter()
    n = ctx.workload.n_sim
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description:<16}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
            tasks = {p: bar.add_task(p, total=n) for p in policies}
            for p in policies:
                bt.runs[p] = replay(p, ctx, lambda k, task=tasks[p]: bar.update(task, completed=k))
    else:
        for p in policies:
            bt.runs[p] = replay(p, ctx)
    bt.wall_s = time.perf_counter() - t0
    return bt


def progress_wanted(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()
