"""KEDA's side of the external scaler protocol, emulated in-process for the demo and the replay.

``ExternalScalerClient`` is a real gRPC (grpc.aio) client that calls pdscaler the way KEDA does;
``HttpScaleTarget`` reads and patches a Kubernetes ``/scale`` subresource over HTTP;
``ScaledObjectEmulator`` runs one ScaledObject: the HPA sync (``scaler.testbench.hpa``) fed by the scaler's
metric, KEDA's activation polling (0 <-> min) and KEDA's fallback.

Ported from KEDA (kedacore/keda, main):

- ``pkg/scalers/external_scaler.go``: ``buildMetricSpecs`` (targetSizeFloat when > 0, else
  targetSize), ``GetMetricsAndActivity`` (GetMetrics, then IsActive; metricValueFloat when > 0,
  else metricValue), the round-robin gRPC service config.
- ``pkg/scalers/scaler.go``: ``GenerateMetricInMili`` / ``GetMetricTargetMili`` /
  ``quantityFromFloat64`` (milli-unit rounding; NaN, Inf and negative values become 0) - see
  ``scaler.testbench.hpa.keda_metric_value``.
- ``pkg/scaling/cache/scalers_cache.go``: ``GetMetricsAndActivityForScaler`` and
  ``GetMetricSpecForScalingForScaler`` (on error, or an empty spec list, rebuild the scaler and
  retry once; still empty -> "got empty metric spec").
- ``pkg/fallback/fallback.go``: ``GetMetricsWithFallback`` / ``doFallback`` (after more than
  ``failureThreshold`` consecutive failures the HPA is fed ``int64(target) * replicas``).
- ``pkg/scaling/executor/scale_scaledobjects.go``: ``RequestScale``, ``scaleFromZero``
  (to ``minReplicaCount`` if > 0 else 1), ``scaleToZero`` (after ``cooldownPeriod`` since the
  last active time), raising to ``minReplicaCount`` when below it.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, Protocol, TypeVar

import aiohttp
import grpc

from scaler.clock import Clock
from scaler.testbench.hpa import Behavior, HorizontalPodAutoscaler, HPAResult, keda_metric_value
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc

T = TypeVar("T")

# external_scaler.go grpcConfig: round robin over every address the name resolves to.
_GRPC_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


class ExternalScalerError(RuntimeError):
    """A call to the external scaler failed twice (KEDA's try, rebuild, retry once)."""


class ScaleTargetError(RuntimeError):
    """The ``/scale`` subresource answered non-2xx; carries the Kubernetes Status fields."""

    def __init__(self, message: str, status: int, reason: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- gRPC client


@dataclass(frozen=True)
class ScaledObjectRef:
    """``externalscaler.ScaledObjectRef``: the ScaledObject's own name and namespace, and ALL of
    its trigger metadata as ``scalerMetadata``."""

    name: str
    namespace: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_pb(self) -> pb.ScaledObjectRef:
        metadata = {str(k): str(v) for k, v in self.metadata.items()}
        return pb.ScaledObjectRef(name=self.name, namespace=self.namespace, scalerMetadata=metadata)


@dataclass(frozen=True)
class MetricSpec:
    """One metric the scaler declared: its name and the AverageValue target KEDA puts in the HPA."""

    metric_name: str
    target: float


class ExternalScalerClient:
    """KEDA's gRPC client for one external scaler address.

    Every call that fails (or a GetMetricSpec that returns no specs) closes the channel, builds
    a new one and is tried once more, as KEDA's scalers cache does; the second failure raises
    ``ExternalScalerError``. KEDA sets no per-call deadline; ``timeout`` (seconds) is an opt-in.
    """

    def __init__(
        self, address: str, tls: grpc.ChannelCredentials | None = None, *, timeout: float | None = None
    ) -> None:
        self.address = address
        self.tls = tls
        self.timeout = timeout
        self.rebuilds = 0  # how many times the channel was rebuilt after an error
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ExternalScalerStub | None = None

    def _get_stub(self) -> pb_grpc.ExternalScalerStub:
        if self._stub is None:
            options = [("grpc.service_config", _GRPC_SERVICE_CONFIG)]
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.address, self.tls, options=options)
            self._stub = pb_grpc.ExternalScalerStub(self._channel)
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _with_retry(self, what: str, call: Callable[[pb_grpc.ExternalScalerStub], Awaitable[T]]) -> T:
        try:
            return await call(self._get_stub())
        except (grpc.RpcError, ExternalScalerError) as first:
            await self.close()
            self.rebuilds += 1
            try:
                return await call(self._get_stub())
            except (grpc.RpcError, ExternalScalerError) as second:
                raise ExternalScalerError(
                    f"{what} on {self.address} failed, and again after rebuilding the connection: "
                    f"{_describe(first)}; then {_describe(second)}"
                ) from second

    async def get_metric_spec(self, ref: ScaledObjectRef) -> list[MetricSpec]:
        """GetMetricSpec. An empty list is an error (``got empty metric spec``)."""

        async def call(stub: pb_grpc.ExternalScalerStub) -> list[MetricSpec]:
            resp = await stub.GetMetricSpec(ref.to_pb(), timeout=self.timeout)
            specs = [
                MetricSpec(
                    s.metricName,
                    keda_metric_value(s.targetSizeFloat) if s.targetSizeFloat > 0 else float(s.targetSize),
                )
                for s in resp.metricSpecs
            ]
            if not specs:
                raise ExternalScalerError("got empty metric spec")
            return specs

        return await self._with_retry("GetMetricSpec", call)

    async def _get_metrics(
        self, stub: pb_grpc.ExternalScalerStub, ref: ScaledObjectRef, metric_name: str
    ) -> list[float]:
        req = pb.GetMetricsRequest(scaledObjectRef=ref.to_pb(), metricName=metric_name)
        resp = await stub.GetMetrics(req, timeout=self.timeout)
        values = []
        for mv in resp.metricValues:  # KEDA ignores mv.metricName and relabels with the request's
            value = float(mv.metricValue)
            if mv.metricValueFloat > 0:
                value = mv.metricValueFloat
            values.append(keda_metric_value(value))
        return values

    async def get_metrics(self, ref: ScaledObjectRef, metric_name: str) -> list[float]:
        """GetMetrics: the values as KEDA hands them to the HPA (milli-rounded, never negative)."""
        return await self._with_retry("GetMetrics", lambda stub: self._get_metrics(stub, ref, metric_name))

    async def is_active(self, ref: ScaledObjectRef) -> bool:
        """IsActive."""

        async def call(stub: pb_grpc.ExternalScalerStub) -> bool:
            return bool((await stub.IsActive(ref.to_pb(), timeout=self.timeout)).result)

        return await self._with_retry("IsActive", call)

    async def get_metrics_and_activity(self, ref: ScaledObjectRef, metric_name: str) -> tuple[list[float], bool]:
        """GetMetrics then IsActive, retried as one unit - KEDA's ``GetMetricsAndActivity``.
        An IsActive error fails the whole read."""

        async def call(stub: pb_grpc.ExternalScalerStub) -> tuple[list[float], bool]:
            values = await self._get_metrics(stub, ref, metric_name)
            active = (await stub.IsActive(ref.to_pb(), timeout=self.timeout)).result
            return values, bool(active)

        return await self._with_retry("GetMetrics/IsActive", call)


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


# --------------------------------------------------------------------------- scale target


class ScaleTarget(Protocol):
    """Anything with a Kubernetes-style ``/scale`` subresource."""

    async def get_scale(self) -> tuple[int, int]:
        """(spec.replicas, status.replicas)."""

    async def set_replicas(self, n: int) -> None:
        """Set spec.replicas."""


class HttpScaleTarget:
    """A ``/scale`` subresource over HTTP, shaped like the Kubernetes API.

    GET ``base_url + api_path`` returns an ``autoscaling/v1`` ``Scale``; ``set_replicas`` sends
    a JSON merge patch ``{"spec":{"replicas":N}}`` (``application/merge-patch+json``). A non-2xx
    answer raises ``ScaleTargetError`` with the Kubernetes ``Status`` message when there is one.
    e.g. ``HttpScaleTarget("http://127.0.0.1:8001",
    "/apis/apps/v1/namespaces/llm/deployments/decode/scale")``.
    """

    def __init__(
        self,
        base_url: str,
        api_path: str,
        *,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/" + api_path.lstrip("/")
        self._session = session
        self._own_session = session is None
        self._headers = dict(headers or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def get_scale(self) -> tuple[int, int]:
        async with self._get_session().get(self.url, headers={"Accept": "application/json"}) as resp:
            body = await _json_or_raise(resp, "GET")
        if not isinstance(body, dict):
            raise ScaleTargetError(f"GET {self.url}: not a Scale object", resp.status)
        return _replicas(body, "spec"), _replicas(body, "status")

    async def set_replicas(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"replicas must be >= 0, got {n}")
        data = json.dumps({"spec": {"replicas": int(n)}})
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        async with self._get_session().patch(self.url, data=data, headers=headers) as resp:
            await _json_or_raise(resp, "PATCH")


def _replicas(scale: Mapping[str, Any], part: str) -> int:
    # Kubernetes omits spec.replicas when it is 0 (omitempty).
    value = (scale.get(part) or {}).get("replicas", 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ScaleTargetError(f"Scale {part}.replicas is not an integer: {value!r}", 200)
    return value


async def _json_or_raise(resp: aiohttp.ClientResponse, method: str) -> Any:
    text = await resp.text()
    if 200 <= resp.status < 300:
        try:
            return json.loads(text) if text else None
        except ValueError as e:
            raise ScaleTargetError(f"{method} {resp.url}: invalid JSON: {e}", resp.status) from e
    reason, detail = resp.reason or "", text.strip()
    try:
        status = json.loads(text)
        if isinstance(status, dict) and status.get("kind") == "Status":
            reason, detail = status.get("reason") or reason, status.get("message") or detail
    except ValueError:
        pass
    raise ScaleTargetError(f"{method} {resp.url}: HTTP {resp.status} {reason}: {detail}", resp.status, reason, detail)


# --------------------------------------------------------------------------- ScaledObject

FallbackBehavior = Literal["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]


@dataclass(frozen=True)
class Fallback:
    """``ScaledObject.spec.fallback``."""

    failure_threshold: int
    replicas: int
    behavior: FallbackBehavior = "static"

    def __post_init__(self) -> None:
        if self.failure_threshold < 0 or self.replicas < 0:  # fallback.go validateFallback
            raise ValueError("fallback failureThreshold and replicas must be >= 0")

    def replicas_for(self, current: int) -> int:
        if self.behavior == "currentReplicas":
            return current
        if self.behavior == "currentReplicasIfHigher":
            return max(current, self.replicas)
        if self.behavior == "currentReplicasIfLower":
            return min(current, self.replicas)
        return self.replicas


@dataclass(frozen=True)
class ScaledObjectSpec:
    """The parts of a ScaledObject with one ``external`` trigger that the emulation needs.
    Defaults are KEDA's. The HPA's ``minReplicas`` is ``max(1, min_replica_count)``; KEDA does
    0 <-> min itself. ``behavior=None`` means no ``advanced.horizontalPodAutoscalerConfig.behavior``
    (KEDA then creates the HPA without ``spec.behavior``)."""

    name: str
    namespace: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    min_replica_count: int = 0
    max_replica_count: int = 100
    polling_interval: float = 30
    cooldown_period: float = 300
    initial_cooldown_period: float = 0
    behavior: Behavior | None = None
    fallback: Fallback | None = None
    hpa_sync_period: float = 15

    def __post_init__(self) -> None:
        if not 0 <= self.min_replica_count <= self.max_replica_count or self.max_replica_count < 1:
            raise ValueError("need 0 <= minReplicaCount <= maxReplicaCount and maxReplicaCount >= 1")


@dataclass(frozen=True)
class SyncResult:
    """One HPA sync through KEDA: what the scaler said, what the HPA made of it, what changed."""

    now: float
    replicas_before: int | None  # spec.replicas before the sync (None: the scale read failed)
    replicas_after: int | None  # spec.replicas after the sync
    status_replicas: int | None
    metric_name: str | None = None
    metric_value: float | None = None  # sum of the values the HPA saw (KEDA-sanitised or fallback)
    target: float | None = None
    active: bool | None = None  # the IsActive answer read alongside the metric
    hpa: HPAResult | None = None
    fallback: bool = False  # the HPA was fed KEDA's fallback value
    consecutive_failures: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ActivityResult:
    """One KEDA polling cycle (pollingInterval): activity and the 0 <-> min decisions."""

    now: float
    replicas_before: int | None  # None: the scale read failed
    replicas_after: int | None
    active: bool
    action: str  # none | scale-from-zero | scale-to-zero | cooldown | scale-to-min | hold (fallback)
    error: str | None = None


class ScaledObjectEmulator:
    """KEDA + the HPA for one ScaledObject, on an injected clock.

    ``sync_once`` is one HPA sync (the HPA asks KEDA's metrics adapter, which calls
    GetMetricSpec, GetMetrics and IsActive); ``poll_activity`` is one KEDA polling cycle;
    ``run`` loops both. ``on_result`` (optional) receives every SyncResult/ActivityResult.
    """

    def __init__(
        self,
        so: ScaledObjectSpec,
        client: ExternalScalerClient,
        target: ScaleTarget,
        clock: Clock,
        *,
        on_result: Callable[[SyncResult | ActivityResult], None] | None = None,
    ) -> None:
        self.so = so
        self.client = client
        self.target = target
        self.clock = clock
        self.on_result = on_result
        self.ref = ScaledObjectRef(so.name, so.namespace, dict(so.metadata))
        self.hpa = HorizontalPodAutoscaler(max(1, so.min_replica_count), so.max_replica_count, so.behavior)
        self.consecutive_failures = 0
        self.last_active_time: float | None = None
        self.last_sync: SyncResult | None = None
        self.last_poll: ActivityResult | None = None
        self._metric: MetricSpec | None = None  # the HPA's metric spec, as last read
        self._created_at: float | None = None

    async def _read(self) -> tuple[MetricSpec, list[float], bool]:
        """GetMetricSpec -> GetMetrics (its first metric) -> IsActive."""
        specs = await self.client.get_metric_spec(self.ref)
        spec = specs[0]
        if not spec.target > 0:
            raise ExternalScalerError(f"metric {spec.metric_name!r} has a non-positive target {spec.target}")
        self._metric = spec
        values, active = await self.client.get_metrics_and_activity(self.ref, spec.metric_name)
        return spec, values, active

    async def sync_once(self, now: float) -> SyncResult:
        """One HPA sync as KEDA + the HPA do it. Never raises for scaler or target errors."""
        try:
            spec_replicas, status_replicas = await self.target.get_scale()
        except Exception as e:  # noqa: BLE001 - FailedGetScale: the HPA does nothing
            return self._emit_sync(SyncResult(now, None, None, None, error=f"get scale: {e}"))
        metrics: list[tuple[list[float], float]] = []
        name = value = target = active = error = None
        fallback = False
        if self.hpa.wants_metrics(spec_replicas):
            try:
                spec, values, active = await self._read()
                self.consecutive_failures = 0
                name, target, value = spec.metric_name, spec.target, math.fsum(values)
                metrics = [(values, spec.target)]
            except Exception as e:  # noqa: BLE001
                self.consecutive_failures += 1
                error = str(e)
                fb, known = self.so.fallback, self._metric
                if fb is not None and self.consecutive_failures > fb.failure_threshold and known is not None:
                    # fallback.go doFallback: int64(target.AsApproximateFloat64()) * 1000 * replicas milli
                    value = float(int(known.target) * fb.replicas_for(spec_replicas))
                    name, target, fallback = known.metric_name, known.target, True
                    metrics = [([value], known.target)]
        result = self.hpa.reconcile(now, spec_replicas, metrics, status_replicas, commit=False)
        after = spec_replicas
        if result.rescale:
            try:
                await self.target.set_replicas(result.desired_replicas)
                self.hpa.record_scale_event(now, spec_replicas, result.desired_replicas)
                after = result.desired_replicas
            except Exception as e:  # noqa: BLE001 - FailedRescale
                error = f"set replicas: {e}" if error is None else f"{error}; set replicas: {e}"
        return self._emit_sync(
            SyncResult(
                now, spec_replicas, after, status_replicas, name, value, target, active, result,
                fallback, self.consecutive_failures, error,
            )  # fmt: skip
        )

    async def poll_activity(self, now: float) -> ActivityResult:
        """One KEDA polling cycle (``RequestScale``): scale 0 -> max(1, min) when active, to 0
        after ``cooldown_period`` without activity when min is 0, up to min when below it."""
        if self._created_at is None:
            self._created_at = now
        try:
            spec_replicas, _ = await self.target.get_scale()
        except Exception as e:  # noqa: BLE001
            return self._emit_poll(ActivityResult(now, None, None, False, "none", f"get scale: {e}"))
        active, error = False, None
        try:
            _, _, active = await self._read()
        except Exception as e:  # noqa: BLE001 - an error counts as not active
            error = str(e)
        min_count = self.so.min_replica_count
        new, action = spec_replicas, "none"
        if spec_replicas == 0 and active:
            new, action = max(1, min_count), "scale-from-zero"
            self.last_active_time = now
        elif not active and error is not None and self.so.fallback is not None:
            action = "hold (fallback)"  # the HPA feeds the fallback; do not scale to zero
        elif not active and spec_replicas > 0 and min_count == 0:
            if self.last_active_time is None:
                initial = self.so.initial_cooldown_period
                expired = initial == 0 or self._created_at + initial < now
            else:
                expired = self.last_active_time + self.so.cooldown_period < now
            new, action = (0, "scale-to-zero") if expired else (spec_replicas, "cooldown")
        elif not active and spec_replicas < min_count:
            new, action = min_count, "scale-to-min"
        elif active:
            self.last_active_time = now
        after = spec_replicas
        if new != spec_replicas:
            try:
                await self.target.set_replicas(new)
                after = new
            except Exception as e:  # noqa: BLE001
                error = f"set replicas: {e}" if error is None else f"{error}; set replicas: {e}"
        return self._emit_poll(ActivityResult(now, spec_replicas, after, active, action, error))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``polling_interval`` and sync every ``hpa_sync_period`` on the clock until
        ``stop`` is set. Both run at once at the start; a late cycle skips missed ticks."""
        next_poll = next_sync = self.clock.now()
        while not stop.is_set():
            now = self.clock.now()
            if now >= next_poll:
                await self.poll_activity(now)
                next_poll = _next_tick(next_poll, self.so.polling_interval, self.clock.now())
            if stop.is_set():
                break
            if now >= next_sync:
                await self.sync_once(now)
                next_sync = _next_tick(next_sync, self.so.hpa_sync_period, self.clock.now())
            delay = min(next_poll, next_sync) - self.clock.now()
            if delay > 0:
                await _sleep_or_stop(self.clock, delay, stop)
            else:
                await asyncio.sleep(0)

    def _emit_sync(self, r: SyncResult) -> SyncResult:
        self.last_sync = r
        if self.on_result is not None:
            self.on_result(r)
        return r

    def _emit_poll(self, r: ActivityResult) -> ActivityResult:
        self.last_poll = r
        if self.on_result is not None:
            self.on_result(r)
        return r


def _next_tick(previous: float, period: float, now: float) -> float:
    nxt = previous + period
    return nxt if nxt > now else now + period


async def _sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    sleeper = asyncio.ensure_future(clock.asleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            if not task.done():
                task.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)
