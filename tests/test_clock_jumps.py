"""The system clock set back or forward (an NTP step, an operator): the decision loop schedules, ages
and decides on the monotonic clock (scaler/clock.py Timeline), so it keeps polling, health stays
honest, a forward jump does not skip the scale-down window and data read after a backward jump is
fresh. Driven by a ManualClock whose wall time jumps (`jump`) while its monotonic time only advances."""

from __future__ import annotations

import pytest

from scaler.clock import ManualClock, SystemClock, Timeline
from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.loop import DecisionLoop
from scaler.observation import Observation
from scaler.store import DecisionStore
from scaler.testbench.processes import wait_until

START, HOUR = 1_000_000.0, 3600.0


def config(**extra) -> ScalerConfig:
    return ScalerConfig.model_validate({
        "poll_interval": 15, "forecast": {"enabled": False},
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "graphs": {"g": {"roles": {"prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 16}}}},
        **extra,
    })


class Source:
    """Prefill demand `rate` tokens/s, observed at the time it is asked (wall time, as Prometheus)."""

    keeps_history = False

    def __init__(self, rate: float) -> None:
        self.rate, self.asked = rate, []

    def collect(self, now: float) -> list[Observation]:
        self.asked.append(now)
        r = self.rate
        return [Observation("g", now, {"request_rate": r / 2000, "prefill_tokens_per_s": r, "isl_mean": 2000.0},
                            {"prefill": {"prefill_queued_tokens": 0.0, "ready_workers": 16.0}})]

    def close(self) -> None:
        pass


def loop_of(clock, rate: float = 40_000.0, **extra) -> tuple[DecisionLoop, Source]:
    src = Source(rate)
    return DecisionLoop(Engine(config(**extra)), src, DecisionStore(), clock), src


def test_the_loop_keeps_polling_when_the_wall_clock_is_set_back_or_forward():
    clock = ManualClock(START)
    loop, src = loop_of(clock)
    loop.start()
    try:
        wait_until(lambda: loop.ticks >= 1, 30, "the first poll")
        clock.advance(15)
        wait_until(lambda: loop.ticks >= 2, 30, "a poll 15 s later")
        clock.jump(-HOUR)  # set back an hour: the wall-clock schedule would wait an hour for the next poll
        clock.advance(15)
        wait_until(lambda: loop.ticks >= 3, 30, "a poll 15 s later, after the clock was set back")
        assert loop.healthy() == (True, "last poll 0s ago")
        clock.jump(2 * HOUR)  # forward: no burst of polls, no "stuck" health
        assert loop.healthy()[0]
        clock.advance(15)
        wait_until(lambda: loop.ticks >= 4, 30, "a poll 15 s later, after the clock was set forward")
        assert loop.healthy() == (True, "last poll 0s ago")
    finally:
        loop.stop()
    assert loop.ticks == 4
    # Prometheus is still asked at wall time: the same instants the clock showed.
    assert src.asked[:2] == [START, START + 15] and src.asked[2] == START + 30 - HOUR
    assert src.asked[3] == START + 45 + HOUR


def test_health_ages_are_monotonic_never_negative_nor_an_hour():
    clock = ManualClock(START)
    loop, _ = loop_of(clock)
    loop.tick()
    clock.jump(-HOUR)
    ok, why = loop.healthy()
    assert ok and why == "last poll 0s ago"  # was "last poll -3600s ago"
    clock.jump(2 * HOUR)
    assert loop.healthy() == (True, "last poll 0s ago")  # was stuck: "no poll completed for 3600s"
    clock.advance(loop.engine.config.stuck_after + 1)  # a real stall is still seen
    ok, why = loop.healthy()
    assert not ok and "no decision-loop poll completed for 301s" in why


def test_a_forward_jump_does_not_skip_the_scale_down_window():
    clock = ManualClock(START)
    loop, src = loop_of(clock, rate=480_000.0)
    for _ in range(4):
        high = loop.tick()["g"].replicas["prefill"]
        clock.advance(15)
    last_high = clock.monotonic() - 15
    assert high == 15
    src.rate = 40_000.0  # two replicas' worth: the fall waits for the 5-minute window
    window = loop.engine.config.graphs["g"].roles["prefill"].stabilisation.scale_down
    seen = []
    for i in range(int(window // 15) + 4):
        if i == 2:
            clock.jump(HOUR)  # the wall clock set an hour forward inside the window
        d = loop.tick()["g"]
        seen.append((clock.monotonic() - last_high, d.replicas["prefill"]))
        clock.advance(15)
    assert all(n == 15 for t, n in seen if t <= window), seen  # was 15 -> 2 at the jump
    assert seen[-1][1] == 2  # after the window, the low demand is acted on


def test_data_read_after_a_backward_jump_is_fresh_and_acted_on():
    clock = ManualClock(START)
    loop, src = loop_of(clock)
    loop.tick()
    clock.advance(15)
    assert loop.tick()["g"].replicas["prefill"] == 2
    clock.jump(-HOUR)  # observations now carry times an hour before the last one
    clock.advance(15)
    src.rate = 160_000.0  # a rise (4x: no one-poll outlier)
    d = loop.tick()["g"]
    assert d.replicas["prefill"] == 5 and str(d.roles["prefill"].reason.rule) == "capacity", d.explain()
    assert d.data_at == d.at  # its age: 0, on the monotonic clock (was: an hour older than the last)


def test_timelines_sharing_an_anchor_agree_and_say_how_far_the_wall_clock_moved():
    clock = ManualClock(START)
    a = Timeline(clock)
    clock.advance(10)
    clock.jump(-HOUR)
    b = Timeline(clock, a.anchor)  # e.g. a decision process started after the jump
    assert a.now() == b.now() == START + 10
    assert a.wall() == START + 10 - HOUR and a.offset() == pytest.approx(-HOUR)
    system = Timeline(SystemClock())
    assert abs(system.offset()) < 1.0  # without a jump, the timeline is the wall time
