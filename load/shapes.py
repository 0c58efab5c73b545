"""Open-loop load shapes for the pdscaler locustfile: the arrival RATE is the controlled quantity.

LLM serving load is open-loop: clients send requests when they want to, not when the previous answer
came back. Locust's native knob is a user count, which is closed-loop (N users each waiting for their
reply, so the achieved rate falls as latency grows: coordinated omission). Here every shape instead
produces an arrival *schedule* -- a sorted list of ``Arrival(t, isl, osl)`` -- and the user count is
only the size of a pool of workers that pull the next arrival from the schedule, sleep until it is due
and send it. As long as an idle user exists when an arrival is due, the request leaves on time
whatever the latency of earlier requests; the pool is sized from the schedule itself (the most
arrivals inside any ``--latency-budget`` window, which is the concurrency the run reaches if no
request takes longer than the budget). Fidelity is measured, not assumed: every request also reports
a ``LAG`` row, the time between its scheduled and actual send, which stays at a few milliseconds
until the pool (or the load generator's CPU) runs out.

Shapes (``--shape``):
- ``trace``: TraceReplay, a per-request trace (Azure CSV, Mooncake JSONL, or a bundled name) at its
  own timing divided by ``--speedup``, with its own ISL/OSL.
- ``diurnal``: Diurnal, a ServeGen rate curve (``--rates``) with one day compressed into
  ``--day-minutes`` of wall time and scaled to ``--peak-rate`` (or by ``--rate-scale``).
- ``burst``: Burst, ``--rate`` req/s, stepping to ``--burst-factor`` x for ``--burst-for`` seconds
  from ``--burst-at``, then back.
- ``constant``: ``--rate`` req/s for ``--duration`` seconds.

Rate shapes draw arrivals as a (non-homogeneous) Poisson process by default (``--arrivals poisson``,
thinning) or evenly spaced in the integrated rate (``--arrivals uniform``); their lengths come from
``--trace`` (sampled with ``--seed``) or the fixed ``--isl``/``--osl``.

The schedules themselves are built in schedules.py (plain Python, testable without locust); the
classes here are the LoadTestShape side: the pool size and when the run ends.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, ClassVar

from locust import LoadTestShape

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedules import Schedule, build_burst, build_constant, build_diurnal, build_trace, pool_size  # noqa: E402

__all__ = ["OpenLoopShape", "TraceReplay", "Diurnal", "Burst", "Constant", "SHAPES", "CHAT_PATH"]

CHAT_PATH = "/v1/chat/completions"
#: locust rewrites its --csv files once a second and not at exit: wait that long after the last answer
CSV_SETTLE_S = 1.2
log = logging.getLogger(__name__)


class OpenLoopShape(LoadTestShape):
    """Base of the open-loop shapes: a constant pool of users (locust's user count) for the schedule's
    length, then until every scheduled request has been answered (or `--drain` seconds), then stop.

    The pool is `--pool`, or computed by `pool_size` from the schedule and `--latency-budget` (capped
    by `--max-users`). It never shrinks mid-run: stopping users would cut their streams. The users
    themselves pull arrivals from the locustfile's Dispatcher, which builds the same schedule.
    """

    abstract = True
    use_common_options = True  # so -t still caps the run
    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self._schedule: Schedule | None = None
        self._answered_at: float | None = None

    @staticmethod
    def build(options: Any) -> Schedule:
        raise NotImplementedError

    def schedule(self) -> Schedule:
        if self._schedule is None:
            self._schedule = self.build(self.runner.environment.parsed_options)
        return self._schedule

    def reset_time(self) -> None:
        super().reset_time()
        self._schedule = None  # options may have changed between two runs started from the web UI
        self._answered_at = None

    def answered(self) -> int:
        """Chat requests finished so far (successes and failures), all processes together: in a
        distributed run the master's stats aggregate the workers' reports (every few seconds)."""
        return self.runner.stats.get(CHAT_PATH, "POST").num_requests

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options
        s = self.schedule()
        t = self.get_run_time()
        end = o.lead_in + s.duration
        if t > end + o.drain:
            log.warning("open-loop shape: stopping after the %g s drain, %d of %d requests answered", o.drain,
                        self.answered(), len(s.arrivals))
            return None
        if t > end and self._answered_at is None and self.answered() >= len(s.arrivals):
            self._answered_at = t
        if self._answered_at is not None and t >= self._answered_at + CSV_SETTLE_S:
            # every request answered, and locust's CSV writer has seen them all
            log.info("open-loop shape: stopping, every scheduled request answered (%d)", len(s.arrivals))
            return None
        users = o.pool if o.pool > 0 else pool_size(s.arrivals, o.latency_budget, maximum=o.max_users)
        return users, users / max(o.lead_in / 2.0, 0.1)  # all spawned within half the lead-in


class TraceReplay(OpenLoopShape):
    """A per-request trace at its own timing / --speedup (schedules.build_trace)."""

    name = "trace"
    build = staticmethod(build_trace)


class Diurnal(OpenLoopShape):
    """A ServeGen rate curve, a day in --day-minutes, peak scaled to --peak-rate (schedules.build_diurnal)."""

    name = "diurnal"
    build = staticmethod(build_diurnal)


class Burst(OpenLoopShape):
    """--rate, then --burst-factor x --rate for --burst-for s from --burst-at (schedules.build_burst)."""

    name = "burst"
    build = staticmethod(build_burst)


class Constant(OpenLoopShape):
    """--rate req/s for --duration s (schedules.build_constant)."""

    name = "constant"
    build = staticmethod(build_constant)


SHAPES: dict[str, type[OpenLoopShape]] = {c.name: c for c in (TraceReplay, Diurnal, Burst, Constant)}
