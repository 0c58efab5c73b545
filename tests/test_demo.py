"""A 20-second headless demo: the emulated graph scales up under a burst of the real Azure code trace,
and the scaler's gRPC port answers a KEDA-protocol client while the demo runs."""

import re
import sys
import time

import grpc
import pytest

from scaler.rpc import externalscaler_pb2 as pb
from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
from scaler.testbench.processes import ManagedProcess, free_port


@pytest.mark.slow  # a 20 s demo
def test_headless_demo_scales_up_under_a_burst():
    port = free_port()  # the demo's gRPC port, named before it starts
    proc = ManagedProcess([sys.executable, "-m", "scaler", "demo", "--no-ui", "--duration", "20", "--speedup", "30",
                           "--grpc-port", str(port)], name="pdscaler demo").start()
    targets = []
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
            time.sleep(0.25)  # KEDA-like sampling of the target while the demo runs
        channel.close()
        proc.wait(timeout=60)
    finally:
        proc.stop()
    out = proc.output()
    assert proc.returncode == 0, out
    assert "\x1b[" not in out  # --no-ui: no terminal control codes
    desired = [int(m) for m in re.findall(r"prefill target=\d+ desired=(\d+)", out)]
    assert desired and desired[0] == 1, out
    assert max(desired) >= 3, out  # the bursts at minutes 3-4 and 9 of the trace scale prefill up
    assert max(targets) >= 3, targets  # and the gRPC answers showed it while the demo ran
    assert "summary over" in out and "GPU-hours" in out and "TTFT <=" in out
