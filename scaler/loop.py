"""The background decision loop: poll the metrics source, feed the engine, publish decisions.

This is the imperative shell around the pure Engine. It runs in its own thread so that a slow
Prometheus or a model fit never delays a gRPC answer: the server only reads the DecisionStore.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from forecasting.demand import FORECAST_SERIES
from scaler.clock import Clock
from scaler.decision import Decision
from scaler.engine import Engine
from scaler.kube.replicas import with_replicas
from scaler.observation import Observation
from scaler.sources import MetricsSource
from scaler.store import DecisionStore

if TYPE_CHECKING:
    from scaler.kube.watcher import ClusterWatcher
    from scaler.metrics import ScalerMetrics

log = logging.getLogger("pdscaler.loop")


class DecisionLoop:
    def __init__(self, engine: Engine, source: MetricsSource, store: DecisionStore, clock: Clock,
                 cluster: "ClusterWatcher | None" = None, metrics: "ScalerMetrics | None" = None) -> None:
        self.engine, self.source, self.store, self.clock = engine, source, store, clock
        self.metrics = metrics
        self.cluster = cluster  # cluster reads (scaler/kube), merged from its last snapshot
        self.interval = engine.config.poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_error: str | None = None
        # Answer from the first moment: the floor for every graph, with the reason "no observation yet".
        self.store.publish(engine.decide_all(clock.now()))

    def tick(self) -> dict[str, Decision]:
        """One poll: collect, observe, decide, publish. Never raises for source problems."""
        now = self.clock.now()
        t0 = time.perf_counter()
        m = self.metrics
        try:
            observations = self.source.collect(now)
            self.last_error = None
        except Exception as e:  # a broken source must not stop the loop: decisions then hold
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("metrics source failed: %s", self.last_error)
            observations = []
            if m is not None:
                m.source_errors.labels(type(e).__name__).inc()
        t1 = time.perf_counter()
        readings = self.cluster.snapshot() if self.cluster is not None else {}
        for g, reading in readings.items():
            fresh = now - reading.at <= self.engine.config.stale_after
            current = {r: rr.desired for r, rr in reading.roles.items() if rr.desired is not None}
            if fresh and g in self.engine.graphs and self.engine.adopt_replicas(g, current):
                log.info("graph %s: adopted the cluster's replicas %s", g, current)
        for obs in observations:
            self._observe(with_replicas(obs, readings.get(obs.graph), now, self.engine.config.stale_after))
        t2 = time.perf_counter()
        decisions = self.engine.decide_all(now)
        t3 = time.perf_counter()
        for g, reading in readings.items():
            if reading.conflicts and g in decisions:
                decisions[g] = replace(decisions[g], warnings=reading.conflicts)
        changed = {g: d for g, d in decisions.items() if _changed(self.store.get(g), d)}
        self.store.publish(decisions)
        for d in changed.values():
            log.info("decision %s", _one_line(d))
        self.ticks += 1
        if m is not None:
            m.source_up.set(0 if self.last_error else 1)
            m.collect_seconds.observe(t1 - t0)
            m.decide_seconds.observe(t3 - t2)
            m.poll_seconds.observe(time.perf_counter() - t0)
            m.polls.inc()
        return decisions

    def warm_start(self) -> dict[str, list[str]]:
        """Fit every graph's forecasts on the source's history, when it has one (Prometheus)."""
        fc = self.engine.config.forecast
        history = getattr(self.source, "history", None)
        if not callable(history) or fc.warm_start <= 0:  # the scrape source keeps no history
            return {}
        end = self.clock.now()
        fitted = {}
        for graph in self.engine.graphs:
            wanted = [(None, name) for name in FORECAST_SERIES]
            try:
                got = history(graph, wanted, end - fc.warm_start, end, fc.warm_start_step)
            except Exception as e:  # warm start is an optimisation: never fatal
                log.warning("warm start of %s failed: %s", graph, e)
                continue
            t0 = time.perf_counter()
            fitted[graph] = self.engine.warm_start(graph, {name: ty for (_, name), ty in got.items()})
            if self.metrics is not None:
                self.metrics.fit_seconds.labels(graph).observe(time.perf_counter() - t0)
            log.info("warm start of %s: fitted %s", graph, ", ".join(fitted[graph]) or "nothing (no history)")
        return fitted

    def _observe(self, obs: Observation) -> None:
        try:
            self.engine.observe(obs)
        except (KeyError, ValueError) as e:
            log.warning("dropped observation of %r: %s", obs.graph, e)

    def run(self) -> None:
        if self.cluster is not None:  # start from the replicas the cluster runs, not from the floor
            self.cluster.first_poll.wait(2 * self.engine.config.kubernetes.timeout + 1)
        self.warm_start()
        next_at = self.clock.now()
        while not self._stop.is_set():
            self.tick()
            next_at += self.interval
            if self.clock.now() > next_at + self.interval:
                next_at = self.clock.now()  # fell behind (slow source, suspended): skip, do not burst
            # Wait in small slices so stop() is prompt with a long interval or a virtual clock.
            while not self._stop.is_set() and self.clock.now() < next_at:
                self._stop.wait(min(0.05, max(0.001, (next_at - self.clock.now()) / _speed(self.clock))))

    def start(self) -> "DecisionLoop":
        self._thread = threading.Thread(target=self.run, name="pdscaler-decision-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)


def _speed(clock: Clock) -> float:
    return getattr(clock, "speedup", 1.0)


def _changed(old: Decision | None, new: Decision) -> bool:
    return old is None or old.replicas != new.replicas or {r: x.rule for r, x in old.reasons.items()} != {
        r: x.rule for r, x in new.reasons.items()
    }


def _one_line(d: Decision) -> str:
    parts = [f"{r}={rd.replicas} [{rd.reason}]" for r, rd in d.roles.items()]
    return f"graph={d.graph} " + " ".join(parts)
