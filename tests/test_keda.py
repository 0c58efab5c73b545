"""scaler.testbench.keda against a real grpc.aio external scaler and a real HTTP /scale subresource."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any, AsyncIterator

import grpc
import pytest
from aiohttp import web

from scaler.clock import ManualClock
from scaler.testbench.hpa import Behavior
from scaler.testbench.keda import (
    ActivityResult,
    ExternalScalerClient,
    ExternalScalerError,
    Fallback,
    HttpScaleTarget,
    ScaledObjectEmulator,
    ScaledObjectRef,
    ScaledObjectSpec,
    ScaleTargetError,
    SyncResult,
)
from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(30)

REF = ScaledObjectRef("decode", "llm", {"role": "decode", "scalerAddress": "pdscaler:9090"})


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# ------------------------------------------------------------------ a tiny external scaler


class FakeScaler(pb_grpc.ExternalScalerServicer):
    """Answers like pdscaler: one metric, a configurable value/target/activity, and failures
    on demand (``fail[method] = n`` aborts the next n calls with UNAVAILABLE)."""

    def __init__(self, value: float = 1.0, target: float = 1.0, active: bool = True) -> None:
        self.metric_name = "pd-decode-replicas"
        self.value_float, self.value_int = value, 0
        self.target_float, self.target_int = target, 0
        self.active = active
        self.empty_spec = False
        self.fail: dict[str, int] = {"GetMetricSpec": 0, "GetMetrics": 0, "IsActive": 0}
        self.calls: list[str] = []
        self.refs: list[pb.ScaledObjectRef] = []
        self.metric_names: list[str] = []

    async def _enter(self, method: str, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> None:
        self.calls.append(method)
        self.refs.append(ref)
        if self.fail[method] > 0:
            self.fail[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method} is down")

    async def GetMetricSpec(self, request, context):
        await self._enter("GetMetricSpec", request, context)
        if self.empty_spec:
            return pb.GetMetricSpecResponse()
        spec = pb.MetricSpec(
            metricName=self.metric_name, targetSize=self.target_int, targetSizeFloat=self.target_float
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request, context):
        await self._enter("GetMetrics", request.scaledObjectRef, context)
        self.metric_names.append(request.metricName)
        mv = pb.MetricValue(metricName="ignored", metricValue=self.value_int, metricValueFloat=self.value_float)
        return pb.GetMetricsResponse(metricValues=[mv])

    async def IsActive(self, request, context):
        await self._enter("IsActive", request, context)
        return pb.IsActiveResponse(result=self.active)

    def fail_always(self) -> None:
        self.fail = {k: 10**9 for k in self.fail}

    def recover(self) -> None:
        self.fail = {k: 0 for k in self.fail}


@contextlib.asynccontextmanager
async def scaler_server(servicer: FakeScaler) -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_ExternalScalerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def client_for(servicer: FakeScaler) -> AsyncIterator[ExternalScalerClient]:
    async with scaler_server(servicer) as address:
        client = ExternalScalerClient(address, timeout=5)
        try:
            yield client
        finally:
            await client.close()


# ------------------------------------------------------------------ a tiny /scale API


class ScaleApi:
    """Serves ``/apis/apps/v1/namespaces/llm/deployments/decode/scale`` like the Kubernetes API."""

    PATH = "/apis/apps/v1/namespaces/llm/deployments/decode/scale"

    def __init__(self, spec: int, status: int | None = None) -> None:
        self.spec = spec
        self.status = spec if status is None else status
        self.patches: list[tuple[str, Any]] = []

    def scale(self) -> dict[str, Any]:
        spec = {"replicas": self.spec} if self.spec else {}  # omitempty, as the API server does
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": "decode", "namespace": "llm"},
            "spec": spec,
            "status": {"replicas": self.status, "selector": "app=decode"},
        }

    @staticmethod
    def status_error(code: int, reason: str, message: str) -> web.Response:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
        body.update(message=message, reason=reason, code=code)
        return web.json_response(body, status=code)

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self.scale())

    async def patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.patches.append((request.content_type, body))
        if request.content_type != "application/merge-patch+json":
            return self.status_error(415, "UnsupportedMediaType", "unknown format, accepted: merge-patch")
        replicas = body["spec"]["replicas"]
        if replicas > 50:
            msg = f'Scale.autoscaling "decode" is invalid: spec.replicas: Invalid value: {replicas}: quota'
            return self.status_error(422, "Invalid", msg)
        self.spec = self.status = replicas
        return web.json_response(self.scale())

    async def not_found(self, request: web.Request) -> web.Response:
        return self.status_error(404, "NotFound", 'deployments.apps "nope" not found')


@contextlib.asynccontextmanager
async def scale_api(api: ScaleApi) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(ScaleApi.PATH, api.get)
    app.router.add_patch(ScaleApi.PATH, api.patch)
    app.router.add_route("*", "/apis/apps/v1/namespaces/llm/deployments/nope/scale", api.not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class MemoryTarget:
    """An in-memory ScaleTarget whose pods start at once (status follows spec)."""

    def __init__(self, replicas: int) -> None:
        self.spec = self.status = replicas
        self.sets: list[int] = []

    async def get_scale(self) -> tuple[int, int]:
        return self.spec, self.status

    async def set_replicas(self, n: int) -> None:
        self.spec = self.status = n
        self.sets.append(n)


# ------------------------------------------------------------------ ExternalScalerClient


def test_client_reads_spec_metrics_and_activity_and_sends_the_ref():
    async def main():
        s = FakeScaler(value=7.0, target=1.0, active=True)
        async with client_for(s) as c:
            specs = await c.get_metric_spec(REF)
            assert [(m.metric_name, m.target) for m in specs] == [("pd-decode-replicas", 1.0)]
            assert await c.get_metrics(REF, "pd-decode-replicas") == [7.0]
            assert await c.is_active(REF) is True
            assert await c.get_metrics_and_activity(REF, "pd-decode-replicas") == ([7.0], True)
        ref = s.refs[0]
        assert (ref.name, ref.namespace, dict(ref.scalerMetadata)) == ("decode", "llm", dict(REF.metadata))
        assert s.metric_names == ["pd-decode-replicas", "pd-decode-replicas"]
        assert s.calls == ["GetMetricSpec", "GetMetrics", "IsActive", "GetMetrics", "IsActive"]

    run(main())


@pytest.mark.parametrize(
    "value_float,value_int,expected",
    [
        (2.0004, 0, 2.0),  # milli-rounded
        (2.0006, 0, 2.001),
        (0.0, 7, 7.0),  # float field 0 -> the int64 field
        (-5.0, 3, 3.0),  # float field not > 0 -> the int64 field
        (math.nan, 0, 0.0),  # NaN is not > 0 -> int64 field 0
        (math.inf, 0, 0.0),  # Inf -> 0
        (0.0, -4, 0.0),  # negative -> 0
    ],
)
def test_client_metric_value_fields_and_sanitising(value_float, value_int, expected):
    async def main():
        s = FakeScaler()
        s.value_float, s.value_int = value_float, value_int
        async with client_for(s) as c:
            assert await c.get_metrics(REF, "m") == [expected]

    run(main())


def test_client_target_uses_float_when_positive_else_int():
    async def main():
        s = FakeScaler()
        s.target_float, s.target_int = 0.0, 3
        async with client_for(s) as c:
            assert (await c.get_metric_spec(REF))[0].target == 3.0
            s.target_float = 2.5
            assert (await c.get_metric_spec(REF))[0].target == 2.5

    run(main())


def test_client_rebuilds_the_channel_and_retries_once():
    async def main():
        s = FakeScaler(value=4.0)
        async with client_for(s) as c:
            s.fail["GetMetrics"] = 1
            first_channel = (c._get_stub(), c._channel)[1]
            assert await c.get_metrics(REF, "m") == [4.0]
            assert c.rebuilds == 1 and c._channel is not first_channel
            assert s.calls.count("GetMetrics") == 2
            s.fail["GetMetrics"] = 2
            with pytest.raises(ExternalScalerError) as err:
                await c.get_metrics(REF, "m")
            assert "GetMetrics is down" in str(err.value) and "again" in str(err.value)
            assert c.rebuilds == 2 and s.calls.count("GetMetrics") == 4

    run(main())


def test_client_retries_metrics_and_activity_as_one_unit():
    async def main():
        s = FakeScaler(value=4.0, active=False)
        async with client_for(s) as c:
            s.fail["IsActive"] = 1
            assert await c.get_metrics_and_activity(REF, "m") == ([4.0], False)
        assert s.calls == ["GetMetrics", "IsActive", "GetMetrics", "IsActive"]

    run(main())


def test_client_empty_metric_spec_is_an_error_after_one_retry():
    async def main():
        s = FakeScaler()
        s.empty_spec = True
        async with client_for(s) as c:
            with pytest.raises(ExternalScalerError, match="got empty metric spec"):
                await c.get_metric_spec(REF)
        assert s.calls == ["GetMetricSpec", "GetMetricSpec"]

    run(main())


def test_client_unreachable_scaler_raises():
    async def main():
        async with scaler_server(FakeScaler()) as address:
            pass  # stopped: nothing listens there any more
        c = ExternalScalerClient(address, timeout=2)
        try:
            with pytest.raises(ExternalScalerError, match="UNAVAILABLE"):
                await c.is_active(REF)
        finally:
            await c.close()

    run(main())


# ------------------------------------------------------------------ HttpScaleTarget


def test_http_scale_target_reads_and_patches_the_scale_subresource():
    async def main():
        api = ScaleApi(spec=3, status=2)
        async with scale_api(api) as base:
            t = HttpScaleTarget(base, ScaleApi.PATH)
            try:
                assert await t.get_scale() == (3, 2)
                await t.set_replicas(5)
                assert api.patches == [("application/merge-patch+json", {"spec": {"replicas": 5}})]
                assert await t.get_scale() == (5, 5)
                await t.set_replicas(0)
                assert await t.get_scale() == (0, 0)  # spec.replicas omitted when 0
            finally:
                await t.close()

    run(main())


def test_http_scale_target_errors_carry_the_kubernetes_status_message():
    async def main():
        api = ScaleApi(spec=3)
        async with scale_api(api) as base:
            missing = HttpScaleTarget(base, "/apis/apps/v1/namespaces/llm/deployments/nope/scale")
            t = HttpScaleTarget(base, ScaleApi.PATH)
            try:
                with pytest.raises(ScaleTargetError) as err:
                    await missing.get_scale()
                assert err.value.status == 404 and err.value.reason == "NotFound"
                assert 'deployments.apps "nope" not found' in str(err.value)
                with pytest.raises(ScaleTargetError) as err:
                    await t.set_replicas(60)
                assert err.value.status == 422 and "spec.replicas: Invalid value: 60" in err.value.detail
                assert await t.get_scale() == (3, 3)
            finally:
                await missing.close()
                await t.close()

    run(main())


# ------------------------------------------------------------------ ScaledObjectEmulator


def so(**kw: Any) -> ScaledObjectSpec:
    base: dict[str, Any] = dict(name="decode", namespace="llm", metadata={"role": "decode"})
    base.update(kw)
    return ScaledObjectSpec(**base)


def test_sync_once_runs_the_hpa_on_the_scalers_metric():
    async def main():
        s = FakeScaler(value=8.0, target=1.0)
        target = MemoryTarget(1)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=1), c, target, ManualClock())
            r = await emu.sync_once(0)
            assert isinstance(r, SyncResult)
            assert (r.replicas_before, r.replicas_after, r.metric_value, r.target) == (1, 4, 8.0, 1.0)
            assert r.hpa is not None and r.hpa.recommendation == 8 and r.hpa.scaling_limited.reason == "ScaleUpLimit"
            assert r.active is True and r.error is None
            assert s.calls == ["GetMetricSpec", "GetMetrics", "IsActive"]
            r = await emu.sync_once(15)
            assert (r.replicas_before, r.replicas_after) == (4, 8)
            # 10 % tolerance: 8 -> value 8.8 is swallowed, 9 is not (ratio 1.125)
            s.value_float = 8.8
            assert (await emu.sync_once(30)).replicas_after == 8
            s.value_float = 9
            assert (await emu.sync_once(45)).replicas_after == 9
        assert target.sets == [4, 8, 9]

    run(main())


def test_sync_once_with_default_behavior_and_status_replicas():
    async def main():
        s = FakeScaler(value=30.0)
        target = MemoryTarget(10)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=1, behavior=Behavior.default()), c, target, ManualClock())
            r = await emu.sync_once(0)
            assert r.replicas_after == 20 and "Percent 100%/15s" in r.hpa.reason
            s.value_float = 2.0
            r = await emu.sync_once(15)
            assert r.replicas_after == 20 and r.hpa.able_to_scale.reason == "ScaleDownStabilized"

    run(main())


def test_scaler_errors_change_nothing_without_fallback():
    async def main():
        s = FakeScaler(value=5.0)
        target = MemoryTarget(3)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=1), c, target, ManualClock())
            s.fail_always()
            for t in range(4):
                r = await emu.sync_once(t * 15)
                assert r.error and "UNAVAILABLE" in r.error and r.replicas_after == 3 and not r.fallback
            assert r.consecutive_failures == 4 and r.hpa.scaling_active.status is False
            assert c.rebuilds == 4  # one rebuild + retry per sync
        assert target.sets == []

    run(main())


def test_fallback_after_more_than_failure_threshold_failures():
    async def main():
        s = FakeScaler(value=3.0)
        target = MemoryTarget(3)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(
                so(min_replica_count=1, fallback=Fallback(failure_threshold=2, replicas=6)), c, target, ManualClock()
            )
            assert (await emu.sync_once(0)).replicas_after == 3  # learns the metric spec
            s.fail_always()
            r1, r2 = await emu.sync_once(15), await emu.sync_once(30)
            assert (r1.replicas_after, r2.replicas_after) == (3, 3) and not r1.fallback and not r2.fallback
            r3 = await emu.sync_once(45)
            assert r3.fallback and r3.consecutive_failures == 3 and r3.metric_value == 6.0
            assert r3.replicas_after == 6 and r3.error  # the suppressed error is still reported
            # activity polling does not scale to zero while the fallback holds
            assert (await emu.poll_activity(60)).action in ("hold (fallback)", "none")
            s.recover()
            s.value_float = 2.0
            r = await emu.sync_once(60)
            assert r.consecutive_failures == 0 and not r.fallback and r.error is None
            assert r.replicas_after == 6  # scale-down stabilisation holds the fallback count

    run(main())


def test_poll_activity_scales_from_and_to_zero_with_cooldown():
    async def main():
        s = FakeScaler(value=0.0, active=True)
        target = MemoryTarget(0)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=0, cooldown_period=300), c, target, ManualClock())
            # at 0 replicas the HPA is disabled and does not even read the metric
            r = await emu.sync_once(0)
            assert r.replicas_after == 0 and r.hpa.scaling_active.reason == "ScalingDisabled" and s.calls == []
            a = await emu.poll_activity(0)
            assert isinstance(a, ActivityResult) and (a.action, a.replicas_after) == ("scale-from-zero", 1)
            s.active = False
            assert (await emu.poll_activity(30)).action == "cooldown"
            assert (await emu.poll_activity(300)).action == "cooldown"  # 0 + 300 is not before 300
            a = await emu.poll_activity(330)
            assert (a.action, a.replicas_after) == ("scale-to-zero", 0)
        assert target.sets == [1, 0]

    run(main())


def test_poll_activity_scales_from_zero_to_min_and_keeps_min():
    async def main():
        s = FakeScaler(active=True)
        target = MemoryTarget(0)
        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=2), c, target, ManualClock())
            assert (await emu.poll_activity(0)).replicas_after == 2
            s.active = False
            a = await emu.poll_activity(1000)
            assert (a.action, a.replicas_after) == ("none", 2)  # min > 0: never to zero

    run(main())


def test_run_loops_polling_and_hpa_sync_on_the_clock():
    async def main():
        s = FakeScaler(value=7.0, active=True)
        target = MemoryTarget(0)
        clock = ManualClock(1000.0)
        results: list[SyncResult | ActivityResult] = []
        stop = asyncio.Event()

        def collect(r: SyncResult | ActivityResult) -> None:
            results.append(r)
            if clock.now() >= 1090:
                stop.set()

        async with client_for(s) as c:
            emu = ScaledObjectEmulator(so(min_replica_count=0), c, target, clock, on_result=collect)
            await asyncio.wait_for(emu.run(stop), 15)
        polls = [r.now for r in results if isinstance(r, ActivityResult)]
        syncs = [r.now for r in results if isinstance(r, SyncResult)]
        assert polls[:4] == [1000, 1030, 1060, 1090]
        assert syncs[:6] == [1000, 1015, 1030, 1045, 1060, 1075]
        assert target.sets[:3] == [1, 4, 7]  # KEDA 0 -> 1, then the HPA 1 -> 4 -> 7
        assert target.spec == 7

    run(main())


def test_emulator_against_http_scale_target():
    async def main():
        s = FakeScaler(value=4.0)
        api = ScaleApi(spec=2)
        async with client_for(s) as c, scale_api(api) as base:
            t = HttpScaleTarget(base, ScaleApi.PATH)
            try:
                emu = ScaledObjectEmulator(so(min_replica_count=1, max_replica_count=3), c, t, ManualClock())
                r = await emu.sync_once(0)
                assert (r.replicas_before, r.replicas_after, api.spec) == (2, 3, 3)
                assert r.hpa.scaling_limited.reason == "TooManyReplicas"
                api.spec = 60  # someone scaled it beyond max: the HPA corrects without metrics
                r = await emu.sync_once(15)
                assert (r.replicas_before, r.replicas_after) == (60, 3) and r.metric_value is None
            finally:
                await t.close()
        assert [b for _, b in api.patches] == [{"spec": {"replicas": 3}}, {"spec": {"replicas": 3}}]

    run(main())


def test_emulator_reports_a_failed_scale_update():
    async def main():
        s = FakeScaler(value=60.0)
        api = ScaleApi(spec=40)
        async with client_for(s) as c, scale_api(api) as base:
            t = HttpScaleTarget(base, ScaleApi.PATH)
            try:
                emu = ScaledObjectEmulator(so(min_replica_count=1, behavior=Behavior.default()), c, t, ManualClock())
                r = await emu.sync_once(0)
                assert r.hpa.desired_replicas == 60 and r.replicas_after == 40
                assert r.error and "422" in r.error and "quota" in r.error
                # the failed update recorded no scale event: the rate limit is unchanged
                assert emu.hpa._up_events == []
            finally:
                await t.close()

    run(main())


def test_scaled_object_ref_to_pb():
    msg = REF.to_pb()
    assert (msg.name, msg.namespace) == ("decode", "llm")
    assert dict(msg.scalerMetadata) == {"role": "decode", "scalerAddress": "pdscaler:9090"}
    assert json.loads(json.dumps(dict(msg.scalerMetadata)))["role"] == "decode"
