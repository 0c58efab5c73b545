"""The forecasting models through the Forecaster interface: robustness, determinism, accuracy, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forecasting.base import Forecast, Forecaster
from forecasting.grid import Grid, OnlineGrid, to_grid
from forecasting.planner_kalman import PlannerKalman
from forecasting.registry import MODELS, make
from forecasting.residuals import ErrorLedger, ResidualQuantiles
from forecasting.transform import IDENTITY, LOG1P, clean, clean_value, get_transform

ALL = list(MODELS)
OURS = [n for n, m in MODELS.items() if not m.baseline]
EXPENSIVE = {"planner-arima", "planner-prophet"}  # a fit per prediction


def params(name: str) -> dict:
    """Cheaper settings for the expensive baselines (same code paths)."""
    if name == "planner-arima":
        return {"window": 40, "max_points": 400}
    if name == "prophet":
        return {"min_history_s": 3600.0}  # fit curves on short histories too (no seasonality then)
    return {}


def build(name: str, step_s: float = 60.0, seed: int = 0, **kw) -> Forecaster:
    return make(name, step_s, seed=seed, **{**params(name), **kw})


def check(fc: Forecast, quantiles) -> None:
    for q in quantiles:
        v = fc.quantile(q)
        assert v.shape == fc.horizons.shape
        assert np.all(np.isfinite(v)), (q, v)
        assert np.all(v >= 0), (q, v)
    qs = sorted(quantiles)
    for a, b in zip(qs, qs[1:]):
        assert np.all(fc.quantile(a) <= fc.quantile(b) + 1e-9), (a, b, fc.values)


def nasty_series(n: int = 320, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Irregular sampling, a long gap, NaN, negative and inf values, a zero stretch, a constant stretch."""
    rng = np.random.default_rng(seed)
    t = 1.7e9 + np.cumsum(rng.uniform(5, 150, n))
    y = np.abs(rng.normal(20, 6, n))
    y[40:60] = np.nan
    y[90:130] = 0.0
    y[150:170] = 7.0
    y[200] = -3.0
    y[201] = np.inf
    y[202] = -np.inf
    t[250:] += 6 * 3600  # a six-hour gap
    return t, y


# -- the building blocks --------------------------------------------------------------------------


def test_clean_and_transforms():
    y = clean([1.0, -1.0, np.nan, np.inf, -np.inf, 0.0])
    assert np.isnan(y[1:5]).all() and y[0] == 1.0 and y[5] == 0.0
    assert math.isnan(clean_value(-0.1)) and math.isnan(clean_value("x")) and clean_value(3) == 3.0
    z = LOG1P.forward(np.array([0.0, 9.0, np.nan]))
    assert z[0] == 0.0 and np.isclose(z[1], math.log(10)) and np.isnan(z[2])
    assert np.allclose(LOG1P.inverse(LOG1P.forward(np.array([0.0, 5.0, 1e6]))), [0.0, 5.0, 1e6])
    assert LOG1P.inverse(np.array([-3.0, 1e6]))[0] == 0.0 and np.isfinite(LOG1P.inverse(np.array([1e6])))[0]
    assert IDENTITY.inverse(np.array([-2.0]))[0] == 0.0
    assert get_transform("identity") is IDENTITY
    with pytest.raises(ValueError):
        get_transform("sqrt")


def test_grid_bins_are_end_labelled_and_regular_points_close_their_bin():
    g = Grid(60.0, 0.0)
    assert g.index(60.0) == 1 and g.index(60.0 + 7.4) == 1 and g.index(68.0) == 2
    assert g.index(7.4) == 0 and g.index(7.6) == 1  # bin 1 holds (7.5, 67.5]: its end time 60 +- slack
    grid, ks, vals = to_grid(np.array([120.0, 150.0, 180.0, 400.0]), np.array([1.0, 3.0, np.nan, 5.0]), 60.0)
    assert list(ks) == [2, 3, 4, 5, 6, 7] and vals[0] == 1.0 and vals[1] == 3.0
    assert np.isnan(vals[2:5]).all() and vals[5] == 5.0  # 180 holds only NaN; 240-360 empty

    og = OnlineGrid(15.0)
    closed = [og.add(1000.0 + 15 * i + 0.3, float(i)) for i in range(4)]  # jittered, any phase
    assert all(len(c) == 1 for c in closed) and [c[0][1] for c in closed] == [0.0, 1.0, 2.0, 3.0]
    og = OnlineGrid(60.0)
    assert og.add(0.0, 1.0) == [(0, 1.0)]
    assert og.add(20.0, 2.0) == [] and og.add(40.0, 4.0) == []
    assert og.add(59.0, 6.0) == [(1, 4.0)]  # mean of the bin, closed by the point at its end
    assert og.add(70.0, 1.0) == [] and og.advance(100.0) == [] and og.advance(68.0 + 60) == [(2, 1.0)]
    assert og.add(30.0, 9.0) == []  # late: counts towards the next bin
    assert og.add(180.0, 3.0) == [(3, 6.0)]


