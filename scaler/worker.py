"""The decision loop in a process of its own, for `pdscaler serve`.

Reading metrics, forecasting and deciding hundreds of graphs is CPU work; in the process that answers
KEDA it would hold the GIL for seconds each poll and the answers would wait on it. So `serve` runs the
DecisionLoop (metrics source, engine, cluster reads) in a spawned child process, which sends each
poll's decisions (with the observations, cluster facts and its own metrics) through a pipe. The serving
process only stores them and answers from memory. Config reloads are validated in the serving process
and sent to the child.

Health (`healthy()`, for gRPC health and /healthz):
- until the child's first answers are ready (every role adopted from the cluster or decided on data,
  scaler/loop.py) and for at most `first_answer_timeout`: NOT_SERVING, so that KEDA, through the
  readiness probe, never reads the floor from a fresh replica;
- while the child is down: NOT_SERVING. A child that exits (killed, crashed) is started again after
  1 s, then 2, 4, ... at most 30 s between attempts (`RESTART_BACKOFF`; back to 1 s once a child
  has run for `RESTART_RESET` s); answers keep the last decisions meanwhile, and the new child
  starts from them (adopted, inside their scale-down windows). Counted in
  `pdscaler_decision_process_restarts_total`;
- no poll completed for `stuck_after`: NOT_SERVING (the liveness probe restarts the pod).

Time is the serving process's Timeline (scaler/clock.py), whose anchor every child shares.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from scaler.clock import Timeline, timeline
from scaler.config import ScalerConfig
from scaler.decision import Decision
from scaler.store import DecisionStore

log = logging.getLogger("pdscaler.worker")

RESTART_BACKOFF = (1.0, 30.0)  # s: the first delay before starting a dead child again, and the longest
RESTART_RESET = 60.0  # s: a child that ran this long starts the backoff again from its first delay
# The decision process runs at this niceness (added to the serving process's): when both want a core,
# the scheduler gives the one answering KEDA about 9 in 10 time slices (CFS weights 1024 vs 110), and
# the decisions, which have 15 s, take the rest. 0 = the same priority.
# PDSCALER_DECISION_NICE overrides it (e.g. 0 on a machine shared with other busy processes outside
# the pod's cgroup, where nice would yield to them too).
DECISION_NICE = 10


def decision_nice() -> int:
    """DECISION_NICE, or PDSCALER_DECISION_NICE when it is an integer (else a warning and the default)."""
    env = os.environ.get("PDSCALER_DECISION_NICE")
    if env is None:
        return DECISION_NICE
    try:
        return int(env)
    except ValueError:
        log.warning("PDSCALER_DECISION_NICE=%r is not an integer; the decision process runs at nice +%d",
                    env, DECISION_NICE)
        return DECISION_NICE
_gc_frozen = False


@dataclass
class Tick:
    """What the child sends after publishes: the decisions changed since its last send (without their
    forecast arrays, which only the child's metrics use) and the child's metrics page (its loop instruments and the decision
    series; the serving process adds the ages). `polled_at`: when its last poll completed (None before
    the first); `ready`: its first answers are ready (scaler/loop.py)."""

    at: float
    decisions: dict[str, Decision]
    metrics: bytes = b""
    polled_at: float | None = None
    ready: bool = False


def _child(config: ScalerConfig, conn, log_level: int, anchor: tuple[float, float] | None = None,
           handover: dict[str, dict[str, int]] | None = None) -> None:  # pragma: no cover - runs in the child
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    nice = decision_nice()
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: the same priority as the serving process
            pass
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from scaler.clock import SystemClock
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.metrics import ScalerMetrics
    from scaler.sources import build_source

    clock, metrics = Timeline(SystemClock(), anchor), ScalerMetrics(parts=("loop",))
    cluster = None
    if config.kubernetes.enabled:
        from scaler.kube.api import KubeApi
        from scaler.kube.watcher import ClusterWatcher

        cluster = ClusterWatcher(config, KubeApi.from_config(config.kubernetes), clock,
                                 errors=lambda g, n: metrics.cluster_errors.labels(g).inc(n))
    store = DecisionStore()
    holder: dict[str, Any] = {}
    wanted = threading.Event()  # something was published since the last send

    def send(sent: dict[str, Decision]) -> dict[str, Decision]:
        """Send what changed since `sent` (all of it after a poll; one graph after a cluster adoption)
        with the metrics page; returns what the serving process now has."""
        loop = holder["loop"]
        w0, c0 = time.perf_counter(), time.thread_time()
        current = dict(store.all())
        with _no_gc():  # tens of thousands of short-lived rows: the cycle collector would scan the whole
            # heap (the forecasters) several times over for them, half the cost of the page
            decisions = {g: replace(d, forecast=None) for g, d in current.items() if sent.get(g) is not d}
            tick = Tick(at=clock.now(), decisions=decisions, metrics=metrics.exposition(),
                        polled_at=loop.last_tick_at if loop.polled else None, ready=loop.ready.is_set())
        conn.send(tick)
        metrics.observe_stage("send", time.perf_counter() - w0, time.thread_time() - c0)
        return current

    def sender() -> None:
        """Sends after publishes, off the loop's thread; a burst of publishes (the cluster's replicas
        adopted graph by graph at start) is one send, not one page per graph."""
        sent: dict[str, Decision] = {}
        while True:
            wanted.wait()
            wanted.clear()
            if holder.get("stop"):
                return
            if "loop" not in holder:
                continue
            try:
                sent = send(sent)
            except (OSError, ValueError):
                return  # the parent is gone; the receive loop below ends the process
            except Exception:
                log.exception("sending the decisions to the serving process failed")

    store.subscribe(wanted.set)
    engine = Engine(config, live=True)
    started = {}
    for g, targets in (handover or {}).items():  # a restarted child: the last answers, not the floor
        if g in engine.graphs and engine.adopt_replicas(g, targets, at=clock.now()):
            log.info("graph %s: started from the last decisions %s", g, targets)
            started[g] = targets
    loop = DecisionLoop(engine, build_source(config), store, clock, cluster, metrics)
    for g, targets in started.items():
        loop.settle(g, targets)
    collector = metrics.watch(config, store, lambda: loop.engine, cluster, clock.now, ages=False)
    holder["loop"] = loop
    wanted.clear()  # the loop's first publish (floors, or the handed-over answers) is the parent's already
    threading.Thread(target=sender, name="pdscaler-decisions-tx", daemon=True).start()
    if cluster is not None:
        cluster.start()
    loop.start()
    try:
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, OSError):
                break
            if command == "stop":
                break
            if command == "reload":
                try:
                    loop.reload(Engine(arg, live=True), build_source(arg))
                    collector.config = arg
                    if cluster is not None:
                        cluster.config = arg.model_copy(update={"kubernetes": cluster.config.kubernetes})
                except Exception:
                    log.exception("reload in the decision worker failed; the running config stays")
    finally:
        holder["stop"] = True
        wanted.set()
        loop.stop()
        loop.source.close()
        if cluster is not None:
            cluster.stop()


class _no_gc:
    """The cycle collector off for a block (it is process-wide: for short blocks only); on again after,
    unless it was off before."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.was:
            gc.enable()


