"""The KEDA external-scaler gRPC server (grpc.aio), plus the standard grpc.health.v1 service.

Every answer is read from the DecisionStore in memory; nothing here waits on Prometheus, a model fit
or the Kubernetes API. Trigger metadata is parsed by a typed schema (TriggerMetadata); a bad key
is INVALID_ARGUMENT naming the key and its allowed values, an unknown graph is NOT_FOUND.

Contract (KEDA's externalscaler.proto): GetMetricSpec returns one MetricSpec with target 1, and
GetMetrics one MetricValue equal to the role's target replica count, so that the HPA's AverageValue
arithmetic, desired = ceil(value / target), asks for exactly that count.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaler.config import ScalerConfig
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.store import DecisionStore

log = logging.getLogger("pdscaler.server")

SERVICE_NAME = "externalscaler.ExternalScaler"
MAX_VALUE_LEN = 253  # a Kubernetes name at most; longer metadata values are rejected, not echoed


class RepeatedLinesFilter(logging.Filter):
    """A logging filter that lets the first of identical lines through (same logger, level, message
    and exception type) and then counts them: the next one after `interval` seconds goes out with
    "(repeated N times in the last S s)", so a flood (a client hammering a port, an error at every
    accept) costs a line per `interval` and kind, not one per event. At most `kinds` kinds are
    remembered (the least recent is forgotten). `pdscaler serve` puts it on the root handlers."""

    def __init__(self, interval: float = 60.0, kinds: int = 1000, clock=time.monotonic) -> None:
        super().__init__()
        self.interval, self.kinds, self.clock = interval, kinds, clock
        self._seen: OrderedDict[tuple, list] = OrderedDict()  # kind -> [last emitted at, suppressed since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format: logging reports it when the line is emitted
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, message, exc)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is None:
                self._seen[kind] = [now, 0]
                if len(self._seen) > self.kinds:
                    self._seen.popitem(last=False)
                return True
            self._seen.move_to_end(kind)
            since, suppressed = seen
            if now - since < self.interval:
                seen[1] += 1
                return False
            seen[0], seen[1] = now, 0
        if suppressed:
            record.msg, record.args = f"{message} (repeated {suppressed} times in the last {now - since:.0f} s)", None
        return True


class TriggerMetadata(BaseModel):
    """The ScaledObject trigger metadata pdscaler reads. KEDA's own keys (scalerAddress, ...) pass."""

    model_config = ConfigDict(extra="allow", frozen=True)

    graph: str = Field(min_length=1, max_length=MAX_VALUE_LEN)
    role: str = Field(min_length=1, max_length=MAX_VALUE_LEN)
    namespace: str | None = Field(None, min_length=1, max_length=MAX_VALUE_LEN)


@dataclass(frozen=True)
class Target:
    graph: str
    role: str
    namespace: str

    @property
    def metric_name(self) -> str:
        return metric_name(self.graph, self.role)


def metric_name(graph: str, role: str) -> str:
    """The metric name for a graph and role: unique per (graph, role), valid for the HPA."""
    return f"pdscaler-{graph}-{role}"


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def resolve(config: ScalerConfig, ref: pb.ScaledObjectRef) -> Target:
    """The (graph, role) a ScaledObjectRef asks about, or a RequestError saying what is wrong."""
    meta = dict(ref.scalerMetadata)
    try:
        md = TriggerMetadata.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        allowed = _allowed(config, key, meta.get("graph"))
        if err["type"] == "missing":
            problem = f"trigger metadata key {key!r} is required"
        else:
            problem = f"trigger metadata key {key!r} is invalid: {err['msg']}"
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, problem + allowed) from None
    namespace = md.namespace or ref.namespace
    graph = config.graphs.get(md.graph)
    if graph is None and config.sharding is not None and config.shard_of_other(md.graph) is not None:
        sh = config.sharding
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"graph {_show(md.graph)} is served by shard {config.shard_of_other(md.graph)} of {sh.shards}, not by "
            f"this one (shard {sh.index}): point its ScaledObject's scalerAddress at that shard's Service",
        )
    if graph is None:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"graph {_show(md.graph)} is not configured; configured graphs: {_names(sorted(config.graphs))}",
        )
    if graph.namespace and namespace and graph.namespace != namespace:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"graph {md.graph!r} is configured in namespace {graph.namespace!r}, not {_show(namespace)}",
        )
    if md.role not in graph.roles:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"trigger metadata key 'role' has unknown value {_show(md.role)} for graph {md.graph!r}; "
            f"allowed values: {', '.join(sorted(graph.roles))}",
        )
    return Target(md.graph, md.role, namespace or graph.namespace or "")


