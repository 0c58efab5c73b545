"""The pdscaler configuration the replay runs the real Engine with (one function, one place).

A graph `sim` with roles prefill (kind prefill) and decode (kind decode), min 1, max
`ctx.max_replicas`, everything else at pdscaler's defaults (the published Dynamo profile figures,
which are also what the simulated hardware is built from). Optional keys are added only when the
installed config schema has them, so the replay works across versions of scaler/config.py:

- graph `profile: PATH` (the `--profile` file) and graph `slo: {ttft_s, itl_s}`;
- role `startup: {warm, cold}`: the simulated cluster's start-up delays, as an operator would
  configure them for their cluster;
- a `warm` role (kind `warm`: balloon pods keeping GPU nodes provisioned), min 0.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from scaler.sim.context import SimContext

GRAPH = "sim"


def _accepts_warm_role() -> bool:
    from scaler.config import RoleConfig

    try:
        RoleConfig.model_validate({"kind": "warm", "min_replicas": 0, "max_replicas": 10})
    except ValidationError:
        return False
    return True


def engine_config(ctx: SimContext, poll_interval: float = 15.0) -> dict[str, Any]:
    from scaler.config import GraphConfig, RoleConfig

    m = ctx.max_replicas
    roles: dict[str, Any] = {
        "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": m},
        "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": m},
    }
    if "startup" in RoleConfig.model_fields:
        for role in roles.values():
            role["startup"] = {"warm": ctx.nodes.warm_start_s, "cold": ctx.nodes.cold_start_s}
    if _accepts_warm_role():
        roles["warm"] = {"kind": "warm", "min_replicas": 0, "max_replicas": m}
    graph: dict[str, Any] = {"roles": roles}
    fields = GraphConfig.model_fields
    if "profile" in fields and ctx.profile_path:
        graph["profile"] = ctx.profile_path
    if "slo" in fields:
        graph["slo"] = {"ttft_s": ctx.ttft_slo, "itl_s": ctx.itl_slo}
    return {"poll_interval": poll_interval, "stale_after": 90, "graphs": {GRAPH: graph}}
