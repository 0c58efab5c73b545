"""Every PNG the project writes, read through matplotlib's objects (each plotting function returns
its Figure): counts on integer-labelled axes, legends outside the plotting area, the backtest's miss
panel a rolling share of requests. `backtest --plot`, `frontier --plot`, `forecast-eval --plot` and
load/e2e.py's picture."""

from __future__ import annotations

import math

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from scaler.testbench.sim.backtest import DODGE, Backtest, _count_axis, miss_window_s, run_backtest  # noqa: E402
from scaler.testbench.sim.context import SimContext  # noqa: E402
from scaler.testbench.sim.replay import replay  # noqa: E402
from scaler.testbench.sim.workload import synthetic  # noqa: E402

ISL, OSL = 2000, 100


# ---- checks shared by every plot -------------------------------------------------------------------

def _renderer(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out (constrained layout) as savefig does
    return canvas.get_renderer()


def assert_legends_outside_every_axes(fig, r) -> int:
    """Each legend's box overlaps no axes' plotting area (its own included); returns how many."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "no legend"
    for leg in legends:
        box = leg.get_window_extent(r)
        for ax in fig.axes:
            area = ax.get_window_extent(r)
            assert not box.overlaps(area), (ax.get_label() or ax.get_title(), box, area)
    return len(legends)


def tick_labels(ax, renderer) -> list[str]:
    lo, hi = sorted(ax.get_ylim())
    ticks = [t for t in ax.yaxis.get_major_ticks() if t.label1.get_visible() and t.label1.get_text()]
    return [t.label1.get_text() for t in ticks if lo - 1e-9 <= t.get_loc() <= hi + 1e-9]


def assert_integer_count_axis(ax, renderer) -> None:
    """A replica axis: linear with integer ticks, or (symmetric) log with plain integer labels
    (never 9.4x10^0 or 2.5)."""
    labels = tick_labels(ax, renderer)
    assert len(labels) >= 2, labels
    for text in labels:
        assert text.replace("\u2212", "-").lstrip("-").isdigit(), (ax.get_label(), labels)
    if ax.get_yscale() == "linear":
        locs = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert all(float(t).is_integer() for t in locs), locs
    else:
        assert ax.get_yscale() in ("log", "symlog")


def axes_by_label(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes}


# ---- pdscaler backtest --plot ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def burst_backtest():
    """An hour at 20 req/s with a 60 s burst to 200 (shorter than a replica's start-up): the reactive
    policy misses the SLO for part of the burst, the oracle never."""
    rate = np.full(3600, 20.0)
    rate[1800:1860] = 200.0
    ctx = SimContext(synthetic(rate, ISL, OSL))
    return run_backtest("burst.csv", ctx, ["oracle", "static-mean", "reactive-ttft"])


def test_backtest_plot_counts_legends_and_rolling_miss(burst_backtest, tmp_path):
    png = tmp_path / "bt.png"
    fig = burst_backtest.plot(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = axes_by_label(fig)
    assert set(axes) == {"demand", "prefill", "decode", "miss"}
    r = _renderer(fig)
    assert assert_legends_outside_every_axes(fig, r) == 4
    for role in ("prefill", "decode"):
        assert_integer_count_axis(axes[role], r)
        # every policy drawn, within DODGE of the integer counts it ran
        lines = [ln for ln in axes[role].get_lines() if ln.get_label().split(":")[0] in burst_backtest.runs]
        assert len(lines) == len(burst_backtest.runs)
        for ln in lines:
            y = np.asarray(ln.get_ydata(), float)
            assert np.all(np.abs(y - np.round(y)) <= DODGE + 1e-9)
    miss = axes["miss"]
    assert miss.get_yscale() == "linear"
    shares = {ln.get_label().split(":")[0]: np.asarray(ln.get_ydata(), float) / 100 for ln in miss.get_lines()}
    assert set(shares) == set(burst_backtest.runs)
    for name, y in shares.items():
        finite = y[np.isfinite(y)]
        assert finite.size and np.all((finite >= 0) & (finite <= 1)), name
    reactive = shares["reactive-ttft"][np.isfinite(shares["reactive-ttft"])]
    assert np.any((reactive > 0.01) & (reactive < 0.99)), "a rolling share, not the per-bucket 0/1 spikes"
    assert np.nanmax(shares["oracle"]) == 0.0
    assert "trailing 5 min" in miss.get_title()


def test_rolling_miss_is_the_share_of_the_trailing_window_requests_over_the_slo():
    """Against a per-step count from the replay's own telemetry: at each plot bucket's end, the
    requests of the trailing window whose TTFT exceeded the SLO, over all that arrived."""
    rate = np.full(3600, 20.0)
    rate[1800:1860] = 200.0
    ctx = SimContext(synthetic(rate, ISL, OSL))
    run = replay("reactive-ttft", ctx, keep_telemetry=True)
    bt = Backtest("burst.csv", ctx)
    bt.runs["reactive-ttft"] = run
    window = 300.0
    got = bt.rolling_miss(run, window)
    c, n = run.telemetry.cols, run.telemetry.i
    arrivals, late = c["arrivals"][:n], c["arrivals"][:n] * (c["ttft"][:n] > ctx.ttft_slo)
    m = -(-n // 1500)
    w = int(window / m)  # buckets of m one-second steps
    for j in range(len(got)):
        a, b = max(0, (j + 1 - w) * m), min(n, (j + 1) * m)
        total = arrivals[a:b].sum()
        want = late[a:b].sum() / total if total > 0 else math.nan
        assert (math.isnan(want) and math.isnan(got[j])) or got[j] == pytest.approx(want, abs=1e-9), j
    assert np.nanmax(got) > 0.05


def test_miss_window_is_sized_to_the_trace():
    assert miss_window_s(3600) == 300  # an hour: 5 minutes
    assert miss_window_s(600) == 60  # the floor
    assert miss_window_s(6 * 3600) == 1800
    assert miss_window_s(14 * 86400) == 3600  # the ceiling


def test_a_wide_count_range_goes_log_with_integer_labels():
    from matplotlib.figure import Figure

    fig = Figure()
    wide, narrow = fig.subplots(1, 2)
    wide.plot([0, 1, 2], [1, 3, 200])
    _count_axis(wide, 200, 2)
    narrow.plot([0, 1, 2], [1, 3, 12])
    _count_axis(narrow, 12, 1)
    r = _renderer(fig)
    assert wide.get_yscale() == "symlog" and narrow.get_yscale() == "linear"
    for ax in (wide, narrow):
        assert_integer_count_axis(ax, r)
    assert {"1", "10", "100"} <= set(tick_labels(wide, r))


# ---- pdscaler frontier --plot ------------------------------------------------------------------------

def test_frontier_plot_percent_axes_and_legend_outside():
    from scaler.testbench.sim.frontier import Frontier, Point, Variant

    ctx = SimContext(synthetic(np.full(600, 20.0), ISL, OSL))
    fr = Frontier("burst.csv", ctx, 0.99)
    for i, (att, gpuh) in enumerate([(0.80, 1.0), (0.97, 2.0), (1.0, 3.0), (1.0, 4.0)]):
        fr.points.append(Point(Variant("static", f"prefill={i + 1}", "static-size"), att, 1.0, gpuh, 0.1))
    for q, (att, gpuh) in zip((0.5, 0.9), [(0.95, 1.5), (0.995, 2.5)]):
        fr.points.append(Point(Variant("pdscaler", f"quantile={q}", "pdscaler"), att, att, gpuh, 0.2))
    fr.points.append(Point(Variant("oracle", "-", "oracle"), 1.0, 1.0, 2.2, 0.1))
    fr.mark_pareto()
    fig = fr.plot()
    r = _renderer(fig)
    assert assert_legends_outside_every_axes(fig, r) == 1
    full, zoom = fig.axes
    labels = [h.get_label() for h in full.get_legend().legend_handles]
    assert "oracle (knows the future)" in labels and any(x.startswith("pdscaler: Pareto front") for x in labels)
    for ax in (full, zoom):
        assert all(t.endswith("%") for t in tick_labels(ax, r))
        ys = [y for ln in ax.get_lines() for y in np.atleast_1d(ln.get_ydata())]
        assert ys and all(0 <= y <= 100 for y in ys)  # attainment drawn in percent
    assert zoom.get_ylim()[0] >= 90


# ---- pdscaler forecast-eval --plot ---------------------------------------------------------------------

def test_forecast_eval_plot_legend_outside_and_labelled_axes():
    from forecasting.evaluation.rolling_origin import evaluate, registry_specs
    from forecasting.evaluation.series import load_series
    from scaler.testbench.traces import bundled_trace

    series = load_series(str(bundled_trace("azure-code")), None, None, "request_rate", 30.0)
    ev = evaluate(series, registry_specs(["auto", "planner-constant"]), [120.0], max_origins=40,
                  signal="request_rate", trace="azure-code")
    fig = ev.plot()
    assert assert_legends_outside_every_axes(fig, _renderer(fig)) == 1
    (ax,) = fig.axes
    assert ax.get_ylabel() == "requests / s" and "min" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("actual") and any("best baseline" in x for x in labels)
    assert ax.get_ylim()[0] == 0


# ---- load/e2e.py's picture -------------------------------------------------------------------------------

def _e2e_result():
    from load.e2e import E2EResult

    t0 = 1_000_000.0
    ts = [t0 + s for s in range(0, 150, 2)]
    step = lambda up, down, lo, hi: [(t, hi if t0 + up <= t < t0 + down else lo) for t in ts]  # noqa: E731
    return E2EResult(start=t0, burst=(t0 + 45, t0 + 95), series={
        "demand_prefill": [(t, 12_000 + (60_000 if t0 + 45 <= t < t0 + 100 else 0)) for t in ts],
        "forecast_prefill_p50": [(t, 12_000.0) for t in ts], "forecast_prefill_p90": [(t, 15_000.0) for t in ts],
        "target_prefill": step(50, 120, 1, 5), "ready_prefill": step(65, 125, 1, 5),
        "target_decode": step(0, 0, 1, 1), "ready_decode": step(0, 0, 1, 1), "target_warm": step(80, 86, 0, 1),
    })


def test_e2e_plot_integer_replicas_and_legends_outside():
    from load import e2e

    fig = e2e.plot(_e2e_result())
    r = _renderer(fig)
    assert assert_legends_outside_every_axes(fig, r) == 3
    demand, prefill, decode = fig.axes
    for ax in (prefill, decode):  # decode runs 0..1 (the warm target): no 0.2, 0.4, ... ticks
        assert_integer_count_axis(ax, r)
    assert any("burst" in t.get_text() for t in demand.get_legend().get_texts())
