"""The warm pool: balloon (placeholder) pods keeping GPU nodes provisioned ahead of forecast scale-ups.

A role of kind `warm` is sized in GPUs: what the serving roles' forecasts need within the cold
start-up time (plus the decision window) beyond what their targets already hold, in placeholder
pods of the role's size. The pods run at a negative priority (manifests), so a serving replica
preempts one and starts on a warm node instead of waiting for a node. Held while the data cannot be
trusted, or while a serving role is held (the placeholders cover forecasts the held role lacks now).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from scaler.policy import missing_data
from scaler.policy.bounds import apply_bounds
from scaler.policy.context import Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import GraphConfig, RoleConfig


def warm_roles(graph: "GraphConfig", untrusted: tuple[Rule, str] | None, serving: dict[str, Target],
               last: dict[str, int | None], horizons: np.ndarray) -> dict[str, Target]:
    """The targets of the graph's warm roles: held (at `last`) with the data or with a held serving
    role, else sized on the serving roles' forecasts."""
    blind = [r for r, t in serving.items() if t.held]
    out = {}
    for role, rcfg in graph.roles.items():
        if rcfg.kind != "warm":
            continue
        if untrusted:
            out[role] = missing_data.held(role, rcfg, last[role], *untrusted)
        elif blind:
            out[role] = missing_data.held(role, rcfg, last[role], Rule.MISSING_DATA,
                                          f"{', '.join(blind)} held for missing data")
        else:
            out[role] = size_warm_pool(role, rcfg, graph, serving, horizons)
    return out


def size_warm_pool(role: str, config: "RoleConfig", graph: "GraphConfig", targets: dict[str, Target],
                   horizons: np.ndarray) -> Target:
    """The warm role's target from the serving roles' targets (all live, none held)."""
    roles = graph.roles
    held_gpus = sum(t.value * roles[r].gpus_per_replica for r, t in targets.items())
    forecasting = {r: t.forecast_needs for r, t in targets.items() if t.forecast_needs is not None}
    cold = max(rc.startup.cold_s for rc in roles.values() if rc.kind != "warm") if forecasting else 0.0
    mask = horizons <= cold + graph.decision_window + 1e-9
    need_gpus = 0.0
    for r, needs in forecasting.items():
        vals = needs[mask]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            need_gpus += math.ceil(float(vals.max()) - 1e-9) * roles[r].gpus_per_replica
    spare = max(0.0, need_gpus - held_gpus)
    pods = math.ceil(spare / config.gpus_per_replica - 1e-9)
    message = (f"forecast needs {need_gpus:.0f} GPUs within {cold + graph.decision_window:.0f}s, "
               f"serving targets hold {held_gpus}: keep {pods} placeholder pod(s) warm")
    t = Target(role, "warm", pods, Rule.WARM_POOL, message,
               figures={"forecast_gpus": need_gpus, "serving_gpus": float(held_gpus)})
    apply_bounds(config, t)
    return t
