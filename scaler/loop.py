"""The background decision loop: poll the metrics source, feed the engine, publish decisions.

This is the imperative shell around the pure Engine. It runs in its own thread so that a slow
Prometheus or a model fit never delays a gRPC answer: the server only reads the DecisionStore.

Time: the loop schedules, ages and decides on a `Timeline` (scaler/clock.py): the wall time at its
start plus monotonic time since, so that setting the system clock back or forward neither freezes
the polls nor shortens a stabilisation window. The sources are still asked at wall time (Prometheus
speaks wall time); each observation is placed on the timeline at the moment it was collected, so its
age is monotonic too.

Cluster reads: the replicas the cluster runs are adopted as soon as the ClusterWatcher has read them
(its listener), not after the next metrics collection, which may stall for its timeouts; the
collection itself runs outside the loop's lock. `ready` is set once every role's answer is more than
the floor held for want of data: adopted from the cluster, or decided on data by a poll after the
warm starts (so that a second replica's first answers are those of a warm forecast, like the running
one's).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from forecasting.demand import FORECAST_SERIES
from scaler.clock import Clock, speed, timeline
from scaler.decision import Decision
from scaler.engine import Engine
from scaler.kube.replicas import with_replicas
from scaler.observation import Observation
from scaler.policy.rule import HELD
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
        self.time = timeline(clock)  # steady, epoch-like seconds: scheduling, ages, decisions
        self.metrics = metrics
        self.cluster = cluster  # cluster reads (scaler/kube), merged from its last snapshot
        self.interval = engine.config.poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_error: str | None = None
        self.last_tick_at = self.time.now()
        self.polled = False  # a poll completed
        self._lock = threading.RLock()  # engine state: tick vs reload vs adoption (other threads)
        self._pending_warm: list[str] = []
        self._fleet = None  # a fleet warm start in worker processes (scaler/warm_fleet.py)
        self._fleet_engine: Engine | None = None
        self._fleet_failed = False  # the workers could not start: warm starts in the loop
        self._notes: dict[str, tuple[str, ...]] = {}  # the data problems last logged, per graph
        # (graph, role) whose answer is more than the floor held for want of data (adopted, or decided
        # on data); `ready` once all are.
        self._settled: set[tuple[str, str]] = set()
        self._adopted: set[tuple[str, str]] = set()  # of those, the ones adopted (cluster, last decisions)
        self._warm_polled = False  # a poll decided after every pending warm start
        self.ready = threading.Event()
        self.ready_reason = ""
        self._jumped = 0.0  # the wall clock's offset last logged
        self._forecast_s = [0.0, 0.0]  # wall, CPU seconds in the engine's forecasts (stage "forecast")
        self._time_forecasts(engine)
        # Answer from the first moment: the floor for every graph, with the reason "no observation yet".
        self.store.publish(engine.decide_all(self.time.now()))
        if cluster is not None and hasattr(cluster, "subscribe"):
            cluster.subscribe(self.on_cluster_reading)

    def tick(self) -> dict[str, Decision]:
        """One poll: collect, observe, decide, publish. Never raises for source problems. The engine is
        locked around the collection, not during it (scaler/loop.py's docstring)."""
        return self._tick()

    def reload(self, engine: Engine, source: MetricsSource) -> None:
        """Switch to a new configuration's engine and source between polls. Roles that persist keep
        their last targets (no drop to the floor); every graph is warm-started again."""
        with self._lock:
            old, old_source = self.engine, self.source
            for g in engine.graphs:
                if g in old.graphs:
                    engine.adopt_replicas(g, {r: t for r, t in old.targets(g).items() if t is not None})
                    latest = old.latest(g)
                    if latest is not None:
                        engine.observe(latest)
            self._time_forecasts(engine)
            self.engine, self.source = engine, source
            self.interval = engine.config.poll_interval
            self._pending_warm = list(engine.graphs) if self.can_warm_start() else []
        if old_source is not source:
            try:
                old_source.close()
            except Exception:
                pass

    def _time_forecasts(self, engine: Engine) -> None:
        """Count the time the engine's decisions spend forecasting (its `forecast`, which every decide
        calls once per graph), so that a poll's "forecast" stage is told apart from the rest of "decide"."""
        inner, spent = engine.forecast, self._forecast_s

        def forecast(*args, **kwargs):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - w0
                spent[1] += time.thread_time() - c0

        engine.forecast = forecast  # type: ignore[method-assign]

    def on_cluster_reading(self, graph: str, reading) -> None:
        """The ClusterWatcher read `graph` (its thread): adopt its replicas now, without waiting for the
        metrics collection, and publish the decision that holds them (the first answer of a restart)."""
        with self._lock:
            now = self.time.now()
            if not self._adopt(graph, reading, now):
                return
            try:
                decision = self.engine.decide(now, graph)
            except Exception:
                log.exception("deciding %s after adopting its replicas failed", graph)
                return
            self._mark_ready("the cluster's replicas adopted")
            self.store.publish({graph: decision})

    def _adopt(self, graph: str, reading, now: float) -> list[str]:
        """Adopt a fresh cluster reading's replicas for the roles that have no target yet (or only the
        floor held for want of data); they count as settled (caller holds the lock)."""
        if graph not in self.engine.graphs or not 0 <= now - reading.at <= self.engine.config.stale_after:
            return []
        current = {r: rr.desired for r, rr in reading.roles.items() if rr.desired is not None}
        adopted = self.engine.adopt_replicas(graph, current, at=now)
        if adopted:
            log.info("graph %s: adopted the cluster's replicas %s", graph, current)
        roles = {(graph, r) for r in current if r in self.engine.graph_config(graph).roles}
        self._settled |= roles
        self._adopted |= roles
        return adopted

    def settle(self, graph: str, roles) -> None:
        """Count these roles as answered with more than the floor (a restarted decision process that
        started from the last decisions)."""
        with self._lock:
            self._settled |= {(graph, r) for r in roles}
            self._adopted |= {(graph, r) for r in roles}

    def _mark_ready(self, why: str) -> None:
        """Set `ready` once every role of every graph is settled, and either adopted or decided after
        the warm starts (caller holds the lock)."""
        if self.ready.is_set():
            return
        wanted = {(g, r) for g in self.engine.graphs for r in self.engine.graph_config(g).roles}
        if wanted <= self._settled and (wanted <= self._adopted or self._warm_polled):
            self.ready_reason = why
            self.ready.set()
            log.info("first answers ready: %s", why)

    def _tick(self) -> dict[str, Decision]:
        with self._lock:  # the cluster's replicas first: adoption never waits on the metrics
            readings = self.cluster.snapshot() if self.cluster is not None else {}
            started = self.time.now()
            for g, reading in readings.items():
                self._adopt(g, reading, started)
            source, wall = self.source, self.time.wall()
        t0, c0 = time.perf_counter(), time.thread_time()
        m = self.metrics
        try:  # outside the lock: a stalled source delays neither adoption nor a reload
            observations = source.collect(wall)
            self.last_error = None
        except Exception as e:  # a broken source must not stop the loop: decisions then hold
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("metrics source failed: %s", self.last_error)
            observations = []
            if m is not None:
                m.source_errors.labels(type(e).__name__).inc()
        t1 = time.perf_counter()
        stages = {"collect": (t1 - t0, time.thread_time() - c0)}
        with self._lock:
            return self._decide_tick(observations, started, wall, t0, t1, stages)

    def _decide_tick(self, observations: list[Observation], started: float, wall: float, t0: float,
                     t1: float, stages: dict[str, tuple[float, float]] | None = None) -> dict[str, Decision]:
        m = self.metrics
        stages = {} if stages is None else stages
        c1 = time.thread_time()
        now = max(self.time.now(), started)
        self._check_wall_clock(started, wall)
        readings = self.cluster.snapshot() if self.cluster is not None else {}
        for g, reading in readings.items():
            self._adopt(g, reading, now)
        for obs in observations:
            if obs.graph not in self.engine.graphs:
                continue  # a graph a reload removed while the source was read
            # Asked at wall time `wall`; on the timeline, it was seen at `started` (never in the future).
            obs = replace(obs, at=min(started, obs.at - (wall - started)))
            self._observe(with_replicas(obs, readings.get(obs.graph), now, self.engine.config.stale_after))
        t2, c2 = time.perf_counter(), time.thread_time()
        stages["observe"] = (t2 - t1, c2 - c1)
        fc0 = list(self._forecast_s)
        decisions = self._decide_all(now)
        t3, c3 = time.perf_counter(), time.thread_time()
        fc = (self._forecast_s[0] - fc0[0], self._forecast_s[1] - fc0[1])
        stages["forecast"] = fc
        stages["decide"] = (max(0.0, t3 - t2 - fc[0]), max(0.0, c3 - c2 - fc[1]))
        self._warm_polled = self._warm_polled or not self._pending_warm
        for g, d in decisions.items():
            self._settled |= {(g, r) for r, rd in d.roles.items() if rd.reason.rule not in HELD}
        for g, reading in readings.items():
            if reading.conflicts and g in decisions:
                decisions[g] = replace(decisions[g], warnings=reading.conflicts)
        for g, d in decisions.items():  # data problems: logged when they change, not every poll
            notes = tuple(_generic(n) for n in d.notes)
            if notes != self._notes.get(g, ()):
                if notes:
                    log.warning("graph %s: %s", g, "; ".join(d.notes[:5]) + (" ..." if len(d.notes) > 5 else ""))
                elif g in self._notes:
                    log.info("graph %s: data problems cleared", g)
                self._notes[g] = notes
        changed = {g: d for g, d in decisions.items() if _changed(self.store.get(g), d)}
        self.ticks += 1
        self.last_tick_at = max(self.time.now(), self.last_tick_at)
        self.polled = True
        # before the publish, so that what it sends says so:
        self._mark_ready("every role adopted from the cluster or decided on data after the warm starts")
        t4, c4 = time.perf_counter(), time.thread_time()
        self.store.publish(decisions)
        stages["publish"] = (time.perf_counter() - t4, time.thread_time() - c4)
        for d in changed.values():
            log.info("decision %s", _one_line(d))
        if m is not None:
            for stage, (wall_s, cpu_s) in stages.items():
                m.observe_stage(stage, wall_s, cpu_s)
            m.source_up.set(0 if self.last_error else 1)
            m.collect_seconds.observe(t1 - t0)
            m.decide_seconds.observe(t3 - t2)
            m.poll_seconds.observe(time.perf_counter() - t0)
            m.polls.inc()
        return decisions

    def _decide_all(self, now: float) -> dict[str, Decision]:
        """Every graph's decision; a graph whose decision fails keeps its last one (logged, counted)."""
        out = {}
        for g in self.engine.graphs:
            try:
                out[g] = self.engine.decide(now, g)
            except Exception as e:  # a bug or a broken model must not stop the other graphs
                log.exception("deciding %s failed; keeping its last decision", g)
                if self.metrics is not None:
                    self.metrics.decide_errors.labels(g).inc()
                last = self.store.get(g)
                if last is not None:
                    out[g] = replace(last, notes=last.notes[-4:] + (f"decision failed at t={now:.0f} "
                                                                    f"({type(e).__name__}); kept the last one",))
        return out

    def _check_wall_clock(self, now: float, wall: float) -> None:
        """Log once when the wall clock was set (back or forward) by more than a poll interval."""
        offset = wall - now
        if abs(offset - self._jumped) > max(self.interval, 1.0):
            log.warning("the wall clock was set %+.0fs (since start: %+.0fs); polls, ages and decision windows "
                        "keep the monotonic clock, Prometheus is asked at wall time", offset - self._jumped, offset)
            self._jumped = offset

    def healthy(self) -> tuple[bool, str]:
        """False when no poll has completed for `stuck_after` (a hung source or model)."""
        age = max(0.0, self.time.now() - self.last_tick_at)
        limit = self.engine.config.stuck_after
        if age > limit:
            return False, f"no decision-loop poll completed for {age:.0f}s (> stuck_after {limit:.0f}s)"
        return True, f"last poll {age:.0f}s ago"

    def can_warm_start(self) -> bool:
        return self.source.keeps_history and self.engine.config.forecast.warm_start > 0

    def warm_start(self) -> dict[str, list[str]]:
        """Fit every graph's forecasts on the source's history, when it has one (Prometheus)."""
        if not self.can_warm_start():
            return {}
        return {g: self.warm_start_graph(g) for g in self.engine.graphs}

    def _start_fleet_warm(self) -> None:
        """A fleet read from Prometheus: fit the pending graphs in worker processes (scaler/warm_fleet.py);
        the loop adopts their models between polls (`_adopt_fleet_warm`)."""
        from scaler.warm_fleet import FLEET_MIN_GRAPHS, FleetWarmStart

        with self._lock:
            if (self._fleet_failed or len(self._pending_warm) < FLEET_MIN_GRAPHS
                    or not hasattr(self.source, "history_many")):
                return
            graphs = list(self._pending_warm)
            for g in graphs:  # the points observed from now on are replayed into the fitted models
                self.engine.warm_start(g, pending=True)
            end = self.time.wall()
            offset = end - self.time.now()
            engine = self.engine
        try:
            self._fleet = FleetWarmStart(engine.config, graphs, end, offset)
            self._fleet_engine = engine
            log.info("warm start of %d graphs in worker processes", len(graphs))
        except Exception as e:  # no worker: the loop warm-starts them one at a time
            log.warning("warm start workers failed to start (%s); warm-starting in the loop", e)
            self._fleet_failed = True
            with self._lock:
                for g in graphs:
                    engine.warm_start(g, fitted=({}, None))

    def _adopt_fleet_warm(self) -> None:
        """Adopt the models of the chunks the workers finished (between polls)."""
        fleet = self._fleet
        if fleet is None:
            return
        if self._fleet_engine is not self.engine:  # reloaded: the workers fit the old configuration
            fleet.close()
            self._fleet = None
            return  # started again for the new one (run)
        for graphs, fitted, error, wall in fleet.finished():
            with self._lock:
                for g in graphs:
                    if g not in self.engine.graphs:
                        continue
                    models, last_t = (fitted or {}).get(g, ({}, None))
                    try:
                        got = self.engine.warm_start(g, fitted=(models, last_t))
                    except Exception as e:
                        log.warning("warm start of %s failed to adopt: %s", g, e)
                        got = []
                    if error is None:
                        log.info("warm start of %s: fitted %s", g, ", ".join(got) or "nothing (no history)")
                done = set(graphs)
                self._pending_warm = [g for g in self._pending_warm if g not in done]
            _trim()  # the cold models' memory, replaced: back to the system
            if error is not None:
                log.warning("warm start of %d graphs failed in a worker: %s", len(graphs), error)
            elif self.metrics is not None:  # the chunk's time in the worker (query and fit), per graph
                for g in graphs:
                    self.metrics.fit_seconds.labels(g).observe(wall / max(1, len(graphs)))
        if fleet.done:
            log.info("warm start of the fleet done in %.0f s (%.0f CPU-s in workers)",
                     time.monotonic() - fleet.started, fleet.cpu_s)
            fleet.close()
            self._fleet = None

    def warm_start_graph(self, graph: str) -> list[str]:
        """Fit one graph's forecasts on the last `forecast.warm_start` of history; never fatal."""
        fc = self.engine.config.forecast
        end = self.time.wall()  # Prometheus' time; its timestamps are moved onto the timeline
        offset = end - self.time.now()
        wanted = [(None, name) for name in FORECAST_SERIES]
        try:
            got = self.source.history(graph, wanted, end - fc.warm_start, end, fc.warm_start_step)
        except Exception as e:  # warm start is an optimisation
            log.warning("warm start of %s failed: %s", graph, e)
            return []
        t0 = time.perf_counter()
        try:
            fitted = self.engine.warm_start(graph, {name: (ts - offset if offset else ts, ys)
                                                    for (_, name), (ts, ys) in got.items()})
        except Exception as e:
            log.warning("warm start of %s failed to fit: %s", graph, e)
            return []
        if self.metrics is not None:
            self.metrics.fit_seconds.labels(graph).observe(time.perf_counter() - t0)
        log.info("warm start of %s: fitted %s", graph, ", ".join(fitted) or "nothing (no history)")
        return fitted

    def _observe(self, obs: Observation) -> None:
        try:
            self.engine.observe(obs)
        except (KeyError, ValueError) as e:
            log.warning("dropped observation of %r: %s", obs.graph, e)

    def run(self) -> None:
        if self.cluster is not None:  # start from the replicas the cluster runs, not from the floor
            self.cluster.first_poll.wait(2 * self.engine.config.kubernetes.timeout + 1)
        # Warm starts run between polls, up to half of each interval, so that decisions flow from the
        # first poll even when fitting hundreds of graphs on their history takes minutes.
        self._pending_warm = list(self.engine.graphs) if self.can_warm_start() else []
        self._start_fleet_warm()
        clock = self.time  # monotonic: a wall clock set back or forward changes nothing here
        next_at = clock.now()
        while not self._stop.is_set():
            self.tick()
            budget_end = time.monotonic() + 0.5 * self.interval / speed(self.clock)
            self._adopt_fleet_warm()
            if self._fleet is None and self._pending_warm:
                self._start_fleet_warm()  # (again, after a reload)
            while self._fleet is None and not self._stop.is_set() and time.monotonic() < budget_end:
                with self._lock:
                    if not self._pending_warm:
                        break
                    self.warm_start_graph(self._pending_warm.pop(0))
            next_at += self.interval
            if clock.now() > next_at + self.interval:
                next_at = clock.now()  # fell behind (slow source, suspended): skip, do not burst
            # Wait in small slices so stop() is prompt with a long interval or a virtual clock.
            while not self._stop.is_set() and clock.now() < next_at:
                self._stop.wait(min(0.05, max(0.001, (next_at - clock.now()) / speed(self.clock))))

    def start(self) -> "DecisionLoop":
        self._thread = threading.Thread(target=self.run, name="pdscaler-decision-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        if self._fleet is not None:
            self._fleet.close()


def _trim() -> None:
    from scaler.warm_fleet import malloc_trim

    malloc_trim()


def _generic(note: str) -> str:
    """A note without its numbers (ages, values change every poll; the problem does not)."""
    return "".join("#" if c.isdigit() else c for c in note)


def _changed(old: Decision | None, new: Decision) -> bool:
    return old is None or old.replicas != new.replicas or {r: x.rule for r, x in old.reasons.items()} != {
        r: x.rule for r, x in new.reasons.items()
    }


def _one_line(d: Decision) -> str:
    parts = [f"{r}={rd.replicas} [{rd.reason}]" for r, rd in d.roles.items()]
    return f"graph={d.graph} " + " ".join(parts)
