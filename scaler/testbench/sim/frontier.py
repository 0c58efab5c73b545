"""`pdscaler frontier`: attainment against GPU-hours, each policy swept over its knob, on one trace.

A backtest scores one setting per policy; a user picks the setting that reaches their SLO target at
the lowest cost. The frontier replays each policy at several settings (same workload, hardware,
nodes and SLOs as `pdscaler backtest`) and reports every point (TTFT and ITL attainment, GPU-hours)
and each policy's Pareto front (the points no cheaper point of the same policy beats on
min(TTFT, ITL) attainment). Knobs (`sweeps`):

- `static`: constant sizes around static-best's (its prefill and decode sizes x 0.3 ... 1.5, and
  static-peak's), replayed as `static-size`;
- `reactive-ttft`: the prefill trigger's p99 TTFT threshold, 0.1 ... 0.5 s;
- `llmd-keda`: the decode trigger's KV-usage threshold, 0.2 ... 0.8 (the prefill threshold is
  the recipe's, TTFT SLO - ISL / V_p);
- `planner-load`: the scale-down sensitivity, 0.5 ... 0.9;
- `pdscaler`: the fixed margin (calibrated headroom off): `forecast.quantile` in {0.5, 0.7, 0.9,
  0.95} x both roles' `target_utilization` in {0.7, 0.8, 0.9, 1.0} (its defaults 0.9 / 0.8); and the
  calibrated headroom (the default): `slo.attainment` in {0.9, 0.95, 0.99, 0.995}; applied through the `--config` override path
  (engine_config.py) over the user's own `--config`, if any;
- `oracle`, `planner`: one point each (no knob).

The headline: the GPU-hours of the cheapest pdscaler point with TTFT and ITL attainment >= the
target (0.99), of the cheapest baseline point that does, and the oracle's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scaler.testbench.sim.context import SimContext

TARGET = 0.99
FRONTIER_POLICIES = ("oracle", "static", "reactive-ttft", "llmd-keda", "planner", "planner-load", "pdscaler")
STATIC_FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
REACTIVE_THRESHOLDS_S = (0.1, 0.2, 0.3, 0.4, 0.5)
LLMD_KV_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
PLANNER_LOAD_SENSITIVITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
PDSCALER_ATTAINMENTS = (0.9, 0.95, 0.99, 0.995)
PDSCALER_QUANTILES = (0.5, 0.7, 0.9, 0.95)
PDSCALER_UTILIZATIONS = (0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Variant:
    """One setting of one policy: `params` go to its class, `overrides` (pdscaler) to its config."""

    policy: str  # the frontier's name for the line (e.g. "static")
    knob: str  # what was set, for the report
    run_as: str  # the registered policy replayed
    params: dict = field(default_factory=dict)
    overrides: dict | None = None


@dataclass
class Point:
    variant: Variant
    ttft_attainment: float
    itl_attainment: float
    gpu_hours: float
    p99_ttft_s: float
    pareto: bool = False

    @property
    def attainment(self) -> float:
        return min(self.ttft_attainment, self.itl_attainment)

    def reaches(self, target: float) -> bool:
        return self.ttft_attainment >= target and self.itl_attainment >= target

    def to_json(self) -> dict:
        v = self.variant
        return {"knob": v.knob, "policy": v.run_as, "params": v.params, "config": v.overrides,
                "ttft_attainment": self.ttft_attainment, "itl_attainment": self.itl_attainment,
                "min_attainment": self.attainment, "gpu_hours": self.gpu_hours,
                "p99_ttft_s": _finite(self.p99_ttft_s), "pareto": self.pareto}


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _deep_merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def pdscaler_overrides(base: dict | None, *, forecast: dict | None = None, slo: dict | None = None,
                       roles: dict[str, dict] | None = None) -> dict:
    """`base` (the user's --config document, or None) with a knob set: the forecast section, the first
    graph's slo, and fields of its first role of each kind (added when it has none), as
    `merge_overrides` reads them."""
    doc = copy.deepcopy(base) if base else {}
    graphs = doc.setdefault("graphs", {})
    if not graphs:
        graphs["sim"] = {}
    graph = graphs[next(iter(graphs))]
    have = graph.setdefault("roles", {})
    for kind in ("prefill", "decode"):
        if not any(isinstance(r, dict) and r.get("kind") == kind for r in have.values()):
            have[kind if kind not in have else f"{kind}-role"] = {"kind": kind}
    if forecast:
        _deep_merge(doc.setdefault("forecast", {}), forecast)
    if slo:
        _deep_merge(graph.setdefault("slo", {}), slo)
    for kind, fields in (roles or {}).items():
        name = next(n for n, r in have.items() if isinstance(r, dict) and r.get("kind") == kind)
        _deep_merge(have[name], fields)
    return doc


def _pdscaler_variants(ctx: SimContext) -> list[Variant]:
    from scaler.config import ForecastConfig, Slo

    base = ctx.engine_overrides
    out = []
    for q in PDSCALER_QUANTILES:
        quantiles = sorted({0.5, 0.9, q, *((base or {}).get("forecast", {}).get("quantiles") or [])})
        for u in PDSCALER_UTILIZATIONS:
            # The fixed margin these knobs set (the calibrated headroom, on by default, replaces it).
            doc = pdscaler_overrides(base, forecast={"quantile": q, "quantiles": quantiles,
                                                     "headroom": {"enabled": False}}, roles={
                "prefill": {"prefill": {"target_utilization": u}}, "decode": {"decode": {"target_utilization": u}}})
            out.append(Variant("pdscaler", f"quantile={q:g} target_utilization={u:g}", "pdscaler", overrides=doc))
    if "attainment" in Slo.model_fields:
        headroom = None
        hr = ForecastConfig.model_fields.get("headroom")
        if hr is not None and "enabled" in getattr(hr.annotation, "model_fields", {}):
            headroom = {"headroom": {"enabled": True}}  # slo.attainment sizes the calibrated headroom
        for a in PDSCALER_ATTAINMENTS:
            doc = pdscaler_overrides(base, slo={"attainment": a}, forecast=headroom)
            knob = f"slo.attainment={a:g}" + (" (headroom on)" if headroom else "")
            out.append(Variant("pdscaler", knob, "pdscaler", overrides=doc))
    return out


def sweeps(ctx: SimContext, policies: tuple[str, ...] | list[str], target: float = TARGET) -> list[Variant]:
    """Every setting to replay, per policy (module docstring)."""
    out: list[Variant] = []
    for name in policies:
        if name == "static":
            from scaler.testbench.sim.policies.static_best import search_static

            best = search_static(ctx, target).sizes
            peak = {role: max(1, int(n.max())) for role, n in ctx.need.items()}
            sizes = {(max(1, round(best["prefill"] * f)), max(1, round(best["decode"] * f))) for f in STATIC_FACTORS}
            sizes.add((peak["prefill"], peak["decode"]))
            for p, d in sorted(sizes):
                tag = " (static-best)" if (p, d) == (best["prefill"], best["decode"]) else ""
                tag = tag or (" (static-peak)" if (p, d) == (peak["prefill"], peak["decode"]) else "")
                knob = f"prefill={p} decode={d}{tag}"
                out.append(Variant("static", knob, "static-size", {"prefill": p, "decode": d}))
        elif name == "reactive-ttft":
            out += [Variant(name, f"threshold={t:g}s", name, {"threshold_s": t}) for t in REACTIVE_THRESHOLDS_S]
        elif name == "llmd-keda":
            out += [Variant(name, f"kv_threshold={t:g}", name, {"kv_threshold": t}) for t in LLMD_KV_THRESHOLDS]
        elif name == "planner-load":
            out += [Variant(name, f"sensitivity={s:g}", name, {"sensitivity": s}) for s in PLANNER_LOAD_SENSITIVITIES]
        elif name == "pdscaler":
            out += _pdscaler_variants(ctx)
        else:
            from scaler.testbench.sim.policies import POLICIES

            if name not in POLICIES:
                raise ValueError(f"unknown frontier policy {name!r}; known: {', '.join(FRONTIER_POLICIES)}, "
                                 f"or any of {', '.join(POLICIES)} as one point")
            out.append(Variant(name, "-", name))
    return out


@dataclass
class Frontier:
    trace: str
    ctx: SimContext
    target: float
    points: list[Point] = field(default_factory=list)
    static_best: dict | None = None
    wall_s: float = 0.0

    def by_policy(self) -> dict[str, list[Point]]:
        out: dict[str, list[Point]] = {}
        for pt in self.points:
            out.setdefault(pt.variant.policy, []).append(pt)
        return out

    def mark_pareto(self) -> None:
        for pts in self.by_policy().values():
            best = -math.inf
            for pt in sorted(pts, key=lambda p: (p.gpu_hours, -p.attainment)):
                pt.pareto = pt.attainment > best
                best = max(best, pt.attainment)

    def headline(self) -> dict:
        def cheapest(pts: list[Point]) -> Point | None:
            ok = [p for p in pts if p.reaches(self.target)]
            return min(ok, key=lambda p: p.gpu_hours) if ok else None

        def describe(p: Point | None) -> dict | None:
            if p is None:
                return None
            return {"policy": p.variant.policy, "knob": p.variant.knob, "gpu_hours": p.gpu_hours,
                    "ttft_attainment": p.ttft_attainment, "itl_attainment": p.itl_attainment}

        groups = self.by_policy()
        mine = groups.get("pdscaler", [])
        baselines = [p for name, pts in groups.items() if name not in ("pdscaler", "oracle") for p in pts]
        oracle = groups.get("oracle", [])
        best_mine = max(mine, key=lambda p: (p.attainment, -p.gpu_hours)) if mine else None
        return {
            "target": self.target,
            "pdscaler": describe(cheapest(mine)),
            "pdscaler_best_attainment": describe(best_mine),
            "baseline": describe(cheapest(baselines)),
            "oracle": describe(oracle[0]) if oracle else None,
        }

    def to_json(self) -> dict:
        wl = self.ctx.workload
        return {
            "trace": self.trace,
            "workload": {"name": wl.name, "dt_s": wl.dt, "simulated_s": wl.n_sim * wl.dt},
            "slo": {"ttft_s": self.ctx.ttft_slo, "itl_s": self.ctx.itl_slo},
            "target": self.target,
            "wall_s": self.wall_s,
            "static_best": self.static_best,
            "policies": {name: [p.to_json() for p in sorted(pts, key=lambda p: p.gpu_hours)]
                         for name, pts in self.by_policy().items()},
            "headline": self.headline(),
        }

    def table(self) -> str:
        wl = self.ctx.workload
        cols = ("policy", "setting", "TTFT ok", "ITL ok", "GPU-h", "front")
        rows = []
        for name, pts in self.by_policy().items():
            for p in sorted(pts, key=lambda p: p.gpu_hours):
                rows.append((name, p.variant.knob, f"{p.ttft_attainment:.2%}", f"{p.itl_attainment:.2%}",
                             f"{p.gpu_hours:.1f}", "*" if p.pareto else ""))
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
        lines = [f"frontier {Path(self.trace).name} ({wl.name}): {wl.n_sim * wl.dt / 3600:.1f} h simulated, "
                 f"SLO TTFT {self.ctx.ttft_slo:g}s ITL {self.ctx.itl_slo * 1000:g}ms, target {self.target:.0%} "
                 f"(front: on the policy's Pareto front)",
                 "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        for r in rows:
            lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        h = self.headline()

        def fmt(d: dict | None, what: str) -> str:
            if d is None:
                return f"{what}: no point reaches {self.target:.0%} TTFT and ITL attainment"
            return (f"{what}: {d['gpu_hours']:.1f} GPU-h ({d['policy']} {d['knob']}: TTFT {d['ttft_attainment']:.2%}, "
                    f"ITL {d['itl_attainment']:.2%})")

        lines.append(fmt(h["pdscaler"], f"pdscaler at >= {self.target:.0%}"))
        if h["pdscaler"] is None and h["pdscaler_best_attainment"]:
            lines.append(fmt(h["pdscaler_best_attainment"], "  pdscaler's best attainment"))
        lines.append(fmt(h["baseline"], f"cheapest baseline at >= {self.target:.0%}"))
        if h["oracle"]:
            lines.append(fmt(h["oracle"], "oracle"))
        return "\n".join(lines)

    def plot(self, path: str | None = None):
        """The PNG of `--plot` (written to `path` when given); returns the matplotlib Figure: each
        policy's settings as GPU-hours against min(TTFT, ITL) attainment, its Pareto front joined by a
        line, the other settings faint, the target dashed; below, the same zoomed to the target. The
        legend is right of the axes."""
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import PercentFormatter

        fig = Figure(figsize=(12, 9.5), layout="constrained")
        axes = fig.subplots(2, 1)
        colors = [f"tab:{x}" for x in ("blue", "orange", "green", "purple", "brown", "pink", "gray", "olive", "cyan")]
        groups = self.by_policy()
        handles: list = []
        lo = max(0.0, min(self.target - 0.06, max((p.attainment for p in self.points), default=1.0) - 0.02))
        for ax, zoom in ((axes[0], False), (axes[1], True)):
            k = 0
            for name, pts in groups.items():
                pts = sorted(pts, key=lambda p: p.gpu_hours)
                if name == "oracle":
                    c, label = "black", "oracle (knows the future)"
                elif name == "pdscaler":
                    c, label = "tab:red", None
                else:
                    c, label = colors[k % len(colors)], None
                    k += 1
                front = [p for p in pts if p.pareto]
                if name == "oracle" or len(pts) == 1:
                    star = name == "oracle"
                    line, = ax.plot([p.gpu_hours for p in pts], [100 * p.attainment for p in pts],
                                    marker="*" if star else "D", ms=15 if star else 8, ls="none", color=c,
                                    mfc="none" if star else c, mew=1.3 if star else 0.8,
                                    zorder=6 if star else 4, label=label or name)  # hollow: a point under it shows
                else:
                    line, = ax.plot([p.gpu_hours for p in front], [100 * p.attainment for p in front], marker="o",
                                    ms=5, lw=2.2 if name == "pdscaler" else 1.4, color=c, zorder=5 if name == "pdscaler" else 3,
                                    label=f"{name}: Pareto front ({len(front)} of {len(pts)} settings)")
                    rest = [p for p in pts if not p.pareto]
                    if rest:
                        ax.plot([p.gpu_hours for p in rest], [100 * p.attainment for p in rest], marker="o", ms=4,
                                ls="none", color=c, alpha=0.3, zorder=2)
                if not zoom:
                    handles.append(line)
            tline = ax.axhline(100 * self.target, color="red", ls="--", lw=1, label=f"{self.target:.0%} target")
            ax.set_xlabel("GPU-hours (every provisioned GPU, billed while a node is up)")
            ax.set_ylabel("min(TTFT, ITL) attainment")
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=0 if not zoom else 1))
            ax.grid(alpha=0.3)
            if zoom:
                ax.set_ylim(100 * lo, 100.2)
                ax.set_title(f"zoom: attainment from {lo:.0%} (points below are off this panel)", fontsize=10)
            else:
                handles.append(tline)
        handles.append(Line2D([], [], marker="o", ms=4, ls="none", color="0.4", alpha=0.3,
                              label="faint: a setting off its policy's front\n(a cheaper one does as well)"))
        name, wl = Path(self.trace).name, self.ctx.workload.name
        label = name if wl in (name, Path(self.trace).stem) else f"{name} ({wl})"
        axes[0].set_title(f"{label}: attainment vs GPU-hours, each policy over its knob (table: every setting)",
                          fontsize=11)
        axes[0].set_ylim(-2, 102)
        axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
                       borderaxespad=0, frameon=False)
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig


def run_frontier(trace: str, ctx: SimContext, policies: tuple[str, ...] | list[str] = FRONTIER_POLICIES,
                 target: float = TARGET, progress: Callable[[str], None] | None = None) -> Frontier:
    """Replay every setting of every policy (sequentially) and mark each policy's front."""
    from scaler.testbench.sim.policies.static_best import search_static
    from scaler.testbench.sim.replay import replay

    t0 = time.perf_counter()
    fr = Frontier(trace, ctx, target)
    variants = sweeps(ctx, policies, target)
    if "static" in policies:
        fr.static_best = search_static(ctx, target).summary()
    for k, v in enumerate(variants, 1):
        c = dataclasses.replace(ctx, engine_overrides=v.overrides) if v.overrides is not ctx.engine_overrides else ctx
        s = replay(v.run_as, c, params=v.params).summary
        fr.points.append(Point(v, s["ttft_attainment"], s["itl_attainment"], s["gpu_hours"], s["p99_ttft_s"]))
        if progress is not None:
            progress(f"{k}/{len(variants)} {v.policy} {v.knob}: TTFT {s['ttft_attainment']:.2%} "
                     f"ITL {s['itl_attainment']:.2%} {s['gpu_hours']:.1f} GPU-h")
    fr.mark_pareto()
    fr.wall_s = time.perf_counter() - t0
    return fr