def test_live_points_at_another_phase_than_the_history_still_close_their_bins():
    m = build("holt", 15.0)
    th = 60.0 * np.arange(1, 200)  # warm start at 60 s, phase 0
    m.fit(th, np.full(len(th), 10.0))
    k0 = m._k_last
    for i in range(1, 6):  # polls every 15 s, 7 s off the history's phase
        m.update(th[-1] + 7.0 + 15.0 * (i - 1), 20.0)
        assert m._k_last == k0 + i  # each poll closed its own bin at once
    m.update(th[-1] + 7.0 + 15.0 * 5 - 4.0, 30.0)  # a point early in its bin waits...
    assert m._k_last == k0 + 5
    m.predict(th[-1] + 7.0 + 15.0 * 5 + 2.0, [60.0])  # ...until `now` passes the bin's end
    assert m._k_last == k0 + 6


def test_ledger_settles_each_lead_once_with_strides():
    leads = np.array([1, 4, 200])
    lg = ErrorLedger(leads, max_origins_per_lead=10)
    assert list(lg.strides) == [1, 1, 20]
    for k in range(300):
        rows, errs = lg.settle(k, 1.0)
        for r, e in zip(rows, errs[0]):
            assert e == pytest.approx(1.0 - (k - leads[r]) * 0.001)
        lg.record(k, np.full(3, 0.0) + k * 0.001)
    rows, _ = lg.settle(300, 0.0)  # origin 296 (lead 4), 299 (lead 1), 100 (lead 200, 100 % 20 == 0)
    assert list(rows) == [0, 1, 2]


def test_residual_offsets_interpolate_and_match_the_vector_path():
    rq = ResidualQuantiles(60.0, window=64, min_errors=8)
    rng = np.random.default_rng(0)
    for k in range(400):
        rq.settle(k, float(rng.normal(0, 0.3)))
        rq.record(k, np.zeros(len(rq.leads)))
    leads = np.array([1, 2, 3.5, 5, 7, 60, 1440, 5000, 1.0e4])
    few = np.concatenate([rq.offsets(leads[i:i + 3], (0.1, 0.5, 0.9)) for i in range(0, 9, 3)], axis=1)
    vec = rq.offsets(leads, (0.1, 0.5, 0.9))  # > 8 leads: numpy path
    assert np.allclose(few, vec)
    assert np.all(vec[0] < vec[1]) and np.all(vec[1] < vec[2])
    assert 0.25 < vec[2, 0] < 0.6  # ~ 1.28 sigma


def test_planner_kalman_matches_the_matrix_filter():
    """The scalar Joseph-form filter equals filterpy's predict/update in matrices."""
    zs = [3.0, 5.0, 4.0, 8.0, 7.5, 9.0, 12.0]
    m = PlannerKalman(60.0)
    F, H = np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[1.0, 0.0]])
    Q, R = np.diag([1.0, 0.1]), np.array([[10.0]])
    x, P = np.array([[zs[0]], [0.0]]), np.eye(2) * 1000.0
    for k, z in enumerate(zs):
        m.observe(k, 0.0, z)
        if k:
            x, P = F @ x, F @ P @ F.T + Q
            S = H @ P @ H.T + R
            K = P @ H.T @ np.linalg.inv(S)
            x = x + K @ (np.array([[z]]) - H @ x)
            IKH = np.eye(2) - K @ H
            P = IKH @ P @ IKH.T + K @ R @ K.T
        assert m.x0 == pytest.approx(x[0, 0]) and m.x1 == pytest.approx(x[1, 0])
    assert m.forecast(np.array([len(zs) - 1 + 3]), np.zeros(1))[0] == pytest.approx(x[0, 0] + 3 * x[1, 0])


def test_planner_input_handling_is_the_planners():
    m = build("planner-constant", 60.0)
    t = 60.0 * np.arange(1, 8)
    m.fit(t, np.array([0.0, 0.0, 0.0, 5.0, np.nan, 7.0, 0.0]))
    assert m.model.n_added == 3  # leading zeros skipped, the NaN bin not appended
    assert m.predict(t[-1], [60.0]).median[0] == 0.0  # the last value, a real zero
    z = build("planner-constant", 60.0, missing="zero")
    z.fit(t[:6], np.array([0.0, 0.0, 0.0, 5.0, np.nan, 7.0]))
    assert z.model.n_added == 3  # 5, 0 (the missing bin, as the Planner maps NaN), 7


