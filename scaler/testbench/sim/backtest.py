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


DODGE = 0.15  # replicas: the most a line of the replica panels is offset by


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

    def plot(self, path: str | None = None):
        """The PNG of `--plot` (written to `path` when given); returns the matplotlib Figure.

        Four panels over the simulated time: the request rate; prefill and decode replicas per
        policy (integer counts, the replicas the trace needed at each instant shaded); the share of
        requests whose TTFT exceeded the SLO over a trailing window sized to the trace
        (`miss_window_s`). One legend per panel, right of the axes: each policy with its TTFT
        attainment and GPU-hours."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter

        ctx, wl = self.ctx, self.ctx.workload
        n, dt = wl.n_sim, wl.dt
        unit, div = _time_unit(n * dt)
        m = _bucket(n)
        t = np.arange(-(-n // m)) * m * dt / div  # each plot bucket at its start
        fig = Figure(figsize=(14, 12.5), layout="constrained")
        axes = fig.subplots(4, 1, sharex=True)
        ax = axes[0]
        ax.set_label("demand")
        ax.plot(t, downsample(ctx.sim("rate"), PLOT_POINTS), color="black", lw=0.8,
                label=f"requests/s (mean per {_fmt_s(m * dt)})")
        ax.set_ylabel("requests / s")
        ax.set_ylim(bottom=0)
        name = Path(self.trace).name
        ax.set_title(f"backtest {name} ({wl.name}): {_fmt_span(n * dt)} simulated, SLO TTFT "
                     f"{ctx.ttft_slo:g} s, ITL {ctx.itl_slo * 1000:g} ms")
        _legend_right(ax)
        styles = _policy_styles(list(self.runs))
        for ax, role in ((axes[1], "prefill"), (axes[2], "decode")):
            ax.set_label(role)
            need = downsample(ctx.need[role], PLOT_POINTS, "max")
            ax.fill_between(t, 0, need, step="post", color="0.88", lw=0)
            ax.plot(t, need, drawstyle="steps-post", color="0.6", lw=0.6, zorder=2,
                    label="needed within the SLOs at each step\n(the most in the bucket; shaded)")
            ys = {pname: np.asarray(run.series[f"desired_{role}"], dtype=float) for pname, run in self.runs.items()}
            top = max([float(np.nanmax(need)) if need.size else 1.0]
                      + [float(np.nanmax(y)) for y in ys.values() if y.size])
            low = min([float(np.nanmedian(y)) for y in ys.values() if y.size] or [1.0])
            # Equal counts would hide each other: on a small axis each policy's line is offset by a
            # few hundredths of a replica (at most DODGE), which reads as the same integer.
            dodge = DODGE if top <= 15 else 0.0
            for k, (pname, y) in enumerate(ys.items()):
                off = dodge * (2 * k / max(1, len(ys) - 1) - 1) if len(ys) > 1 else 0.0
                s = self.runs[pname].summary
                ax.plot(t[:len(y)], y + off, drawstyle="steps-post", **styles[pname],
                        label=f"{pname}: mean {s['mean_replicas'][role]:.1f}, max {s['max_replicas'][role]}")
            _count_axis(ax, top, low)
            ax.set_ylabel(f"{role} replicas")
            ax.set_title(f"{role} replicas per policy (the most in each {_fmt_s(m * dt)}"
                         + (f"; lines offset by up to \u00b1{dodge:g} so that equal counts stay visible)" if dodge else ")"),
                         fontsize=10)
            _legend_right(ax)
        ax = axes[3]
        ax.set_label("miss")
        window_s = miss_window_s(n * dt)
        for pname, run in self.runs.items():
            share = self.rolling_miss(run, window_s)
            s = run.summary
            ax.plot(t[:len(share)], 100 * share, **styles[pname],
                    label=f"{pname}: TTFT ok {s['ttft_attainment']:.1%}, {s['gpu_hours']:.1f} GPU-h")
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.set_ylim(-2, 102)
        ax.set_ylabel(f"requests TTFT > {ctx.ttft_slo:g} s")
        ax.set_title(f"share of requests over the TTFT SLO in the trailing {_fmt_s(window_s)} "
                     f"(whole run: 100 % - TTFT ok)", fontsize=10)
        ax.set_xlabel(f"time since the simulation started ({unit})")
        ax.set_xlim(t[0] if len(t) else 0, (n * dt) / div)
        _legend_right(ax)
        for ax in axes:
            ax.grid(alpha=0.3)
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig

    def rolling_miss(self, run: RunResult, window_s: float) -> np.ndarray:
        """Per plot bucket: the share of the requests that arrived in the trailing `window_s` whose
        TTFT exceeded the SLO (NaN where none arrived). From the run's per-bucket share and the
        workload's arrivals (rate x dt per step, as the replay counts them)."""
        n, dt = self.ctx.workload.n_sim, self.ctx.workload.dt
        m = _bucket(n)
        rate = np.asarray(self.ctx.sim("rate"), dtype=float)[:n]
        arrivals = np.concatenate([rate * dt, np.zeros((-n) % m)]).reshape(-1, m).sum(axis=1)
        share = np.asarray(run.series["ttft_breach_share"], dtype=float)[:len(arrivals)]
        late = share * arrivals[:len(share)]
        w = max(1, int(round(window_s / (m * dt))))
        cl, ca = np.concatenate([[0.0], np.cumsum(late)]), np.concatenate([[0.0], np.cumsum(arrivals[:len(share)])])
        idx = np.arange(1, len(share) + 1)
        lo = np.maximum(0, idx - w)
        got, late_w = ca[idx] - ca[lo], cl[idx] - cl[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(got > 1e-9, late_w / np.maximum(got, 1e-12), np.nan)
        return np.clip(out, 0.0, 1.0)


# ---- the plot's helpers ------------------------------------------------------------------------

def miss_window_s(span_s: float) -> float:
    """The trailing window of the plot's miss rate: about a twelfth of the span, rounded down to
    1, 2, 5, 10, 15, 30 or 60 minutes (1 minute at least, 1 hour at most)."""
    for w in (3600.0, 1800.0, 900.0, 600.0, 300.0, 120.0):
        if span_s / 12 >= w:
            return w
    return 60.0


def _bucket(n: int) -> int:
    """Steps per plot point (as scaler/testbench/sim/replay.py buckets the series)."""
    return max(1, -(-n // PLOT_POINTS))


def _time_unit(span_s: float) -> tuple[str, float]:
    if span_s <= 3 * 3600:
        return "min", 60.0
    if span_s <= 3 * 86400:
        return "h", 3600.0
    return "days", 86400.0


def _fmt_s(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g} h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


def _fmt_span(s: float) -> str:
    if s < 2 * 3600:
        return f"{s / 60:.{1 if s < 600 else 0}f} min"
    if s <= 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _legend_right(ax) -> None:
    """The axes' legend outside them, on the right (never over the lines)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def _policy_styles(names: list[str]) -> dict[str, dict]:
    """A colour per policy, the same in every panel: the oracle black and dashed, pdscaler red and
    thick on top, the baselines from matplotlib's tab10 (without its red)."""
    palette = [c for c in (f"tab:{x}" for x in ("blue", "orange", "green", "purple", "brown", "pink", "gray",
                                                  "olive", "cyan"))]
    out, k = {}, 0
    for name in names:
        if name == "oracle":
            out[name] = {"color": "black", "lw": 1.2, "ls": "--", "zorder": 4}
        elif name == "pdscaler":
            out[name] = {"color": "tab:red", "lw": 2.0, "zorder": 5}
        else:
            out[name] = {"color": palette[k % len(palette)], "lw": 1.1, "zorder": 3}
            k += 1
    return out


def _count_axis(ax, top: float, low: float) -> None:
    """A replica axis with plain integer ticks: linear, unless the counts span more than 30x (`top`
    the most, `low` the smallest typical count), then symmetric-log (0 stays visible) with ticks 1,
    2, 5, 10, 20, 50, ... labelled as integers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    top = max(1.0, top)
    if top >= 30 and top / max(1.0, low) >= 30:
        ax.set_yscale("symlog", linthresh=1.0, linscale=0.3)
        ticks = [0.0] + [m * 10 ** e for e in range(0, 7) for m in (1, 2, 5) if m * 10 ** e <= top * 1.2]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(-0.2, top * 1.3)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
        ax.set_ylim(-0.3, top + max(0.5, 0.05 * top))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))


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
