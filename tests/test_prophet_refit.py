"""Prophet refits in the background: predictions never wait for a fit; a hung fit is abandoned.

The fit functions injected here run in the worker process (spawned: it imports this module by name),
so they are module-level and parameterised with functools.partial.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from forecasting.prophet_model import ProphetForecaster
from forecasting.refit import RefitWorker
from scaler.testbench.processes import wait_until

STEP = 60.0
T0 = 1.7e9


def curve_fit(payload, delay=0.0, level=10.0, amp=0.0, fail=False, gate=None):
    """A stand-in for Prophet: sleeps `delay` (or, with a `gate` directory, says it started and waits
    until the test opens the gate), then returns log1p(level) * (1 + amp sin(day))."""
    if gate is not None:
        Gate(gate).hold()
    time.sleep(delay)
    if fail:
        raise RuntimeError("injected fit failure")
    t = payload["curve_t0"] + payload["curve_dt"] * np.arange(payload["curve_n"])
    return math.log1p(level) + amp * np.sin(2 * np.pi * t / 86400.0)


class Gate:
    """Files shared with the worker process: `started` once a fit is running and held, `open` to let it go."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    def hold(self) -> None:  # in the worker
        (self.path / "started").touch()
        while not (self.path / "open").exists():
            time.sleep(0.005)

    def wait_started(self, timeout: float = 60.0) -> None:  # in the test
        wait_until(lambda: (self.path / "started").exists(), timeout, "the fit started", interval=0.005)

    def open(self) -> None:
        (self.path / "open").touch()

    @property
    def is_open(self) -> bool:
        return (self.path / "open").exists()


