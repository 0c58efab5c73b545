"""Chaos run on loopback (`make chaos`): faults injected into a live pdscaler while KEDA-like clients poll.

    python -m load.chaos [--out DIR]

The set-up of load/e2e.py (a real Prometheus, the emulated graph replaying a trace, `pdscaler serve`
reading Prometheus), except that pdscaler reaches Prometheus, and Prometheus reaches the emulator,
through TCP proxies this script controls. A prober asks pdscaler for every role's target ten times a
second over gRPC, and reads /healthz. Faults, one after the other, each followed by a recovery period:

- `prometheus-down`: the proxy to Prometheus refuses connections;
- `prometheus-slow`: it delays every answer beyond the source's timeout;
- `prometheus-trickle`: it forwards Prometheus' answers a byte every half second, within the source's
  1 s timeout per read: only the total deadline of a query and of a poll ends the wait;
- `prometheus-killed`: the Prometheus process is killed, then started again on the same data;
- `metrics-gone`: the emulator's /metrics disappear (Prometheus' scrapes fail, its series go stale);
- `series-dropped`: Prometheus answers every query, but the emulator stops exporting the decode KV
  series (kvstats active/total blocks and usage) and the prefill queue (the workers' active prefill
  tokens) (`POST /admin/drop`): Prometheus marks them stale at its next scrape, and each role must hold
  (`missing-data`, naming the input) until they return;
- `one-poll-spike`: the proxy to Prometheus rewrites one poll's arrival-rate queries (request rate,
  prefill and decode token rates) to 1000 x the query, so that poll reads a 1000x rate: taken as the
  last poll's value (`one-poll outlier`), not sized on;
- `bad-config`: the config file is replaced by an invalid one (the reload must keep the old config),
  then restored;
- `decision-process-killed`: serve's decision process gets SIGKILL: serve answers from the last
  decisions, starts a new one, and polls resume.

The result holds every probe (time, latency, answers) and the fault windows, for tests/test_chaos.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from load.e2e import GRAPH, NAMESPACE, REPO, Prometheus, scaler_config
from scaler.testbench.processes import free_port, serve_process

FAULT_S, RECOVER_S = 18.0, 12.0  # a fault outlasts the 15 s rate window: series that vanish are then gone
FAULTS = ("prometheus-down", "prometheus-slow", "prometheus-trickle", "prometheus-killed", "metrics-gone",
          "series-dropped", "one-poll-spike", "bad-config", "decision-process-killed")
ROLES = ("prefill", "decode", "warm")
# series-dropped: the emulator stops exporting these families (POST /admin/drop), per role and the input
# of LOWER_ON (scaler/policy/missing_data.py) whose absence its decisions must name.
DROPPED = {
    "decode": ("KV in use", ("dynamo_component_kvstats_active_blocks", "dynamo_component_kvstats_total_blocks",
                             "dynamo_component_kvstats_gpu_cache_usage_percent")),
    "prefill": ("queue", ("dynamo_frontend_worker_active_prefill_tokens",)),
}
SAMPLE_S = 0.5  # /explain and /metrics are read this often through the run
RESTART_WAIT_S = 45.0  # decision-process-killed: at most this long for polls to resume


# The arrival-rate queries of a poll, in the order the Prometheus source sends them (scaler/signals.py:
# request_rate, prefill_tokens_per_s, decode_tokens_per_s; the means divide by a `_count` rate and are
# left alone): what `one-poll-spike` multiplies.
SPIKED = ("rate(dynamo_frontend_requests_total", "rate(dynamo_frontend_input_sequence_tokens_sum",
          "rate(dynamo_frontend_output_sequence_tokens_sum")
SPIKE_FACTOR = 1000.0


class Proxy:
    """A TCP proxy on loopback whose mode can change: pass | refuse | delay | trickle (one byte every
    `trickle_s` from the target to the client; the requests pass as they come, so the answers start).

    `spike()` arms a one-poll spike: the next POST /api/v1/query of each arrival rate (SPIKED, from the
    request rate on, so one poll's three) is rewritten to `factor * (query)`, so Prometheus itself
    answers that poll a 1000x rate; every other request passes unchanged. `spiked` lists (time, query)
    of the rewritten ones."""

    def __init__(self, target_port: int, delay_s: float = 5.0, trickle_s: float = 0.5) -> None:
        self.target_port, self.delay_s, self.mode = target_port, delay_s, "pass"
        self.trickle_s = trickle_s
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._spike: list[str] = []  # the SPIKED patterns still to rewrite, in order
        self.spike_factor = SPIKE_FACTOR
        self.spiked: list[tuple[float, str]] = []

    def spike(self, factor: float = SPIKE_FACTOR) -> None:
        self.spike_factor, self._spike = factor, list(SPIKED)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def _rewrite(self, buf: bytes) -> tuple[bytes, bytes]:
        """(bytes to forward, the incomplete request kept back) of what a client sent while a spike is
        armed: complete HTTP/1.1 requests, the armed arrival-rate queries rewritten."""
        out = b""
        while self._spike and buf:
            head_end = buf.find(b"\r\n\r\n")
            if not buf[:8].split(b" ", 1)[0].isalpha() or (head_end < 0 and len(buf) > 65536):
                return out + buf, b""  # not the start of a request: passes as it is
            if head_end < 0:
                return out, buf
            lines = buf[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            if "chunked" in headers.get("transfer-encoding", ""):
                return out + buf, b""
            length = int(headers.get("content-length", "0"))
            if len(buf) < head_end + 4 + length:
                return out, buf
            request, buf = buf[:head_end + 4 + length], buf[head_end + 4 + length:]
            out += self._spiked(lines, request[head_end + 4:]) or request
        return out + buf, b""

    def _spiked(self, lines: list[str], body: bytes) -> bytes | None:
        """The request rewritten, or None when it is not the next armed query."""
        method, path = (lines[0].split(" ") + ["", ""])[:2]
        if method != "POST" or path.split("?")[0] != "/api/v1/query":
            return None
        params = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        query = dict(params).get("query", "")
        if self._spike[0] not in query or "/" in query:
            return None
        self._spike.pop(0)
        self.spiked.append((time.time(), query))
        params = [(k, f"{self.spike_factor:g} * ({v})" if k == "query" else v) for k, v in params]
        new_body = urllib.parse.urlencode(params).encode()
        head = [h for h in lines if not h.lower().startswith("content-length:")]
        head.append(f"Content-Length: {len(new_body)}")
        return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + new_body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "refuse":
                return
            if self.mode == "delay":
                await asyncio.sleep(self.delay_s)
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        finally:
            if self.mode == "refuse":
                writer.close()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            # The mode applies to open (keep-alive) connections too, chunk by chunk.
            kept = b""  # requests: an incomplete one held back while a spike is armed
            try:
                while data := await src.read(65536):
                    if self.mode == "refuse":
                        break
                    if self.mode == "delay":
                        await asyncio.sleep(self.delay_s)
                    if not answers and (self._spike or kept):
                        data, kept = self._rewrite(kept + data)
                    while answers and self.mode == "trickle" and data and not dst.is_closing():
                        dst.write(data[:1])
                        await dst.drain()
                        data = data[1:]
                        await asyncio.sleep(self.trickle_s)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except OSError:
                    pass

        await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class Probe:
    t: float
    latency_s: float  # slowest of the role answers of this probe
    answers: dict[str, float]
    healthy: bool
    error: str | None = None


@dataclass
class ChaosResult:
    floors: dict[str, int]
    ceilings: dict[str, int]
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # (fault, start, end)
    probes: list[Probe] = field(default_factory=list)
    reloads: dict[str, float] = field(default_factory=dict)
    rules: dict[str, dict[str, str]] = field(default_factory=dict)  # rule per role at the end of each phase
    # Read every SAMPLE_S: /explain (t, {role: {replicas, rule, message, steps}}, notes) and the
    # counters of /metrics (t, {pdscaler_polls_total, pdscaler_decision_process_restarts_total}).
    explains: list[tuple[float, dict[str, dict], list[str]]] = field(default_factory=list)
    counters: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    spiked: list[tuple[float, str]] = field(default_factory=list)  # one-poll-spike: the rewritten queries
    # decision-process-killed: the killed pid and when, the new decision process's pid and when it was seen.
    killed: dict[str, float] = field(default_factory=dict)

    def during(self, start: float, end: float) -> list[Probe]:
        return [p for p in self.probes if start <= p.t < end]

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "probes": [p.__dict__ for p in self.probes]}, indent=1)


async def _prober(port: int, http_port: int, stop: asyncio.Event, out: list[Probe]) -> None:
    import grpc

    from scaler.rpc import externalscaler_pb2 as pb
    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ExternalScalerStub(ch)
        while not stop.is_set():
            t = time.time()
            answers, slowest, error = {}, 0.0, None
            for role in ROLES:
                ref = pb.ScaledObjectRef(name=f"{GRAPH}-{role}", namespace=NAMESPACE,
                                         scalerMetadata={"graph": GRAPH, "role": role})
                t0 = time.perf_counter()
                try:
                    r = await stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="x"), timeout=1.0)
                    answers[role] = r.metricValues[0].metricValueFloat
                except grpc.RpcError as e:
                    error = f"{role}: {e.code().name}"
                slowest = max(slowest, time.perf_counter() - t0)
            healthy = await asyncio.to_thread(_healthz, http_port)
            out.append(Probe(t, slowest, answers, healthy, error))
            await asyncio.sleep(0.1)


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def _sampler(http_port: int, stop: asyncio.Event, result: "ChaosResult") -> None:
    while not stop.is_set():
        t = time.time()
        try:
            d = await asyncio.to_thread(_explain, http_port)
            roles = {role: {k: r[k] for k in ("replicas", "rule", "message", "steps")}
                     for role, r in d["roles"].items()}
            result.explains.append((t, roles, list(d["notes"])))
            result.counters.append((t, await asyncio.to_thread(_counters, http_port)))
        except (OSError, ValueError, KeyError):
            pass  # a missed sample; the prober holds the answers
        await asyncio.sleep(SAMPLE_S)


def _explain(http_port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/explain?graph={GRAPH}&format=json",
                                             timeout=5).read())


def _counters(http_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("pdscaler_polls_total", "pdscaler_decision_process_restarts_total"):
            out[name] = float(value)
    return out


def _drop(emulator_url: str, families: tuple[str, ...] = ()) -> None:
    """The emulator's /metrics leave `families` out (none: every family is exported again)."""
    q = urllib.parse.urlencode({"families": ",".join(families)})
    urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/admin/drop?{q}", method="POST"), timeout=5).read()


def decision_processes(serve_pid: int) -> list[int]:
    """The pids of serve's decision process (its multiprocessing spawn children, not the resource tracker)."""
    import psutil

    out = []
    for child in psutil.Process(serve_pid).children():
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd:
            out.append(child.pid)
    return out


def _rules(http_port: int) -> dict[str, str]:
    d = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/explain?graph={GRAPH}&format=json",
                                          timeout=5).read())
    return {role: r["rule"] for role, r in d["roles"].items()}


