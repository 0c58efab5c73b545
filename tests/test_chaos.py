"""`make chaos` (load/chaos.py): faults injected into a live pdscaler on loopback while a prober polls
it like KEDA. Answers stay fast and sane, never scale down on missing data, say why, and recover."""

from __future__ import annotations

import shutil

import pytest

from load import chaos
from scaler.policy.rule import HELD as HELD_RULES

pytestmark = [pytest.mark.chaos,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="needs the prometheus binary (make test installs it)"),
              pytest.mark.timeout(900)]
DATA_FAULTS = ("prometheus-down", "prometheus-slow", "prometheus-trickle", "prometheus-killed", "metrics-gone")
HELD = {str(r) for r in HELD_RULES}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chaos")
    r = chaos.run(workdir)
    (workdir / "result.json").write_text(r.to_json())
    return r


def test_every_probe_was_answered_fast_and_within_bounds(result):
    assert len(result.probes) > 1000
    assert [p for p in result.probes if p.error] == []
    latencies = sorted(p.latency_s for p in result.probes)
    assert latencies[int(0.99 * len(latencies))] < 0.1  # p99 of the slowest role per probe
    for p in result.probes:
        for role, v in p.answers.items():
            assert result.floors[role] <= v <= result.ceilings[role], (p, role)


def test_no_scale_down_while_data_is_missing_and_the_reason_says_why(result):
    for fault, start, end in result.windows:
        if fault not in DATA_FAULTS:
            continue
        before = [p for p in result.probes if p.t < start][-1].answers
        for p in result.during(start + 1, end):  # the first poll of the fault may still see data
            for role, v in p.answers.items():
                assert v >= before[role], (fault, role, before[role], v)
        assert set(result.rules[f"{fault}:during"].values()) <= HELD, (fault, result.rules)


def test_health_holds_and_decisions_recover_by_themselves(result):
    assert all(p.healthy for p in result.probes)  # the loop keeps polling through every fault
    for fault, _, _ in result.windows:
        assert not set(result.rules[f"{fault}:after"].values()) & HELD, (fault, result.rules)


def test_an_invalid_config_is_rejected_and_the_old_one_runs_on(result):
    assert result.reloads.get("invalid") == 1.0 and "applied" not in result.reloads
    start, end = next((s, e) for f, s, e in result.windows if f == "bad-config")
    assert result.during(start, end) and all(not p.error for p in result.during(start, end))
