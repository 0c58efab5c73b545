"""Clocks injected into everything that needs time.

The decision core never reads a clock: it is given `now`. The imperative shell (the decision
loop, the emulator, the KEDA/HPA emulation, the demo) asks a Clock. `SystemClock` is wall time;
`VirtualClock` runs faster than wall time (the demo replays an hour of traffic in minutes);
`ManualClock` only moves when a test moves it.
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


class SystemClock:
    def now(self) -> float:
        return time.time()

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

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speedup)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speedup)


class ManualClock:
    """A clock for tests: `advance()` moves it; sleeping advances it instead of waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


def speed(clock: Clock) -> float:
    """How many clock seconds pass per wall second (1 unless the clock is a VirtualClock)."""
    return getattr(clock, "speedup", 1.0)
