"""Scrape source: read /metrics endpoints directly, for the demo and small setups without Prometheus.

It evaluates the same signal definitions (scaler/signals.py) as the Prometheus source, with the
same semantics: rate() over counter deltas within a window (counter resets handled),
histogram_quantile() with Prometheus' linear interpolation over bucket deltas, and sum/avg/max/count
over the latest gauges. Parsing is prometheus_client's parser. Timestamps come from the injected
clock, so the demo's virtual time gives rates per virtual second.

Each scrape must complete within source.timeout (connect to the last byte, scaler/sources/deadline.py).
A metric that cannot be trusted in a scrape is left out of it, with a note: a series that appears
twice in one exposition, or a sample whose own timestamp is more than stale_after old.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests
from prometheus_client.parser import text_string_to_metric_families

from scaler.config import RoleConfig, ScalerConfig, ScrapeSourceConfig
from scaler.observation import Observation
from scaler.signals import GRAPH_SIGNALS, Signal, metric_names, role_label_filter, role_signals
from scaler.sources.deadline import DeadlineAdapter

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Snapshot:
    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]]  # sample name -> [(labels, value)]


def parse_samples(texts: list[tuple[str, str]], problems: dict[str, str] | None = None, now: float | None = None,
                  stale_after: float | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from (instance, exposition text) pairs; each series gets an `instance` label.

    With `problems`, the metrics (families) that cannot be trusted are left out and `problems` says
    why (family name -> note): a series twice in one exposition (which one holds?), or a sample whose
    own timestamp is more than `stale_after` before `now` (wall-clock seconds, as exporters stamp)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    names: dict[str, set[str]] = {}  # family -> its sample names
    for instance, text in texts:
        seen: set[tuple[str, frozenset]] = set()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = {**s.labels, "instance": instance}
                out.setdefault(s.name, []).append((labels, float(s.value)))
                names.setdefault(family.name, set()).add(s.name)
                if problems is None or family.name in problems:
                    continue
                key = (s.name, frozenset(labels.items()))
                if key in seen:
                    problems[family.name] = f"{family.name}: a series appears twice at {instance}: not used"
                seen.add(key)
                if s.timestamp is not None and now is not None and stale_after is not None:
                    age = now - float(s.timestamp)
                    if age > stale_after:
                        problems[family.name] = (f"{family.name}: sample at {instance} is {age:.0f}s old "
                                                 f"(stale after {stale_after:.0f}s): not used")
    for family in problems or {}:
        for name in names.get(family, ()):
            out.pop(name, None)
    return out


def _matching(samples: list[tuple[dict[str, str], float]], filt: dict[str, str]):
    return [(lbl, v) for lbl, v in samples if all(lbl.get(k) == want for k, want in filt.items())]


def _key(labels: dict[str, str]) -> frozenset:
    return frozenset(labels.items())


def counter_increase(old: Snapshot, new: Snapshot, name: str, filt: dict[str, str], by_le: bool = False) -> dict | float | None:
    """Increase of the counters `name` between two snapshots, summed (by `le` when by_le).

    None when no series matches in the new snapshot. A series that went down was reset: its whole
    new value is the increase, as in Prometheus' rate().
    """
    cur = _matching(new.samples.get(name, []), filt)
    if not cur:
        return None
    before = {_key(lbl): v for lbl, v in _matching(old.samples.get(name, []), filt)}
    totals: dict[str, float] = {}
    total = 0.0
    for lbl, v in cur:
        prev = before.get(_key(lbl))
        if prev is None:
            inc = 0.0  # the series appeared inside the window: like rate(), count from its first sample
        else:
            inc = v if v < prev else v - prev
        if by_le:
            totals[lbl["le"]] = totals.get(lbl["le"], 0.0) + inc
        else:
            total += inc
    return totals if by_le else total


def histogram_quantile(q: float, buckets: dict[str, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts keyed by `le` (as strings)."""
    pts = sorted((float(le), c) for le, c in buckets.items())
    if not pts or not math.isinf(pts[-1][0]):
        return math.nan
    total = pts[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in pts:
        if c >= rank:
            if math.isinf(le):
                return prev_le  # the quantile lies in the +Inf bucket: the highest finite bound
            if le <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return pts[-2][0] if len(pts) > 1 else math.nan


class ScrapeSource:
    keeps_history = False  # only the snapshots of the current rate window

    def __init__(self, config: ScalerConfig, session: requests.Session | None = None) -> None:
        assert isinstance(config.source, ScrapeSourceConfig)
        self.config = config
        self.src = config.source
        self.names = metric_names(self.src.metric_names)
        self.session = session or requests.Session()
        adapter = DeadlineAdapter(self.src.timeout)  # a scrape ends within timeout, however it trickles
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.snapshots: dict[str, deque[Snapshot]] = {g: deque() for g in config.graphs}

    def _scrape(self, graph: str, now: float) -> tuple[Snapshot, list[str]]:
        texts, errors = [], []
        for url in self.src.targets.get(graph, []):
            try:
                r = self.session.get(url, timeout=self.src.timeout)
                r.raise_for_status()
                texts.append((url, r.text))
            except requests.RequestException as e:
                errors.append(f"scrape {url} failed: {type(e).__name__}")
        problems: dict[str, str] = {}
        try:
            samples = parse_samples(texts, problems, time.time(), self.config.stale_after)
            errors += sorted(problems.values())
        except ValueError as e:
            errors.append(f"unparseable metrics: {e}")
            samples = {}
        return Snapshot(now, samples), errors

    def _remember(self, graph: str, snap: Snapshot) -> Snapshot | None:
        """Keep snapshots spanning the rate window; return the oldest one to diff against."""
        h = self.snapshots[graph]
        if snap.samples:
            h.append(snap)
        # Keep one snapshot at or before the window's start as the base.
        while len(h) >= 2 and h[1].at <= snap.at - self.src.rate_window:
            h.popleft()
        if len(h) >= 2 and h[0].at < h[-1].at:
            return h[0]
        return None

    def _evaluate(self, s: Signal, base: Snapshot | None, last: Snapshot, filt: dict[str, str]) -> float | None:
        name = self.names[s.metric]
        if s.agg in ("sum", "avg", "max", "count"):
            vals = [v for _, v in _matching(last.samples.get(name, []), filt)]
            if not vals:
                return None
            return {"sum": sum, "max": max, "avg": lambda x: sum(x) / len(x), "count": len}[s.agg](vals)
        if base is None:
            return None  # rates need two scrapes within the window
        dt = last.at - base.at
        if s.agg in ("rate", "rate_sum"):
            inc = counter_increase(base, last, name + ("_sum" if s.agg == "rate_sum" else ""), filt)
            return None if inc is None else inc / dt
        if s.agg == "mean":
            total = counter_increase(base, last, name + "_sum", filt)
            count = counter_increase(base, last, name + "_count", filt)
            if total is None or not count:
                return None  # no events in the window: absent (0/0), as in PromQL
            return total / count
        if s.agg == "quantile":
            buckets = counter_increase(base, last, name + "_bucket", filt, by_le=True)
            if not buckets:
                return None
            value = histogram_quantile(s.quantile or 0.5, buckets)
            return None if math.isnan(value) else value
        raise ValueError(s.agg)

    def collect_graph(self, graph: str, now: float) -> Observation:
        snap, errors = self._scrape(graph, now)
        base = self._remember(graph, snap)
        if not snap.samples:
            return Observation(graph=graph, at=now, errors=tuple(errors or ["no samples scraped"]))
        gcfg = self.config.graphs[graph]
        signals = {}
        for s in GRAPH_SIGNALS:
            v = self._evaluate(s, base, snap, {})
            if v is not None:
                signals[s.name] = v
        roles: dict[str, dict[str, float]] = {}
        for role, rcfg in gcfg.roles.items():
            roles[role] = self._role_values(rcfg, base, snap)
        return Observation(graph=graph, at=now, signals=signals, roles=roles, errors=tuple(errors))

    def _role_values(self, rcfg: RoleConfig, base: Snapshot | None, snap: Snapshot) -> dict[str, float]:
        out = {}
        for s in role_signals(rcfg.kind):
            v = self._evaluate(s, base, snap, role_label_filter(s, rcfg.kind, rcfg.component))
            if v is not None:
                out[s.name] = v
        return out

    def collect(self, now: float) -> list[Observation]:
        return [self.collect_graph(g, now) for g in self.config.graphs]

    def history(
        self, graph: str, wanted: list[tuple[str | None, str]], start: float, end: float, step: float
    ) -> dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]]:
        """Nothing: an exporter's /metrics holds no past values (forecasts start cold)."""
        return {}

    def close(self) -> None:
        self.session.close()
