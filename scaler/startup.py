"""Start-up time of new replicas, learned from observed rollouts: the lead time forecasts look ahead.

When a role's target rises above its ready replicas at time t0, each replica asked for is pending
since t0; when the ready count reaches it, its start-up time is now - t0. Times nearer the configured
warm figure than the cold one are warm starts (model load on a provisioned node), the others cold
starts (node provisioning first); each kind keeps an exponential average (weight `alpha` per sample),
clamped to [warm / 3, 3 x cold]. A target lowered below a pending replica cancels it (no sample).
"""

from __future__ import annotations


class StartupTracker:
    def __init__(self, warm_s: float, cold_s: float, learn: bool = True, alpha: float = 0.3) -> None:
        self.warm_s, self.cold_s = float(warm_s), float(cold_s)
        self._lo, self._hi = warm_s / 3.0, 3.0 * cold_s
        self._boundary = (warm_s + cold_s) / 2.0
        self.learn = learn
        self.alpha = alpha
        self.samples = 0
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
        if seconds < self._boundary:
            self.warm_s += self.alpha * (seconds - self.warm_s)
        else:
            self.cold_s += self.alpha * (seconds - self.cold_s)
