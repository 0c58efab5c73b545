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
SERVING_ROLES = ("prefill", "decode")
PROBE_S = 1.0


def window(result, fault: str) -> tuple[float, float]:
    return next((s, e) for f, s, e in result.windows if f == fault)


def names_missing(decision: dict, what: str) -> bool:
    """The role's decision says `missing-data` for the input `what` of LOWER_ON: as the rule that bound
    it (held at the last target) or as a step that held a fall back (a rise may still go through)."""
    said = [decision["message"]] if decision["rule"] == "missing-data" else []
    said += [s for s in decision["steps"] if s.startswith("missing-data:")]
    return any("missing" in s and f"{what} (" in s for s in said)


def not_healthy_while_restarting(result, p) -> bool:
    """decision-process-killed: NOT_SERVING from the kill until the new process's first answers."""
    k = result.killed
    # A probe is stamped when it starts and reads /healthz after its three gRPC calls: one that started
    # just before the kill may read the 503 (PROBE_S: far more than a probe takes, ~10 ms).
    if not k or p.t < k["at"] - PROBE_S:
        return False
    back = next((q.t for q in result.probes if q.t > k.get("new_pid_at", float("inf")) and q.healthy), float("inf"))
    return p.t < back


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chaos")
    r = chaos.run(workdir)
    (workdir / "result.json").write_text(r.to_json())
    (workdir / "summary.txt").write_text(chaos.summary(r) + "\n")
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
    # The loop keeps polling through every fault (but the decision process's own death).
    assert all(p.healthy for p in result.probes if not not_healthy_while_restarting(result, p))
    for fault, _, _ in result.windows:
        assert not set(result.rules[f"{fault}:after"].values()) & HELD, (fault, result.rules)


def test_an_invalid_config_is_rejected_and_the_old_one_runs_on(result):
    assert result.reloads.get("invalid") == 1.0 and "applied" not in result.reloads
    start, end = next((s, e) for f, s, e in result.windows if f == "bad-config")
    assert result.during(start, end) and all(not p.error for p in result.during(start, end))


def test_a_role_whose_driving_series_are_gone_holds_and_says_which(result):
    """series-dropped: Prometheus answers, but the decode KV series and the prefill queue are gone. Each
    role's decisions name the missing input from the first poll without it to the end of the fault, its
    answers never fall below the one in force then, and once the series are back it decides on them."""
    start, end = window(result, "series-dropped")
    for role, (what, _) in chaos.DROPPED.items():
        during = [(t, roles[role]) for t, roles, _ in result.explains if start <= t < end]
        naming = [t for t, d in during if names_missing(d, what)]
        assert naming, (role, what, during[-3:])
        gone = naming[0]
        assert gone < start + 6, (role, gone - start)  # one scrape and one poll after the drop
        assert all(names_missing(d, what) for t, d in during if t >= gone), (role, during)
        held = [p for p in result.probes if p.t < gone][-1].answers[role]
        for p in result.during(gone, end):
            assert p.answers[role] >= held, (role, held, p)
        recovered = [d for t, roles, _ in result.explains if end + 6 <= t < end + chaos.RECOVER_S
                     for d in [roles[role]]]
        assert recovered and not any(names_missing(d, what) for d in recovered), (role, recovered)
        assert result.rules["series-dropped:after"][role] not in HELD


def test_a_one_poll_spike_is_not_sized_on(result):
    """one-poll-spike: one poll reads 1000x the arrival rates; the answers stay within 2x of those
    before (no role pinned at its maximum), the decision notes the outlier, and the next polls go on."""
    start, end = window(result, "one-poll-spike")
    times = [t for t, _ in result.spiked]
    assert len(times) == len(chaos.SPIKED) and start <= min(times) and max(times) - min(times) < 2.0, result.spiked
    before = [p for p in result.probes if p.t < start][-1].answers
    for p in result.during(start, end):
        for role in SERVING_ROLES:
            assert p.answers[role] <= 2 * before[role], (role, before[role], p)
            assert p.answers[role] < result.ceilings[role] or before[role] == result.ceilings[role], (role, p)
    noted = [t for t, _, notes in result.explains if start <= t < end
             and any(n.startswith("one-poll outlier: request_rate=") for n in notes)]
    assert noted, [n for t, _, notes in result.explains if start <= t < end for n in notes]
    later = [n for t, _, notes in result.explains if max(noted) + 3 <= t < end + chaos.RECOVER_S
             for n in notes if n.startswith("one-poll outlier")]
    assert later == []  # the next poll's ordinary rate is not an outlier: nothing held on


def test_a_killed_decision_process_is_replaced_and_answers_go_on(result):
    """decision-process-killed: serve's decision process gets SIGKILL. Every probe is still answered
    (the global test), with the last decisions until a new process runs; serve starts one and its polls
    move pdscaler_polls_total again within a bounded time; health is back after its first answers."""
    k = result.killed
    assert k and k.get("new_pid") not in (None, k["pid"]), k
    resumed = chaos.resumed_at(result)
    assert resumed is not None and resumed - k["at"] < 30.0, (k, resumed)
    first = next(p for p in result.probes if p.t >= k["at"])
    for p in result.during(k["at"], k["new_pid_at"]):
        assert p.answers == first.answers, (first, p)
    restarts = [c.get("pdscaler_decision_process_restarts_total") for t, c in result.counters if t > resumed]
    assert restarts and restarts[-1] == 1.0
    back = next((p.t for p in result.probes if p.t > k["new_pid_at"] and p.healthy), None)
    assert back is not None and back - k["at"] < 45.0, (k, back)
