"""The scaler's HTTP side port: `/explain` (the latest decision per graph, for people and
`pdscaler explain`), `/metrics` (Prometheus, scaler/metrics.py) and `/healthz`. Like the gRPC answers, it only reads the DecisionStore: it never
waits on Prometheus, a model fit or the Kubernetes API.

    GET /explain?graph=G              text: every role's target, the rule that bound it, the steps,
                                      inputs, forecast and capacity figures
    GET /explain?graph=G&format=json  the same as JSON (Decision.to_dict)
    GET /explain                      all graphs
Unknown graph -> 404 naming the configured graphs; no decision yet -> 503.

By default the port listens on every address of both families (one dual-stack socket), so that
`http://127.0.0.1:9090` and `http://[::1]:9090` both answer.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from typing import TYPE_CHECKING, Callable

from aiohttp import web
from yarl import URL
from prometheus_client import CONTENT_TYPE_LATEST

from scaler.store import DecisionStore

if TYPE_CHECKING:
    from scaler.metrics import ScalerMetrics

ALL_ADDRESSES = (None, "", "*", "::", "[::]")  # hosts meaning every address of both families

STORE_KEY = web.AppKey("store", DecisionStore)
GRAPHS_KEY = web.AppKey("graphs", list)
METRICS_KEY = web.AppKey("metrics", object)
HEALTH_KEY = web.AppKey("health", object)


def build_app(store: DecisionStore, graphs: list[str], metrics: "ScalerMetrics | None" = None,
              health: "Callable[[], tuple[bool, str]] | None" = None) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    app[GRAPHS_KEY] = graphs  # the caller's list: a config reload updates it in place
    app[HEALTH_KEY] = health or (lambda: (True, "ok"))
    app.router.add_get("/explain", explain)
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", metrics_page)
    return app


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
        return web.Response(status=404, text=f"unknown graph {wanted!r}; configured graphs: {', '.join(graphs)}\n")
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


class _SocketSite(web.BaseSite):
    """An aiohttp site on a socket bound here (aiohttp's TCPSite on "::" would be IPv6 only)."""

    __slots__ = ("_sock", "_factory")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, factory) -> None:
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
                     health: "Callable[[], tuple[bool, str]] | None" = None) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (host None: every address, both families; port 0 = ephemeral);
    returns the runner (to clean up) and the bound port."""
    runner = web.AppRunner(build_app(store, graphs, metrics, health), access_log=None)
    await runner.setup()
    try:
        socks = listen_sockets(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        for sock in socks:
            await _SocketSite(runner, sock, runner.server).start()
    except BaseException:
        for sock in socks:
            sock.close()
        await runner.cleanup()
        raise
    return runner, socks[0].getsockname()[1]
