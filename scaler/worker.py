"""The decision loop in a process of its own, for `pdscaler serve`.

Reading metrics, forecasting and deciding hundreds of graphs is CPU work; in the process that answers
KEDA it would hold the GIL for seconds each poll and the answers would wait on it. So `serve` runs the
DecisionLoop (metrics source, engine, cluster reads) in a spawned child process, which sends each
poll's decisions (with the observations, cluster facts and its own metrics) through a pipe. The serving
process only stores them and answers from memory. Config reloads are validated in the serving process
and sent to the child; if the child dies, health turns NOT_SERVING and answers keep the last decisions.

Until the child's first answers are ready (every role adopted from the cluster or decided on data,
scaler/loop.py), and for at most `first_answer_timeout`, health is NOT_SERVING too: KEDA, through the
readiness probe, never reads the floor from a fresh replica.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

from scaler.config import ScalerConfig
from scaler.decision import Decision
from scaler.store import DecisionStore

log = logging.getLogger("pdscaler.worker")


@dataclass
class Tick:
    """What the child sends after each poll: the decisions (without their forecast arrays, which only
    the child's metrics use) and the child's metrics page (its loop instruments and the decision
    series; the serving process adds the ages). `polled_at`: when its last poll completed (None before
    the first); `ready`: its first answers are ready (scaler/loop.py)."""

    at: float
    decisions: dict[str, Decision]
    metrics: bytes = b""
    polled_at: float | None = None
    ready: bool = False


def _child(config: ScalerConfig, conn, log_level: int) -> None:  # pragma: no cover - runs in the child
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from scaler.clock import SystemClock
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.metrics import ScalerMetrics
    from scaler.sources import build_source

    clock, metrics = SystemClock(), ScalerMetrics(parts=("loop",))
    cluster = None
    if config.kubernetes.enabled:
        from scaler.kube.api import KubeApi
        from scaler.kube.watcher import ClusterWatcher

        cluster = ClusterWatcher(config, KubeApi.from_config(config.kubernetes), clock,
                                 errors=lambda g, n: metrics.cluster_errors.labels(g).inc(n))
    store = DecisionStore()
    send_lock = threading.Lock()
    holder: dict[str, Any] = {}

    def send() -> None:
        loop = holder.get("loop")
        if loop is None:
            return
        decisions = {g: replace(d, forecast=None) for g, d in store.all().items()}
        tick = Tick(at=clock.now(), decisions=decisions, metrics=metrics.exposition(),
                    polled_at=loop.last_tick_at if loop.polled else None, ready=loop.ready.is_set())
        with send_lock:
            try:
                conn.send(tick)
            except (OSError, ValueError):
                pass  # the parent is gone; the receive loop below ends the process

    store.subscribe(send)
    loop = DecisionLoop(Engine(config, live=True), build_source(config), store, clock, cluster, metrics)
    collector = metrics.watch(config, store, lambda: loop.engine, cluster, clock.now, ages=False)
    holder["loop"] = loop
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
        loop.stop()
        loop.source.close()
        if cluster is not None:
            cluster.stop()


class DecisionWorker:
    """The serving process's side: starts the child, publishes what it sends, forwards reloads."""

    def __init__(self, config: ScalerConfig, store: DecisionStore, clock) -> None:
        from scaler.engine import Engine

        self.config, self.store, self.clock = config, store, clock
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(config, child_conn, logging.getLogger().level),
                                name="pdscaler-decisions", daemon=True)
        self.tick: Tick | None = None
        self.started_at = clock.now()
        self.on_change: Callable[[], None] | None = None  # health may have changed (from worker threads)
        # Answer from the first moment, like the in-process loop: the floors, "no observation yet".
        store.publish(Engine(config).decide_all(clock.now()))

    def start(self) -> "DecisionWorker":
        self.proc.start()
        threading.Thread(target=self._receive, name="pdscaler-decisions-rx", daemon=True).start()
        return self

    def _receive(self) -> None:
        while True:
            try:
                tick = self._conn.recv()
            except (EOFError, OSError):
                return
            known = {g: d for g, d in tick.decisions.items() if g in self.config.graphs}
            tell = tick.ready and not (self.tick is not None and self.tick.ready)
            self.tick = tick
            self.store.publish(known)
            if tell and self.on_change is not None:
                try:
                    self.on_change()
                except Exception:  # e.g. the event loop is closing
                    pass

    def reload(self, config: ScalerConfig) -> None:
        self.config = config
        self._conn.send(("reload", config))

    def healthy(self) -> tuple[bool, str]:
        if not self.proc.is_alive() and self.proc.exitcode is not None:
            return False, f"the decision worker exited (code {self.proc.exitcode}); answers keep the last decisions"
        tick, now = self.tick, self.clock.now()
        waited = now - self.started_at
        if not (tick is not None and tick.ready) and waited < self.config.first_answer_timeout:
            return False, (f"waiting for the first answers (the cluster's replicas adopted, or a poll decided "
                           f"on data): {waited:.0f}s of first_answer_timeout {self.config.first_answer_timeout:.0f}s")
        last = tick.polled_at if tick is not None and tick.polled_at is not None else self.started_at
        age = now - last
        if age > self.config.stuck_after:
            return False, f"no decision-loop poll completed for {age:.0f}s (> stuck_after {self.config.stuck_after:.0f}s)"
        ready = "" if tick is not None and tick.ready else "; first answers not ready after first_answer_timeout"
        return True, f"last poll {age:.0f}s ago" + ready

    def child_metrics(self) -> bytes:
        return self.tick.metrics if self.tick is not None else b""

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self._conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
