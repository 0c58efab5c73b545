"""`auto` on short histories: the ar-mean candidate, the prior on its weights, per-candidate warm-up."""

from __future__ import annotations

import math

import numpy as np

from forecasting.auto import PRIOR_CANDIDATE, AutoForecaster
from forecasting.window_mean import ArMean, LastValue, WindowMean

STEP = 30.0


def bursty(n: int, seed: int = 1) -> np.ndarray:
    """Requests in short bursts that do not persist: a bin is idle or a burst, independently."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.4, rng.exponential(8.0, n), 0.0)


def drifting(n: int, seed: int = 2) -> np.ndarray:
    """A steady rate whose level wanders (random walk) with little noise around it."""
    rng = np.random.default_rng(seed)
    return np.exp(np.log(5.0) + np.cumsum(rng.normal(0.0, 0.05, n))) * (1.0 + rng.normal(0.0, 0.01, n))


def feed(model, y: np.ndarray) -> None:
    for k, v in enumerate(y):
        model.observe(k, (k + 0.5) * STEP, math.log1p(v))


def test_ar_mean_is_the_window_mean_for_bursts_and_near_the_last_value_for_a_drifting_level():
    lead = np.array([10])  # 5 minutes ahead
    for seed in range(5):
        y = bursty(1000, seed)
        b, w = ArMean(STEP), WindowMean(STEP, window_s=300.0)
        feed(b, y)
        feed(w, y)
        assert b._beta[9] < 0.1  # bursts do not persist: the last bin's deviation is dropped
        assert abs(np.expm1(b.forecast(999 + lead, lead * STEP)[0]) - w.mean) <= 0.1 * w.mean + 1e-9
    betas = []
    for seed in range(5):
        y = drifting(1000, seed)
        d, w = ArMean(STEP), WindowMean(STEP, window_s=300.0)
        feed(d, y)
        feed(w, y)
        betas.append(d._beta[9])
        f = np.expm1(d.forecast(999 + lead, lead * STEP)[0])
        assert abs(f - y[-1]) <= abs(w.mean - y[-1]) + 1e-9  # nearer the last value than the mean
    assert np.mean(betas) > 0.7  # the level persists: most of the deviation is kept


def test_ar_mean_handles_gaps_and_is_deterministic():
    y = bursty(200)
    runs = []
    for _ in range(2):
        m = ArMean(STEP)
        for k, v in enumerate(y):
            if k % 17 not in (3, 4, 5):  # holes in the grid
                m.observe(k, (k + 0.5) * STEP, math.log1p(v))
        f = m.forecast(np.array([200, 205, 400]), np.zeros(3))
        assert np.all(np.isfinite(f)) and np.all(f >= 0)
        runs.append(f)
    assert np.array_equal(runs[0], runs[1])


def test_short_history_weights_lean_on_the_prior_then_follow_the_scores():
    """An hour of data: most weight on ar-mean (few scored errors); days of data: the prior fades."""
    y = drifting(6000, seed=3)
    t = (np.arange(len(y)) + 1.0) * STEP
    m = AutoForecaster(STEP, 0)
    m.fit(t[:120], y[:120])  # one hour
    idx = m.candidates.index(PRIOR_CANDIDATE)
    w_short = m.model._weights_at(np.array([20]))[idx, 0]  # 10 minutes ahead
    assert w_short > 0.5
    flat = AutoForecaster(STEP, 0, prior=None)
    flat.fit(t[:120], y[:120])
    assert flat.model._weights_at(np.array([20]))[idx, 0] < w_short
    m.fit(t, y)  # two days
    w_long = m.model._weights_at(np.array([20]))[idx, 0]
    assert w_long < w_short


def test_candidates_are_scored_from_their_own_warm_up():
    """ar-mean needs 5 minutes of bins, Holt the 10-minute burn-in: after 8 minutes only ar-mean
    (and the other short-memory candidates) have scored errors; the ensemble's own residuals
    (the quantile band) still wait for the chassis burn-in."""
    y = drifting(16)
    t = (np.arange(len(y)) + 1.0) * STEP
    m = AutoForecaster(STEP, 0)
    m.fit(t, y)
    count = dict(zip(m.candidates, m.model._count[:, 0]))
    assert count[PRIOR_CANDIDATE] > 0
    assert count["holt"] == 0
    assert m.residuals.counts.sum() == 0
    old = AutoForecaster(STEP, 0, own_burn_in=False)
    old.fit(t, y)
    assert old.model._count.sum() == 0
