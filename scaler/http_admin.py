"""The scaler's HTTP side port: `/explain` (the latest decision per graph, for people and
`pdscaler explain`), `/metrics` (Prometheus, scaler/metrics.py) and `/healthz`. Like the gRPC answers, it only reads the DecisionStore: it never
waits on Prometheus, a model fit or the Kubernetes API.

    GET /explain?graph=G              text: every role's target, the rule that bound it, the steps,
                                      inputs, forecast and capacity figures
    GET /explain?graph=G&format=json  the same as JSON (Decision.to_dict)
    GET /explain                      all graphs
Unknown graph -> 404 naming the configured graphs (the name asked for shown to 64 characters at most,
the first 20 configured names); no decision yet -> 503.

Bounded (HttpLimits): by default the port listens on every address of both families (one dual-stack
socket); at most `max_connections` connections are open at once (a new one beyond closes the oldest
idle connection, or is answered 503 when every one is busy), so a flood of half-open connections
neither runs the process out of file descriptors (the gRPC port shares them) nor keeps probes out;
a connection that sends no complete request within `idle_timeout` seconds, or stays idle that long
after an answer, is closed; a handler that runs longer than `handler_timeout` is answered 504.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from aiohttp import web
from yarl import URL
from prometheus_client import CONTENT_TYPE_LATEST

from scaler.store import DecisionStore

if TYPE_CHECKING:
    from scaler.metrics import ScalerMetrics

log = logging.getLogger("pdscaler.http")

ALL_ADDRESSES = (None, "", "*", "::", "[::]")  # hosts meaning every address of both families
SHOWN_NAME_LEN = 64  # characters of an unknown graph name echoed in the 404
SHOWN_GRAPHS = 20  # configured graph names listed in the 404


@dataclass(frozen=True)
class HttpLimits:
    """Bounds of the HTTP side port (`pdscaler serve --http-max-connections`, `--http-idle-timeout`)."""

    max_connections: int = 256
    idle_timeout: float = 15.0
    handler_timeout: float = 30.0


STORE_KEY = web.AppKey("store", DecisionStore)
GRAPHS_KEY = web.AppKey("graphs", list)
METRICS_KEY = web.AppKey("metrics", object)
HEALTH_KEY = web.AppKey("health", object)
BUSY_KEY = web.AppKey("busy", set)
LIMITS_KEY = web.AppKey("limits", HttpLimits)
CAP_KEY = web.AppKey("connection_cap", object)  # the _ConnectionCap of start_http


def build_app(store: DecisionStore, graphs: list[str], metrics: "ScalerMetrics | None" = None,
              health: "Callable[[], tuple[bool, str]] | None" = None,
              limits: HttpLimits | None = None) -> web.Application:
    app = web.Application(middlewares=[_track_and_time])
    app[LIMITS_KEY] = limits or HttpLimits()
    app[BUSY_KEY] = set()  # the connections (aiohttp protocols) with a request in progress
    app[STORE_KEY] = store
    app[GRAPHS_KEY] = graphs  # the caller's list: a config reload updates it in place
    app[HEALTH_KEY] = health or (lambda: (True, "ok"))
    app.router.add_get("/explain", explain)
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", metrics_page)
    return app


@web.middleware
async def _track_and_time(request: web.Request, handler) -> web.StreamResponse:
    busy: set = request.app[BUSY_KEY]
    busy.add(request.protocol)
    try:
        async with asyncio.timeout(request.app[LIMITS_KEY].handler_timeout):
            return await handler(request)
    except TimeoutError:
        return web.Response(status=504, text="the answer took too long\n")
    finally:
        busy.discard(request.protocol)


def show_name(name: str, limit: int = SHOWN_NAME_LEN) -> str:
    """`name` quoted, cut to `limit` characters: an unknown name is echoed, never at length."""
    return repr(name if len(name) <= limit else name[:limit - 3] + "...")


def show_names(names: Sequence[str], limit: int = SHOWN_GRAPHS) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


async def metrics_page(request: web.Request) -> web.Response:
    # Rendered in a worker thread: with a thousand graphs the page is megabytes, and the event loop
    # must stay free for the next request.
    body = await asyncio.to_thread(request.app[METRICS_KEY].exposition)  # type: ignore[attr-defined]
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def explain(request: web.Request) -> web.Response:
    store, graphs = request.app[STORE_KEY], request.app[GRAPHS_KEY]
    wanted = request.query.get("graph")
    as_json = request.query.get("format") == "json"
    if wanted is not None and wanted not in graphs:
        return web.Response(status=404, text=f"unknown graph {show_name(wanted)}; configured graphs: {show_names(graphs)}\n")
    names = [wanted] if wanted else graphs
    decisions = {g: store.get(g) for g in names}
    missing = [g for g, d in decisions.items() if d is None]
    if missing:
        return web.Response(status=503, text=f"no decision yet for {', '.join(missing)} (the first poll has not completed)\n")
    if as_json:
        body = {g: d.to_dict() for g, d in decisions.items()}
        return web.json_response(body[wanted] if wanted else body, dumps=lambda o: json.dumps(o, indent=2))
    return web.Response(text="\n\n".join(d.explain() for d in decisions.values()) + "\n")


async def healthz(request: web.Request) -> web.Response:
    ok, why = request.app[HEALTH_KEY]()  # type: ignore[operator]
    return web.Response(status=200 if ok else 503, text=("ok: " if ok else "unhealthy: ") + why + "\n")


class _Tracked(asyncio.Protocol):
    """An aiohttp connection (its RequestHandler) seen by the connection cap: told when it ends."""

    def __init__(self, inner: asyncio.Protocol, cap: "_ConnectionCap") -> None:
        self.inner, self.cap = inner, cap
        self.transport: asyncio.BaseTransport | None = None
        self.closed = self.connected = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.closed:  # evicted between its accept and now (a burst of accepts)
            transport.close()
            return
        self.connected = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.cap.live.pop(self, None)
        if self.connected:
            self.inner.connection_lost(exc)

    def close(self) -> None:
        self.cap.live.pop(self, None)
        self.closed = True
        if self.transport is not None:
            self.transport.close()


_BUSY_BODY = b"too many connections open\n"
_BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _Refuse(asyncio.Protocol):
    """The answer when every one of the `max_connections` connections is busy."""

    def connection_made(self, transport) -> None:
        transport.write(_BUSY_ANSWER)
        transport.close()


class _ConnectionCap:
    """The protocol factory of the HTTP sockets: at most `limit` connections open. A connection beyond
    closes the oldest idle one (no request in progress: typically one that never sent a request);
    when every one is busy, the newcomer is answered 503 and closed. The count is kept here, not read
    from aiohttp, since a burst of accepts creates protocols before any of them is connected."""

    def __init__(self, limit: int, busy: set) -> None:
        self.server: web.Server | None = None  # the runner's, once set up
        self.limit, self.busy = limit, busy
        self.live: dict[_Tracked, None] = {}  # insertion order: oldest first
        self.evicted = self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if len(self.live) >= self.limit:
            idle = next((c for c in self.live if c.inner not in self.busy), None)
            if idle is None:
                self.refused += 1
                log.warning("HTTP port: %d connections open, every one busy: a new connection is refused", self.limit)
                return _Refuse()
            self.evicted += 1
            log.warning("HTTP port: %d connections open: the oldest idle one is closed for a new one", self.limit)
            idle.close()
        assert self.server is not None
        conn = _Tracked(self.server(), self)
        self.live[conn] = None
        return conn


class _SocketSite(web.BaseSite):
    """An aiohttp site on a socket bound here (aiohttp's TCPSite on "::" would be IPv6 only), whose
    connections go through the connection cap."""

    __slots__ = ("_sock", "_factory")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, factory: _ConnectionCap) -> None:
        super().__init__(runner)
        self._sock, self._factory = sock, factory

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return str(URL.build(scheme="http", host=host, port=port))

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(self._factory, sock=self._sock,
                                                                      backlog=self._backlog)


def listen_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bound TCP sockets for host:port (0 = ephemeral; every socket gets the same port). `host` in
    ALL_ADDRESSES: every address of both families, one dual-stack socket where the system allows it
    (else an IPv6 and an IPv4 socket; IPv4 only without IPv6); a name: each of its addresses."""
    if host in ALL_ADDRESSES:
        if socket.has_ipv6:
            try:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError:
                s = None  # no IPv6 in this kernel
            if s is not None:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:  # no dual-stack sockets here: one socket per family
                    s.close()
                    return _bind_each([(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")], port)
                try:
                    s.bind(("::", port))
                    return [s]
                except OSError as e:
                    s.close()
                    if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        raise  # e.g. the port is taken
                # IPv6 is off (disable_ipv6): IPv4 alone
        return _bind_each([(socket.AF_INET, "0.0.0.0")], port)
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return _bind_each(list(dict.fromkeys((family, sa[0]) for family, *_, sa in infos)), port)


def _bind_each(addresses: list[tuple[int, str]], port: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((address, port or (socks[0].getsockname()[1] if len(socks) > 1 else 0)))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


async def start_http(store: DecisionStore, graphs: list[str], host: str | None, port: int,
                     metrics: "ScalerMetrics | None" = None,
                     health: "Callable[[], tuple[bool, str]] | None" = None,
                     limits: HttpLimits | None = None) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (host None: every address, both families; port 0 = ephemeral);
    returns the runner (to clean up) and the bound port."""
    limits = limits or HttpLimits()
    app = build_app(store, graphs, metrics, health, limits)
    app[CAP_KEY] = cap = _ConnectionCap(limits.max_connections, app[BUSY_KEY])
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    cap.server = runner.server
    try:
        socks = listen_sockets(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        for sock in socks:
            await _SocketSite(runner, sock, cap).start()
    except BaseException:
        for sock in socks:
            sock.close()
        await runner.cleanup()
        raise
    return runner, socks[0].getsockname()[1]
