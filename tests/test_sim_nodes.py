"""GPU nodes of the replay: warm vs cold starts, balloon pods, billed GPU-time."""

import pytest

from scaler.testbench.emulator.profile import EmulatorProfile
from scaler.testbench.sim.fluid import FluidGraph
from scaler.testbench.sim.nodes import GpuNodes, NodeSettings

S = NodeSettings(warm_start_s=90, node_provision_s=210, scale_down_unneeded_s=600)


def _graph_with_a_balloon(prefill: int, idle_s: int) -> tuple[GpuNodes, FluidGraph]:
    """A graph of `prefill` + 1 decode replicas and one balloon pod, run idle for `idle_s`."""
    nodes = GpuNodes(S)
    g = FluidGraph(EmulatorProfile(), now=0.0, replicas={"prefill": prefill, "decode": 1}, nodes=nodes)
    nodes.set_balloons(1, 0.0)
    for _ in range(idle_s):
        g.step(1.0, 0, 100, 10)
    return nodes, g


def _ready_after(g: FluidGraph, role: str, n: int, limit: int = 1000) -> float:
    """Seconds from now until the first step that `role` serves with `n` ready replicas."""
    t0 = g.now
    for _ in range(limit):
        start = g.now
        if g.step(1.0, 0, 100, 10).ready[role] >= n:
            return start - t0
    raise AssertionError(f"{role} never reached {n} ready replicas")


def test_a_start_without_a_free_gpu_is_cold_and_after_a_recent_scale_down_warm():
    nodes = GpuNodes(S)
    g = FluidGraph(EmulatorProfile(), now=0.0, replicas={"prefill": 1, "decode": 1}, nodes=nodes)
    g.set_replicas("prefill", 2, g.now)
    assert _ready_after(g, "prefill", 2) == 300  # node provisioning 210 s + model load 90 s
    g.set_replicas("prefill", 1, g.now)  # its GPU idles; the node stays for 600 s
    for _ in range(599):
        g.step(1.0, 0, 100, 10)
    g.set_replicas("prefill", 2, g.now)  # 599 s later: the node is still there
    assert _ready_after(g, "prefill", 2) == 90
    g.set_replicas("prefill", 1, g.now)
    for _ in range(601):
        g.step(1.0, 0, 100, 10)
    assert nodes.idle == 0  # removed by the cluster autoscaler
    g.set_replicas("prefill", 2, g.now)
    assert _ready_after(g, "prefill", 2) == 300
    assert (nodes.cold_starts, nodes.warm_starts) == (2, 1)


def test_a_replica_preempts_a_balloon_pod_which_provisions_a_new_node():
    nodes, g = _graph_with_a_balloon(1, 300)  # the balloon's node is provisioned by then
    assert nodes.provisioned == 3
    g.set_replicas("decode", 2, g.now)
    assert _ready_after(g, "decode", 2) == 90  # warm: it took the balloon's GPU
    assert nodes.balloons == 1 and nodes.provisioned == 4  # the balloon went pending: a new node


def test_billed_gpu_hours_count_starting_replicas_balloons_and_idle_nodes_until_removed():
    nodes, g = _graph_with_a_balloon(2, 100)
    g.set_replicas("prefill", 1, g.now)  # one GPU idles for 600 s, then its node is removed
    for _ in range(1000):
        g.step(1.0, 0, 100, 10)
    # replicas: 3 GPUs for 100 s, then 2 for 1000 s
    assert g.gpu_seconds == pytest.approx(3 * 100 + 2 * 1000)
    # billed: those, the balloon for 1100 s, the idle GPU for 600 s
    assert nodes.gpu_seconds == pytest.approx(3 * 100 + 2 * 1000 + 1100 + 600)
    assert nodes.provisioned == 3


def test_cancelled_cold_start_leaves_a_provisioning_node_a_later_start_reuses():
    nodes = GpuNodes(S)
    g = FluidGraph(EmulatorProfile(), now=0.0, replicas={"prefill": 1, "decode": 1}, nodes=nodes)
    g.set_replicas("prefill", 2, 0.0)
    for _ in range(100):
        g.step(1.0, 0, 100, 10)
    g.set_replicas("prefill", 1, g.now)  # cancelled at t=100; its node is Ready at t=210
    g.set_replicas("prefill", 2, g.now)  # reuses it: ready at 210 + 90
    assert _ready_after(g, "prefill", 2) == 200
    assert nodes.provisioned == 3
