"""The pdscaler configuration the replay runs the real Engine with (one function, one place).

A graph `sim` with roles prefill and decode (min 1, max `ctx.max_replicas`) and a `warm` role
(balloon pods keeping GPU nodes provisioned, min 0), everything else at pdscaler's defaults; the
graph's `slo` are the backtest's SLOs, `profile` the `--profile` file, and each role's `startup`
the simulated cluster's start-up delays, as an operator would configure them for their cluster.
`--config FILE` merges a user's config over it (`merge_overrides`).
"""

from __future__ import annotations

from typing import Any

from scaler.testbench.sim.context import SimContext

GRAPH = "sim"


def engine_config(ctx: SimContext, poll_interval: float = 15.0) -> dict[str, Any]:
    m = ctx.max_replicas
    startup = {"warm": ctx.nodes.warm_start_s, "cold": ctx.nodes.cold_start_s}
    roles: dict[str, Any] = {
        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": m, "startup": dict(startup)},
        "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": m, "startup": dict(startup)},
        "warm": {"kind": "warm", "min_replicas": 0, "max_replicas": m},
    }
    graph: dict[str, Any] = {"roles": roles, "slo": {"ttft_s": ctx.ttft_slo, "itl_s": ctx.itl_slo}}
    if ctx.profile_path:
        graph["profile"] = ctx.profile_path
    out = {"poll_interval": poll_interval, "stale_after": 90, "graphs": {GRAPH: graph}}
    return merge_overrides(out, ctx.engine_overrides) if ctx.engine_overrides else out


def merge_overrides(generated: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`pdscaler backtest --config FILE`: the user's `forecast` section and their first graph's
    settings (mode, SLOs, budget, ratio, each role's policy...) deep-merged over the generated config,
    so a config can be backtested as it would run. The source section is ignored (the simulator is
    the source); the user's roles are matched by kind (their first prefill, decode and warm roles)."""
    out = _deep_merge(generated, {k: v for k, v in user.items() if k in ("forecast", "stale_after")})
    graphs = user.get("graphs") or {}
    if not graphs:
        return out
    ugraph = dict(next(iter(graphs.values())))
    uroles = ugraph.pop("roles", {}) or {}
    sim = out["graphs"][GRAPH]
    sim.update(_deep_merge({k: v for k, v in sim.items() if k != "roles"}, ugraph))
    for kind in ("prefill", "decode", "warm"):
        mine = next((r for r in uroles.values() if r.get("kind") == kind), None)
        if mine is not None and kind in sim["roles"]:
            sim["roles"][kind] = _deep_merge(sim["roles"][kind], mine)
    return out


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
