"""The rules' names: one typed name per rule, used by reasons, steps, metrics, explain and dashboards.

A `Rule` is a `str` (StrEnum), so it prints, compares and serialises as its spelling: kebab-case,
the `rule` label of `pdscaler_decision_rule`.
"""

from __future__ import annotations

from enum import StrEnum


class Rule(StrEnum):
    # Held for want of usable data: the last target, never lower (missing_data.py).
    NO_DATA = "no-data"
    STALE_DATA = "stale-data"
    MISSING_DATA = "missing-data"
    # The need (need.py): observed demand, or the forecast when it needs more.
    CAPACITY = "capacity"
    FORECAST = "forecast"
    # Per-role rules, in pipeline order.
    SAFETY_NET = "safety-net"
    SCHEDULED_FLOOR = "scheduled-floor"
    LEAD_TIME_FLOOR = "lead-time-floor"
    STABILISATION = "stabilisation"
    MAX_STEP = "max-step"
    NO_CASCADE = "no-cascade"
    HPA_TOLERANCE = "hpa-tolerance"
    # Per-graph rules.
    RATIO = "ratio"
    MIN_REPLICAS = "min-replicas"
    MAX_REPLICAS = "max-replicas"
    GPU_BUDGET = "gpu-budget"
    WARM_POOL = "warm-pool"

    @property
    def held(self) -> bool:
        """True for the rules that hold a target for want of usable data."""
        return self in HELD


HELD = frozenset({Rule.NO_DATA, Rule.STALE_DATA, Rule.MISSING_DATA})
