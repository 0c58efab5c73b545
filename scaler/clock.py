"""Clocks injected into everything that needs time.

The decision core never reads a clock: it is given `now`. The imperative shell (the decision
loop, the emulator, the KEDA/HPA emulation, the demo) asks a Clock. `SystemClock` is wall time;
`VirtualClock` runs faster than wall time (the demo replays an hour of traffic in minutes);
`ManualClock` only moves when a test moves it (`jump()` moves its wall time alone, like a clock set
back or forward).

Every clock has two readings: `now()`, its wall time (epoch seconds: what Prometheus and the
Kubernetes API speak), which may jump when the system clock is set; and `monotonic()`, which never
does. A `Timeline` joins them: epoch-like seconds (the wall time at its anchor plus the monotonic
time since), which the decision loop uses for scheduling, ages, health and the decision windows, so
that setting the system clock back or forward neither freezes the loop nor skips a window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (or since a virtual origin), as a float."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds` of this clock's time."""

    async def asleep(self, seconds: float) -> None:
        """Await `seconds` of this clock's time."""


def monotonic(clock: Clock) -> float:
    """The clock's monotonic reading (its `now()` for clocks without one: they never jump)."""
    read = getattr(clock, "monotonic", None)
    return read() if read is not None else clock.now()


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """Time that runs `speedup` times faster than wall time, starting at `origin`."""

    def __init__(self, speedup: float = 1.0, origin: float = 0.0) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        self.speedup = float(speedup)
        self.origin = float(origin)
        self._wall0 = time.monotonic()

    def now(self) -> float:
        return self.origin + (time.monotonic() - self._wall0) * self.speedup

    def monotonic(self) -> float:
        return self.now()  # virtual time never jumps

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speedup)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speedup)


class ManualClock:
    """A clock for tests: `advance()` moves it; sleeping advances it instead of waiting. `jump()`
    sets its wall time back or forward without moving its monotonic time (a system clock being set)."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._mono = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds
            self._mono += max(0.0, seconds)

    def jump(self, seconds: float) -> None:
        """Set the wall time `seconds` forward (negative: back); monotonic time does not move."""
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class Timeline:
    """Epoch-like seconds that never jump: the wall time of `clock` at the anchor plus its monotonic
    time since. `now()` is that steady time (what the decision loop schedules, ages and decides on);
    `wall()` is the clock's wall time (what sources and APIs are asked at); `offset()` is how far the
    wall clock was set since the anchor (0 while it was not). Processes sharing an `anchor` (the
    serving process and its decision process: the monotonic clock is the machine's) share the
    timeline. Without a jump of the wall clock, `now()` is the clock's `now()`."""

    def __init__(self, clock: Clock, anchor: tuple[float, float] | None = None) -> None:
        self.clock = clock
        self.anchor = anchor if anchor is not None else (clock.now(), monotonic(clock))

    def now(self) -> float:
        wall0, mono0 = self.anchor
        return wall0 + (monotonic(self.clock) - mono0)

    def monotonic(self) -> float:
        return monotonic(self.clock)

    def wall(self) -> float:
        return self.clock.now()

    def offset(self) -> float:
        """Wall time minus steady time: the sum of the wall clock's jumps since the anchor."""
        return self.wall() - self.now()

    @property
    def speedup(self) -> float:
        return speed(self.clock)

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self.clock.asleep(seconds)


def timeline(clock: Clock) -> Timeline:
    """`clock` as a Timeline (itself if it is one)."""
    return clock if isinstance(clock, Timeline) else Timeline(clock)


def wall(clock: Clock) -> float:
    """The wall time of `clock` (a Timeline's underlying clock's)."""
    return clock.wall() if isinstance(clock, Timeline) else clock.now()


def speed(clock: Clock) -> float:
    """How many clock seconds pass per wall second (1 unless the clock is a VirtualClock)."""
    return getattr(clock, "speedup", 1.0)
