"""Rolling-origin evaluation of forecasting models on one series (`pdscaler forecast-eval`).

Protocol, one pass per model, every model on the same origins:

1. Build the model with the registry: ``make(name, step_s, seed)``.
2. ``fit`` on a warm-up prefix. Default: the first 25 % of the series; for series spanning 6 days or
   more, at least 3 days (so daily-seasonal models have seen three cycles; for the 14-day ServeGen
   curves 25 % = 3.5 days applies). ``warmup_s`` overrides it.
3. For each later grid point i in time order: ``update(t_i, y_i)`` (NaN values are passed as NaN,
   the models must handle them), then, if i is an origin, ``predict(t_i, horizons, quantiles)``.
   A forecast for horizon h is compared with the value k = ceil(h / step) grid points later: the
   EFFECTIVE horizon is k x step (a horizon shorter than the step is evaluated one step ahead; the
   output gives both). Origins are the points after the warm-up that have at least the shortest
   horizon's target inside the series; each horizon is scored on the origins whose target exists and
   is not missing. Targets are the same for every model.
4. ``max_origins`` keeps a deterministic, evenly spaced subsample of the origins (for baselines that
   refit at every step). Every model still receives every point through ``update``, but predicts and
   is scored only at the sampled origins, the same for all models; the output records it.

Metrics, per model and horizon:
- MASE: MAE of the p50 forecast / in-sample MAE of the one-step naive forecast over the warm-up
  (pairs of consecutive non-missing warm-up points). Below 1 = better than the one-step naive error.
- pinball loss per quantile q: mean of max(q (y - f), (q - 1)(y - f)), in the series' units; and its
  mean over the requested quantiles (``pinball_mean``, the headline for ranking).
- coverage_p90: share of actuals <= the p90 forecast (ideal 0.90).
- fit_s: wall seconds of ``fit`` (one series). predict_ms: mean wall milliseconds of one tick
  (``update`` + ``predict``) at the scored origins.
- cpu_s_per_series_minute: CPU seconds for fit plus every update and refit, plus a predict at EVERY
  tick (with subsampled origins, the mean measured predict CPU stands in for the ticks that were not
  predicted), divided by the minutes of series time covered (warm-up + evaluated ticks). CPU is
  ``time.process_time`` of this process plus its reaped child processes (Prophet's CmdStan optimiser
  runs as a subprocess) plus, around the fit and the whole tick loop, its live descendants read with
  psutil (a background refit worker, if a model uses one).

``selected`` marks our automatic choice (``auto``); for models exposing ``chosen`` (auto), how often
each candidate was in use at the scored origins is reported.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecasting.evaluation.series import Series

__all__ = [
    "ModelSpec",
    "registry_specs",
    "pinball_loss",
    "naive_scale",
    "mase",
    "coverage",
    "warmup_points",
    "effective_steps",
    "select_origins",
    "evaluate",
    "Evaluation",
    "SELECTED_MODEL",
    "quantile_key",
    "cpu_seconds",
]

SELECTED_MODEL = "auto"
_BASE_QUANTILES = (0.5, 0.9)


# ---------------------------------------------------------------------------------------------
# Metrics (NaN actuals are excluded by the caller; these take clean arrays)


def pinball_loss(y: np.ndarray, f: np.ndarray, q: float) -> float:
    """Mean pinball (quantile) loss of forecasts `f` of quantile `q` for actuals `y`."""
    y, f = np.asarray(y, dtype=float), np.asarray(f, dtype=float)
    d = y - f
    return float(np.mean(np.maximum(q * d, (q - 1.0) * d))) if d.size else math.nan


def naive_scale(y: np.ndarray) -> float:
    """In-sample MAE of the one-step naive forecast (y[i-1] for y[i]), over non-missing pairs."""
    y = np.asarray(y, dtype=float)
    d = np.abs(np.diff(y))
    d = d[~np.isnan(d)]
    return float(np.mean(d)) if d.size else math.nan


def mase(y: np.ndarray, f: np.ndarray, scale: float) -> float:
    """MAE of `f` against `y` divided by `scale` (from `naive_scale` of the warm-up)."""
    y, f = np.asarray(y, dtype=float), np.asarray(f, dtype=float)
    if not y.size or not scale > 0:
        return math.nan
    return float(np.mean(np.abs(y - f)) / scale)


def coverage(y: np.ndarray, upper: np.ndarray) -> float:
    """Share of actuals at or below the forecast quantile `upper`."""
    y = np.asarray(y, dtype=float)
    return float(np.mean(y <= np.asarray(upper, dtype=float))) if y.size else math.nan


def quantile_key(q: float) -> str:
    """0.5 -> "p50", 0.9 -> "p90", 0.975 -> "p97.5"."""
    return f"p{q * 100:.10g}"


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: `build(step_s, seed)` returns a fresh Forecaster."""

    name: str
    build: Callable[[float, int], Any]
    baseline: bool = False
    selected: bool = False
    description: str = ""


