"""HTTP emulator of a Dynamo prefill/decode graph, for running the scaler without GPUs.

One aiohttp server around the pure `GraphSim`, speaking what the scaler and its tooling talk to:
- the OpenAI API (`POST /v1/chat/completions`, streaming or not; `GET /v1/models`), as the Dynamo
  frontend does;
- `GET /metrics`: Dynamo's Prometheus metric names (see `metrics.py`);
- the Kubernetes scale subresource of the two DynamoGraphDeploymentScalingAdapters
  (`<graph>-prefillworker`, `<graph>-decodeworker`) at the API server's URL layout, so KEDA-style
  clients and the scaler's actuator can GET/PUT/PATCH replicas;
- `GET /healthz`;
- `POST /admin/drop?families=a,b` (test bench faults, `make chaos`): those metric families are left
  out of /metrics until the next `POST /admin/drop` (no `families`: every family exported again);
  `GET /admin/drop` lists the dropped ones.

Time comes from an injected clock (`scaler.clock`): a background task advances the simulation to
`clock.now()` every ~15 ms of wall time, so with a `VirtualClock(speedup)` an hour of traffic replays
in minutes. `replay()` feeds a trace straight into the simulation at exact trace times (no HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from scaler.clock import Clock, SystemClock, VirtualClock
from scaler.testbench.emulator.metrics import DYNAMO_COMPONENTS, EmulatorMetrics
from scaler.testbench.emulator.model import ROLES, GraphSim
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.traces import BUNDLED_TRACES, TraceRequest, bundled_trace, load_trace, scale_rate

__all__ = ["Emulator", "run", "adapter_name", "DEFAULT_MAX_TOKENS", "TICK_WALL_S"]

log = logging.getLogger(__name__)

#: Wall-clock period of the background task that advances the simulation.
TICK_WALL_S = 0.015
#: OpenAI's chat completions have no max_tokens default; the emulator needs a finite one.
DEFAULT_MAX_TOKENS = 16
_API_GROUP = "nvidia.com"
_API_VERSIONS = ("v1alpha1", "v1beta1")
_PLURAL = "dynamographdeploymentscalingadapters"
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def adapter_name(graph: str, role: str) -> str:
    """Dynamo's adapter naming: `<dgd name>-<service key lowercased>`."""
    return f"{graph}-{DYNAMO_COMPONENTS[role].lower()}"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(start: int, n: int) -> str:
    return "".join(" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n))


class _StreamListener:
    """Bridges simulation callbacks (synchronous, inside advance()) to an HTTP handler."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()

    def on_first_token(self, t: float) -> None:
        self.queue.put_nowait((1, False))

    def on_tokens(self, n: int, t: float) -> None:
        self.queue.put_nowait((n, False))

    def on_done(self, t: float) -> None:
        self.queue.put_nowait((0, True))

    async def next_batch(self) -> tuple[int, bool]:
        """Wait for at least one event, then coalesce everything already delivered."""
        n, done = await self.queue.get()
        while not done and not self.queue.empty():
            k, done = self.queue.get_nowait()
            n += k
        return n, done


class _Feed:
    __slots__ = ("requests", "start_at", "i")

    def __init__(self, requests: list[TraceRequest], start_at: float) -> None:
        self.requests = requests
        self.start_at = start_at
        self.i = 0


class _HTTPError(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> _HTTPError:
    etype = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return _HTTPError(web.json_response(body, status=status))


def _k8s_status(code: int, reason: str, message: str, name: str | None = None,
                causes: list[dict[str, str]] | None = None) -> _HTTPError:
    details: dict[str, Any] = {"group": _API_GROUP, "kind": _PLURAL}
    if name is not None:
        details["name"] = name
    if causes:
        details["causes"] = causes
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}
    return _HTTPError(web.json_response(body, status=code))


class Emulator:
    """The emulated graph behind an HTTP server. Use `await start()` / `await stop()` (or `async with`)."""

    def __init__(
        self,
        profile: EmulatorProfile | None = None,
        clock: Clock | None = None,
        graph: str = "demo",
        namespace: str = "default",
        model: str = "emulated-llm",
        replicas: dict[str, int] | None = None,
    ) -> None:
        self.profile = profile or EmulatorProfile()
        self.clock: Clock = clock or SystemClock()
        self.graph = graph
        self.namespace = namespace
        self.model = model
        self.sim = GraphSim(self.profile, self.clock.now(), replicas)
        self.metrics = EmulatorMetrics(self.sim, model=model, dynamo_namespace=f"{namespace}-{graph}")
        self.url: str | None = None
        self.adapters = {adapter_name(graph, role): role for role in ROLES}
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._feeds: list[_Feed] = []
        self._replays: set[asyncio.Task[None]] = set()
        self._created = _rfc3339(time.time())
        self._uids: dict[str, str] = {
            role: str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{adapter_name(graph, role)}")) for role in ROLES
        }
        self._rv_counter = 1
        self._rv: dict[str, int] = {role: 1 for role in ROLES}
        self._rv_key: dict[str, tuple[int, int, int]] = {}
        self._last_scale: dict[str, float | None] = {role: None for role in ROLES}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        api = f"/apis/{_API_GROUP}/{{version}}/namespaces/{{ns}}/{_PLURAL}"
        app.add_routes([
            web.post("/v1/chat/completions", self._h_chat),
            web.get("/v1/models", self._h_models),
            web.get("/metrics", self._h_metrics),
            web.get("/healthz", self._h_healthz),
            web.get("/admin/drop", self._h_dropped),
            web.post("/admin/drop", self._h_drop),
            web.get(api, self._h_list),
            web.get(api + "/{name}", self._h_adapter),
            web.get(api + "/{name}/scale", self._h_scale_get),
            web.put(api + "/{name}/scale", self._h_scale_put),
            web.patch(api + "/{name}/scale", self._h_scale_patch),
        ])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        self._ticker = asyncio.get_running_loop().create_task(self._run_ticker(), name="emulator-ticker")

    async def stop(self) -> None:
        tasks = [t for t in (self._ticker, *self._replays) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run_ticker(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:  # keep serving; a broken step is logged, not fatal
                log.exception("emulator step failed")
            await asyncio.sleep(TICK_WALL_S)

    def _tick(self) -> None:
        """Submit due trace requests at their exact times, then advance the simulation to clock.now()."""
        now = self.clock.now()
        if self._feeds:
            due: list[tuple[float, TraceRequest]] = []
            for feed in self._feeds:
                reqs, start, i = feed.requests, feed.start_at, feed.i
                while i < len(reqs) and start + reqs[i].t <= now:
                    due.append((start + reqs[i].t, reqs[i]))
                    i += 1
                feed.i = i
            if len(self._feeds) > 1:
                due.sort(key=lambda x: x[0])
            submit = self.sim.submit
            for t, r in due:
                submit(r.isl, r.osl, t)
            self._feeds = [f for f in self._feeds if f.i < len(f.requests)]
        self.sim.advance(now)

    # ------------------------------------------------------------------ replay and snapshot

    def replay(self, requests: Sequence[TraceRequest], start_at: float | None = None) -> asyncio.Task[None]:
        """Submit `requests` as (clock) time passes, request r at `start_at + r.t` (default: now).

        Submission happens inside the simulation loop at the exact trace times, independent of HTTP.
        The returned task ends when every request was submitted (cancel it to stop the replay).
        """
        start = self.clock.now() if start_at is None else float(start_at)
        feed = _Feed(sorted(requests, key=lambda r: r.t), start)
        if feed.requests:
            self._feeds.append(feed)

        async def _wait() -> None:
            try:
                while feed.i < len(feed.requests):
                    if self._ticker is None:  # not started: drive the simulation ourselves
                        self._tick()
                    await asyncio.sleep(TICK_WALL_S)
            finally:
                if feed in self._feeds:
                    self._feeds.remove(feed)

        task = asyncio.get_running_loop().create_task(_wait(), name="emulator-replay")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        return task

    def snapshot(self) -> dict[str, Any]:
        """A small, JSON-able summary for a terminal UI."""
        sim = self.sim
        reps = {}
        for role in ROLES:
            c = sim.replicas(role)
            reps[role] = {"desired": c.desired, "ready": c.ready, "starting": c.starting, "draining": c.draining}
        return {
            "time": sim.now,
            "submitted_requests": sim.submitted,
            "finished_requests": sim.finished,
            "inflight_requests": sim.inflight_requests,
            "queued_requests": sim.queued_requests,
            "prefill_queued_tokens": sim.prefill_queued_tokens,
            "prefill_waiting": sim.prefill_waiting,
            "decode_waiting": sim.decode_waiting,
            "decode_kv_usage": sim.decode_kv_usage(),
            "replicas": reps,
            "gpu_seconds": sim.gpu_seconds,
        }

    # ------------------------------------------------------------------ OpenAI API

    async def _h_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            isl, osl, stream, include_usage = self._parse_chat(await self._json(request, openai=True))
        except _HTTPError as e:
            return e.response
        self._tick()
        listener = _StreamListener()
        self.sim.submit(isl, osl, self.clock.now(), listener, stream=stream)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not stream:
            produced = 0
            while True:
                n, done = await listener.next_batch()
                produced += n
                if done:
                    break
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _text(0, produced)},
                             "logprobs": None, "finish_reason": "length"}],
                "usage": {"prompt_tokens": isl, "completion_tokens": produced, "total_tokens": isl + produced},
            })

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        produced = 0
        try:
            while True:
                n, done = await listener.next_batch()
                if n:
                    delta = {"content": _text(produced, n)}
                    if produced == 0:
                        delta = {"role": "assistant", **delta}
                    produced += n
                    await resp.write(chunk(delta, None))
                if done:
                    break
            await resp.write(chunk({}, "length"))
            if include_usage:
                usage = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                         "choices": [], "usage": {"prompt_tokens": isl, "completion_tokens": produced,
                                                  "total_tokens": isl + produced}}
                await resp.write(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:  # client went away; the request still completes in the simulation
            pass
        return resp

    def _parse_chat(self, body: Any) -> tuple[int, int, bool, bool]:
        if not isinstance(body, dict):
            raise _openai_error(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _openai_error(400, "'model' is required and must be a string", "model")
        if model != self.model:
            raise _openai_error(404, f"The model `{model}` does not exist.", "model", "model_not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _openai_error(400, "'messages' must be a non-empty array", "messages")
        chars = 0
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _openai_error(400, f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
            content = m.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                        raise _openai_error(400, f"messages[{i}].content parts must be objects with a 'type'",
                                            f"messages[{i}].content")
                    if isinstance(part.get("text"), str):
                        chars += len(part["text"])
            elif content is not None:
                raise _openai_error(400, f"messages[{i}].content must be a string or an array",
                                    f"messages[{i}].content")
        osl = DEFAULT_MAX_TOKENS
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _openai_error(400, f"'{key}' must be a positive integer", key)
            osl = value
            break
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _openai_error(400, "'stream' must be a boolean", "stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise _openai_error(400, "'stream_options' must be an object", "stream_options")
        include_usage = bool(opts.get("include_usage", False))
        isl = max(1, round(chars / 4))  # ~4 characters per token for English text
        return isl, osl, stream, include_usage

    async def _json(self, request: web.Request, openai: bool) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            if openai:
                raise _openai_error(400, f"invalid JSON body: {e}") from None
            raise _k8s_status(400, "BadRequest", f"invalid JSON body: {e}") from None

    async def _h_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "pdscaler-emulator"}]})

    async def _h_metrics(self, request: web.Request) -> web.Response:
        self._tick()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _h_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "time": self.sim.now})

    async def _h_dropped(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": sorted(self.metrics.dropped)})

    async def _h_drop(self, request: web.Request) -> web.Response:
        """Leave metric families out of /metrics (their series go stale in Prometheus), or, without
        `families`, export every one again. An unknown family name is a 400 naming it."""
        names = {n.strip() for n in request.query.get("families", "").split(",") if n.strip()}
        known = {f.name for f in self.metrics._families()}
        known |= {f"{n}_total" for n in known}
        unknown = sorted(names - known)
        if unknown:
            return web.json_response({"error": f"unknown metric families: {', '.join(unknown)}"}, status=400)
        self.metrics.dropped = frozenset(names)
        log.info("metric families dropped from /metrics: %s", ", ".join(sorted(names)) or "none")
        return web.json_response({"dropped": sorted(names)})

    # ------------------------------------------------------------------ Kubernetes scale subresource

    def _role_of(self, request: web.Request) -> tuple[str, str]:
        name = request.match_info.get("name", "")
        version, ns = request.match_info["version"], request.match_info["ns"]
        role = self.adapters.get(name)
        if version not in _API_VERSIONS or ns != self.namespace or role is None:
            raise _k8s_status(404, "NotFound", f'{_PLURAL}.{_API_GROUP} "{name}" not found', name)
        return role, name

    def _resource_version(self, role: str) -> str:
        c = self.sim.replicas(role)
        key = (c.desired, c.ready + c.starting, c.ready)
        if self._rv_key.get(role) != key:
            self._rv_counter += 1
            self._rv[role] = self._rv_counter
            self._rv_key[role] = key
        return str(self._rv[role])

    def _selector(self, role: str) -> str:
        return (f"nvidia.com/dynamo-graph-deployment-name={self.graph},"
                f"nvidia.com/dynamo-component={DYNAMO_COMPONENTS[role]}")

    def _metadata(self, role: str, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "uid": self._uids[role],
                "resourceVersion": self._resource_version(role), "creationTimestamp": self._created}

    def _scale(self, role: str, name: str) -> dict[str, Any]:
        c = self.sim.replicas(role)
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": self._metadata(role, name),
                "spec": {"replicas": c.desired},
                "status": {"replicas": c.ready + c.starting, "selector": self._selector(role)}}

    def _adapter(self, role: str, name: str, version: str) -> dict[str, Any]:
        c = self.sim.replicas(role)
        service = DYNAMO_COMPONENTS[role]
        ref_key = "serviceName" if version == "v1alpha1" else "componentName"
        status: dict[str, Any] = {"replicas": c.ready + c.starting, "selector": self._selector(role)}
        if self._last_scale[role] is not None:
            status["lastScaleTime"] = _rfc3339(self._last_scale[role])  # type: ignore[arg-type]
        meta = self._metadata(role, name)
        meta["labels"] = {"nvidia.com/dynamo-graph-deployment-name": self.graph,
                          "nvidia.com/dynamo-component": service}
        return {"apiVersion": f"{_API_GROUP}/{version}", "kind": "DynamoGraphDeploymentScalingAdapter",
                "metadata": meta, "spec": {"replicas": c.desired, "dgdRef": {"name": self.graph, ref_key: service}},
                "status": status}

    def _set(self, role: str, name: str, replicas: Any) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            msg = f"Invalid value: {json.dumps(replicas)}: must be a non-negative integer"
            raise _k8s_status(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: {msg}',
                              name, [{"reason": "FieldValueInvalid", "message": msg, "field": "spec.replicas"}])
        now = self.clock.now()
        if replicas != self.sim.replicas(role).desired:
            self.sim.set_replicas(role, replicas, now)
            self._last_scale[role] = now

    async def _h_list(self, request: web.Request) -> web.Response:
        version, ns = request.match_info["version"], request.match_info["ns"]
        self._tick()
        items = []
        if version in _API_VERSIONS and ns == self.namespace:
            items = [self._adapter(role, name, version) for name, role in self.adapters.items()]
        return web.json_response({"apiVersion": f"{_API_GROUP}/{version}",
                                  "kind": "DynamoGraphDeploymentScalingAdapterList",
                                  "metadata": {"resourceVersion": str(self._rv_counter)}, "items": items})

    async def _h_adapter(self, request: web.Request) -> web.Response:
        try:
            role, name = self._role_of(request)
        except _HTTPError as e:
            return e.response
        self._tick()
        return web.json_response(self._adapter(role, name, request.match_info["version"]))

    async def _h_scale_get(self, request: web.Request) -> web.Response:
        try:
            role, name = self._role_of(request)
        except _HTTPError as e:
            return e.response
        self._tick()
        return web.json_response(self._scale(role, name))

    async def _h_scale_put(self, request: web.Request) -> web.Response:
        try:
            role, name = self._role_of(request)
            body = await self._json(request, openai=False)
            self._tick()
            if not isinstance(body, dict) or body.get("kind", "Scale") != "Scale":
                raise _k8s_status(400, "BadRequest", "body must be an autoscaling/v1 Scale object", name)
            meta = body.get("metadata") or {}
            if meta.get("name") not in (None, name):
                raise _k8s_status(400, "BadRequest",
                                  f"metadata.name {meta.get('name')!r} does not match {name!r}", name)
            rv = meta.get("resourceVersion")
            if rv and str(rv) != self._resource_version(role):
                raise _k8s_status(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {_PLURAL}.{_API_GROUP} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again", name)
            self._set(role, name, (body.get("spec") or {}).get("replicas"))
        except _HTTPError as e:
            return e.response
        return web.json_response(self._scale(role, name))

    async def _h_scale_patch(self, request: web.Request) -> web.Response:
        try:
            role, name = self._role_of(request)
            body = await self._json(request, openai=False)
            self._tick()
            if isinstance(body, list):  # JSON Patch (application/json-patch+json)
                for op in body:
                    if not isinstance(op, dict):
                        raise _k8s_status(400, "BadRequest", "JSON patch operations must be objects", name)
                    if op.get("path") == "/spec/replicas" and op.get("op") in ("add", "replace"):
                        self._set(role, name, op.get("value"))
                    elif op.get("op") == "test" and op.get("path") == "/spec/replicas":
                        if op.get("value") != self.sim.replicas(role).desired:
                            raise _k8s_status(422, "Invalid", "JSON patch test operation failed", name)
                    else:
                        raise _k8s_status(422, "Invalid", f"unsupported JSON patch operation {op!r}", name)
            elif isinstance(body, dict):  # merge patch / strategic merge patch
                spec = body.get("spec")
                if spec is not None:
                    if not isinstance(spec, dict):
                        raise _k8s_status(422, "Invalid", "spec must be an object", name)
                    if "replicas" in spec:
                        self._set(role, name, spec["replicas"])
            else:
                raise _k8s_status(400, "BadRequest", "patch body must be a JSON object or array", name)
        except _HTTPError as e:
            return e.response
        return web.json_response(self._scale(role, name))


# ---------------------------------------------------------------------- CLI entry point


def _resolve_trace(trace: str, fmt: str | None) -> list[TraceRequest]:
    if trace in BUNDLED_TRACES:
        return load_trace(bundled_trace(trace), "azure")
    return load_trace(Path(trace), fmt)


def run(
    port: int,
    host: str = "127.0.0.1",
    speedup: float = 1.0,
    trace: str | None = None,
    trace_format: str | None = None,
    rate_scale: float = 1.0,
    graph: str = "demo",
    namespace: str = "default",
) -> int:
    """Serve the emulator until SIGINT/SIGTERM (`pdscaler emulate`). `trace` is a path or a bundled
    name (azure-code, azure-conv), replayed from start-up at `rate_scale` times its rate."""
    try:
        if speedup <= 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        requests = _resolve_trace(trace, trace_format) if trace else []
        if requests and rate_scale != 1.0:
            requests = scale_rate(requests, rate_scale)
    except (OSError, ValueError) as e:
        print(f"pdscaler emulate: {e}", file=sys.stderr)
        return 2
    clock: Clock = SystemClock() if speedup == 1.0 else VirtualClock(speedup, origin=time.time())

    async def main() -> None:
        emu = Emulator(clock=clock, graph=graph, namespace=namespace)
        await emu.start(host, port)
        what = f", replaying {trace} x{rate_scale:g} ({len(requests)} requests)" if trace else ""
        print(f"pdscaler emulator for {namespace}/{graph} at {emu.url} (speedup {speedup:g}x{what})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if requests:
            emu.replay(requests)
        try:
            await stop.wait()
        finally:
            await emu.stop()

    asyncio.run(main())
    return 0