def _reloads(http_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pdscaler_config_reloads_total{"):
            out[line.split('result="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


async def _run(workdir: Path) -> ChaosResult:
    from scaler.clock import SystemClock
    from scaler.testbench.emulator.app import Emulator
    from scaler.testbench.emulator.profile import EmulatorProfile
    from scaler.testbench.traces import bundled_trace, load_trace, scale_rate

    clock = SystemClock()
    emulator = Emulator(EmulatorProfile(startup_delay_s=15.0), clock=clock, graph=GRAPH, namespace=NAMESPACE)
    await emulator.start("127.0.0.1", 0)
    emu_port = int(emulator.url.rsplit(":", 1)[1])
    metrics_proxy = Proxy(emu_port)
    await metrics_proxy.start()
    http_port = free_port()  # named in Prometheus' scrape config before the scaler starts
    prom = Prometheus(workdir, {"emulator": f"127.0.0.1:{metrics_proxy.port}", "pdscaler": f"127.0.0.1:{http_port}"})
    prom_proxy = Proxy(prom.port)
    await prom_proxy.start()
    config = scaler_config(f"http://127.0.0.1:{prom_proxy.port}")
    config["stuck_after"] = "60s"
    cfg_path = workdir / "pdscaler.yaml"
    cfg_text = yaml.safe_dump(config, sort_keys=False)
    cfg_path.write_text(cfg_text)
    scaler = serve_process(cfg_path, http_port=http_port, cwd=REPO, log_path=workdir / "pdscaler.log")
    roles = config["graphs"][GRAPH]["roles"]
    result = ChaosResult(floors={r: roles[r]["min_replicas"] for r in ROLES},
                         ceilings={r: roles[r]["max_replicas"] for r in ROLES})
    trace = scale_rate(load_trace(bundled_trace("azure-conv")), 4.0, seed=0)
    replay = emulator.replay([r for r in trace if r.t < 600], start_at=clock.now())
    stop = asyncio.Event()
    prober = sampler = None
    try:
        await asyncio.to_thread(scaler.start)
        await asyncio.to_thread(scaler.wait_healthy, 60)
        prober = asyncio.create_task(_prober(scaler.grpc_port, http_port, stop, result.probes))
        sampler = asyncio.create_task(_sampler(http_port, stop, result))
        await asyncio.sleep(RECOVER_S)  # steady state first
        for fault in FAULTS:
            start = time.time()
            if fault == "prometheus-down":
                prom_proxy.mode = "refuse"
            elif fault == "prometheus-slow":
                prom_proxy.mode = "delay"
            elif fault == "prometheus-trickle":
                prom_proxy.mode = "trickle"
            elif fault == "prometheus-killed":
                prom.proc.kill()
                await asyncio.to_thread(prom.proc.wait, 10)
            elif fault == "metrics-gone":
                metrics_proxy.mode = "refuse"
            elif fault == "series-dropped":
                await asyncio.to_thread(_drop, emulator.url, tuple(f for _, fams in DROPPED.values() for f in fams))
            elif fault == "one-poll-spike":
                prom_proxy.spike()
            elif fault == "bad-config":
                cfg_path.write_text(cfg_text.replace("max_replicas: 6", "max_replicas: -6"))
            elif fault == "decision-process-killed":
                await _kill_decision_process(scaler.pid, result)
            await asyncio.sleep(max(0.0, start + FAULT_S - time.time()))
            result.rules[f"{fault}:during"] = await asyncio.to_thread(_rules, http_port)
            # End the fault.
            prom_proxy.mode = metrics_proxy.mode = "pass"
            if fault == "series-dropped":
                await asyncio.to_thread(_drop, emulator.url)
            result.spiked = list(prom_proxy.spiked)
            if fault == "prometheus-killed":
                await asyncio.to_thread(prom.restart)
            if fault == "bad-config":
                result.reloads = await asyncio.to_thread(_reloads, http_port)
                cfg_path.write_text(cfg_text)
            result.windows.append((fault, start, time.time()))
            await asyncio.sleep(RECOVER_S)
            result.rules[f"{fault}:after"] = await asyncio.to_thread(_rules, http_port)
        return result
    finally:
        stop.set()
        await asyncio.gather(*(t for t in (prober, sampler) if t is not None), return_exceptions=True)
        replay.cancel()
        await asyncio.to_thread(scaler.stop)
        await prom_proxy.stop()
        await metrics_proxy.stop()
        prom.stop()
        await emulator.stop()


async def _kill_decision_process(serve_pid: int, result: ChaosResult) -> None:
    """SIGKILL serve's decision process, then wait (at most RESTART_WAIT_S) for serve to start a new one
    and for that one to poll (pdscaler_polls_total moving again, read by the sampler)."""
    (old,) = await asyncio.to_thread(decision_processes, serve_pid)
    result.killed = {"pid": old, "at": time.time()}  # taken first: nothing after it saw the process alive
    os.kill(old, signal.SIGKILL)
    deadline = time.time() + RESTART_WAIT_S
    while time.time() < deadline:
        new = [p for p in await asyncio.to_thread(decision_processes, serve_pid) if p != old]
        if new and "new_pid" not in result.killed:
            result.killed |= {"new_pid": new[0], "new_pid_at": time.time()}
        if "new_pid" in result.killed and resumed_at(result) is not None:
            return
        await asyncio.sleep(0.2)


def resumed_at(result: ChaosResult) -> float | None:
    """decision-process-killed: when pdscaler_polls_total was first seen rising again after the kill
    (between two samples both taken at least a second after it: not a poll of the killed process)."""
    after = [(t, c.get("pdscaler_polls_total")) for t, c in result.counters if t >= result.killed["at"] + 1.0]
    for (_, a), (t, b) in zip(after, after[1:]):
        if a is not None and b is not None and b > a:
            return t
    return None


def run(workdir: Path | None = None) -> ChaosResult:
    """The whole run: about five minutes."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pdscaler-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(workdir))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def summary(result: ChaosResult) -> str:
    """The run's figures: every probe, then per fault its probes, latency and rules during and after."""
    lat = [p.latency_s * 1000 for p in result.probes]
    lines = [f"{len(result.probes)} probes, latency p50 {_pct(lat, 0.5):.2f} ms, p99 {_pct(lat, 0.99):.2f} ms, "
             f"max {max(lat, default=float('nan')):.2f} ms; errors {sum(1 for p in result.probes if p.error)}; "
             f"unhealthy {sum(1 for p in result.probes if not p.healthy)}; reloads {result.reloads}"]
    for fault, start, end in result.windows:
        during = result.during(start, end)
        dl = [p.latency_s * 1000 for p in during]
        lines.append(f"{fault}: {len(during)} probes, p50 {_pct(dl, 0.5):.2f} ms, p99 {_pct(dl, 0.99):.2f} ms, "
                     f"errors {sum(1 for p in during if p.error)}, unhealthy {sum(1 for p in during if not p.healthy)}; "
                     f"rules during {result.rules.get(f'{fault}:during')}, after {result.rules.get(f'{fault}:after')}")
    if result.killed:
        k, resumed = result.killed, resumed_at(result)
        lines.append(f"decision-process-killed: pid {k['pid']} -> {k.get('new_pid')} seen after "
                     f"{k.get('new_pid_at', float('nan')) - k['at']:.1f} s, polls again after "
                     f"{(resumed or float('nan')) - k['at']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for logs, configs and result.json")
    args = p.parse_args(argv)
    result = run(Path(args.out) if args.out else None)
    if args.out:
        (Path(args.out) / "result.json").write_text(result.to_json())
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
