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
- `bad-config`: the config file is replaced by an invalid one (the reload must keep the old config),
  then restored.

The result holds every probe (time, latency, answers) and the fault windows, for tests/test_chaos.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from load.e2e import GRAPH, NAMESPACE, REPO, Prometheus, scaler_config
from scaler.testbench.processes import free_port, serve_process

FAULT_S, RECOVER_S = 18.0, 12.0  # a fault outlasts the 15 s rate window: series that vanish are then gone
FAULTS = ("prometheus-down", "prometheus-slow", "prometheus-trickle", "prometheus-killed", "metrics-gone",
          "bad-config")
ROLES = ("prefill", "decode", "warm")


class Proxy:
    """A TCP proxy on loopback whose mode can change: pass | refuse | delay | trickle (one byte every
    `trickle_s` from the target to the client; the requests pass as they come, so the answers start)."""

    def __init__(self, target_port: int, delay_s: float = 5.0, trickle_s: float = 0.5) -> None:
        self.target_port, self.delay_s, self.mode = target_port, delay_s, "pass"
        self.trickle_s = trickle_s
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

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
            try:
                while data := await src.read(65536):
                    if self.mode == "refuse":
                        break
                    if self.mode == "delay":
                        await asyncio.sleep(self.delay_s)
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
    prober = None
    try:
        await asyncio.to_thread(scaler.start)
        await asyncio.to_thread(scaler.wait_healthy, 60)
        prober = asyncio.create_task(_prober(scaler.grpc_port, http_port, stop, result.probes))
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
            elif fault == "bad-config":
                cfg_path.write_text(cfg_text.replace("max_replicas: 6", "max_replicas: -6"))
            await asyncio.sleep(FAULT_S)
            result.rules[f"{fault}:during"] = await asyncio.to_thread(_rules, http_port)
            # End the fault.
            prom_proxy.mode = metrics_proxy.mode = "pass"
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
        if prober is not None:
            await asyncio.gather(prober, return_exceptions=True)
        replay.cancel()
        await asyncio.to_thread(scaler.stop)
        await prom_proxy.stop()
        await metrics_proxy.stop()
        prom.stop()
        await emulator.stop()


def run(workdir: Path | None = None) -> ChaosResult:
    """The whole run: about three minutes."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pdscaler-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(workdir))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for logs, configs and result.json")
    args = p.parse_args(argv)
    result = run(Path(args.out) if args.out else None)
    if args.out:
        (Path(args.out) / "result.json").write_text(result.to_json())
    lat = sorted(p.latency_s for p in result.probes)
    print(f"{len(result.probes)} probes, latency p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms; "
          f"errors {sum(1 for p in result.probes if p.error)}; reloads {result.reloads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
