"""The HTTP emulator (scaler.testbench.emulator.app): a real aiohttp server on an ephemeral port, real requests."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scaler.clock import ManualClock, VirtualClock
from scaler.testbench.emulator.app import Emulator
from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.processes import emulate_process, wait_until
from scaler.testbench.traces import bundled_trace, load_trace

SCALE = "/apis/nvidia.com/v1alpha1/namespaces/default/dynamographdeploymentscalingadapters"
CHAT = "/v1/chat/completions"

DYNAMO_NAMES = [
    "dynamo_frontend_time_to_first_token_seconds",
    "dynamo_frontend_inter_token_latency_seconds",
    "dynamo_frontend_request_duration_seconds",
    "dynamo_frontend_input_sequence_tokens",
    "dynamo_frontend_output_sequence_tokens",
    "dynamo_frontend_requests_total",
    "dynamo_frontend_output_tokens_total",
    "dynamo_frontend_inflight_requests",
    "dynamo_frontend_queued_requests",
    "dynamo_frontend_model_total_kv_blocks",
    "dynamo_frontend_model_kv_cache_block_size",
    "dynamo_frontend_model_max_num_seqs",
    "dynamo_frontend_worker_active_prefill_tokens",
    "dynamo_frontend_worker_active_decode_blocks",
    "dynamo_frontend_worker_num_requests_waiting",
    "dynamo_component_kvstats_active_blocks",
    "dynamo_component_kvstats_total_blocks",
    "dynamo_component_kvstats_gpu_cache_usage_percent",
    "pdscaler_emulator_replicas",
    "pdscaler_emulator_virtual_time_seconds",
]


def serve(test: Callable[[Emulator, aiohttp.ClientSession], Awaitable[None]], **kw: Any) -> None:
    """Run `test` against a started emulator in a fresh event loop."""

    async def main() -> None:
        emu = Emulator(**kw)
        await emu.start()
        try:
            async with aiohttp.ClientSession(emu.url, timeout=aiohttp.ClientTimeout(total=20)) as http:
                await test(emu, http)
        finally:
            await emu.stop()

    asyncio.run(main())


def chat_body(content: str = "x" * 400, max_tokens: int = 30, **extra: Any) -> dict[str, Any]:
    return {"model": "emulated-llm", "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra}


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metric_samples(text: str) -> dict[str, Any]:
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def test_streaming_chat_completion_shape_and_coalescing():
    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        body = chat_body("a" * 800, 60, stream=True, stream_options={"include_usage": True})
        async with http.post(CHAT, json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(await r.text())
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "emulated-llm" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"]["content"] for c in content)
        assert len(text.split()) == 60
        # At 200x, a 20 ms wall tick is seconds of virtual time: tokens arrive coalesced.
        assert 1 <= len(content) < 60
        final, usage = chunks[-2], chunks[-1]
        assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["delta"] == {}
        assert usage["choices"] == [] and usage["usage"] == {
            "prompt_tokens": 200, "completion_tokens": 60, "total_tokens": 260}

    serve(t, clock=VirtualClock(200))


def test_unary_chat_completion_and_models():
    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        msgs = [{"role": "system", "content": "s" * 40},
                {"role": "user", "content": [{"type": "text", "text": "u" * 60}]}]
        async with http.post(CHAT, json={"model": "emulated-llm", "messages": msgs,
                                         "max_completion_tokens": 7, "max_tokens": 99}) as r:
            assert r.status == 200
            out = await r.json()
        assert out["object"] == "chat.completion"
        choice = out["choices"][0]
        assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"].split()) == 7
        assert choice["finish_reason"] == "length"
        assert out["usage"] == {"prompt_tokens": 25, "completion_tokens": 7, "total_tokens": 32}
        async with http.post(CHAT, json={"model": "emulated-llm", "messages": [{"role": "user", "content": ""}]}) as r:
            out = await r.json()  # default max tokens, ISL at least 1
        assert out["usage"]["prompt_tokens"] == 1 and out["usage"]["completion_tokens"] == 16
        async with http.get("/v1/models") as r:
            models = await r.json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["emulated-llm"]
        assert emu.sim.finished == 2 and emu.metrics.requests == {"stream": 0, "unary": 2}

    serve(t, clock=VirtualClock(100))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "emulated-llm"}, 400, "messages"),
        ({"model": "emulated-llm", "messages": []}, 400, "messages"),
        ({"model": "emulated-llm", "messages": [{"content": "hi"}]}, 400, "messages[0]"),
        ({"model": "emulated-llm", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        (chat_body(max_tokens=0), 400, "max_tokens"),
        (chat_body(max_tokens=2.5), 400, "max_tokens"),
        (chat_body(stream="yes"), 400, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        (chat_body() | {"model": "gpt-7"}, 404, "model"),
        ([1, 2], 400, None),
    ],
)
def test_chat_validation_errors(body, status, param):
    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        async with http.post(CHAT, json=body) as r:
            assert r.status == status
            err = (await r.json())["error"]
        assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param
        async with http.post(CHAT, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "error" in await r.json()
        assert emu.sim.submitted == 0

    serve(t, clock=ManualClock())


def test_metrics_expose_every_dynamo_name_and_parse():
    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        async def one(stream: bool) -> None:
            async with http.post(CHAT, json=chat_body("q" * 4000, 20, stream=stream)) as r:
                assert r.status == 200
                await r.read()

        await asyncio.gather(*(one(i % 2 == 0) for i in range(6)))
        async with http.patch(f"{SCALE}/demo-decodeworker/scale", json={"spec": {"replicas": 2}}) as r:
            assert r.status == 200
        async with http.get("/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        fams = metric_samples(text)
        for name in DYNAMO_NAMES:
            base = name[: -len("_total")] if name.endswith("_total") else name
            assert base in fams, name

        def samples(name: str, suffix: str = "") -> list[Any]:
            return [s for s in fams[name].samples if s.name.endswith(suffix)]

        ttft_count = samples("dynamo_frontend_time_to_first_token_seconds", "_count")
        assert ttft_count[0].value == 6 and ttft_count[0].labels == {"model": "emulated-llm",
                                                                     "dynamo_namespace": "default-demo"}
        reqs = {s.labels["request_type"]: s.value for s in samples("dynamo_frontend_requests", "_total")}
        assert reqs == {"stream": 3, "unary": 3}
        assert all(s.labels["endpoint"] == "chat_completions" and s.labels["status"] == "success"
                   for s in samples("dynamo_frontend_requests"))
        out_tok = [s.value for s in samples("dynamo_frontend_output_tokens", "_total")]
        assert out_tok == [120]
        itl_count = [s.value for s in samples("dynamo_frontend_inter_token_latency_seconds", "_count")]
        assert itl_count == [6 * 19]  # one observation per decode token
        isl_sum = [s.value for s in samples("dynamo_frontend_input_sequence_tokens", "_sum")]
        assert isl_sum == [6 * 1000]
        # Decode was scaled to 2 but the new replica is still starting: only ready workers are exported.
        decode = [s for s in samples("dynamo_frontend_worker_active_decode_blocks")
                  if s.labels["worker_type"] == "decode"]
        assert len(decode) == 1 and decode[0].labels["dp_rank"] == "0"
        kv_total = samples("dynamo_component_kvstats_total_blocks")
        assert {s.labels["dynamo_component"] for s in kv_total} == {"PrefillWorker", "DecodeWorker"}
        assert all(s.value == 56457 and s.labels["dynamo_endpoint"] == "generate" for s in kv_total)
        reps = {(s.labels["role"], s.labels["state"]): s.value for s in samples("pdscaler_emulator_replicas")}
        assert reps[("decode", "desired")] == 2 and reps[("decode", "starting")] == 1
        assert reps[("decode", "ready")] == 1 and reps[("prefill", "ready")] == 1
        vt = samples("pdscaler_emulator_virtual_time_seconds")[0].value
        assert vt == pytest.approx(emu.sim.now, abs=5.0) and vt > 0

    serve(t, clock=VirtualClock(100))


def test_worker_gauges_show_prefill_backlog():
    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        for _ in range(5):  # 5 x 40k tokens = 5 s of prefill on one replica; the clock does not move
            emu.sim.submit(40_000, 1, emu.clock.now())
        async with http.get("/metrics") as r:
            fams = metric_samples(await r.text())
        (pf,) = [s for s in fams["dynamo_frontend_worker_active_prefill_tokens"].samples
                 if s.labels["worker_type"] == "prefill"]
        assert pf.value == 200_000
        (wait,) = [s for s in fams["dynamo_frontend_worker_num_requests_waiting"].samples
                   if s.labels["worker_type"] == "prefill"]
        assert wait.value == 4
        (q,) = fams["dynamo_frontend_queued_requests"].samples
        assert q.value == 5

    serve(t, clock=ManualClock(1000.0))


def test_scale_subresource_get_put_patch_and_errors():
    clock = ManualClock(1_700_000_000.0)

    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{SCALE}/demo-prefillworker/scale") as r:
            assert r.status == 200
            scale = await r.json()
        assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
        assert scale["metadata"]["name"] == "demo-prefillworker" and scale["metadata"]["namespace"] == "default"
        assert scale["spec"] == {"replicas": 1}
        assert scale["status"] == {"replicas": 1, "selector": "nvidia.com/dynamo-graph-deployment-name=demo,"
                                                              "nvidia.com/dynamo-component=PrefillWorker"}
        rv0 = scale["metadata"]["resourceVersion"]

        scale["spec"]["replicas"] = 3
        async with http.put(f"{SCALE}/demo-prefillworker/scale", json=scale) as r:
            assert r.status == 200
            put = await r.json()
        assert put["spec"]["replicas"] == 3 and put["status"]["replicas"] == 3  # 1 ready + 2 starting
        assert put["metadata"]["resourceVersion"] != rv0
        assert emu.sim.replicas("prefill") == (3, 1, 2, 0)
        async with http.put(f"{SCALE}/demo-prefillworker/scale", json=scale) as r:  # stale resourceVersion
            assert r.status == 409 and (await r.json())["reason"] == "Conflict"

        async with http.patch(f"{SCALE}/demo-prefillworker/scale", json={"spec": {"replicas": 2}},
                              headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200 and (await r.json())["spec"]["replicas"] == 2
        async with http.patch(f"{SCALE}/demo-decodeworker/scale",
                              json=[{"op": "replace", "path": "/spec/replicas", "value": 4}],
                              headers={"Content-Type": "application/json-patch+json"}) as r:
            assert r.status == 200 and (await r.json())["spec"]["replicas"] == 4
        assert emu.sim.replicas("prefill").desired == 2 and emu.sim.replicas("decode").desired == 4

        # Starting replicas become ready startup_delay_s (90 s) after the scale-up.
        clock.advance(89.0)
        async with http.get(f"{SCALE}/demo-decodeworker/scale") as r:
            assert (await r.json())["status"]["replicas"] == 4
        assert emu.sim.replicas("decode").ready == 1
        clock.advance(1.0)
        async with http.get(f"{SCALE}/demo-decodeworker") as r:
            adapter = await r.json()
        assert emu.sim.replicas("decode").ready == 4
        assert adapter["kind"] == "DynamoGraphDeploymentScalingAdapter"
        assert adapter["apiVersion"] == "nvidia.com/v1alpha1"
        assert adapter["spec"] == {"replicas": 4, "dgdRef": {"name": "demo", "serviceName": "DecodeWorker"}}
        assert adapter["status"]["replicas"] == 4
        assert adapter["status"]["selector"].endswith("nvidia.com/dynamo-component=DecodeWorker")
        assert adapter["status"]["lastScaleTime"] == "2023-11-14T22:13:20Z"

        for path in (f"{SCALE}/demo-nope/scale", f"{SCALE}/demo-nope",
                     SCALE.replace("/default/", "/other/") + "/demo-decodeworker/scale"):
            async with http.get(path) as r:
                assert r.status == 404
                st = await r.json()
            assert (st["kind"], st["status"], st["reason"], st["code"]) == ("Status", "Failure", "NotFound", 404)
        async with http.patch(f"{SCALE}/demo-nope/scale", json={"spec": {"replicas": 1}}) as r:
            assert r.status == 404

        for bad in (-1, 1.5, "2", True, None):
            async with http.patch(f"{SCALE}/demo-decodeworker/scale", json={"spec": {"replicas": bad}}) as r:
                assert r.status == 422, bad
                st = await r.json()
            assert (st["kind"], st["reason"], st["code"]) == ("Status", "Invalid", 422)
        async with http.put(f"{SCALE}/demo-decodeworker/scale", json={"kind": "Scale", "spec": {"replicas": -3}}) as r:
            assert r.status == 422
        assert emu.sim.replicas("decode").desired == 4

        async with http.patch(f"{SCALE}/demo-decodeworker/scale", json={"spec": {"replicas": 0}}) as r:
            assert (await r.json())["spec"]["replicas"] == 0
        assert emu.sim.replicas("decode") == (0, 0, 0, 0)

    serve(t, clock=clock)


def test_replay_submits_the_trace_at_exact_virtual_times():
    trace = [r for r in load_trace(bundled_trace("azure-conv")) if r.t < 600.0]  # 10 min, ~3300 requests

    async def t(emu: Emulator, http: aiohttp.ClientSession) -> None:
        start = emu.clock.now() + 1.0
        await asyncio.wait_for(emu.replay(trace, start_at=start), timeout=60)  # ~2 s: 600 virtual s at 300x
        assert emu.sim.submitted == len(trace)
        assert emu.clock.now() >= start + trace[-1].t  # it waited for the virtual clock, never ran ahead of it
        while emu.sim.inflight_requests and emu.clock.now() < start + 900:
            await asyncio.sleep(0.05)
        sim = emu.sim
        assert sim.finished == len(trace) and sim.submitted == sim.finished + sim.in_system
        arrivals = sorted(sim.finished_arrays().arrival)
        assert arrivals == pytest.approx([start + r.t for r in trace], abs=1e-6)
        snap = emu.snapshot()
        assert snap["finished_requests"] == len(trace)
        assert snap["replicas"]["decode"] == {"desired": 1, "ready": 1, "starting": 0, "draining": 0}
        async with http.get("/metrics") as r:
            fams = metric_samples(await r.text())
        total = sum(s.value for s in fams["dynamo_frontend_requests"].samples if s.name.endswith("_total"))
        assert total == len(trace)

    serve(t, clock=VirtualClock(300, origin=1000.0))


async def _until(cond, interval: float = 0.01) -> None:
    while not cond():
        await asyncio.sleep(interval)


def test_replay_with_a_manual_clock_only_submits_what_is_due():
    trace = load_trace(bundled_trace("azure-code"))[:50]

    async def main() -> None:
        clock = ManualClock(0.0)
        emu = Emulator(clock=clock, profile=EmulatorProfile(tick_s=0.01))
        task = emu.replay(trace)  # not started: the replay task drives the simulation itself
        cutoff = trace[25].t
        due = sum(1 for r in trace if r.t <= cutoff)
        clock.advance(cutoff)
        await asyncio.wait_for(_until(lambda: emu.sim.submitted >= due), timeout=30)
        for _ in range(5):  # and it stays there: a few more of its ticks submit nothing that is not due
            await asyncio.sleep(0.01)
        assert emu.sim.submitted == due
        clock.advance(trace[-1].t)
        await asyncio.wait_for(task, timeout=2)
        assert emu.sim.submitted == 50
        await emu.stop()

    asyncio.run(main())


def test_run_entry_point_serves_and_stops_on_sigterm():
    proc = emulate_process(args=["--speedup", "50", "--trace", "azure-code", "--rate-scale", "2"]).start()
    try:
        url = proc.url
        assert requests.get(url + "/healthz", timeout=5).json()["status"] == "ok"

        def replaying():
            fams = metric_samples(requests.get(url + "/metrics", timeout=5).text)
            ttft = fams["dynamo_frontend_time_to_first_token_seconds"].samples
            return fams if sum(s.value for s in ttft if s.name.endswith("_count")) > 0 else None

        fams = wait_until(replaying, 30, "the trace's first requests answered")  # the trace is being replayed
        assert fams["pdscaler_emulator_virtual_time_seconds"].samples[0].value > 1_000_000_000  # epoch origin
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.stop()


def test_run_rejects_a_missing_trace(tmp_path):
    from scaler.testbench.emulator.app import run

    assert run(0, trace=str(tmp_path / "missing.csv")) == 2
