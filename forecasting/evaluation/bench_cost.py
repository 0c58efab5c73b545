"""Cost of forecasting many series: ``python -m forecasting.evaluation.bench_cost --series 1000``.

What the live scaler does per series, timed for N series in one process:

1. Warm start: build ``make(model, step_s=15 s, seed=i)`` (the engine's poll interval) and ``fit``
   it on ``--history`` (default 14 days) of history at ``--history-step`` (default 1 min): the
   config's ``forecast.warm_start`` / ``warm_start_step`` defaults.
2. Ticks: every ``--step`` of series time, for ALL series, ``update(t, y)`` then ``predict(t,
   horizons, quantiles)``. The CPU seconds of one tick for all N series are compared with the budget
   of one poll interval on the 2-core machine (15 s x 2 cores = 30 CPU-s; a single Python process
   really has one core, 15 CPU-s, so both are shown).
3. Prophet: the ``prophet`` model refits hourly (one Prophet fit per series per hour; ``auto``'s
   default candidates do not include it). A few series are run through ``--prophet-hours`` of ticks
   and the CPU per series-hour (ticks + refits) is scaled to N series and compared with the 2-core
   budget of 7,200 CPU-s per hour. The Dynamo Planner's ``planner-prophet`` (a new Prophet fit at
   every tick) is measured the same way over a few ticks, for contrast.

Series (deterministic for --seed), a mix of six kinds, levels spread log-uniformly:
``diurnal`` (daily + weekly shape, Poisson counts), ``azure-code`` / ``azure-conv`` (the bundled
Azure traces' 1-minute burst pattern relative to their mean, tiled with random offsets, on a daily
shape: real-derived), ``tokens`` (heavy-tailed token rates: request counts x lognormal lengths),
``sparse`` (0.01-0.5 req/s: mostly zeros) and ``gappy`` (missing stretches and a level shift).

CPU is ``forecasting.evaluation.rolling_origin.cpu_seconds`` (this process, its reaped children and live
descendants: CmdStan runs as a child process).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from forecasting.evaluation.rolling_origin import cpu_seconds
from forecasting.evaluation.series import series_from_trace
from scaler.config import parse_duration
from scaler.testbench.traces import bundled_trace

DAY_S = 86400.0
KINDS = ("diurnal", "azure-code", "azure-conv", "tokens", "sparse", "gappy")


@dataclass
class SeriesGen:
    """One synthetic series, defined at any times: values for `t` sampled `dt` apart."""

    kind: str
    seed: int
    level: float
    phase: float
    amp: float
    weekly: float
    burst: np.ndarray | None  # 1-min multiplicative burst pattern (mean 1), tiled
    burst_offset: int
    gaps: list[tuple[float, float]]
    shift_at: float
    shift: float

    def rate(self, t: np.ndarray) -> np.ndarray:
        day = 1.0 + self.amp * np.sin(2 * np.pi * (t / DAY_S + self.phase))
        week = 1.0 - self.weekly * ((np.floor(t / DAY_S) % 7) >= 5)
        r = self.level * day * week
        if self.burst is not None:
            idx = (np.floor(t / 60.0).astype(np.int64) + self.burst_offset) % len(self.burst)
            r = r * self.burst[idx]
        if self.kind == "gappy":
            r = np.where(t >= self.shift_at, r * self.shift, r)
        return r

    def sample(self, t: np.ndarray, dt: float) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(t[0]) if len(t) else 0, len(t)])
        lam = np.maximum(self.rate(t), 0.0) * dt
        if self.kind == "tokens":
            n = rng.poisson(lam)
            # each request brings a lognormal number of tokens (mean ~1000); sum approximated per bin
            y = n * 1000.0 * rng.lognormal(-0.5, 1.0, size=n.shape) / dt
        else:
            y = rng.poisson(lam) / dt
        for a, b in self.gaps:
            y[(t >= a) & (t < b)] = np.nan
        return y.astype(np.float64)


def _burst_patterns() -> dict[str, np.ndarray]:
    out = {}
    for name in ("azure-code", "azure-conv"):
        s = series_from_trace(bundled_trace(name), 60.0)
        out[name] = s.y / max(np.mean(s.y), 1e-9)
    return out


def make_generators(n: int, seed: int, history_s: float) -> list[SeriesGen]:
    rng = np.random.default_rng(seed)
    bursts = _burst_patterns()
    gens = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        level = float(np.exp(rng.uniform(np.log(0.5), np.log(2000.0))))
        if kind == "sparse":
            level = float(rng.uniform(0.01, 0.5))
        if kind == "tokens":
            level = float(np.exp(rng.uniform(np.log(1.0), np.log(50.0))))
        gaps = []
        if kind == "gappy":
            for _ in range(int(rng.integers(1, 5))):
                a = float(rng.uniform(0, history_s))
                gaps.append((a, a + float(rng.uniform(600, 6 * 3600))))
        burst = bursts.get(kind)
        gens.append(SeriesGen(
            kind=kind, seed=seed * 1_000_003 + i, level=level, phase=float(rng.uniform()),
            amp=float(rng.uniform(0.2, 0.7)), weekly=float(rng.uniform(0.0, 0.4)),
            burst=burst, burst_offset=int(rng.integers(0, 10_000)), gaps=gaps,
            shift_at=float(rng.uniform(0.5, 0.95)) * history_s, shift=float(rng.uniform(0.5, 2.0)),
        ))
    return gens


def _ticks(models, gens, t0: float, n_ticks: int, step: float, horizons, quantiles) -> np.ndarray:
    """CPU seconds of each tick for all models."""
    out = np.zeros(n_ticks)
    values = [g.sample(t0 + step * (1 + np.arange(n_ticks)), step) for g in gens]
    for j in range(n_ticks):
        t = t0 + step * (j + 1)
        c0 = cpu_seconds()
        for m, v in zip(models, values):
            m.update(t, float(v[j]))
            m.predict(t, horizons, quantiles)
        out[j] = cpu_seconds() - c0
    return out


def _warm(name: str, gens, step: float, hist_t: np.ndarray, hist_step: float, seed: int):
    from forecasting.registry import make

    models = []
    c0, w0 = cpu_seconds(), time.perf_counter()
    for i, g in enumerate(gens):
        m = make(name, step, seed=seed + i)
        m.fit(hist_t, g.sample(hist_t, hist_step))
        models.append(m)
    return models, cpu_seconds() - c0, time.perf_counter() - w0


def _fits(models) -> int | None:
    """Prophet curves adopted so far (ProphetForecaster.model.fits), None if not exposed."""
    fits = [getattr(getattr(m, "model", None), "fits", None) for m in models]
    return None if any(f is None for f in fits) else int(sum(fits))


def run(args: argparse.Namespace) -> dict:
    step = parse_duration(args.step)
    history_s = parse_duration(args.history)
    hist_step = parse_duration(args.history_step)
    horizons = [parse_duration(h) for h in args.horizon.split(",")]
    quantiles = tuple(float(q) for q in args.quantiles.split(","))
    budget_wall = parse_duration(args.tick_budget)
    cores = args.cores
    hist_t = np.arange(int(history_s / hist_step)) * hist_step
    t_end = float(hist_t[-1]) if len(hist_t) else 0.0
    gens = make_generators(args.series, args.seed, history_s)
    log = (lambda msg: print(f"bench_cost: {msg}", file=sys.stderr, flush=True))

    log(f"warm start: {args.series} x {args.model} on {history_s / DAY_S:g} days at {hist_step:g} s")
    models, warm_cpu, warm_wall = _warm(args.model, gens, step, hist_t, hist_step, args.seed)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    log(f"warm start done: {warm_cpu:.1f} CPU-s, {warm_wall:.1f} s wall; ticks: {args.ticks}")
    w0 = time.perf_counter()
    tick_cpu = _ticks(models, gens, t_end, args.ticks, step, horizons, quantiles)
    tick_wall = (time.perf_counter() - w0) / args.ticks
    chosen: dict[str, int] = {}
    for m in models:
        c = getattr(m, "chosen", None)
        if c is not None:
            chosen[str(c)] = chosen.get(str(c), 0) + 1
    result = {
        "command": "python -m forecasting.evaluation.bench_cost " + " ".join(sys.argv[1:]),
        "series": args.series, "model": args.model, "step_s": step, "history_s": history_s,
        "history_step_s": hist_step, "horizons_s": horizons, "quantiles": list(quantiles),
        "kinds": {k: sum(1 for g in gens if g.kind == k) for k in KINDS},
        "warm_start": {"cpu_s": warm_cpu, "wall_s": warm_wall, "cpu_s_per_series": warm_cpu / args.series},
        "max_rss_mb_after_warm_start": rss_mb,
        "tick": {
            "n": args.ticks,
            "cpu_s_mean": float(np.mean(tick_cpu)), "cpu_s_p50": float(np.median(tick_cpu)),
            "cpu_s_p95": float(np.percentile(tick_cpu, 95)), "cpu_s_max": float(np.max(tick_cpu)),
            "wall_s_mean": tick_wall,
            "cpu_ms_per_series": 1000.0 * float(np.mean(tick_cpu)) / args.series,
            "budget_cpu_s": budget_wall * cores, "budget_one_core_cpu_s": budget_wall,
            "share_of_budget": float(np.mean(tick_cpu)) / (budget_wall * cores),
            "share_of_one_core": float(np.max(tick_cpu)) / budget_wall,
        },
        "chosen": dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
    }
    del models

    # Prophet (ours): hourly refits, measured over whole hours of ticks on a few series.
    per_hour = []
    if args.prophet_series > 0 and args.prophet_hours > 0:
        n_ticks = int(round(args.prophet_hours * 3600.0 / step))
        pg = gens[: args.prophet_series]
        log(f"prophet: {len(pg)} series, warm start + {n_ticks} ticks ({args.prophet_hours:g} h)")
        pm, p_warm_cpu, _ = _warm("prophet", pg, step, hist_t, hist_step, args.seed)
        fits0 = _fits(pm)
        p_cpu = _ticks(pm, pg, t_end, n_ticks, step, horizons, quantiles)
        fits1 = _fits(pm)
        per_series_hour = float(np.sum(p_cpu)) / len(pg) / args.prophet_hours
        n_fits = None if fits0 is None or fits1 is None else fits1 - fits0
        # A refit's CPU: what the ticks cost above the typical (median) tick, per refit.
        per_refit = (float(np.sum(p_cpu) - len(p_cpu) * np.median(p_cpu)) / n_fits) if n_fits else None
        per_hour.append({
            "model": "prophet", "series_measured": len(pg), "hours": args.prophet_hours,
            "refits_during_ticks": n_fits, "cpu_s_per_refit": per_refit,
            "warm_start_cpu_s_per_series": p_warm_cpu / len(pg),
            "cpu_s_per_series_hour": per_series_hour,
            "cpu_s_per_hour_all_series": per_series_hour * args.series,
            "budget_cpu_s_per_hour": 3600.0 * cores,
            "share_of_budget": per_series_hour * args.series / (3600.0 * cores),
        })
    if args.planner_prophet_ticks > 0 and args.prophet_series > 0:
        pg = gens[: min(2, args.prophet_series)]
        log(f"planner-prophet: {len(pg)} series, {args.planner_prophet_ticks} ticks")
        pm, _, _ = _warm("planner-prophet", pg, step, hist_t, hist_step, args.seed)
        p_cpu = _ticks(pm, pg, t_end, args.planner_prophet_ticks, step, horizons, quantiles)
        per_tick = float(np.mean(p_cpu[1:] if len(p_cpu) > 1 else p_cpu)) / len(pg)
        per_series_hour = per_tick * 3600.0 / step
        per_hour.append({
            "model": "planner-prophet", "series_measured": len(pg), "ticks": args.planner_prophet_ticks,
            "cpu_s_per_tick_per_series": per_tick,
            "cpu_s_per_series_hour": per_series_hour,
            "cpu_s_per_hour_all_series": per_series_hour * args.series,
            "budget_cpu_s_per_hour": 3600.0 * cores,
            "share_of_budget": per_series_hour * args.series / (3600.0 * cores),
        })
    result["prophet_refit"] = per_hour
    return result


def report(r: dict) -> str:
    t = r["tick"]
    lines = [
        f"{r['series']} x {r['model']}: step {r['step_s']:g} s, warm start on {r['history_s'] / DAY_S:g} days at "
        f"{r['history_step_s']:g} s, horizons {', '.join(f'{h:g}' for h in r['horizons_s'])} s, "
        f"quantiles {', '.join(f'{q:g}' for q in r['quantiles'])}",
        "series kinds: " + ", ".join(f"{k} {v}" for k, v in r["kinds"].items()),
        "",
        "| what | CPU | budget | share |",
        "|---|---:|---:|---:|",
        f"| warm start, all series | {r['warm_start']['cpu_s']:.1f} s ({1000 * r['warm_start']['cpu_s_per_series']:.0f} ms/series;"
        f" wall {r['warm_start']['wall_s']:.1f} s) | - | - |",
        f"| one tick, all series (mean of {t['n']}) | {t['cpu_s_mean']:.3f} s ({t['cpu_ms_per_series']:.3f} ms/series) |"
        f" {t['budget_cpu_s']:g} s (15 s x 2 cores) | {100 * t['share_of_budget']:.2f} % |",
        f"| one tick, all series (p95 / max) | {t['cpu_s_p95']:.3f} / {t['cpu_s_max']:.3f} s |"
        f" {t['budget_one_core_cpu_s']:g} s (one core) | {100 * t['share_of_one_core']:.2f} % (max) |",
    ]
    for p in r["prophet_refit"]:
        what = ("prophet (hourly refit), per hour, all series" if p["model"] == "prophet"
                else "planner-prophet (refit every tick), per hour, all series")
        extra = (f"; {p['cpu_s_per_refit']:.2f} s per refit, {p['refits_during_ticks']} refits in "
                 f"{p['hours']:g} h" if p.get("cpu_s_per_refit") else "")
        lines.append(f"| {what} | {p['cpu_s_per_hour_all_series']:.0f} s ({p['cpu_s_per_series_hour']:.3f} s/series-hour,"
                     f" measured on {p['series_measured']}{extra}) | {p['budget_cpu_s_per_hour']:g} s (1 h x 2 cores) |"
                     f" {100 * p['share_of_budget']:.1f} % |")
    lines.append(f"| peak RSS after warm start | {r['max_rss_mb_after_warm_start']:.0f} MB | - | - |")
    if r["chosen"]:
        total = sum(r["chosen"].values())
        lines.append("")
        lines.append("auto's choice after the ticks: " + ", ".join(
            f"{k} {100 * v / total:.0f} %" for k, v in list(r["chosen"].items())[:8]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forecasting.evaluation.bench_cost", description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--model", default="auto")
    p.add_argument("--step", default="15s", help="tick = model grid step (default 15s, the poll interval)")
    p.add_argument("--history", default="14d", help="warm-start history (default 14d)")
    p.add_argument("--history-step", default="1m", help="resolution of the history (default 1m)")
    p.add_argument("--ticks", type=int, default=40, help="ticks timed for all series (default 40 = 10 min)")
    p.add_argument("--horizon", default="2m,5m,10m", help="horizons predicted at each tick")
    p.add_argument("--quantiles", default="0.5,0.9")
    p.add_argument("--tick-budget", default="15s")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--prophet-series", type=int, default=4, help="series measured for the Prophet refit cost")
    p.add_argument("--prophet-hours", type=float, default=2.0, help="hours of ticks for the Prophet measurement")
    p.add_argument("--planner-prophet-ticks", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.series < 1 or args.ticks < 1:
        p.error("--series and --ticks must be >= 1")
    r = run(args)
    print(report(r))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
