"""Floors (warm-pool minimums): the replicas below which a role is not scaled.

Three floors, the highest wins:
- static: the role's min_replicas (enforced with the bounds, bounds.py, after the graph rules);
- scheduled: a floor by weekday and time of day, in the graph's time zone (e.g. 4 prefill replicas
  on weekdays 08:00-20:00 Europe/Paris), for load the forecast cannot see yet (a launch, a batch job);
- lead-time: what the forecast needs at any moment within the start-up horizon (the cold start-up
  time, since a node takes 3-8 minutes to provision; the warm one when the graph keeps balloon pods,
  warm_pool.py), so capacity about to be needed is not released just before it is.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import ScheduleEntry

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def active(entry: "ScheduleEntry", local: datetime) -> bool:
    """Whether a schedule entry is in force at a local time (end exclusive; end <= start = past midnight)."""
    day = WEEKDAYS[local.weekday()]
    t = local.time()
    if entry.start < entry.end:
        return day in entry.days and entry.start <= t < entry.end
    # Past midnight: the part after midnight belongs to the previous day's window.
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    return (day in entry.days and t >= entry.start) or (yesterday in entry.days and t < entry.end)


def scheduled_floor(now: float, schedule: Sequence["ScheduleEntry"], tz: str) -> tuple[int, "ScheduleEntry | None"]:
    """The highest scheduled floor active at `now` (Unix seconds) in time zone `tz`."""
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    best, which = 0, None
    for entry in schedule:
        if active(entry, local) and entry.min_replicas > best:
            best, which = entry.min_replicas, entry
    return best, which


def lead_time_floor(needs_within_horizon: Sequence[float]) -> int:
    """Replicas the forecast needs at any time within the start-up horizon."""
    return max((math.ceil(n - 1e-9) for n in needs_within_horizon), default=0)


class Floors:
    """The scheduled and lead-time floors of one role (stateless)."""

    def apply(self, ctx: RoleContext, t: Target) -> None:
        cfg = ctx.config
        sched, entry = scheduled_floor(ctx.now, cfg.schedule, ctx.graph.timezone)
        if sched > t.value:
            t.bind(sched, Rule.SCHEDULED_FLOOR,
                   f"{entry.start:%H:%M}-{entry.end:%H:%M} {','.join(entry.days)} floor {sched}")
        if cfg.lead_time_floor and t.forecast_needs is not None:
            reach = ctx.warm_s if ctx.has_warm_role else ctx.cold_s
            needs = t.forecast_needs
            ahead = needs[(ctx.horizons <= reach + 1e-9) & np.isfinite(needs)]
            floor = lead_time_floor(ahead.tolist())
            if floor > t.value:
                which = "warm" if ctx.has_warm_role else "cold"
                t.bind(floor, Rule.LEAD_TIME_FLOOR,
                       f"the forecast needs {floor} within the {which} start-up time ({reach:.0f}s)")
