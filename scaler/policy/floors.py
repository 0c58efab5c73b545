"""Warm-pool minimums: the floors below which a role is never scaled.

Three floors, the highest wins:
- static: the role's min_replicas;
- scheduled: a floor by weekday and time of day, in a time zone (e.g. 4 prefill replicas on
  weekdays 08:00-20:00 Europe/Paris), for load the forecast cannot see yet (a launch, a batch job);
- lead-time: what the forecast needs at any moment within the cold-start horizon (a node takes
  3-8 minutes to provision), so capacity about to be needed is not released just before it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time
from typing import Sequence
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ScheduledFloor:
    days: tuple[str, ...]  # of WEEKDAYS
    start: time
    end: time  # exclusive; end <= start means the window runs past midnight
    min_replicas: int

    def active(self, local: datetime) -> bool:
        day = WEEKDAYS[local.weekday()]
        t = local.time()
        if self.start < self.end:
            return day in self.days and self.start <= t < self.end
        # Past midnight: the part after midnight belongs to the previous day's window.
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return (day in self.days and t >= self.start) or (yesterday in self.days and t < self.end)


def scheduled_floor(now: float, schedule: Sequence[ScheduledFloor], tz: str) -> tuple[int, ScheduledFloor | None]:
    """The highest scheduled floor active at `now` (Unix seconds) in time zone `tz`."""
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    best, which = 0, None
    for entry in schedule:
        if entry.active(local) and entry.min_replicas > best:
            best, which = entry.min_replicas, entry
    return best, which


def lead_time_floor(needs_within_horizon: Sequence[float]) -> int:
    """Replicas the forecast needs at any time within the cold-start horizon."""
    return max((math.ceil(n - 1e-9) for n in needs_within_horizon), default=0)


def floor(static: int, scheduled: int, lead_time: int) -> tuple[int, str]:
    """The floor in force and which of the three set it."""
    value, name = max((static, "min_replicas"), (scheduled, "scheduled floor"), (lead_time, "lead-time floor"))
    return value, name
