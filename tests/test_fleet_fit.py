"""Warm start for a fleet (issue 16): the batched replay gives the state of fitting one by one, the
fitted models adopted from a worker give the same first decision, and the batched range queries read
the same history as one graph at a time."""

from __future__ import annotations

import math
import pickle
from collections import deque

import numpy as np
import pytest

from forecasting.demand import DemandForecaster, warm_start_many
from forecasting.fleet_fit import fit_many
from forecasting.registry import make

STEP = 60.0
T0 = 1_764_000_000.0


def _history(i: int, days: float, gap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 1-minute series: a daily shape, Poisson counts, optionally missing stretches and NaN."""
    rng = np.random.default_rng(i)
    t = T0 + np.arange(int(days * 86400 / STEP)) * STEP
    level = [0.3, 5.0, 80.0, 2000.0][i % 4]
    rate = level * (1.0 + 0.5 * np.sin(2 * np.pi * t / 86400.0 + i))
    y = rng.poisson(rate * STEP) / STEP
    if gap or i % 3 == 2:
        y[len(y) // 3: len(y) // 3 + 150] = np.nan
        y[len(y) // 2] = -1.0  # a counter reset reading: missing
        keep = np.ones(len(t), dtype=bool)
        keep[2 * len(t) // 3: 2 * len(t) // 3 + 40] = False  # points not returned at all
        t, y = t[keep], y[keep]
    return t, y


def _state(a, b, path: str, out: list) -> None:
    """Every difference between two model objects' state (floats to 1e-9 relative)."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind == "f":
            scale = np.nanmax(np.abs(a)) if a.size and np.isfinite(a).any() else 1.0
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=1e-12 * max(scale, 1.0), equal_nan=True):
                out.append(path)
        elif not np.array_equal(a, b):
            out.append(path)
    elif isinstance(a, float) or isinstance(b, float):
        if not (math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b)):
            out.append(path)
    elif isinstance(a, (list, tuple, deque)):
        if len(a) != len(b):
            out.append(path)
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _state(x, y, f"{path}[{i}]", out)
    elif isinstance(a, dict):
        if set(a) != set(b):
            out.append(path)
        for k in set(a) & set(b):
            _state(a[k], b[k], f"{path}.{k}", out)
    elif type(a).__module__.startswith("forecasting."):
        da = dict(vars(a)) if hasattr(a, "__dict__") else {}
        db = dict(vars(b)) if hasattr(b, "__dict__") else {}
        for s in getattr(type(a), "__slots__", ()):
            da[s], db[s] = getattr(a, s, None), getattr(b, s, None)
        _state(da, db, path, out)
    elif a != b:
        out.append(path)


def test_the_batched_replay_gives_the_state_and_forecasts_of_fitting_one_by_one():
    # 10 h: a state-only stretch, then the last 6 h replayed with the backtest (fit_replay_s; the
    # default is a day); mixed levels, gaps
    hists = [_history(i, 10 / 24) for i in range(5)]
    slow = [make("auto", 15.0, seed=i, fit_replay_s=6 * 3600.0) for i in range(5)]
    fast = [make("auto", 15.0, seed=i, fit_replay_s=6 * 3600.0) for i in range(5)]
    for m, (t, y) in zip(slow, hists):
        m.fit(t, y)
    assert fit_many(fast, hists) == 5
    for i, (a, b) in enumerate(zip(slow, fast)):
        diffs: list[str] = []
        _state(a, b, "model", diffs)
        assert diffs == [], f"series {i}: {diffs[:5]}"
    now = hists[0][0][-1] + 20.0
    for step in range(8):  # the same forecasts, also after more points arrive
        t = now + 15.0 * step
        for i, (a, b) in enumerate(zip(slow, fast)):
            y = float(10 * (i + 1) + step)
            a.update(t, y)
            b.update(t, y)
            fa, fb = a.predict(t, [0, 60, 300, 1800], (0.5, 0.9)), b.predict(t, [0, 60, 300, 1800], (0.5, 0.9))
            for q in (0.5, 0.9):
                np.testing.assert_allclose(fb.quantile(q), fa.quantile(q), rtol=1e-9)
    assert slow[0].chosen == fast[0].chosen


def test_bins_with_data_unevenly_spaced_and_short_histories_give_the_same_state():
    # every series misses the same stretch (the bins with data are not evenly spaced: the generic
    # path of ar-mean's sums), and a history shorter than the replay (burn-in inside it)
    hists = [_history(i, 0.3, gap=True) for i in range(3)] + [_history(9, 0.1)]
    slow, fast = [make("auto", 15.0, seed=i) for i in range(4)], [make("auto", 15.0, seed=i) for i in range(4)]
    for m, (t, y) in zip(slow, hists):
        m.fit(t, y)
    assert fit_many(fast, hists) == 4
    for a, b in zip(slow, fast):
        diffs: list[str] = []
        _state(a, b, "model", diffs)
        assert diffs == []


