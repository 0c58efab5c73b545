"""One-poll outliers: a sudden rise of an arrival rate is believed once the next poll confirms it.

A 1000x jump of the request or token rate in one poll is a scrape artefact (a counter reset read as
a huge rate, series counted twice), not traffic: sized on, it pins the roles at their maxima for a
whole scale-down window and sets the forecast and its cap for an hour. The rates Prometheus returns
are windowed (`rate(...[60s])` polled every 15 s), so a real burst moves them by a few times per
poll; to move one 10x, the last 15 s would need ~37x the previous minute's arrivals.

So an arrival rate that rises more than `factor` over the previous poll's value (at least one
replica's worth) is taken as the previous poll's value, with a note, until the next poll confirms it:
a next poll at the same height passes unchanged (it is compared with the raw previous value), so a
sustained rise costs one poll. (Taken as `factor` x the previous instead, the outlier would still
hold a 10x target for the whole scale-down window.) Dips are the forecasters' business (their one-bin glitch filter);
queues and KV are gauges of work actually there and are never clipped. The filter applies to the
observation itself, so the forecaster, the reactive sizing and the forecast cap see the same value.
The previous values are this rule's state, one filter per graph.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scaler.capacity_profile import CapacityProfile
    from scaler.observation import Observation

RATES = ("request_rate", "prefill_tokens_per_s", "decode_tokens_per_s")


class OutlierFilter:
    def __init__(self, factor: float | None, profile: "CapacityProfile") -> None:
        self.factor, self.profile = factor, profile
        self._previous: dict[str, float] = {}  # the raw value of each rate at the last poll

    def _one_replica(self, name: str, signals) -> float:
        """One replica's worth of `name`, in its own unit (0 when unknown)."""
        isl = signals.get("isl_mean") or 0.0
        prefill = self.profile.prefill.throughput(isl)
        if name == "prefill_tokens_per_s":
            return prefill
        if name == "decode_tokens_per_s":
            context = isl + (signals.get("osl_mean") or 0.0) / 2.0
            return self.profile.decode.throughput(context)
        return prefill / isl if isl > 0 else 0.0

    def apply(self, obs: "Observation") -> "Observation":
        """`obs` with its one-poll outliers clipped (a note each), and the raw values remembered."""
        if self.factor is None:
            return obs
        signals, notes = dict(obs.signals), []
        for name in RATES:
            if name not in signals:
                continue
            raw, prev = signals[name], self._previous.get(name)
            self._previous[name] = raw
            if prev is None:
                continue
            if raw > self.factor * max(prev, self._one_replica(name, obs.signals)):
                signals[name] = prev
                notes.append(f"one-poll outlier: {name}={raw:.4g} is over {self.factor:g}x the last poll's "
                             f"{prev:.4g}; taken as {prev:.4g} until the next poll confirms it")
        if not notes:
            return obs
        return replace(obs, signals=signals, errors=tuple(obs.errors) + tuple(notes))