def registry_specs(names: Sequence[str] | None = None) -> list[ModelSpec]:
    """Specs from `forecasting.registry` (all models when `names` is None), ours first, `auto` leading."""
    from forecasting import registry

    available = list(registry.MODELS)
    if names is None:
        names = available
    unknown = [n for n in names if n not in registry.MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(available)}")
    specs = []
    for n in dict.fromkeys(names):
        info = registry.MODELS[n]
        specs.append(ModelSpec(
            name=n,
            build=(lambda step_s, seed, _n=n: registry.make(_n, step_s, seed=seed)),
            baseline=bool(info.baseline),
            selected=(n == SELECTED_MODEL),
            description=str(getattr(info, "description", "")),
        ))
    return order_specs(specs)


def order_specs(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The selected model, then our other models, then the baselines (each group in given order)."""
    return ([s for s in specs if s.selected] + [s for s in specs if not s.selected and not s.baseline]
            + [s for s in specs if s.baseline and not s.selected])


# ---------------------------------------------------------------------------------------------
# Protocol pieces

DAY_S = 86400.0


def warmup_points(series: Series, warmup_s: float | None = None) -> tuple[int, str]:
    """Number of leading points to `fit` on, and the rule that chose it."""
    n = len(series)
    if warmup_s is not None:
        w = int(math.ceil(warmup_s / series.step_s - 1e-9))
        rule = f"--warmup {warmup_s:g} s"
    else:
        w = int(math.ceil(0.25 * n))
        rule = "first 25 % of the series"
        if series.span_s >= 6 * DAY_S:
            three_days = int(math.ceil(3 * DAY_S / series.step_s - 1e-9))
            if three_days > w:
                w = three_days
                rule = "first 3 days (series spans >= 6 days; 25 % would be shorter)"
            else:
                rule = "first 25 % of the series (>= 3 days)"
    w = max(2, w)
    if w >= n - 1:
        raise ValueError(f"warm-up of {w} points leaves nothing to evaluate in a series of {n} points")
    return w, rule


def effective_steps(horizons_s: Sequence[float], step_s: float) -> list[int]:
    """Grid steps ahead for each horizon: ceil(h / step), at least 1."""
    out = []
    for h in horizons_s:
        if not (h > 0 and math.isfinite(h)):
            raise ValueError(f"horizons must be > 0, got {h}")
        out.append(max(1, int(math.ceil(h / step_s - 1e-9))))
    return out


def select_origins(n: int, warm: int, k_min: int, max_origins: int | None) -> tuple[np.ndarray, int]:
    """(sampled origin indices, number of available origins).

    Available: warm .. n-1-k_min (the shortest horizon's target is inside the series). With
    max_origins, an evenly spaced deterministic subsample including the first and the last."""
    available = np.arange(warm, n - k_min, dtype=np.int64)
    if available.size == 0:
        raise ValueError(f"no origin: the series ({n} points) is too short for a warm-up of {warm} "
                         f"points and a horizon of {k_min} steps")
    if max_origins is not None:
        if max_origins < 1:
            raise ValueError(f"max_origins must be >= 1, got {max_origins}")
        if max_origins < available.size:
            pick = np.unique(np.rint(np.linspace(0, available.size - 1, max_origins)).astype(np.int64))
            return available[pick], int(available.size)
    return available, int(available.size)


def _cpu_fast() -> float:
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def cpu_seconds() -> float:
    """CPU seconds used by this process, its waited-for children (CmdStan runs as a child) and its
    live descendants (e.g. a background refit worker process and its children; psutil)."""
    return _cpu_fast() + _live_descendants_cpu()


def _live_descendants_cpu() -> float:
    """User + system CPU seconds of every live descendant process, including their own reaped
    children (psutil; 0 without it: install the `test` or `load` extra)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in descendants:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile: its time moves to our children's once reaped
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class ModelRun:
    """One model's pass over the series: forecasts at the sampled origins, and its cost."""

    spec: ModelSpec
    forecasts: np.ndarray | None = None  # (n_origins, n_eff_horizons, n_quantiles)
    fit_s: float = math.nan
    fit_cpu_s: float = math.nan
    tick_ms: float = math.nan  # mean wall ms of update + predict at the sampled origins
    tick_cpu_ms: float = math.nan
    cpu_total_s: float = math.nan  # amortised over every tick, see the module docstring
    chosen: Counter = field(default_factory=Counter)
    invalid_forecasts: int = 0
    error: str | None = None


def _run_model(spec: ModelSpec, series: Series, seed: int, warm: int, origins: np.ndarray,
               last: int, eff_h_s: np.ndarray, quantiles: tuple[float, ...]) -> ModelRun:
    run = ModelRun(spec)
    t, y = series.t, series.y
    is_origin = np.zeros(last + 1, dtype=bool)
    is_origin[origins] = True
    out = np.full((len(origins), len(eff_h_s), len(quantiles)), np.nan)
    horizons = [float(h) for h in eff_h_s]
    try:
        model = spec.build(series.step_s, seed)
        # Per call: this process and its reaped children (cheap). Live descendants (a background
        # refit worker) are read (psutil) only around the fit and around the whole tick loop.
        d0 = _live_descendants_cpu()
        c0, w0 = _cpu_fast(), time.perf_counter()
        model.fit(t[:warm].copy(), y[:warm].copy())
        run.fit_s, run.fit_cpu_s = time.perf_counter() - w0, _cpu_fast() - c0
        d1 = _live_descendants_cpu()
        run.fit_cpu_s += d1 - d0
        update_cpu = 0.0
        tick_wall: list[float] = []
        tick_cpu: list[float] = []
        predict_cpu: list[float] = []
        j = 0
        for i in range(warm, last + 1):
            w0, c0 = time.perf_counter(), _cpu_fast()
            model.update(float(t[i]), float(y[i]))
            c1 = _cpu_fast()
            update_cpu += c1 - c0
            if not is_origin[i]:
                continue
            fc = model.predict(float(t[i]), horizons, quantiles)
            c2, w2 = _cpu_fast(), time.perf_counter()
            tick_wall.append(w2 - w0)
            tick_cpu.append(c2 - c0)
            predict_cpu.append(c2 - c1)
            chosen = getattr(model, "chosen", None)
            if chosen is not None:
                run.chosen[str(chosen)] += 1
            for qi, q in enumerate(quantiles):
                v = np.asarray(fc.quantile(q), dtype=float).reshape(-1)
                if v.shape != (len(horizons),):
                    raise ValueError(f"predict returned {v.shape[0]} values for {len(horizons)} horizons")
                bad = ~np.isfinite(v) | (v < 0)
                if bad.any():
                    # The contract says never NaN, never negative: count it, score it as 0.
                    run.invalid_forecasts += int(bad.sum())
                    v = np.where(bad, 0.0, v)
                out[j, :, qi] = v
            j += 1
        n_ticks = last + 1 - warm
        run.tick_ms = 1000.0 * float(np.mean(tick_wall))
        run.tick_cpu_ms = 1000.0 * float(np.mean(tick_cpu))
        background = _live_descendants_cpu() - d1
        run.cpu_total_s = run.fit_cpu_s + update_cpu + float(np.mean(predict_cpu)) * n_ticks + background
        run.forecasts = out
    except Exception as e:  # one broken model must not sink the comparison
        run.error = f"{type(e).__name__}: {e}"
        run.forecasts = None
    return run


# ---------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class Evaluation:
    series: Series
    signal: str
    trace: str
    horizons_s: list[float]
    steps: list[int]
    quantiles: tuple[float, ...]  # reported (pinball keys)
    all_quantiles: tuple[float, ...]  # predicted
    warm: int
    warm_rule: str
    origins: np.ndarray
    n_available: int
    max_origins: int | None
    seed: int
    runs: list[ModelRun]
    scale: float
    last: int
    results: dict[float, dict[str, dict[str, Any]]] = field(default_factory=dict)  # horizon -> model -> metrics

    @property
    def subsampled(self) -> bool:
        return len(self.origins) < self.n_available

    @property
    def effective_horizons_s(self) -> list[float]:
        return [k * self.series.step_s for k in self.steps]

    def selected_run(self) -> ModelRun | None:
        ok = [r for r in self.runs if r.forecasts is not None]
        return next((r for r in ok if r.spec.selected), next((r for r in ok if not r.spec.baseline), None))

    def best_baseline(self, horizon_s: float) -> str | None:
        res = self.results[horizon_s]
        cands = [(m["pinball_mean"], n) for n, m in res.items()
                 if m["baseline"] and m.get("error") is None and math.isfinite(m["pinball_mean"])]
        return min(cands)[1] if cands else None

    # -- output ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def block(h: float) -> dict[str, Any]:
            return self.results[h]

        h0 = self.horizons_s[0]
        out: dict[str, Any] = {
            "trace": self.trace,
            "series": self.series.name,
            "signal": self.signal,
            "step_s": self.series.step_s,
            "horizons_s": list(self.horizons_s),
            "effective_horizons_s": self.effective_horizons_s,
            "quantiles": list(self.quantiles),
            "seed": self.seed,
            "n_points": len(self.series),
            "n_missing": self.series.n_missing,
            "warmup": {"points": self.warm, "seconds": self.warm * self.series.step_s, "rule": self.warm_rule,
                       "naive_mae": self.scale},
            "origins": {
                "available": self.n_available,
                "evaluated": int(len(self.origins)),
                "subsampled": self.subsampled,
                "max_origins": self.max_origins,
                "first_t": float(self.series.t[self.origins[0]]),
                "last_t": float(self.series.t[self.origins[-1]]),
                "sampling": ("evenly spaced deterministic subsample; every model updated on every point "
                             "and scored on the same origins") if self.subsampled else "every point",
            },
            "selected_model": SELECTED_MODEL,
            "notes": list(self.series.notes),
            "models": block(h0),
        }
        if len(self.horizons_s) > 1:
            out["by_horizon"] = {f"{h:g}": block(h) for h in self.horizons_s}
        return _json_clean(out)

    def table(self) -> str:
        """Markdown tables, one per horizon: models side by side (rows), ours first."""
        lines = [
            f"trace {self.trace}  series {self.series.name}  signal {self.signal}  step {self.series.step_s:g} s  "
            f"points {len(self.series)} ({self.series.n_missing} missing)",
            f"warm-up {self.warm} points ({_fmt_dur(self.warm * self.series.step_s)}; {self.warm_rule}); "
            f"origins {len(self.origins)} of {self.n_available}"
            + (f" (SUBSAMPLED: --max-origins {self.max_origins}, evenly spaced, same for all models)"
               if self.subsampled else ""),
        ]
        for note in self.series.notes:
            lines.append(f"note: {note}")
        qkeys = [quantile_key(q) for q in self.quantiles]
        for h, k in zip(self.horizons_s, self.steps):
            res = self.results[h]
            eff = k * self.series.step_s
            lines.append("")
            eff_txt = "" if math.isclose(eff, h) else f" (effective {_fmt_dur(eff)} = {k} step{'s' if k > 1 else ''} of {_fmt_dur(self.series.step_s)})"
            n_scored = max((m["n_scored"] for m in res.values()), default=0)
            lines.append(f"horizon {_fmt_dur(h)}{eff_txt}, {n_scored} scored origins")
            head = (["model", "role", "MASE"] + [f"pinball {k_}" for k_ in qkeys]
                    + ["pinball mean", "vs best baseline", "p90 coverage", "fit s", "tick ms", "CPU s/series-min"])
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
            for name, m in res.items():
                role = "selected" if m["selected"] else ("baseline" if m["baseline"] else "ours")
                if m.get("error"):
                    lines.append(f"| {name} | {role} | error: {m['error']} |" + " |" * (len(head) - 3))
                    continue
                vs = m.get("vs_best_baseline_pct")
                row = [name, role, _f(m["mase"], 3)] + [_f(m["pinball"][k_]) for k_ in qkeys] + [
                    _f(m["pinball_mean"]),
                    "-" if vs is None else f"{vs:+.1f} %",
                    f"{100 * m['coverage_p90']:.1f} %",
                    _f(m["fit_s"], 3),
                    _f(m["predict_ms"], 3),
                    f"{m['cpu_s_per_series_minute']:.2e}",
                ]
                lines.append("| " + " | ".join(row) + " |")
            for name, m in res.items():
                if m.get("chosen"):
                    total = sum(m["chosen"].values())
                    share = ", ".join(f"{c} {100 * v / total:.0f} %" for c, v in
                                      sorted(m["chosen"].items(), key=lambda kv: -kv[1]))
                    lines.append(f"{name} chose: {share} of {total} origins")
        if len(self.horizons_s) > 1:
            lines += ["", "summary (pinball mean, in parentheses vs the best baseline at that horizon)", self.summary()]
        return "\n".join(lines)

    def summary(self) -> str:
        """One markdown table across horizons: mean pinball (vs the best baseline) and p90 coverage."""
        hs = self.horizons_s
        names = list(self.results[hs[0]])
        head = ["model", "role"] + [f"pinball mean @{_fmt_dur(h)}" for h in hs] + [f"p90 cov @{_fmt_dur(h)}" for h in hs]
        head += ["tick ms", "CPU s/series-min"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        for name in names:
            m0 = self.results[hs[0]][name]
            role = "selected" if m0["selected"] else ("baseline" if m0["baseline"] else "ours")
            cells = [name, role]
            for h in hs:
                m = self.results[h][name]
                vs = m.get("vs_best_baseline_pct")
                cells.append(_f(m["pinball_mean"]) + ("" if vs is None or m["baseline"] else f" ({vs:+.1f} %)"))
            for h in hs:
                c = self.results[h][name]["coverage_p90"]
                cells.append("nan" if c is None or not math.isfinite(c) else f"{100 * c:.1f} %")
            cells += [_f(m0["predict_ms"], 3), "nan" if not math.isfinite(m0["cpu_s_per_series_minute"])
                      else f"{m0['cpu_s_per_series_minute']:.2e}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | None = None, horizon_s: float | None = None, window: int = 432):
        """PNG (written to `path` when given; returns the matplotlib Figure): actual vs the selected
        model's p50 and p50-p90 band and the best baseline's p50, for the first horizon, over the
        last `window` scored origins (all of them if fewer), each forecast drawn at the time it was
        made for. The legend is right of the axes."""
        from matplotlib.figure import Figure

        h = self.horizons_s[0] if horizon_s is None else horizon_s
        hi = self.horizons_s.index(h)
        k = self.steps[hi]
        eff_idx = sorted(set(self.steps)).index(k)
        targets = self.origins + k
        keep = targets < len(self.series)
        origins, targets = self.origins[keep], targets[keep]
        origins, targets = origins[-window:], targets[-window:]
        sel = self.selected_run()
        base_name = self.best_baseline(h)
        base = next((r for r in self.runs if r.spec.name == base_name), None)
        q50, q90 = self.all_quantiles.index(0.5), self.all_quantiles.index(0.9)
        pos = np.searchsorted(self.origins, origins)
        tt = self.series.t[targets]
        unit, div = ("h", 3600.0) if self.series.span_s > 2 * DAY_S else ("min", 60.0)
        x = tt / div
        lo_i, hi_i = max(0, targets[0] - k), targets[-1] + 1
        eff = k * self.series.step_s
        fig = Figure(figsize=(13, 4.8), dpi=100, layout="constrained")
        ax = fig.subplots()
        ax.plot(self.series.t[lo_i:hi_i] / div, self.series.y[lo_i:hi_i], color="black", lw=1.0,
                label=f"actual ({_fmt_dur(self.series.step_s)} bins)")
        if sel is not None and sel.forecasts is not None:
            f = sel.forecasts[pos, eff_idx]
            ax.fill_between(x, f[:, q50], f[:, q90], color="tab:blue", alpha=0.2, lw=0,
                            label=f"{sel.spec.name}: p50 to p90 band")
            ax.plot(x, f[:, q50], color="tab:blue", lw=1.4, label=f"{sel.spec.name} p50 (the selected model"
                    + (f"; chose {', '.join(sorted(sel.chosen))})" if sel.chosen else ")"))
            ax.plot(x, f[:, q90], color="tab:blue", lw=0.8, ls=":", label=f"{sel.spec.name} p90")
        if base is not None and base.forecasts is not None:
            ax.plot(x, base.forecasts[pos, eff_idx, q50], color="tab:red", lw=1.0, ls="--",
                    label=f"{base.spec.name} p50\n(the best baseline at {_fmt_dur(h)})")
        if self.subsampled:
            ax.plot([], [], " ", label=f"{len(self.origins)} of {self.n_available} origins scored\n(subsampled)")
        ax.set_title(f"{self.series.name}, {SIGNAL_LABELS.get(self.signal, self.signal)}: each forecast made "
                     f"{_fmt_dur(eff)} ahead, drawn at the time it predicted"
                     + ("" if math.isclose(eff, h) else f" (requested {_fmt_dur(h)})")
                     + f"; the last {len(targets)} origins", fontsize=11)
        ax.set_xlabel(f"time since the trace started ({unit})")
        ax.set_ylabel(SIGNAL_LABELS.get(self.signal, self.signal))
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
        if path is not None:
            fig.savefig(path, format="png")
        return fig


SIGNAL_LABELS = {"request_rate": "requests / s", "prefill_tokens_per_s": "prefill tokens / s",
                 "decode_tokens_per_s": "decode tokens / s"}


def _json_clean(v: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(v, dict):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _f(v: float, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.{digits}g}"


def _fmt_dur(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g}h"
    if s >= 60 and (s / 6) == int(s / 6):
        return f"{s / 60:g}m"
    return f"{s:g}s"


def evaluate(
    series: Series,
    specs: Sequence[ModelSpec],
    horizons_s: Sequence[float],
    quantiles: Sequence[float] = _BASE_QUANTILES,
    max_origins: int | None = None,
    seed: int = 0,
    warmup_s: float | None = None,
    signal: str = "request_rate",
    trace: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run every model over `series` (see the module docstring) and score it at each horizon."""
    if not specs:
        raise ValueError("no models to evaluate")
    horizons_s = [float(h) for h in horizons_s]
    if not horizons_s:
        raise ValueError("at least one horizon")
    if len(set(horizons_s)) != len(horizons_s):
        raise ValueError(f"duplicate horizons {horizons_s}")
    quantiles = tuple(float(q) for q in dict.fromkeys(quantiles))
    for q in quantiles:
        if not 0 < q < 1:
            raise ValueError(f"quantiles must be in (0, 1), got {q}")
    all_q = tuple(sorted(set(quantiles) | set(_BASE_QUANTILES)))
    n = len(series)
    steps = effective_steps(horizons_s, series.step_s)
    warm, rule = warmup_points(series, warmup_s)
    for h, k in zip(horizons_s, steps):
        if warm + k > n - 1:
            raise ValueError(
                f"horizon {_fmt_dur(h)} ({k} steps of {_fmt_dur(series.step_s)}) does not fit: the series has "
                f"{_fmt_dur(n * series.step_s)} ({n} points), {_fmt_dur(warm * series.step_s)} of them warm-up")
    origins, n_available = select_origins(n, warm, min(steps), max_origins)
    last = int(origins[-1])
    eff_steps = sorted(set(steps))
    eff_h_s = np.array(eff_steps, dtype=float) * series.step_s
    scale = naive_scale(series.y[:warm])

    runs = []
    ordered = order_specs(specs)
    t_all = time.perf_counter()
    for i, spec in enumerate(ordered, start=1):
        if progress:
            progress(f"model {i} of {len(ordered)}, {spec.name}: fit on {warm} points, {last + 1 - warm} ticks, "
                     f"{len(origins)} origins")
        t0 = time.perf_counter()
        run = _run_model(spec, series, seed, warm, origins, last, eff_h_s, all_q)
        if progress:
            progress(f"{spec.name}: done in {time.perf_counter() - t0:.1f} s ({time.perf_counter() - t_all:.0f} s so far)"
                     + (f" ({run.error})" if run.error else ""))
        runs.append(run)

    ev = Evaluation(series=series, signal=signal, trace=trace or series.source, horizons_s=horizons_s, steps=steps,
                    quantiles=quantiles, all_quantiles=all_q, warm=warm, warm_rule=rule, origins=origins,
                    n_available=n_available, max_origins=max_origins, seed=seed, runs=runs, scale=scale, last=last)
    minutes = (last + 1) * series.step_s / 60.0
    for h, k in zip(horizons_s, steps):
        targets = origins + k
        ok = targets < n
        ok[ok] &= ~np.isnan(series.y[targets[ok]])
        actual = series.y[targets[ok]]
        ei = eff_steps.index(k)
        res: dict[str, dict[str, Any]] = {}
        for run in runs:
            m: dict[str, Any] = {
                "horizon_s": h,
                "effective_horizon_s": k * series.step_s,
                "selected": run.spec.selected,
                "baseline": run.spec.baseline,
                "description": run.spec.description,
                "n_scored": int(ok.sum()),
            }
            if run.forecasts is None:
                nan = math.nan
                m.update(mase=nan, mae=nan, pinball={quantile_key(q): nan for q in quantiles}, pinball_mean=nan,
                         coverage_p90=nan, coverage={}, fit_s=run.fit_s, predict_ms=nan,
                         cpu_s_per_series_minute=nan, error=run.error)
                res[run.spec.name] = m
                continue
            f = run.forecasts[ok, ei]
            p50 = f[:, all_q.index(0.5)]
            pin = {quantile_key(q): pinball_loss(actual, f[:, all_q.index(q)], q) for q in quantiles}
            m.update(
                mase=mase(actual, p50, scale),
                mae=float(np.mean(np.abs(actual - p50))) if actual.size else math.nan,
                pinball=pin,
                pinball_mean=float(np.mean(list(pin.values()))),
                coverage_p90=coverage(actual, f[:, all_q.index(0.9)]),
                coverage={quantile_key(q): coverage(actual, f[:, all_q.index(q)]) for q in all_q},
                fit_s=run.fit_s,
                fit_cpu_s=run.fit_cpu_s,
                predict_ms=run.tick_ms,
                predict_cpu_ms=run.tick_cpu_ms,
                cpu_s_per_series_minute=run.cpu_total_s / minutes,
                invalid_forecasts=run.invalid_forecasts,
                chosen=dict(run.chosen) if run.chosen else None,
                error=None,
            )
            res[run.spec.name] = m
        best = [m["pinball_mean"] for m in res.values()
                if m["baseline"] and m.get("error") is None and math.isfinite(m["pinball_mean"])]
        for m in res.values():
            b = min(best) if best else math.nan
            m["vs_best_baseline_pct"] = (100.0 * (m["pinball_mean"] / b - 1.0)
                                         if best and b > 0 and math.isfinite(m["pinball_mean"]) else None)
        ev.results[h] = res
    return ev
