"""Workloads of the replay: per-request traces binned to 1 s, ServeGen rate curves with Poisson noise."""

import numpy as np
import pytest

from scaler.testbench.sim.workload import load_workload
from scaler.testbench.traces import bundled_trace, load_trace


def test_per_request_trace_is_binned_per_second_and_scaled():
    reqs = load_trace(bundled_trace("azure-conv"))
    wl = load_workload("azure-conv", rate_scale=3)
    assert wl.dt == 1.0 and wl.start == 0
    assert wl.rate.sum() == pytest.approx(3 * len(reqs))
    busy = wl.rate > 0
    total_isl = sum(r.isl for r in reqs)
    assert (wl.rate[busy] / 3 * wl.isl[busy]).sum() == pytest.approx(total_isl)


def _curve(tmp_path, rates):
    p = tmp_path / "rates.csv"
    rows = ["category_model,t_s,total_rate_rps,active_clients"]
    rows += [f"language/m-large,{600 * i},{r},3" for i, r in enumerate(rates)]
    p.write_text("\n".join(rows) + "\n")
    return str(p)


def test_rate_curve_poisson_is_seeded_gaps_are_filled_and_lengths_default_per_series(tmp_path):
    path = _curve(tmp_path, [100, 100, 0, 100, 100, 100])
    a = load_workload(path, series="language/m-large", seed=1, interpolation="step")
    b = load_workload(path, series="language/m-large", seed=1, interpolation="step")
    c = load_workload(path, series="language/m-large", seed=2, interpolation="step")
    assert np.array_equal(a.rate, b.rate) and not np.array_equal(a.rate, c.rate)
    assert len(a) == 3600
    assert a.rate[1200:1800].mean() == pytest.approx(100, rel=0.05)  # the zero window is a gap, not idle
    assert a.rate.std() > 5  # Poisson noise per second
    assert a.isl[0] == 930 and a.osl[0] == 171
    assert any("gaps" in n for n in a.notes)


def test_multi_day_curve_keeps_its_first_day_as_history(tmp_path):
    path = _curve(tmp_path, [50 + 10 * np.sin(i / 20) for i in range(3 * 144)])  # 3 days
    wl = load_workload(path, series="language/m-large", rate_scale=0.5, dt=10)
    assert wl.start * wl.dt == 86400 and wl.n_sim * wl.dt == 2 * 86400
    hist = wl.history(60)
    t, y = hist["request_rate"]
    assert len(t) == 1440 and t[-1] == pytest.approx(86400)
    assert y.mean() == pytest.approx(25, rel=0.1)
    sliced = wl.sliced(3600, 7200)
    assert sliced.n_sim * sliced.dt == 7200 and sliced.start * sliced.dt == 86400
