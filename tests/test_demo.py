"""`pdscaler demo`: the emulated graph scales up under a burst of the real Azure code trace (a 20-second
run, its stdout a pipe as under `make demo | tee` or CI), the scaler's gRPC port answers a KEDA-protocol
client while it runs, the summary sets the simulated baselines beside the live figures, and its
KEDA + HPA emulation runs the ScaledObjects manifests/overlays/dynamo-disagg ships."""

import re
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.testbench.demo import SIM_POLICIES, DemoOptions, demo_scaled_objects, scaled_object_spec
from scaler.testbench.hpa import HorizontalPodAutoscaler
from scaler.testbench.processes import ManagedProcess, free_port

SHIPPED = Path(__file__).resolve().parents[1] / "manifests" / "overlays" / "dynamo-disagg" / "scaledobjects.yaml"
PROGRESS = re.compile(r"^t=\s*\d+:\d\d rate=", re.M)


def test_demo_hpa_runs_the_shipped_scaledobjects():
    shipped = [scaled_object_spec(d) for d in yaml.safe_load_all(SHIPPED.read_text()) if d]
    demo = demo_scaled_objects("127.0.0.1:1", DemoOptions().max_replicas)
    assert [s.metadata["role"] for s in shipped] == list(demo)
    for so in shipped:
        mine = demo[so.metadata["role"]]
        assert mine.behavior == so.behavior
        assert (mine.polling_interval, mine.fallback, mine.min_replica_count) == \
               (so.polling_interval, so.fallback, so.min_replica_count)
        # Not Kubernetes' defaults (300 s scale-down window, 10 % tolerance): the HPA passes pdscaler's target.
        hpa = HorizontalPodAutoscaler(1, mine.max_replica_count, mine.behavior)
        assert hpa.tolerances() == (0.0, 0.0)
        assert mine.behavior.scale_up.stabilization_window_seconds == 0
        assert mine.behavior.scale_down.stabilization_window_seconds == 0


@pytest.mark.slow  # a 20 s demo
def test_piped_demo_scales_up_prints_progress_and_the_simulated_baselines():
    port = free_port()  # the demo's gRPC port, named before it starts
    # No --no-ui: stdout is a pipe, so the demo must fall back to progress lines by itself.
    proc = ManagedProcess([sys.executable, "-m", "scaler", "demo", "--duration", "20", "--speedup", "30",
                           "--grpc-port", str(port)], name="pdscaler demo").start()
    targets, progress_while_running = [], 0
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(name="so", namespace="default", scalerMetadata={"graph": "demo", "role": "prefill"})
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="x"), timeout=2)
                targets.append(r.metricValues[0].metricValueFloat)
            except grpc.RpcError:
                break  # the demo ended and closed its port
            out = proc.output()
            if "summary over" not in out:
                progress_while_running = max(progress_while_running, len(PROGRESS.findall(out)))
            time.sleep(0.25)  # KEDA-like sampling of the target while the demo runs
        channel.close()
        proc.wait(timeout=60)
    finally:
        proc.stop()
    out = proc.output()
    assert proc.returncode == 0, out
    assert "\x1b[" not in out  # not a terminal: no terminal control codes
    assert progress_while_running >= 3, out  # lines as it goes, not the last frame at the end
    desired = [int(m) for m in re.findall(r"prefill target=\d+ desired=(\d+)", out)]
    assert desired and desired[0] == 1, out
    assert max(desired) >= 3, out  # the bursts at minutes 3-4 and 9 of the trace scale prefill up
    assert max(targets) >= 3, targets  # and the gRPC answers showed it while the demo ran
    live, _, sim = out.partition("simulated (pdscaler backtest, same trace)")
    assert "summary over" in live and "GPU-hours" in live and "TTFT <=" in live, out
    assert PROGRESS.search(live.split("summary over")[0]), out
    assert "how to read" in sim, out
    minutes = float(re.search(r"([\d.]+) trace minutes", sim).group(1))
    assert 8 <= minutes <= 11, sim  # the span the 20 s at 30x played, not the whole hour
    for policy in SIM_POLICIES:
        row = re.search(rf"^  {re.escape(policy)} +([\d.]+)% +([\d.]+)% +([\d.]+) ", sim, re.M)
        assert row, (policy, sim)
        assert 0 <= float(row.group(1)) <= 100 and float(row.group(3)) > 0
