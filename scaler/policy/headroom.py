"""Calibrated headroom: size the forecast for the attainment the graph asks for, learned online.

A fixed margin (a p90 forecast divided by a 0.8 utilisation target) provisions for 100 % where 99 %
is asked on predictable traffic, and for too little on bursty traffic. Instead, each role measures
how far the need that actually came exceeded what its forecast planned, and sizes on that:

- every decision PLANS the need of the coming actuation window [now + lead, now + lead + window]:
  the most the median forecast needs there, at full capacity (the profile's figure at the SLO);
- as the window passes, the REALISED need is observed (the reactive need at full capacity, its queue
  included, except while replicas asked for are still starting: a queue then is the start-up's, and
  the arriving demand counts): the window's PEAK, since a burst of a few seconds already breaks TTFT;
- when the window has passed, the ratio peak / plan (a plan counts as at least one replica) is one
  sample of the forecast's shortfall, weighted by the requests that arrived in the window: the SLO
  counts requests, and a burst is where they are;
- the headroom is the `slo.attainment` quantile (0.99 by default) of the weighted samples of the last
  `headroom.window`: the multiple of the plan that covered the realised peak for 99 % of requests.
  Predictable traffic gets a headroom near 1 (close to the oracle). On/off traffic, whose bursts come
  out of a near-idle forecast, gets the multiple of one replica that its bursts need: a standing
  capacity near the bursts' peak, which no forecast could have timed.
- Before there is evidence it is a conservative prior (`headroom.prior`, 2x), a floor rather than a
  cap: evidence above it counts at once, evidence below it relaxes it as settled windows accumulate
  (the prior weighs `prior_weight` worth of windows).
- What the minute's rates still dilute shows as SLO misses: the attainment feedback (attainment.py)
  multiplies the sizing by its gain.

The predictive need is then max(the median forecast's need, one replica) x the headroom (a plan of
no demand at all stays at none) (bounded to
[`headroom.min`, `headroom.max`]), applied as the ratios were measured; it never goes below the
reactive need (need.py takes the larger). The pending plans and the samples (a histogram of log-ratios, so that the quantile costs
the same whatever the window) are this rule's state, one per role.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scaler.config import HeadroomConfig

# Log-ratio histogram: 1 % bins from 1/16 to 64x (ratios outside are counted at the ends).
_LO, _HI, _BIN = math.log(1 / 16), math.log(64.0), 0.01
_NBINS = int(round((_HI - _LO) / _BIN)) + 1


class Headroom:
    def __init__(self, config: "HeadroomConfig", attainment: float, poll_s: float) -> None:
        self.config, self.level = config, attainment
        self._pending: deque[list[float]] = deque()  # [start, end, plan, realised peak, requests]
        n = max(1, int(round(config.window / poll_s)))
        self._samples: deque[tuple[int, float]] = deque(maxlen=n)  # (bin, weight) of settled ratios
        self._weights = np.zeros(_NBINS)
        self._prior_n = config.prior_weight / poll_s
        self.value = config.prior

    @property
    def samples(self) -> int:
        return len(self._samples)

    @property
    def settled(self) -> bool:
        """The headroom rests on its own evidence: the settled windows outweigh the prior."""
        return len(self._samples) >= max(self._prior_n, 1.0)

    def observe(self, now: float, realised: float, requests: float) -> None:
        """The need realised now (replicas at full capacity) and the requests that arrived since the
        last poll: they raise the peak and the weight of every window they are in; the windows that
        have passed settle into samples."""
        while self._pending and self._pending[0][1] < now:
            start, end, plan, peak, weight = self._pending.popleft()
            if peak >= 0.0 and weight > 0.0:
                self._add(peak / max(plan, 1.0), weight)
        for w in self._pending:
            if w[0] <= now <= w[1]:
                w[3] = max(w[3], realised)
                w[4] += requests

    def plan(self, now: float, lead_s: float, window_s: float, planned: float) -> None:
        """This decision's plan: `planned` replicas (median forecast, full capacity) for
        [now + lead, now + lead + window]."""
        self._pending.append([now + lead_s, now + lead_s + window_s, planned, -1.0, 0.0])

    def size(self, planned: np.ndarray) -> np.ndarray:
        """The replicas to size on for `planned` (median forecast, full capacity, per horizon): the plan
        (at least one replica: a ratio to a near-idle plan is a multiple of one replica) times the
        headroom; a plan of no demand at all stays at none (a graph may scale to zero)."""
        base = np.where(planned > 0, np.maximum(planned, 1.0), planned)
        return base * self.headroom()

    def headroom(self) -> float:
        """The multiple of the planned need to size on now."""
        n = len(self._samples)
        if n == 0:
            self.value = self.config.prior
        else:
            cum = np.cumsum(self._weights)
            k = int(np.searchsorted(cum, self.level * cum[-1], side="left"))
            empirical = math.exp(_LO + k * _BIN)
            # Conservative: evidence above the prior counts in full at once; below it, the prior
            # relaxes towards the evidence as settled windows accumulate.
            w = self._prior_n / (self._prior_n + n) if empirical < self.config.prior else 0.0
            self.value = w * self.config.prior + (1 - w) * empirical
        self.value = min(self.config.max, max(self.config.min, self.value))
        return self.value

    def why(self) -> str:
        n = len(self._samples)
        if n == 0:
            return f"prior {self.config.prior:g}x (no settled window yet)"
        return (f"p{self.level * 100:g} of realised peak / plan over {n} settled windows, "
                f"prior {self.config.prior:g}x weighing {self._prior_n / (self._prior_n + n):.0%}")

    def _add(self, ratio: float, weight: float) -> None:
        b = int(round((math.log(max(ratio, 1e-12)) - _LO) / _BIN))
        b = min(_NBINS - 1, max(0, b))
        if len(self._samples) == self._samples.maxlen:
            old, w = self._samples[0]
            self._weights[old] = max(0.0, self._weights[old] - w)
        self._samples.append((b, weight))
        self._weights[b] += weight