def test_models_the_batch_does_not_know_are_fitted_one_by_one():
    hists = [_history(i, 0.3) for i in range(3)]
    models = [make("holt", 15.0), make("auto", 15.0, candidates=("holt", "last")), make("auto", 15.0)]
    fresh = [make("holt", 15.0), make("auto", 15.0, candidates=("holt", "last")), make("auto", 15.0)]
    assert fit_many(models, hists, min_batch=1) == 1  # only the default auto
    for m, f, (t, y) in zip(models, fresh, hists):
        f.fit(t, y)
        np.testing.assert_allclose(m.predict(t[-1] + 30, [60, 300]).median, f.predict(t[-1] + 30, [60, 300]).median)


def _engines(n: int):
    from scaler.config import ScalerConfig
    from scaler.engine import Engine

    roles = {"prefill": {"kind": "prefill", "max_replicas": 40}, "decode": {"kind": "decode", "max_replicas": 40}}
    cfg = ScalerConfig.model_validate({"poll_interval": 15, "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
                                       "graphs": {f"g{i}": {"roles": roles} for i in range(n)}})
    return cfg, Engine(cfg, live=True), Engine(cfg, live=True)


def _observation(g: str, at: float, i: int):
    from scaler.observation import Observation

    rate = 3.0 + i
    return Observation(g, at, {"request_rate": rate, "prefill_tokens_per_s": rate * 2000, "decode_tokens_per_s": rate * 200,
                               "isl_mean": 2000.0, "osl_mean": 200.0, "itl_mean": 0.02},
                       {"prefill": {"prefill_queued_tokens": 0.0, "ready_workers": 2.0},
                        "decode": {"kv_tokens_used": rate * 8000.0, "ready_workers": 2.0}})


def test_a_small_fleet_fitted_in_a_worker_gets_the_same_first_decisions_as_the_slow_path():
    """5 graphs: the slow path (each graph fitted in the engine, then a poll) and the fleet path (the
    graphs marked pending, fitted by fit_histories as in the worker, pickled across, adopted after that
    poll, which is replayed into them) decide the same and forecast the same."""
    from scaler.warm_fleet import fit_histories

    cfg, slow, fast = _engines(5)
    histories = {g: {name: _history(10 * i + j, 0.25) for j, name in enumerate(
        ("request_rate", "prefill_tokens_per_s", "decode_tokens_per_s"))} for i, g in enumerate(cfg.graphs)}
    # (0.25 days: the models' replay is a day, so all of it is replayed with the backtest; the state-only
    # part is the test above's)
    end = max(float(t[-1]) for h in histories.values() for t, _ in h.values())
    for g in cfg.graphs:
        slow.warm_start(g, histories[g])
        fast.warm_start(g, pending=True)
    fitted = pickle.loads(pickle.dumps(fit_histories(cfg, histories, min_batch=1)))
    at = end + 15.0
    for i, g in enumerate(cfg.graphs):  # a poll while the worker fits
        slow.observe(_observation(g, at, i))
        fast.observe(_observation(g, at, i))
    for g in cfg.graphs:
        assert fast.warm_start(g, fitted=fitted[g]) == ["request_rate", "prefill_tokens_per_s", "decode_tokens_per_s"]
    for i, g in enumerate(cfg.graphs):
        a, b = slow.decide(at + 1, g), fast.decide(at + 1, g)
        assert a.replicas == b.replicas
        assert {r: x.rule for r, x in a.reasons.items()} == {r: x.rule for r, x in b.reasons.items()}
        fa, fb = a.forecast.figures(0.9), b.forecast.figures(0.9)
        assert fa.keys() == fb.keys()
        for k in fa:
            assert math.isclose(fa[k], fb[k], rel_tol=1e-9, abs_tol=1e-9), k
    # and the forecasts are warm: not what a cold engine says
    cold = _engines(1)[1]
    cold.observe(_observation("g0", at, 0))
    assert cold.forecast(at + 1, "g0", [300.0]).series["request_rate"].median[0] != pytest.approx(
        fast.forecast(at + 1, "g0", [300.0]).series["request_rate"].median[0])