def test_registry():
    assert set(MODELS) == {"auto", "holt", "seasonal-naive", "prophet",
                           "planner-constant", "planner-arima", "planner-kalman", "planner-prophet"}
    assert all(MODELS[n].baseline == n.startswith("planner-") for n in MODELS)
    assert all(MODELS[n].description for n in MODELS)
    assert MODELS["prophet"].live_params == {"refit": "background"}
    with pytest.raises(ValueError, match="unknown model"):
        make("lstm", 60.0)
    for n in ALL:
        m = make(n, 15.0, seed=1)
        assert isinstance(m, Forecaster) and m.name == n


# -- every model through the interface ------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_robust_to_gaps_irregular_nan_negative_zero_and_constant(name):
    qs = (0.05, 0.5, 0.9, 0.99)
    horizons = [0.0, 15.0, 300.0, 3600.0, 3 * 86400.0]
    m = build(name, 60.0)
    fc = m.predict(0.0, horizons, qs)  # nothing seen yet
    check(fc, qs)
    assert all(np.all(fc.quantile(q) == 0) for q in qs)
    m.fit(np.array([]), np.array([]))
    check(m.predict(0.0, horizons, qs), qs)

    t, y = nasty_series()
    m.fit(t[:100], y[:100])
    every = 40 if name in EXPENSIVE else 3
    for i in range(100, len(t)):
        m.update(t[i], y[i])
        if i % every == 0 or i == len(t) - 1:
            fc = m.predict(t[i] + 5.0, horizons, qs)
            check(fc, qs)
            assert set(fc.values) == set(qs) and np.array_equal(fc.horizons, horizons)
    if name == "prophet":
        assert m.model.fits >= 2 and m.model.failures == 0  # curves were fitted and used
    m.update(t[-1], 5.0)  # not later than the last point: ignored or folded in, never an error
    check(m.predict(t[-1] + 30 * 86400, horizons, qs), qs)  # long after the last data

    c = build(name, 60.0)
    tc = 60.0 * np.arange(1, 301)
    c.fit(tc[:200], np.full(200, 7.0))
    for ti in tc[200:]:
        c.update(ti, 7.0)
    fc = c.predict(tc[-1], [60.0, 600.0], qs)
    check(fc, qs)
    assert np.allclose(fc.median, 7.0, rtol=0.05), fc.median

    zero = build(name, 60.0)
    zero.fit(tc[:200], np.zeros(200))
    for ti in tc[200:220]:
        zero.update(ti, 0.0)
    fc = zero.predict(tc[219], [60.0, 3600.0], qs)
    check(fc, qs)
    assert np.all(fc.median < 0.05) and np.all(fc.quantile(0.9) < 1.0)


def _run(m: Forecaster, t, y, warm, horizons, qs=(0.5, 0.9), every=1):
    m.fit(t[:warm], y[:warm])
    out = []
    for i in range(warm, len(t)):
        m.update(t[i], y[i])
        if (i - warm) % every == 0:
            fc = m.predict(t[i], horizons, qs)
            out.append(np.stack([fc.quantile(q) for q in qs]))
    return np.stack(out)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_with_a_seed(name):
    step = 600.0
    rng = np.random.default_rng(11)
    t = 1.7e9 + step * np.arange(int(2.6 * 86400 / step))  # > 2 days: Prophet fits (daily seasonality)
    y = 30 + 20 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 3, len(t))
    y[::17] = np.nan
    warm = len(t) - 8
    kw = {"refit_every_s": 1800.0} if name == "prophet" else {}
    every = 4 if name in EXPENSIVE else 1
    a = _run(build(name, step, seed=7, **kw), t, y, warm, [600.0, 7200.0], every=every)
    b = _run(build(name, step, seed=7, **kw), t, y, warm, [600.0, 7200.0], every=every)
    assert np.array_equal(a, b)


def daily_series(days: float, step: float, seed: int = 5):
    rng = np.random.default_rng(seed)
    t = 1.7e9 + step * np.arange(int(days * 86400 / step))
    rate = 40 * (1 + 0.8 * np.sin(2 * np.pi * t / 86400)) + 2
    return t, rng.poisson(rate * step) / step


def test_seasonal_models_beat_planner_constant_at_a_multi_hour_horizon():
    step, h = 300.0, 3 * 3600.0
    t, y = daily_series(6, step)
    warm = int(4 * 86400 / step)
    lead = int(h / step)
    actual = y[warm + lead:]
    mae = {}
    for name in ("planner-constant", "seasonal-naive", "prophet", "auto"):
        kw = {"refit_every_s": 6 * 3600.0} if name == "prophet" else {}
        med = _run(build(name, step, **kw), t, y, warm, [h], qs=(0.5,))[:, 0, 0]
        mae[name] = np.mean(np.abs(med[: len(actual)] - actual))
    for name in ("seasonal-naive", "prophet", "auto"):
        assert mae[name] < 0.5 * mae["planner-constant"], mae


