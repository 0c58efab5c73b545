"""The scaler's HTTP side port: `/explain` (the latest decision per graph, for people and
`pdscaler explain`), `/metrics` (Prometheus, scaler/metrics.py) and `/healthz`. Like the gRPC answers, it only reads the DecisionStore: it never
waits on Prometheus, a model fit or the Kubernetes API.

    GET /explain?graph=G              text: every role's target, the rule that bound it, the steps,
                                      inputs, forecast and capacity figures
    GET /explain?graph=G&format=json  the same as JSON (Decision.to_dict)
    GET /explain                      all graphs
Unknown graph -> 404 naming the configured graphs; no decision yet -> 503.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from scaler.store import DecisionStore

if TYPE_CHECKING:
    from scaler.metrics import ScalerMetrics

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


async def start_http(store: DecisionStore, graphs: list[str], host: str, port: int,
                     metrics: "ScalerMetrics | None" = None,
                     health: "Callable[[], tuple[bool, str]] | None" = None) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (0 = ephemeral); returns the runner (to clean up) and the bound port."""
    runner = web.AppRunner(build_app(store, graphs, metrics, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound
