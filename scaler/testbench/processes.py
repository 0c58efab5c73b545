"""Child processes of the test bench: `pdscaler serve`, `pdscaler emulate` (and the other commands the
tests and load/ scripts run) started, waited on until ready, and stopped, in one place.

    with serve_process(config_path, prometheus_url="http://127.0.0.1:1") as scaler:
        grpc.insecure_channel(scaler.grpc_address) ...
        urllib.request.urlopen(scaler.http_url + "/metrics") ...
    scaler.output()                       # everything it printed (stdout and stderr)

- Ports: `serve` and `emulate` bind port 0 unless told a port, and report the port they bound in
  their start-up lines, which are parsed here: no port is picked and released before the child binds
  it. `free_port()` is for the cases where a port must be known before the child starts (a
  Prometheus scrape config naming the scaler).
- Readiness is an event: a line of the child's output (its "serving on ..." line), or an HTTP
  endpoint answering; never a fixed sleep. If the child exits first, the start fails with
  `ProcessFailed`; if the deadline passes, with `WaitTimeout` (a ProcessFailed and a TimeoutError):
  both carry the child's output, and their message ends with its last lines.
- Output: stdout and stderr, merged, read by a thread line by line, kept in memory (`output()`,
  `wait_for_output()`) and, with `log_path`, copied to a file as it comes.
- Stop: SIGTERM, then after `stop_timeout` SIGKILL. The child runs in its own process group; what
  is left of the group and of its descendants (psutil, if installed: e.g. the decision process of
  a killed `serve`, a refit worker in a group of its own) is killed with it.
- `started_since(mark)` / `running()` list the processes of this interpreter, so that a test harness
  can print their output when a test fails (tests/conftest.py does).

The bench may import the product; the product never imports this module.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "EmulatorProcess",
    "ManagedProcess",
    "ProcessFailed",
    "ScalerProcess",
    "WaitTimeout",
    "emulate_process",
    "free_port",
    "running",
    "serve_process",
    "started_since",
    "wait_http",
    "wait_until",
]

SERVE_LINE = re.compile(r"KEDA external scaler on (?P<host>.+):(?P<port>\d+) for graphs")
SERVE_HTTP_LINE = re.compile(r"explain and metrics on http://(?P<host>.+):(?P<port>\d+)/explain")
EMULATE_LINE = re.compile(r"pdscaler emulator for \S+ at (?P<url>http://\S+:(?P<port>\d+))")
TAIL_LINES = 60


class ProcessFailed(RuntimeError):
    """A child did not become ready (it exited, or the deadline passed); carries its output."""

    def __init__(self, message: str, output: str = "", returncode: int | None = None) -> None:
        tail = "\n".join(output.splitlines()[-TAIL_LINES:])
        super().__init__(f"{message}\n--- last output ---\n{tail}" if tail else message)
        self.output = output
        self.returncode = returncode


class WaitTimeout(ProcessFailed, TimeoutError):
    """A child did not print the awaited line, or become ready, in time; carries its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for a child that must be named before it starts; prefer port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               proc: "ManagedProcess | None" = None):
    """Call `cond` until it returns something truthy (returned); OSError counts as not yet. Raises
    TimeoutError after `timeout` s (WaitTimeout, with its output, when `proc` is given), or
    ProcessFailed as soon as `proc` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ProcessFailed(f"{what}: {proc.name} exited with code {proc.returncode}", proc.output(),
                                proc.returncode)
        try:
            value = cond()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() >= deadline:
            if proc is not None:
                raise WaitTimeout(f"{what}: not within {timeout:g} s", proc.output(), proc.poll())
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except urllib.error.HTTPError:
        return False


def wait_http(url: str, timeout: float, what: str, proc: "ManagedProcess | None" = None) -> None:
    """Until `url` answers 2xx."""
    wait_until(lambda: _http_ok(url), timeout, f"{what} at {url}", interval=0.1, proc=proc)


def _descendants(pid: int) -> list:
    """psutil handles of pid's live descendants (none without psutil: then only the group is killed)."""
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # ImportError, NoSuchProcess, AccessDenied
        return []


_SEQ = itertools.count(1)
_ALL: collections.deque["ManagedProcess"] = collections.deque(maxlen=200)  # the latest started
_ALL_LOCK = threading.Lock()
_last_seq = 0


