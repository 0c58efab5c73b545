"""A timestamped observation of one serving graph, and the check that makes it safe to use.

Sources produce Observations; the engine consumes them. Values are plain floats keyed by signal
name (scaler/signals.py). A value that is missing, NaN, infinite, negative or absurd is dropped by
`sanitize` with a note saying why, so the engine never sizes a pool on garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from scaler.signals import signal_range


@dataclass(frozen=True)
class Observation:
    """What was seen of graph `graph` at time `at` (seconds; the injected clock's time)."""

    graph: str
    at: float
    signals: Mapping[str, float] = field(default_factory=dict)
    roles: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # what the source could not read, and why

    def get(self, name: str, role: str | None = None) -> float | None:
        values = self.roles.get(role, {}) if role is not None else self.signals
        return values.get(name)


def _check(name: str, value: object) -> tuple[float | None, str | None]:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, f"{name}={value!r} is not a number"
    if math.isnan(x):
        return None, f"{name} is NaN"
    if math.isinf(x):
        return None, f"{name} is infinite"
    lo, hi = signal_range(name)
    if x < lo:
        return None, f"{name}={x:g} is below {lo:g}"
    if x > hi:
        return None, f"{name}={x:g} is absurd (above {hi:g})"
    return x, None


def sanitize(obs: Observation) -> Observation:
    """A copy of `obs` without unusable values; each dropped value adds a note to `errors`."""
    notes = list(obs.errors)

    def clean(values: Mapping[str, float], prefix: str) -> Mapping[str, float]:
        out = {}
        for name, value in values.items():
            try:
                x, problem = _check(name, value)
            except KeyError:
                x, problem = None, f"unknown signal {name!r}"
            if problem:
                notes.append(prefix + problem)
            else:
                out[name] = x
        return MappingProxyType(out)

    if not math.isfinite(obs.at):
        raise ValueError(f"observation of {obs.graph!r} has a non-finite timestamp {obs.at!r}")
    return Observation(
        graph=obs.graph,
        at=obs.at,
        signals=clean(obs.signals, ""),
        roles=MappingProxyType({r: clean(v, f"{r}: ") for r, v in obs.roles.items()}),
        errors=tuple(notes),
    )