def in_thread(fn, timeout: float = 60.0):
    """fn() in a thread; its result, or a failure if it has not returned within `timeout` (it blocked)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def worker():
    w = RefitWorker()
    yield w
    w.close()


def feed(m, start: int, n: int, value: float = 10.0) -> None:
    for i in range(start, start + n):
        m.update(T0 + STEP * i, value)


def background(worker, fit_fn, **kw) -> ProphetForecaster:
    return ProphetForecaster(STEP, refit="background", worker=worker, fit_fn=fit_fn, min_history_s=600.0,
                             refit_every_s=3600.0, **kw)


def test_a_refit_never_blocks_predict_and_its_curve_is_used_once_done(worker, tmp_path):
    m = background(worker, functools.partial(curve_fit, level=10.0))
    feed(m, 0, 20)  # 20 min of history: the first fit is submitted
    assert m.model.refit_pending and m.model.curve is None
    assert m.wait_for_refit(60.0) and m.model.fits == 1
    flat = m.predict(T0 + STEP * 19, [6 * 3600.0, 18 * 3600.0]).median
    assert flat[0] == pytest.approx(flat[1], rel=1e-6)

    # The next refit is held in the worker until the test lets it go, and its curve has a daily shape.
    gate = Gate(tmp_path)
    m.model.fit_fn = functools.partial(curve_fit, level=10.0, amp=0.5, gate=str(tmp_path))
    feed(m, 20, 60)  # an hour later: the refit is submitted, from the last of these updates
    assert m.model.refit_pending
    gate.wait_started()

    def ticks():  # while the worker is busy with the fit (it cannot finish: the gate is closed)
        out = []
        for i in range(80, 90):
            m.update(T0 + STEP * i, 10.0)
            out.append(m.predict(T0 + STEP * i, [6 * 3600.0, 18 * 3600.0]))
        return out

    try:
        for fc in in_thread(ticks):  # every update and predict returned while the fit was held
            assert fc.median[0] == pytest.approx(fc.median[1], rel=1e-6)  # still the old, flat curve
        assert not gate.is_open and m.model.refit_pending and m.model.fits == 1
    finally:
        gate.open()

    deadline = time.monotonic() + 30
    while m.model.refit_pending and time.monotonic() < deadline:
        time.sleep(0.05)
        m.predict(T0 + STEP * 89, [60.0])  # predict() polls the fit and adopts its curve
    assert m.model.fits == 2 and m.model.failures == 0
    shaped = m.predict(T0 + STEP * 89, [6 * 3600.0, 18 * 3600.0]).median
    assert abs(math.log(shaped[0] / shaped[1])) > 0.5  # the new curve's daily shape is in use


def test_a_hung_fit_is_abandoned_after_the_timeout_and_the_old_curve_kept(worker, tmp_path):
    m = background(worker, functools.partial(curve_fit, level=10.0), refit_timeout_s=1.0)
    feed(m, 0, 20)
    assert m.wait_for_refit(60.0) and m.model.fits == 1
    curve = m.model.curve
    timeouts = worker.timeouts

    gate = Gate(tmp_path)  # never opened: the fit hangs
    m.model.fit_fn = functools.partial(curve_fit, gate=str(tmp_path))
    feed(m, 20, 60)
    assert m.model.refit_pending
    gate.wait_started()
    fc = in_thread(lambda: m.predict(T0 + STEP * 79, [300.0]))  # returns although the fit hangs
    assert fc.median[0] == pytest.approx(10.0, rel=0.05)  # the previous curve's level
    assert m.wait_for_refit(20.0)  # the worker gives up after 1 s
    assert m.model.failures == 1 and isinstance(m.model.last_error, TimeoutError)
    assert m.model.curve is curve and m.model.fits == 1  # the previous curve is kept
    assert worker.timeouts == timeouts + 1

    # The worker was restarted: the next refit (an hour later) works. Its timeout back to the default:
    # a restarted worker's first fit on a loaded machine may take more than the 1 s the hang was cut at.
    m.model.refit_timeout_s = 120.0
    m.model.fit_fn = functools.partial(curve_fit, level=10.0)
    feed(m, 80, 61)
    assert m.wait_for_refit(60.0) and m.model.fits == 2


def test_a_failed_fit_keeps_the_previous_curve(worker):
    m = background(worker, functools.partial(curve_fit, level=10.0))
    feed(m, 0, 20)
    assert m.wait_for_refit(60.0)
    m.model.fit_fn = functools.partial(curve_fit, fail=True)
    feed(m, 20, 60)
    assert m.wait_for_refit(30.0)
    assert m.model.failures == 1 and "injected" in str(m.model.last_error) and m.model.fits == 1
    assert np.all(np.isfinite(m.predict(T0 + STEP * 79, [60.0, 3600.0]).quantile(0.9)))


def test_sync_and_background_fit_identical_prophet_curves(worker):
    """The real Prophet fit, inline and in the worker: the same numbers."""
    step = 600.0
    rng = np.random.default_rng(4)
    t = T0 + step * np.arange(int(2.5 * 86400 / step))
    y = 30 + 20 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 2, len(t))
    sync = ProphetForecaster(step, seed=3)
    bg = ProphetForecaster(step, seed=3, refit="background", worker=worker)
    sync.fit(t, y)
    bg.fit(t, y)  # returns at once; the fit runs in the worker
    assert sync.model.fits == 1
    assert bg.wait_for_refit(120.0) and bg.model.fits == 1
    assert np.array_equal(sync.model.curve[2], bg.model.curve[2])
    a, b = sync.predict(t[-1], [600.0, 7200.0]), bg.predict(t[-1], [600.0, 7200.0])
    assert all(np.array_equal(a.quantile(q), b.quantile(q)) for q in (0.5, 0.9))


def test_submit_returns_at_once_while_the_worker_is_busy(worker, tmp_path):
    gate = Gate(tmp_path)
    slow = worker.submit(functools.partial(curve_fit, gate=str(tmp_path)), {"curve_t0": 0.0, "curve_dt": 1.0, "curve_n": 3})
    gate.wait_started()  # the worker is busy with `slow`, held until the gate opens
    quick = in_thread(lambda: worker.submit(functools.partial(curve_fit, level=1.0),
                                            {"curve_t0": 0.0, "curve_dt": 1.0, "curve_n": 2}))
    try:
        assert not quick.done() and not slow.done()  # it returned while the worker could not take it
    finally:
        gate.open()
    assert len(quick.result(timeout=60)) == 2 and slow.done()
