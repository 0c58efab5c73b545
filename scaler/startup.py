"""Start-up time of new replicas, learned from observed rollouts: the lead time forecasts look ahead.

When a role's target rises above its ready replicas at time t0, each replica asked for is pending
since t0; when the ready count reaches it, its start-up time is now - t0. Times nearer the configured
warm figure than the cold one are warm starts (model load on a provisioned node), the others cold
starts (node provisioning first); each kind keeps an exponential average (weight `alpha` per sample),
clamped to [warm / 3, 3 x cold]. A target lowered below a pending replica cancels it (no sample).

The lead a rise is planned on (`lead_s`) is the configured time: the warm one where balloon pods keep
nodes provisioned, else the cold one. With `startup.lead: observed` it is what the role's starts
actually take, not the kind they are meant to be: once `MIN_STARTS` starts were seen, the
`LEAD_QUANTILE` of the last `RECENT_STARTS` (between the warm and the cold time in use). Where the warm
pool does not cover the rises, starts are cold, and the forecast then looks that far ahead: the SLO
holds through slow starts, at the cost of a forecast further out (a larger calibrated headroom).
"""

from __future__ import annotations

from collections import deque

import numpy as np

RECENT_STARTS = 20
MIN_STARTS = 5
LEAD_QUANTILE = 0.9  # plan on a slow start unless slow starts are rare: a late rise breaks the SLO


class StartupTracker:
    def __init__(self, warm_s: float, cold_s: float, learn: bool = True, alpha: float = 0.3,
                 observed_lead: bool = False) -> None:
        self.warm_s, self.cold_s = float(warm_s), float(cold_s)
        self.observed_lead = observed_lead
        self._lo, self._hi = warm_s / 3.0, 3.0 * cold_s
        self._boundary = (warm_s + cold_s) / 2.0
        self.learn = learn
        self.alpha = alpha
        self.samples = 0
        self._recent: deque[float] = deque(maxlen=RECENT_STARTS)
        self._pending: list[float] = []  # asked-at times of replicas above the ready count, oldest first
        self._ready: int | None = None

    def observe(self, now: float, target: int | None, ready: float | None) -> None:
        """The target last set and the replicas now ready."""
        if ready is None or target is None:
            return
        ready_n = int(ready)
        if self._ready is None:
            self._ready = ready_n
        while ready_n > self._ready and self._pending:
            self._sample(now - self._pending.pop(0))
            self._ready += 1
        self._ready = ready_n
        want = max(0, target - ready_n)
        del self._pending[want:]
        while len(self._pending) < want:
            self._pending.append(now)

    def _sample(self, seconds: float) -> None:
        if not self.learn:
            return
        seconds = min(self._hi, max(self._lo, seconds))
        self.samples += 1
        self._recent.append(seconds)
        if seconds < self._boundary:
            self.warm_s += self.alpha * (seconds - self.warm_s)
        else:
            self.cold_s += self.alpha * (seconds - self.cold_s)

    def lead_s(self, configured: float) -> float:
        """The start-up time to plan a rise on (see the module docstring); `configured` before evidence."""
        if not (self.observed_lead and self.learn) or len(self._recent) < MIN_STARTS:
            return configured
        q = float(np.quantile(np.array(self._recent), LEAD_QUANTILE))
        return min(max(self.warm_s, q), max(self.warm_s, self.cold_s))  # within the times in use