def _allowed(config: ScalerConfig, key: str, graph: str | None) -> str:
    if key == "graph":
        return f"; allowed values: {_names(sorted(config.graphs))}"
    if key == "role":
        g = config.graphs.get(graph or "")
        roles = sorted(g.roles) if g else sorted({r for g in config.graphs.values() for r in g.roles})
        return f"; allowed values: {_names(roles)}"
    return ""


def _show(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:61] + "...")


def _names(names: list[str], limit: int = 20) -> str:
    """The first `limit` names (a thousand configured graphs are not repeated in every error)."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


RESOLVED_CACHE = 8192  # ScaledObjectRefs whose Target is remembered (KEDA asks the same ones every poll)


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    def __init__(self, config: ScalerConfig, store: DecisionStore) -> None:
        self._config, self.store = config, store
        self._streams: set = set()  # the open StreamIsActive's wake-ups, called on a config swap
        # (namespace, trigger metadata) -> Target, for this config: a poll's three calls (and every later
        # poll) validate a ScaledObjectRef once. Errors are not cached; cleared on a config swap and when full.
        self._resolved: dict[tuple, Target] = {}

    def resolve(self, ref: pb.ScaledObjectRef) -> Target:
        """resolve(self.config, ref), remembered per distinct ref."""
        key = (ref.namespace, *sorted(ref.scalerMetadata.items()))
        t = self._resolved.get(key)
        if t is None:
            t = resolve(self._config, ref)  # raises RequestError: nothing remembered
            if len(self._resolved) >= RESOLVED_CACHE:
                self._resolved = {}
            self._resolved[key] = t
        return t

    @property
    def config(self) -> ScalerConfig:
        return self._config

    @config.setter
    def config(self, config: ScalerConfig) -> None:
        """Swapped on a config reload (cli.py's apply, on the server's event loop): the store keeps only
        the configured graphs' decisions from now on (a removed graph is answered, explained and
        exported no more), and the open streams check at once that their graph and role still are."""
        self._config = config
        self._resolved = {}
        self.store.retain(config.graphs)
        for wake in list(self._streams):
            wake()

    def replicas(self, t: Target) -> int:
        decision = self.store.get(t.graph)
        if decision is None or t.role not in decision.roles:
            # The loop publishes floors at start-up, so this only happens for a graph added since.
            return self.config.graphs[t.graph].roles[t.role].min_replicas
        return decision.roles[t.role].replicas

    def _spec(self, t: Target) -> pb.GetMetricSpecResponse:
        return pb.GetMetricSpecResponse(
            metricSpecs=[pb.MetricSpec(metricName=t.metric_name, targetSize=1, targetSizeFloat=1.0)]
        )

    async def IsActive(self, request, context):
        t = await _resolve_or_abort(self, request, context)
        return pb.IsActiveResponse(result=self.replicas(t) > 0)

    async def GetMetricSpec(self, request, context):
        return self._spec(await _resolve_or_abort(self, request, context))

    async def GetMetrics(self, request, context):
        t = await _resolve_or_abort(self, request.scaledObjectRef, context)
        n = self.replicas(t)
        return pb.GetMetricsResponse(
            metricValues=[pb.MetricValue(metricName=t.metric_name, metricValue=n, metricValueFloat=float(n))]
        )

    async def StreamIsActive(self, request, context):
        t = await _resolve_or_abort(self, request, context)
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        unsubscribe = self.store.subscribe(wake)
        self._streams.add(wake)
        try:
            last, seen, gone = None, self.config, None
            while True:
                if self.config is not seen:  # reloaded: the graph or the role may be gone
                    seen = self.config
                    gone = _gone(seen, request, t)
                    if gone is not None:
                        break
                active = self.replicas(t) > 0
                if active != last:
                    yield pb.IsActiveResponse(result=active)
                    last = active
                await changed.wait()
                changed.clear()
        finally:
            unsubscribe()
            self._streams.discard(wake)
        log.info("StreamIsActive for graph %s role %s ended: %s", _show(t.graph), _show(t.role), gone.message)
        await context.abort(gone.code, gone.message)

    async def StreamMetricSpec(self, request, context):
        # The spec (one metric, target 1) never changes for a (graph, role): send it once, keep open.
        t = await _resolve_or_abort(self, request, context)
        yield self._spec(t)
        await asyncio.Event().wait()


def _gone(config: ScalerConfig, ref: pb.ScaledObjectRef, t: Target) -> RequestError | None:
    """Why a stream opened for `t` has nothing to serve under a reloaded `config` (NOT_FOUND), or None."""
    try:
        resolve(config, ref)
        return None
    except RequestError as e:
        graph = config.graphs.get(t.graph)
        if graph is None:
            why = f"graph {_show(t.graph)} is no longer configured; configured graphs: {_names(sorted(config.graphs))}"
        elif t.role not in graph.roles:
            why = (f"role {_show(t.role)} of graph {_show(t.graph)} is no longer configured; "
                   f"its roles: {_names(sorted(graph.roles))}")
        else:
            why = e.message
        return RequestError(grpc.StatusCode.NOT_FOUND, f"config reloaded: {why}")


async def _resolve_or_abort(svc: ExternalScaler, ref, context) -> Target:
    try:
        return svc.resolve(ref)
    except RequestError as e:
        await context.abort(e.code, e.message)
        raise  # unreachable: abort raises


# The client certificate name admitted under mTLS by default: KEDA's client certificate as the tls
# overlay issues it (manifests/overlays/tls/certificates.yaml, commonName keda-operator).
DEFAULT_CLIENT_NAMES: tuple[str, ...] = ("keda-operator",)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the gRPC port's TLS: the server's certificate and key, and optionally the CA that
    client certificates must be signed by (then mTLS: a client without one is refused). KEDA's side is
    the trigger's `enableTLS: "true"` plus caCert / tlsClientCert / tlsClientKey in a TriggerAuthentication.

    Under mTLS the CA is not enough: whoever can get a certificate from it would pass. A client is
    served only if its certificate's subject CN or a subjectAltName is one of `client_names`
    (exactly); any other gets PERMISSION_DENIED on every call (ClientIdentityInterceptor)."""

    cert: str
    key: str
    client_ca: str | None = None
    client_names: tuple[str, ...] = DEFAULT_CLIENT_NAMES

    def __post_init__(self) -> None:
        if self.client_ca and not self.client_names:
            raise ValueError("mTLS needs at least one allowed client name (--tls-client-name)")

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The identity check under mTLS; none for TLS alone (clients present no certificate)."""
        return [ClientIdentityInterceptor(self.client_names)] if self.client_ca else []

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise OSError(f"cannot read TLS file {path}: {e.strerror}") from None

        ca = read(self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials([(read(self.key), read(self.cert))], root_certificates=ca,
                                           require_client_auth=ca is not None)


def peer_names(context) -> list[str]:
    """The names of the client certificate the TLS handshake verified: subject CN, then the
    subjectAltNames (DNS names and the other SAN entries gRPC reports); [] without one."""
    auth = context.auth_context() or {}
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for key in ("x509_common_name", "x509_subject_alternative_name") for v in auth.get(key, [])]


class ClientIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Serves a call only if the client certificate carries one of `names` (its CN or a SAN): the
    handshake has checked the certificate against the client CA, this checks whose it is. Every
    method of every service (health included) is guarded, streams before their first message."""

    def __init__(self, names) -> None:
        self.names = frozenset(names)
        self._logged: set[tuple[str, ...]] = set()

    async def check(self, context) -> None:
        names = peer_names(context)
        if self.names.intersection(names):
            return
        shown = ", ".join(_show(n) for n in names[:4]) or "none"
        if len(self._logged) < 64 and tuple(names) not in self._logged:  # once per identity, bounded
            self._logged.add(tuple(names))
            log.warning("mTLS: refused a client certificate for %s, peer %s: not in --tls-client-name",
                        shown, context.peer())
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"client certificate ({shown}) is not allowed by this scaler")

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._guard(behavior)})
        return handler

    def _guard(self, behavior):
        check = self.check
        if inspect.isasyncgenfunction(behavior):
            async def guarded_stream(request, context):
                await check(context)
                async for response in behavior(request, context):
                    yield response
            return guarded_stream

        async def guarded(request, context):
            await check(context)
            return await behavior(request, context)
        return guarded


