"""Background fits: one worker process that runs model fits off the decision path.

``RefitWorker.submit(fn, payload, timeout_s)`` returns a ``concurrent.futures.Future`` at once; a
dispatcher thread hands jobs, in submission order, to ONE worker process (spawn context: no forked
copy of the scaler's threads, sockets or locks). The caller polls ``future.done()`` when convenient
(the Prophet model does so on update/predict) and never waits.

- A job that runs longer than its timeout (counted from when it starts, not while it queues) is
  abandoned: the future fails with ``TimeoutError`` and the worker process is killed with its whole
  process group (a fit may run a CmdStan child process), then restarted for the next job.
- A job that raises fails its future with that exception; a worker that dies fails the running job.
- ``fn`` and ``payload`` must be picklable (``fn`` a module-level function); results come back by
  pickle too.

``shared_worker()`` is the process-wide instance (started on first use, stopped at exit), so 1,000
series share one process and one Python/Prophet import.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

log = logging.getLogger(__name__)


def _worker_main(conn) -> None:  # runs in the worker process
    try:
        os.setpgrp()  # own process group, so that a timeout kills the fit's children too
    except (AttributeError, OSError):
        pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, payload = msg
        try:
            result = (True, fn(payload))
        except BaseException as exc:  # report everything; the parent decides
            result = (False, exc)
        try:
            conn.send(result)
        except Exception as exc:  # e.g. an unpicklable result or exception
            conn.send((False, RuntimeError(f"could not return the fit's result: {exc!r}")))


class RefitWorker:
    """One background process running jobs in order, with per-job timeouts."""

    def __init__(self, start_method: str = "spawn") -> None:
        self._ctx = mp.get_context(start_method)
        self._jobs: queue.Queue = queue.Queue()
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  # worker processes started (for tests and metrics)
        self.timeouts = 0
        self._thread = threading.Thread(target=self._dispatch, name="pdscaler-refit", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], Any], payload: Any, timeout_s: float = 120.0) -> Future:
        """Queue fn(payload) for the worker; returns its future immediately."""
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError("refit worker is closed"))
            return fut
        self._jobs.put((fut, fn, payload, float(timeout_s)))
        return fut

    @property
    def pending(self) -> int:
        """Jobs queued and not yet started."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Stop the worker process and the dispatcher; queued jobs are cancelled."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join(5)
        with self._lock:
            self._stop_process(graceful=True)

    # -- dispatcher thread --------------------------------------------------------------------

    def _ensure_process(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._stop_process(graceful=False)
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child,), name="pdscaler-refit-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.started += 1

    def _stop_process(self, graceful: bool) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        if graceful and proc.is_alive():
            try:
                conn.send(None)
                proc.join(2)
            except Exception:
                pass
        if proc.is_alive():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (AttributeError, OSError):
                proc.kill()
            proc.join(5)
        try:
            conn.close()
        except Exception:
            pass

    def _dispatch(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                while True:  # cancel what is left
                    try:
                        rest = self._jobs.get_nowait()
                    except queue.Empty:
                        return
                    if rest is not None:
                        rest[0].cancel()
            fut, fn, payload, timeout_s = job
            if not fut.set_running_or_notify_cancel():
                continue
            with self._lock:
                try:
                    self._ensure_process()
                    self._conn.send((fn, payload))
                except Exception as exc:
                    fut.set_exception(exc)
                    self._stop_process(graceful=False)
                    continue
                conn = self._conn
            deadline = time.monotonic() + timeout_s
            try:
                ready = conn.poll(max(0.0, deadline - time.monotonic()))
                if not ready:
                    self.timeouts += 1
                    log.warning("background fit abandoned after %.1f s; worker restarted", timeout_s)
                    with self._lock:
                        self._stop_process(graceful=False)
                    fut.set_exception(TimeoutError(f"fit did not finish within {timeout_s:g} s"))
                    continue
                ok, value = conn.recv()
            except (EOFError, OSError) as exc:
                with self._lock:
                    self._stop_process(graceful=False)
                fut.set_exception(RuntimeError(f"refit worker died: {exc!r}"))
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value if isinstance(value, BaseException) else RuntimeError(str(value)))


_SHARED: RefitWorker | None = None
_SHARED_LOCK = threading.Lock()


def shared_worker() -> RefitWorker:
    """The process-wide worker (started on first use, closed at interpreter exit)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._closed:
            _SHARED = RefitWorker()
            atexit.register(_SHARED.close)
        return _SHARED