def started_since(mark: int) -> list["ManagedProcess"]:
    """Processes started after `mark` (a value of `ManagedProcess.mark()`)."""
    with _ALL_LOCK:
        return [p for p in _ALL if p.seq > mark]


def running() -> list["ManagedProcess"]:
    with _ALL_LOCK:
        return [p for p in _ALL if p.poll() is None and p.proc is not None]


@atexit.register
def _stop_all() -> None:  # never leave a child behind the interpreter
    for p in running():
        p.stop(timeout=5)


class ManagedProcess:
    """One child process: started, awaited, stopped, its output kept.

    `ready`: None (started is enough), a regex (ready at the first line of output matching it, kept
    in `ready_match`), or a callable (ready once it returns something truthy; OSError = not yet).
    """

    def __init__(self, argv: Sequence[str], *, name: str | None = None, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, log_path: str | Path | None = None, append_log: bool = False,
                 ready: str | re.Pattern | Callable[[], object] | None = None, start_timeout: float = 60.0,
                 stop_timeout: float = 10.0, stdin: int | None = subprocess.DEVNULL) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.cwd = str(cwd) if cwd is not None else None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(log_path) if log_path is not None else None
        self.append_log = append_log
        self.ready = re.compile(ready) if isinstance(ready, str) else ready
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.stdin = stdin
        self.proc: subprocess.Popen | None = None
        self.ready_match: re.Match | None = None
        self.seq = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False

    # -- life cycle -----------------------------------------------------------------------------

    @staticmethod
    def mark() -> int:
        """A point in time for `started_since`."""
        with _ALL_LOCK:
            return _last_seq

    def start(self, wait: bool = True) -> "ManagedProcess":
        """Start the child; with `wait`, return once it is ready (else raise ProcessFailed, child stopped)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} was started already")
        log = self.log_path.open("a" if self.append_log else "w", encoding="utf-8") if self.log_path else None
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=self.stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, start_new_session=True)
        global _last_seq
        with _ALL_LOCK:
            self.seq = _last_seq = next(_SEQ)
            _ALL.append(self)
        self._reader = threading.Thread(target=self._read, args=(log,), name=f"output of {self.name}", daemon=True)
        self._reader.start()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until the child is ready: ProcessFailed if it exits first, WaitTimeout after `timeout`."""
        timeout = self.start_timeout if timeout is None else timeout
        what = f"{self.name} did not become ready"
        if self.ready is None:
            return
        if isinstance(self.ready, re.Pattern):
            self.ready_match = self.wait_for_output(self.ready, timeout, what)
            return
        wait_until(self.ready, timeout, what, interval=0.05, proc=self)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Until the child exits by itself (subprocess.TimeoutExpired after `timeout`); its code."""
        assert self.proc is not None, "not started"
        rc = self.proc.wait(timeout)
        self._join_reader()
        return rc

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to the child, its process group and its other descendants (a fault injection, or
        the end of a stop that SIGTERM did not finish)."""
        if self.proc is None:
            return
        descendants = _descendants(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if self.proc.poll() is None:
                self.proc.kill()
        for d in descendants:  # those in a process group of their own (a refit worker)
            try:
                d.kill()
            except Exception:
                pass

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` (default stop_timeout); the exit code (None if never started)."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        descendants = []
        if self.proc.poll() is None:
            descendants = _descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(10)
        try:  # what is left of its process group, and of its descendants
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for d in descendants:
            try:
                d.kill()  # psutil: a no-op for a process that is gone (even if its pid was reused)
            except Exception:
                pass
        self._join_reader()
        return self.proc.returncode

    def __enter__(self) -> "ManagedProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- output -----------------------------------------------------------------------------------

    def _read(self, log) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if log is not None:
                    log.write(line)
                    log.flush()
                with self._cond:
                    self._lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            if log is not None:
                log.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def output(self) -> str:
        """Everything the child printed so far (stdout and stderr, merged)."""
        with self._cond:
            return "\n".join(self._lines) + ("\n" if self._lines else "")

    def tail(self, lines: int = TAIL_LINES) -> str:
        with self._cond:
            return "\n".join(self._lines[-lines:])

    def wait_for_output(self, pattern: str | re.Pattern, timeout: float, what: str | None = None,
                        since: int = 0, count: int = 1) -> re.Match:
        """The `count`-th line (from line index `since`) matching `pattern`, as soon as it is printed.
        ProcessFailed if the child's output ends first, WaitTimeout (a TimeoutError) after `timeout`."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        what = what or f"{self.name}: no line matching {rx.pattern!r}" + (f" {count} times" if count > 1 else "")
        deadline = time.monotonic() + timeout
        i, seen = since, 0
        with self._cond:
            while True:
                while i < len(self._lines):
                    m = rx.search(self._lines[i])
                    i += 1
                    if m:
                        seen += 1
                        if seen >= count:
                            return m
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"{what} within {timeout:g} s", "\n".join(self._lines), self.poll())
                self._cond.wait(left)
        self._join_reader()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # it closed its output but runs on
            pass
        raise ProcessFailed(f"{what}: it exited with code {self.returncode}", self.output(), self.returncode)

    @property
    def lines(self) -> int:
        """Lines printed so far (a `since` for wait_for_output)."""
        with self._cond:
            return len(self._lines)

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}, rc {self.proc.poll()}"
        return f"<{type(self).__name__} {self.name} ({state})>"


class ScalerProcess(ManagedProcess):
    """`pdscaler serve`: ready when it prints that it serves (gRPC bound, HTTP port bound, decision
    worker started); its bound ports are read from those lines."""

    def __init__(self, argv: Sequence[str], host: str, http: bool, **kw) -> None:
        super().__init__(argv, ready=SERVE_LINE, **kw)
        self.host, self.http = host, http
        self.grpc_port: int | None = None
        self.http_port: int | None = None

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        m = self.wait_for_output(SERVE_LINE, timeout, f"{self.name} did not start serving")
        self.grpc_port = int(m["port"])
        if self.http:
            self.http_port = int(self.wait_for_output(SERVE_HTTP_LINE, 1, f"{self.name}: no HTTP port line")["port"])

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise RuntimeError(f"{self.name} has no HTTP port (started with http_port=-1, or not ready)")
        return f"http://{self.host}:{self.http_port}"

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until /healthz answers 200."""
        wait_http(self.http_url + "/healthz", timeout, f"{self.name} /healthz", proc=self)


class EmulatorProcess(ManagedProcess):
    """`pdscaler emulate`: ready when it prints its URL (port 0 = the port it bound)."""

    def __init__(self, argv: Sequence[str], **kw) -> None:
        super().__init__(argv, ready=EMULATE_LINE, **kw)
        self.url: str | None = None
        self.port: int | None = None

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        m = self.wait_for_output(EMULATE_LINE, timeout, f"{self.name} did not come up")
        self.url, self.port = m["url"], int(m["port"])


def _pdscaler(log_level: str | None, command: str, python: Sequence[str] | None = None) -> list[str]:
    prefix = list(python) if python is not None else [sys.executable, "-m", "scaler"]
    return [*prefix, *(["--log-level", log_level] if log_level else []), command]


def serve_process(config: str | Path, *, grpc_port: int = 0, http_port: int = 0, host: str = "127.0.0.1",
                  prometheus_url: str | None = None, log_level: str | None = None, args: Sequence[str] = (),
                  python: Sequence[str] | None = None, name: str = "pdscaler serve", **kw) -> ScalerProcess:
    """`pdscaler serve --config CONFIG` on `host` (gRPC and HTTP), not started (call `.start()`, or use `with`).

    Ports 0 = ephemeral (read back from its output); http_port -1 = no HTTP port. `python` replaces
    the prefix `[sys.executable, "-m", "scaler"]` (e.g. a `-c` wrapper calling scaler.cli.main).
    `kw` goes to ManagedProcess (log_path, cwd, env, start_timeout, stop_timeout)."""
    argv = [*_pdscaler(log_level, "serve", python), "--config", str(config), "--host", host, "--port", str(grpc_port),
            "--http-port", str(http_port), "--http-host", host]
    if prometheus_url is not None:
        argv += ["--prometheus-url", prometheus_url]
    return ScalerProcess([*argv, *args], host=host, http=http_port >= 0, name=name, **kw)


def emulate_process(*, port: int = 0, host: str = "127.0.0.1", args: Sequence[str] = (),
                    name: str = "pdscaler emulate", **kw) -> EmulatorProcess:
    """`pdscaler emulate` on host:port (0 = ephemeral, read back from its output), not started."""
    return EmulatorProcess([*_pdscaler(None, "emulate"), "--host", host, "--port", str(port), *args], name=name, **kw)
