"""Forecast evaluation harness: metrics, series binning, the rolling-origin protocol, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from forecasting.base import Forecast
from forecasting.evaluation.rolling_origin import (
    ModelSpec,
    coverage,
    effective_steps,
    evaluate,
    mase,
    naive_scale,
    pinball_loss,
    select_origins,
    warmup_points,
)
from forecasting.evaluation.series import Series, bin_requests, load_series, series_from_rate_curve
from scaler.cli import main
from scaler.testbench.traces import TraceRequest, bundled_trace

# ------------------------------------------------------------------------------------------------
# Tiny models of our own (the protocol tests must not depend on the registry's models)


class LastValue:
    """Predicts the last non-missing value for every horizon and quantile; records its calls."""

    name = "last-value"

    def __init__(self, step_s: float = 1.0, seed: int = 0):
        self.last = 0.0
        self.calls: list[tuple] = []

    def fit(self, t, y):
        self.calls.append(("fit", len(t), float(t[-1])))
        ok = y[~np.isnan(y)]
        self.last = float(ok[-1]) if ok.size else 0.0

    def update(self, t, y):
        self.calls.append(("update", t))
        if not math.isnan(y):
            self.last = y

    def predict(self, now, horizons, quantiles=(0.5, 0.9)):
        self.calls.append(("predict", now, tuple(horizons)))
        h = np.asarray(horizons, dtype=float)
        return Forecast(now, h, {q: np.full(h.shape, self.last) for q in quantiles})


class Oracle:
    """Knows the series: predicts the true value at now + h (p90 = p50 = truth)."""

    name = "oracle"

    def __init__(self, series: Series):
        self.s = series

    def fit(self, t, y):
        pass

    def update(self, t, y):
        pass

    def predict(self, now, horizons, quantiles=(0.5, 0.9)):
        h = np.asarray(horizons, dtype=float)
        idx = np.searchsorted(self.s.t, now + h)
        v = np.nan_to_num(self.s.y[np.minimum(idx, len(self.s) - 1)])
        return Forecast(now, h, {q: v.copy() for q in quantiles})


class Broken(LastValue):
    def predict(self, now, horizons, quantiles=(0.5, 0.9)):
        raise RuntimeError("boom")


def spec(name, cls, baseline=False, selected=False, **kw):
    return ModelSpec(name, lambda step_s, seed: cls(**kw) if kw else cls(step_s, seed), baseline, selected)


def daily_series(days: int = 8, step_s: float = 600.0, noise: float = 0.05, seed: int = 1) -> Series:
    t = np.arange(int(days * 86400 / step_s)) * step_s
    rng = np.random.default_rng(seed)
    y = 100 + 60 * np.sin(2 * np.pi * t / 86400) + noise * 100 * rng.standard_normal(t.size)
    return Series("daily", t, np.maximum(y, 0), step_s, "synthetic")


# ------------------------------------------------------------------------------------------------
# Metrics against hand-computed values


def test_pinball_loss_by_hand():
    y, f = np.array([10.0, 10.0]), np.array([8.0, 13.0])
    # q=0.9: under-forecast by 2 costs 0.9*2 = 1.8; over-forecast by 3 costs 0.1*3 = 0.3.
    assert pinball_loss(y, f, 0.9) == pytest.approx((1.8 + 0.3) / 2)
    # q=0.5: half the absolute error.
    assert pinball_loss(y, f, 0.5) == pytest.approx((1.0 + 1.5) / 2)
    assert pinball_loss(y, y, 0.9) == 0.0


def test_mase_scaled_by_one_step_naive_over_non_missing_pairs():
    # |diffs| = 2, 1, (nan), (nan), 1 -> 4/3
    assert naive_scale(np.array([1, 3, 2, np.nan, 5, 4], dtype=float)) == pytest.approx(4 / 3)
    assert mase(np.array([2.0, 4.0]), np.array([3.0, 3.0]), 4 / 3) == pytest.approx(0.75)
    assert math.isnan(mase(np.array([1.0]), np.array([1.0]), 0.0))


def test_coverage_counts_actuals_at_or_below_the_quantile():
    assert coverage(np.array([1, 2, 3, 4.0]), np.array([2, 2, 2, 5.0])) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------
# Series


def test_binning_a_tiny_trace_by_end_of_bin_dropping_the_incomplete_last_bin():
    reqs = [TraceRequest(0, 10, 1), TraceRequest(5, 20, 2), TraceRequest(12, 30, 3),
            TraceRequest(25, 40, 4), TraceRequest(31, 1, 1)]
    t, y = bin_requests(reqs, 10, "request_rate")
    assert t.tolist() == [10, 20, 30]
    assert y == pytest.approx([0.2, 0.1, 0.1])
    assert bin_requests(reqs, 10, "prefill_tokens_per_s")[1] == pytest.approx([3.0, 3.0, 4.0])
    assert bin_requests(reqs, 10, "decode_tokens_per_s")[1] == pytest.approx([0.3, 0.3, 0.4])
    # An empty bin is a real zero (no arrivals), not missing.
    t, y = bin_requests([TraceRequest(0, 1, 1), TraceRequest(35, 1, 1)], 10)
    assert y.tolist() == [0.1, 0.0, 0.0]


def test_load_series_detects_azure_csv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:00:00.0,100,5\n2023-11-16 18:00:20.0,300,7\n2023-11-16 18:01:05.0,1,1\n")
    s = load_series(p, signal="prefill_tokens_per_s", step_s=30)
    assert s.t.tolist() == [30, 60] and s.y == pytest.approx([400 / 30, 0.0]) and s.step_s == 30
    with pytest.raises(ValueError, match="request_rate"):
        load_series(p, fmt="rates", signal="prefill_tokens_per_s")


def test_rate_curve_zero_windows_are_missing_and_say_so(tmp_path):
    p = tmp_path / "r.csv"
    rows = [("a", 0, 5.0), ("a", 600, 0.0), ("a", 1800, 7.0), ("a", 2400, 9.0), ("b", 0, 1.0), ("b", 600, 2.0)]
    p.write_text("category_model,t_s,total_rate_rps,active_clients\n"
                 + "".join(f"{c},{t},{r},3\n" for c, t, r in rows))
    s = load_series(p, series="a")
    assert s.t.tolist() == [0, 600, 1200, 1800, 2400] and s.step_s == 600
    assert np.isnan(s.y[1]) and np.isnan(s.y[2]) and s.y[[0, 3, 4]].tolist() == [5, 7, 9]
    assert any("zero total rate treated as missing" in n for n in s.notes)
    assert any("absent" in n for n in s.notes)
    s2 = series_from_rate_curve(p, "a", step_s=1200)
    assert s2.y[0] == 5.0 and s2.y[1] == 7.0 and s2.step_s == 1200
    with pytest.raises(ValueError, match="multiple"):
        series_from_rate_curve(p, "a", step_s=900)


# ------------------------------------------------------------------------------------------------
# Protocol


def test_warmup_rule_and_effective_horizons():
    assert warmup_points(Series("x", np.arange(100.0), np.ones(100), 1.0, ""))[0] == 25
    two_weeks = Series("x", np.arange(2016) * 600.0, np.ones(2016), 600.0, "")
    assert warmup_points(two_weeks) == (504, "first 25 % of the series (>= 3 days)")
    week = Series("x", np.arange(1008) * 600.0, np.ones(1008), 600.0, "")
    assert warmup_points(week)[0] == 432  # 3 days > 25 %
    assert effective_steps([120, 300, 600, 3600], 600) == [1, 1, 1, 6]
    assert effective_steps([120, 45], 30) == [4, 2]
    o, n = select_origins(100, 25, 4, 5)
    assert n == 71 and o.tolist() == [25, 43, 60, 77, 95]


def test_protocol_fit_then_update_then_predict_in_time_order_on_shared_subsampled_origins():
    s = daily_series(days=2, step_s=3600)  # 48 points
    built = []

    def build(step_s, seed):
        m = LastValue(step_s, seed)
        built.append(m)
        return m

    specs = [ModelSpec("a", build, selected=True), ModelSpec("b", build, baseline=True)]
    ev = evaluate(s, specs, [1800, 7200], max_origins=5)
    assert ev.steps == [1, 2] and ev.effective_horizons_s == [3600, 7200]
    for m in built:
        assert m.calls[0] == ("fit", 12, s.t[11])
        updates = [c[1] for c in m.calls if c[0] == "update"]
        assert updates == s.t[12:ev.last + 1].tolist()  # every point after the warm-up, in order
        predicts = [c for c in m.calls if c[0] == "predict"]
        assert [c[1] for c in predicts] == s.t[ev.origins].tolist()
        assert all(c[2] == (3600.0, 7200.0) for c in predicts)
        # each predict directly follows the update of the same point
        for i, c in enumerate(m.calls):
            if c[0] == "predict":
                assert m.calls[i - 1] == ("update", c[1])
    out = ev.to_json()
    assert out["origins"]["subsampled"] is True and out["origins"]["evaluated"] == 5
    assert out["by_horizon"]["1800"]["a"]["effective_horizon_s"] == 3600
    assert out["by_horizon"]["7200"]["a"]["n_scored"] == 4  # the last origin has no 2-step target


def test_oracle_scores_zero_so_targets_are_aligned_and_a_broken_model_is_reported():
    s = daily_series(days=1, step_s=600)
    s.y[40] = np.nan  # a missing actual is not scored
    specs = [ModelSpec("oracle", lambda step_s, seed: Oracle(s), selected=True),
             spec("last", LastValue, baseline=True), spec("broken", Broken)]
    ev = evaluate(s, specs, [600, 1800])
    for h in (600, 1800):
        m = ev.results[h]["oracle"]
        assert m["pinball"]["p50"] == 0 and m["pinball"]["p90"] == 0 and m["mase"] == 0
        assert m["coverage_p90"] == 1.0
        assert ev.results[h]["last"]["mase"] > 0.5
        assert "boom" in ev.results[h]["broken"]["error"]
    assert ev.results[600]["oracle"]["n_scored"] == 144 - 36 - 1 - 1
    assert ev.results[600]["oracle"]["vs_best_baseline_pct"] == pytest.approx(-100)
    json.dumps(ev.to_json(), allow_nan=False)
    assert "error: RuntimeError: boom" in ev.table()


def test_seasonal_model_ranks_above_the_last_value_baseline_on_a_daily_series():
    registry = pytest.importorskip("forecasting.registry")
    from forecasting.evaluation.rolling_origin import registry_specs

    s = daily_series(days=8, step_s=600)
    ev = evaluate(s, registry_specs(["seasonal-naive", "planner-constant"]), [3600, 3 * 3600])
    assert registry.MODELS["planner-constant"].baseline
    for h in ev.horizons_s:
        res = ev.results[h]
        assert res["seasonal-naive"]["pinball_mean"] < res["planner-constant"]["pinball_mean"]
        assert res["seasonal-naive"]["mase"] < res["planner-constant"]["mase"]


# ------------------------------------------------------------------------------------------------
# CLI end to end


def test_cli_on_the_bundled_azure_code_trace_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("forecasting.registry")
    from forecasting import registry

    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    models = [m for m in ("auto", "holt", "seasonal-naive", "planner-constant", "planner-kalman") if m in registry.MODELS]
    rc = main(["forecast-eval", "--trace", str(bundled_trace("azure-code")), "--horizon", "2m",
               "--step", "30s", "--models", ",".join(models), "--max-origins", "40",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "selected" in table and "baseline" in table and "SUBSAMPLED" in table
    data = json.loads(out.read_text())
    assert {"trace", "series", "signal", "step_s", "horizons_s", "models"} <= set(data)
    assert "by_horizon" not in data
    assert data["signal"] == "request_rate" and data["step_s"] == 30 and data["horizons_s"] == [120]
    assert data["origins"]["subsampled"] is True and data["origins"]["evaluated"] == 40
    assert list(data["models"]) == models  # ours (auto first), then the baselines
    for name, m in data["models"].items():
        assert {"mase", "pinball", "coverage_p90", "selected", "baseline", "fit_s", "predict_ms",
                "cpu_s_per_series_minute"} <= set(m)
        assert set(m["pinball"]) == {"p50", "p90"}
        assert m["selected"] == (name == "auto")
        assert m["baseline"] == registry.MODELS[name].baseline
        assert m["error"] is None and m["n_scored"] == 40 and 0 <= m["coverage_p90"] <= 1
        assert m["mase"] > 0 and m["cpu_s_per_series_minute"] > 0
    if "auto" in data["models"]:
        assert sum(data["models"]["auto"]["chosen"].values()) == 40
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400


def test_cli_several_horizons_and_errors(tmp_path, capsys, monkeypatch):
    import forecasting.evaluation.rolling_origin as evaluation

    monkeypatch.setattr(evaluation, "registry_specs", lambda names: [
        spec("ours", LastValue, selected=True), spec("base", LastValue, baseline=True)])
    out = tmp_path / "e.json"
    rc = main(["forecast-eval", "--trace", str(bundled_trace("azure-conv")), "--signal", "decode_tokens_per_s",
               "--horizon", "30s,2m", "--step", "1m", "--quantiles", "0.5,0.9,0.95", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["horizons_s"] == [30, 120] and data["effective_horizons_s"] == [60, 120]
    assert set(data["by_horizon"]) == {"30", "120"}
    assert data["models"] == data["by_horizon"]["30"]
    assert set(data["models"]["ours"]["pinball"]) == {"p50", "p90", "p95"}
    assert "effective 1m" in capsys.readouterr().out
    assert main(["forecast-eval", "--trace", str(bundled_trace("azure-conv")), "--horizon", "2x"]) == 2
    assert main(["forecast-eval", "--trace", str(Path(bundled_trace("azure-conv"))), "--horizon", "2m",
                 "--series", "language/m-mid"]) == 2


def test_a_horizon_longer_than_the_series_after_warm_up_is_an_error(capsys):
    s = daily_series(days=1, step_s=600)  # 144 points, 36 warm-up
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(s, [spec("last", LastValue)], [600, 86400])
    assert main(["forecast-eval", "--trace", str(bundled_trace("azure-code")), "--horizon", "1h",
                 "--models", "holt"]) == 2
    assert "does not fit" in capsys.readouterr().err