class _no_gc_after(_no_gc):
    """_no_gc once `conn` has data: waiting for the next tick (15 s) never holds the collector off."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.poll(None)
        except (EOFError, OSError):
            pass  # recv() below raises it
        super().__enter__()


def restart_delay(failures: int, first: float = RESTART_BACKOFF[0], longest: float = RESTART_BACKOFF[1]) -> float:
    """Seconds before starting the decision process again after its `failures`-th exit in a row:
    `first`, doubling, at most `longest`."""
    return min(longest, first * 2 ** min(max(failures, 1) - 1, 30))


def handover(decisions: dict[str, Decision], config: ScalerConfig) -> dict[str, dict[str, int]]:
    """Per graph, the targets a restarted child starts from: the last answers (advisory mode: what was
    advised), except a floor held for want of data (the cluster's replicas may still replace that)."""
    from scaler.policy.rule import HELD

    out: dict[str, dict[str, int]] = {}
    for g, d in decisions.items():
        gcfg = config.graphs.get(g)
        if gcfg is None:
            continue
        targets = {}
        for role, rd in d.roles.items():
            value = rd.advised if rd.advised is not None else rd.replicas
            rcfg = gcfg.roles.get(role)
            if rcfg is None or (rd.reason.rule in HELD and value <= rcfg.min_replicas):
                continue
            targets[role] = value
        if targets:
            out[g] = targets
    return out


class DecisionWorker:
    """The serving process's side: starts the child (again when it dies), publishes what it sends,
    forwards reloads, and says whether its answers can be trusted (`healthy`)."""

    def __init__(self, config: ScalerConfig, store: DecisionStore, clock, registry=None,
                 backoff: tuple[float, float] = RESTART_BACKOFF) -> None:
        from scaler.engine import Engine

        self.config, self.store = config, store
        self.clock = timeline(clock)  # steady: ages and timeouts never jump with the wall clock
        self.backoff = backoff
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.proc: Any = None
        self._conn: Any = None
        self.tick: Tick | None = None  # the current child's last
        self.last_decisions: dict[str, Decision] = {}  # from any child: what a restarted one starts from
        self.started_at = self.clock.now()  # of the current child
        self.restarts = 0
        self.down: str | None = None  # why the child is not running (None while it runs)
        self.on_change: Callable[[], None] | None = None  # health may have changed (from worker threads)
        self._ready_told = False
        self.restart_counter = None
        if registry is not None:
            from prometheus_client import Counter

            self.restart_counter = Counter("pdscaler_decision_process_restarts_total",
                                           "times the decision process was started again after it exited",
                                           registry=registry)
        # Answer from the first moment, like the in-process loop: the floors, "no observation yet".
        store.publish(Engine(config).decide_all(self.clock.now()))

    # --- the child's life ---------------------------------------------------------------------------

    def start(self) -> "DecisionWorker":
        global _gc_frozen
        if not _gc_frozen:  # once per process: what lives from here on (modules, the config, the server)
            # is left out of the cycle collector's full passes, which then scan only the last decisions
            # (~11,000 objects at 1,000 graphs, a few ms) instead of everything (tens of ms of the GIL)
            _gc_frozen = True
            gc.collect()
            gc.freeze()
        self._spawn()
        threading.Thread(target=self._supervise, name="pdscaler-decisions-supervisor", daemon=True).start()
        return self

    def _spawn(self) -> None:
        conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child, name="pdscaler-decisions", daemon=True,
            args=(self.config, child_conn, logging.getLogger().level, self.clock.anchor,
                  handover(self.last_decisions, self.config)))
        with self._lock:
            self.tick, self._ready_told = None, False
            self.started_at = self.clock.now()
            proc.start()
            self.proc, self._conn, self.down = proc, conn, None
        child_conn.close()  # the child's end lives in the child: its death is our end-of-file
        log.info("decision process started (pid %d)", proc.pid)
        threading.Thread(target=self._receive, args=(conn,), name="pdscaler-decisions-rx", daemon=True).start()
        self._changed()

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self.proc
            proc.join()
            if self._stopping.is_set():
                return
            lived = self.clock.now() - self.started_at
            failures = 1 if lived >= RESTART_RESET else failures + 1
            delay = restart_delay(failures, *self.backoff)
            with self._lock:
                self.down = (f"the decision process exited (code {proc.exitcode}); starting it again in "
                             f"{delay:g}s; answers keep the last decisions")
            log.error("%s", self.down)
            self._changed()
            self._wake.wait(delay)
            if self._stopping.is_set():
                return
            self.restarts += 1
            if self.restart_counter is not None:
                self.restart_counter.inc()
            try:
                self._spawn()
            except Exception:  # e.g. no file descriptors left: the next attempt waits longer
                log.exception("starting the decision process again failed")
                with self._lock:
                    self.down = "the decision process could not be started again; answers keep the last decisions"

    def _receive(self, conn) -> None:
        while True:
            try:
                with _no_gc_after(conn):  # unpickled while the collector waits (a full pass mid-way costs
                    tick = conn.recv()    # the event loop the GIL for tens of ms)
            except (EOFError, OSError):
                return
            with self._lock:
                if conn is not self._conn:
                    return  # an old child's last words
                known = {g: d for g, d in tick.decisions.items() if g in self.config.graphs}
                self.tick = tick
                self.last_decisions = {**self.last_decisions, **known}
                tell = tick.ready and not self._ready_told
                self._ready_told = self._ready_told or tick.ready
            self.store.publish(known)
            if tell:
                self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # e.g. the event loop is closing
                pass

    def reload(self, config: ScalerConfig) -> None:
        with self._lock:
            self.config = config
            self.last_decisions = {g: d for g, d in self.last_decisions.items() if g in config.graphs}
        try:
            self._conn.send(("reload", config))
        except (OSError, ValueError, AttributeError):  # the child is down: the next one starts with it
            pass

    # --- health ---------------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        with self._lock:
            proc, tick, down, started = self.proc, self.tick, self.down, self.started_at
        if down is not None:
            return False, down
        if proc is None:
            return False, "the decision process has not started"
        if not proc.is_alive() and proc.exitcode is not None:
            return False, f"the decision process exited (code {proc.exitcode}); answers keep the last decisions"
        now = self.clock.now()
        waited = max(0.0, now - started)
        if not (tick is not None and tick.ready) and waited < self.config.first_answer_timeout:
            return False, (f"waiting for the first answers (the cluster's replicas adopted, or a poll decided "
                           f"on data): {waited:.0f}s of first_answer_timeout {self.config.first_answer_timeout:.0f}s")
        last = tick.polled_at if tick is not None and tick.polled_at is not None else started
        age = max(0.0, now - last)
        if age > self.config.stuck_after:
            return False, f"no decision-loop poll completed for {age:.0f}s (> stuck_after {self.config.stuck_after:.0f}s)"
        ready = "" if tick is not None and tick.ready else "; first answers not ready after first_answer_timeout"
        return True, f"last poll {age:.0f}s ago" + ready

    def child_metrics(self) -> bytes:
        tick = self.tick
        return tick.metrics if tick is not None else b""

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        proc = self.proc
        if proc is None:
            return
        try:
            self._conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(2)
