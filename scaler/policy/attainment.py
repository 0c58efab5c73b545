"""Attainment feedback: the calibrated headroom corrected by the SLO misses the role actually causes.

The headroom (headroom.py) learns how far the realised need exceeded the plan, but it can only see
the need through rates over the source's window (a minute): a burst of ten seconds is diluted several
times there, yet it is what breaks TTFT. What the graph's latency histograms record is not diluted:
each poll says whether the role met its latency target (the p99 under the SLO) over the window.
This rule closes the loop on that, per role, as a stochastic approximation of a quantile:

- a poll whose p99 breaks the SLO BECAUSE OF CAPACITY raises the gain by exp(rate x (1 - tolerance)),
  a poll that meets it lowers it by exp(rate x tolerance), both weighted by the requests of the poll
  (relative to the role's usual poll; quiet polls carry little evidence): in equilibrium a
  `tolerance` = 1 - `slo.attainment` share of the traffic comes in breaching polls;
- the gain multiplies the calibrated headroom's sizing; it is bounded to [1, `gain_max`]: it only ever
  corrects a shortfall (the headroom's own quantile relaxes predictable traffic), and it decays back
  to 1 as polls meet the SLO;
- a TTFT breach counts only net of the prompts' own prefill time, which no replica shortens: where
  the p99 prompt's own prefill time (the p99 input length at the profile's throughput) exceeds the
  SLO, the p99 TTFT is judged against that time plus the queueing slack the SLO leaves a prompt of
  mean length; otherwise against the SLO. ITL has no
  such floor here (the profile's ITL at a full batch is within the SLO).

The gain, the usual poll's requests and the last verdict are this rule's state, one per role.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from scaler.capacity_profile import CapacityProfile


def ttft_limit(slo_s: float, signals: Mapping[str, float], profile: "CapacityProfile",
               correction: float = 1.0) -> float:
    """The p99 TTFT that capacity is accountable for: the SLO, or, where the p99 prompt's own prefill
    time exceeds it, that time plus the queueing slack the SLO leaves a prompt of mean length."""
    isl_p99, isl_mean = signals.get("isl_p99"), signals.get("isl_mean")
    if isl_p99 is None or isl_mean is None:
        return slo_s
    own_p99 = isl_p99 / max(profile.prefill.throughput(isl_p99) * correction, 1e-9)
    if own_p99 <= slo_s:
        return slo_s  # the p99 prompt can meet the SLO: hold it to it
    own_mean = isl_mean / max(profile.prefill.throughput(isl_mean) * correction, 1e-9)
    return own_p99 + max(0.0, slo_s - own_mean)


class AttainmentFeedback:
    def __init__(self, attainment: float, rate: float, gain_max: float) -> None:
        self.tolerance = 1.0 - attainment
        self.rate, self.gain_max = rate, gain_max
        self.gain = 1.0
        self._usual: float | None = None  # requests of a usual poll (a slow mean over polls with traffic)
        self.last: str = "no poll with traffic yet"

    def observe(self, p99: float | None, limit: float, requests: float) -> None:
        """One poll: the role's p99 latency over the window (None: no traffic or no data, no evidence),
        the limit it is accountable for, and the requests that arrived since the last poll."""
        if p99 is None or not math.isfinite(p99) or requests <= 0:
            return
        self._usual = requests if self._usual is None else 0.95 * self._usual + 0.05 * requests
        weight = min(1.0, requests / self._usual)
        breached = p99 > limit
        step = (1.0 - self.tolerance) if breached else -self.tolerance
        self.gain = min(self.gain_max, max(1.0, self.gain * math.exp(self.rate * weight * step)))
        self.last = f"p99 {p99:.3g}s {'>' if breached else '<='} {limit:.3g}s"

    def why(self) -> str:
        return f"attainment gain {self.gain:.2f} (last poll: {self.last})"