def test_warm_start_many_fits_each_forecaster_as_its_own_warm_start():
    hist = [{"request_rate": _history(i, 0.15), "decode_tokens_per_s": _history(i + 1, 0.15)} for i in range(3)]
    one = [DemandForecaster(step_s=15.0) for _ in hist]
    many = [DemandForecaster(step_s=15.0) for _ in hist]
    assert [f.warm_start(h) for f, h in zip(one, hist)] == warm_start_many(many, hist, min_batch=1)
    for a, b in zip(one, many):
        assert a.last_t == b.last_t
        fa, fb = a.forecast(a.last_t + 30, [60.0, 600.0]), b.forecast(b.last_t + 30, [60.0, 600.0])
        for name in fa.series:
            np.testing.assert_allclose(fb.at(name, 0.9), fa.at(name, 0.9), rtol=1e-9)


def test_history_many_reads_a_fleet_with_one_range_query_per_signal_and_batch():
    from load.bench_warmstart import fleet_config, serve_fake
    from scaler.config import ScalerConfig
    from scaler.sources import prometheus as prom

    server = serve_fake()
    try:
        cfg = ScalerConfig.model_validate(fleet_config(4, f"http://127.0.0.1:{server.server_port}"))
        src = prom.PrometheusSource(cfg)
        wanted = [(None, "request_rate"), (None, "prefill_tokens_per_s"), (None, "decode_tokens_per_s")]
        end = 1_764_000_000.0
        sent: list[str] = []
        post = src._post_range
        src._post_range = lambda q, a, b, s: sent.append(q) or post(q, a, b, s)
        many = src.history_many(list(cfg.graphs), wanted, end - 8 * 86400.0, end, 60.0)
        assert len(sent) == 3 * 2  # 3 signals x 2 ranges of at most 10,000 steps, all 4 graphs in each
        assert all('dynamo_namespace=~"bench-g0000|bench-g0001|bench-g0002|bench-g0003"' in q for q in sent)
        for g in cfg.graphs:
            one = src.history(g, wanted, end - 8 * 86400.0, end, 60.0)
            assert one.keys() == many[g].keys() == set(wanted)
            for key in wanted:
                np.testing.assert_array_equal(many[g][key][0], one[key][0])
                np.testing.assert_array_equal(many[g][key][1], one[key][1])
        src.close()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_the_loop_warm_starts_a_fleet_in_a_worker_process_and_adopts_the_same_models():
    """20 graphs from a Prometheus (the stand-in of load/bench_warmstart.py): the loop hands them to a
    worker process and adopts what it fitted; a graph's forecast then equals fitting it in the loop."""
    from load.bench_warmstart import fleet_config, serve_fake
    from scaler.clock import ManualClock
    from scaler.config import ScalerConfig
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.sources.prometheus import PrometheusSource
    from scaler.store import DecisionStore
    from scaler.testbench.processes import wait_until
    from scaler.warm_fleet import FLEET_MIN_GRAPHS

    server = serve_fake()
    try:
        raw = fleet_config(FLEET_MIN_GRAPHS, f"http://127.0.0.1:{server.server_port}")
        raw["forecast"] = {"warm_start": "1h"}
        cfg = ScalerConfig.model_validate(raw)
        start = 1_764_000_000.0
        clock = ManualClock(start)
        loop = DecisionLoop(Engine(cfg, live=True), PrometheusSource(cfg), DecisionStore(), clock)
        loop.start()
        try:  # the loop adopts after each poll; the clock stands still, so the test asks it between
            wait_until(lambda: loop.ticks >= 1 and loop._fleet is not None, 60, "the first poll, workers started")

            def adopted():
                loop._adopt_fleet_warm()
                return loop._fleet is None and not loop._pending_warm

            wait_until(adopted, 120, "the fleet's warm start adopted", interval=0.2)
            assert loop.ticks == 1  # the first poll only: no point replayed (the test above replays one)
        finally:
            loop.stop()
        g = "g0007"
        src = PrometheusSource(cfg)
        wanted = [(None, n) for n in ("request_rate", "prefill_tokens_per_s", "decode_tokens_per_s")]
        hist = src.history(g, wanted, start - 3600.0, start, 60.0)
        src.close()
        slow = Engine(cfg, live=True)
        assert slow.warm_start(g, {name: v for (_, name), v in hist.items()}) == [n for _, n in wanted]
        slow.observe(loop.engine.latest(g))
        a, b = slow.forecast(start + 15, g, [60.0, 300.0]), loop.engine.forecast(start + 15, g, [60.0, 300.0])
        for name in a.series:
            np.testing.assert_allclose(b.at(name, 0.9), a.at(name, 0.9), rtol=1e-9)
    finally:
        server.shutdown()
