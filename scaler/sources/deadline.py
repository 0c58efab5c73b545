"""Total deadlines for HTTP requests made through a requests.Session.

requests' `timeout` bounds each socket operation, not the request: a server that sends a byte a second
never trips it, and one query can then take minutes. DeadlineAdapter gives every request a total
deadline (connect, send, status line, headers and body): when it passes, the request's socket is shut
down from a timer, which ends the blocked read at once, and the request raises QueryDeadlineExceeded
(a requests.Timeout). A poll-wide deadline set with `adapter.poll(deadline)` caps every request made
inside it by the same thread; past it the request raises PollDeadlineExceeded without being sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class QueryDeadlineExceeded(requests.Timeout):
    """One request took longer than its total deadline (the source's timeout)."""


class PollDeadlineExceeded(requests.Timeout):
    """The poll's deadline passed before or during a request."""


_local = threading.local()  # .request: the _Request in progress on this thread; .poll_deadline


class _Request:
    """One request in progress: its connection (once it has one) and whether the timer ended it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: HTTPConnection | None = None
        self.aborted = self.done = False

    def abort(self) -> None:
        with self.lock:
            if self.done:
                return
            self.aborted = True
            sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked recv returns at once
            except OSError:
                pass


class _Tracked:
    """Mixin for urllib3 connections: each request registers its connection with the thread's
    _Request, so that the deadline timer can shut its socket down."""

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        req = getattr(_local, "request", None)
        if req is not None:
            with req.lock:
                if req.aborted:  # a retry after the deadline: not sent
                    raise QueryDeadlineExceeded("deadline passed")
                req.conn = self  # type: ignore[assignment]
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose requests end, complete or not, `total` seconds after they start (or at the
    poll's deadline, if sooner). The body is read inside the deadline (stream=True is not supported)."""

    def __init__(self, total: float, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.total = total
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy, **kwargs):  # type: ignore[no-untyped-def]
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # HTTP(S) proxies: the same tracked connections
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager

    @staticmethod
    @contextlib.contextmanager
    def poll(deadline: float | None) -> Iterator[None]:
        """Requests of this thread inside the block end by `deadline` (time.monotonic()) at the latest."""
        before = getattr(_local, "poll_deadline", None)
        _local.poll_deadline = deadline
        try:
            yield
        finally:
            _local.poll_deadline = before

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        own = start + self.total
        poll = getattr(_local, "poll_deadline", None)
        deadline = own if poll is None else min(own, poll)
        remaining = deadline - start
        if remaining <= 0:
            raise PollDeadlineExceeded("the poll's deadline passed: not sent")
        if timeout is None or isinstance(timeout, (int, float)):
            timeout = remaining if timeout is None else min(timeout, remaining)
        req = _Request()
        _local.request = req
        timer = threading.Timer(remaining, req.abort)
        timer.daemon = True
        timer.start()
        try:
            r = super().send(request, stream=False, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
            r.content  # read the body inside the deadline
        except Exception as e:
            if req.aborted:
                raise self._exceeded(start, own, poll) from e
            raise
        finally:
            with req.lock:
                req.done = True
            timer.cancel()
            _local.request = None
        if req.aborted:  # ended while the body was read: it may be cut short
            raise self._exceeded(start, own, poll)
        return r

    def _exceeded(self, start: float, own: float, poll: float | None) -> requests.Timeout:
        took = f"stopped after {time.monotonic() - start:.1f}s"
        if poll is not None and poll <= own:
            return PollDeadlineExceeded(f"the poll's deadline passed during the request ({took})")
        return QueryDeadlineExceeded(f"no complete answer within {self.total:g}s ({took})")