@pytest.mark.parametrize("name", ["holt", "seasonal-naive", "auto", "planner-constant", "planner-kalman"])
def test_p90_coverage_is_near_nominal_on_a_stationary_noisy_series(name):
    step = 60.0
    rng = np.random.default_rng(21)
    n = int(3 * 86400 / step)
    t = 1.7e9 + step * np.arange(n)
    y = rng.poisson(12.0 * step, n) / step * rng.lognormal(0.0, 0.15, n)
    warm = int(86400 / step)
    horizons = [300.0, 1800.0]
    fc = _run(build(name, step), t, y, warm, horizons)
    for j, h in enumerate(horizons):
        lead = int(h / step)
        actual = y[warm + lead:]
        p90 = fc[: len(actual), 1, j]
        cover = np.mean(actual <= p90)
        assert 0.85 <= cover <= 0.95, (name, h, cover)


def test_auto_exposes_its_choice_and_follows_the_better_candidate():
    step = 300.0
    t, y = daily_series(10, step)
    m = build("auto", step, prior=None)  # the scores alone (the short-history prior: test_forecast_auto)
    m.fit(t[:-200], y[:-200])
    for i in range(len(t) - 200, len(t)):
        m.update(t[i], y[i])
        m.predict(t[i], [300.0, 3 * 3600.0])
    assert isinstance(m.chosen, str) and m.chosen
    assert set(m.chosen.split("+")) <= set(m.candidates)
    w = m.weights
    assert set(w) == set(m.candidates) and abs(sum(w.values()) - 1) < 1e-9
    long = m.model._weights_at(np.array([3 * 3600.0 / step]))[:, 0]
    seasonal = sum(x for n, x in zip(m.candidates, long) if n.startswith("seasonal"))
    assert seasonal > 0.6, dict(zip(m.candidates, long))  # hours ahead: the seasonal profile
    best = build("auto", step, mode="best")
    best.fit(t[:-50], y[:-50])
    assert "+" not in best.chosen


def test_auto_cached_forecasts_equal_fresh_ones():
    """auto precomputes, at each bin, the leads the last predict() asked for; same numbers either way."""
    step = 60.0
    t, y = daily_series(2, step)
    a, b = build("auto", step), build("auto", step)
    a.fit(t[:-300], y[:-300])
    b.fit(t[:-300], y[:-300])
    for i in range(len(t) - 300, len(t)):
        a.update(t[i], y[i])
        b.update(t[i], y[i])
        fa = a.predict(t[i], [90.0, 300.0, 480.0])
        fb = b.predict(t[i], [90.0, 300.0, 480.0, 60.0 * (i % 7 + 1)])  # other leads each time
        assert np.allclose(fa.median, fb.median[:3], rtol=1e-12) and np.allclose(fa.quantile(0.9), fb.quantile(0.9)[:3])


def test_auto_with_every_known_candidate_is_robust_and_deterministic():
    from forecasting.auto import KNOWN_CANDIDATES

    t, y = nasty_series()
    qs = (0.1, 0.5, 0.9)
    kw = dict(candidates=KNOWN_CANDIDATES, prophet_params={"min_history_s": 3600.0})
    runs = []
    for _ in range(2):
        m = build("auto", 60.0, **kw)
        m.fit(t[:100], y[:100])
        out = []
        for i in range(100, len(t)):
            m.update(t[i], y[i])
            if i % 5 == 0:
                fc = m.predict(t[i], [60.0, 3600.0, 86400.0], qs)
                check(fc, qs)
                out.append(np.stack([fc.quantile(q) for q in qs]))
        assert set(m.chosen.split("+")) <= set(KNOWN_CANDIDATES)
        runs.append(np.stack(out))
    assert np.array_equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="unknown auto candidate"):
        build("auto", 60.0, candidates=("holt", "lstm"))


def test_a_one_bin_dip_is_damped_until_confirmed():
    step = 60.0
    t = 60.0 * np.arange(1, 400)
    m = build("holt", step, level_halflife_s=1.0, trend=False)  # an EWMA close to the last value
    m.fit(t[:300], np.full(300, 1000.0))
    m.update(t[300], 2.0)  # a partial window / counter reset
    glitch = m.predict(t[300], [60.0]).median[0]
    assert glitch > 1000.0 / math.e * 0.9  # damped to a fall of a factor e
    m.update(t[301], 1000.0)
    assert m.predict(t[301], [60.0]).median[0] > 900.0
    for i in range(302, 304):  # a real drop: believed from its second bin
        m.update(t[i], 2.0)
    assert m.predict(t[303], [60.0]).median[0] < 5.0
    raw = build("holt", step, level_halflife_s=1.0, trend=False, max_drop=None)
    raw.fit(t[:300], np.full(300, 1000.0))
    raw.update(t[300], 2.0)
    assert raw.predict(t[300], [60.0]).median[0] < 5.0