@dataclass(frozen=True)
class GrpcLimits:
    """Bounds of the gRPC port (`pdscaler serve --grpc-max-rpcs`, `--grpc-max-streams-per-connection`).

    `max_concurrent_rpcs`: RPCs in progress at once, streams included; one more is answered
    RESOURCE_EXHAUSTED (0 = no limit). `max_streams_per_connection`: HTTP/2 streams one connection may
    have open (the SETTINGS the server sends); a client wanting more waits for one to end. KEDA keeps one
    StreamIsActive per ScaledObject open (external-push) and a GetMetrics and IsActive in flight per
    poll: the defaults are about twice what 1,000 graphs x 2 roles need and ten times a few hundred."""

    max_concurrent_rpcs: int = 4096
    max_streams_per_connection: int = 4096


@dataclass(frozen=True)
class RunningServer:
    """A started gRPC server and its parts: the external-scaler servicer (its `config` is replaced on
    a config reload), the health servicer (turned NOT_SERVING when the decision loop is stuck) and
    the bound port."""

    server: grpc.aio.Server
    scaler: ExternalScaler
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; in-flight RPCs get `grace` seconds (None: cancelled at once)."""
        await self.server.stop(grace)

    def __iter__(self):
        """`server, port = await start_server(...)`, the former return value, for callers not yet
        moved to the attributes (tests/conftest.py's grpc_server)."""
        return iter((self.server, self.port))


async def start_server(
    config: ScalerConfig, store: DecisionStore, port: int, host: str = "[::]", tls: TlsFiles | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), limits: GrpcLimits | None = None,
) -> RunningServer:
    """Start the gRPC server (external scaler + health) and return it with its servicers and bound port."""
    interceptors = [*interceptors, *(tls.interceptors() if tls else [])]  # identity check innermost
    limits = limits or GrpcLimits()
    options = [("grpc.so_reuseport", 0)]
    if limits.max_streams_per_connection > 0:
        options.append(("grpc.max_concurrent_streams", limits.max_streams_per_connection))
    server = grpc.aio.server(options=options, interceptors=list(interceptors),
                             maximum_concurrent_rpcs=limits.max_concurrent_rpcs or None)
    scaler = ExternalScaler(config, store)
    pb_grpc.add_ExternalScalerServicer_to_server(scaler, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC external scaler listening on %s:%d (%s)", host, bound,
             "mTLS" if tls and tls.client_ca else "TLS" if tls else "plaintext")
    return RunningServer(server, scaler, health_servicer, bound)
