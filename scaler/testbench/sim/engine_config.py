"""The pdscaler configuration the replay runs the real Engine with (one function, one place).

A graph `sim` with roles prefill and decode (min 1, max `ctx.max_replicas`) and a `warm` role
(balloon pods keeping GPU nodes provisioned, min 0), everything else at pdscaler's defaults; the
graph's `slo` are the backtest's SLOs, and `profile` the capacity profile of the simulated hardware at
those SLOs (what Dynamo's profiler would measure on it, as the baselines know it too), or the
`--profile` file instead (a profile that may not match the hardware); each role's `startup` is the
simulated cluster's start-up delays, as an operator would configure them for their cluster.
`--config FILE` applies a user's config over it (`merge_overrides`).
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from scaler.config import GraphConfig, RoleConfig, ScalerConfig, Slo, Startup
from scaler.testbench.emulator.profile import capacity_profile
from scaler.testbench.sim.context import SimContext

GRAPH = "sim"

M = TypeVar("M", bound=BaseModel)


def engine_config(ctx: SimContext, poll_interval: float = 15.0) -> ScalerConfig:
    m = ctx.max_replicas
    startup = Startup(warm=ctx.nodes.warm_start_s, cold=ctx.nodes.cold_start_s)
    roles = {
        "prefill": RoleConfig(kind="prefill", min_replicas=1, max_replicas=m, startup=startup),
        "decode": RoleConfig(kind="decode", min_replicas=1, max_replicas=m, startup=startup),
        "warm": RoleConfig(kind="warm", min_replicas=0, max_replicas=m),
    }
    # The simulated HPA runs Kubernetes' default tolerance (actuation.py), but pdscaler is not told
    # (hpa_tolerance 0): rounding rises up to what it acts on cost m-mid 4 % more GPU-hours for the
    # same attainment (BENCHMARKS "Decisions, round 2"); `--config` can turn it on.
    profile = ctx.profile_path or capacity_profile(ctx.profile, ctx.ttft_slo, ctx.itl_slo)
    graph = GraphConfig(roles=roles, slo=Slo(ttft_s=ctx.ttft_slo, itl_s=ctx.itl_slo), profile=profile)
    out = ScalerConfig(poll_interval=poll_interval, stale_after=90, graphs={GRAPH: graph})
    return merge_overrides(out, ctx.engine_overrides) if ctx.engine_overrides else out


def merge_overrides(generated: ScalerConfig, user: ScalerConfig | Mapping[str, Any]) -> ScalerConfig:
    """`pdscaler backtest --config FILE`: the user's `forecast` section and their first graph's
    settings (mode, SLOs, budget, ratio, each role's policy...) applied over the generated config,
    so a config can be backtested as it would run. Only the fields the user wrote count, section by
    section (`_updated`). The source section is ignored (the simulator is the source); the user's
    roles are matched by kind (their first prefill, decode and warm roles)."""
    if not isinstance(user, ScalerConfig):
        user = ScalerConfig.model_validate(user)
    out = _updated(generated, user, (), only=("forecast", "stale_after"))
    ugraph = next(iter(user.graphs.values()))
    where = ("graphs", GRAPH)
    sim = _updated(out.graphs[GRAPH], ugraph, where, skip=("roles",))
    roles = dict(sim.roles)
    for kind in ("prefill", "decode", "warm"):
        mine = next((r for r in ugraph.roles.values() if r.kind == kind), None)
        if mine is not None and kind in roles:
            roles[kind] = _updated(roles[kind], mine, (*where, "roles", kind))
    sim = _revalidated(sim, {"roles": roles}, where)
    return _revalidated(out, {"graphs": {**out.graphs, GRAPH: sim}}, ())


def _updated(
    base: M, user: BaseModel, loc: tuple[str, ...], only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()
) -> M:
    """`base` with the fields set in `user` (those its YAML gave), recursively: a section the user
    wrote in part (`stabilisation: {scale_down: 2m}`) changes only those fields of `base`'s.
    `loc` is where `base` sits in the ScalerConfig, for error messages."""
    changes: dict[str, Any] = {}
    for name in user.model_fields_set:
        if name in skip or (only is not None and name not in only):
            continue
        mine, theirs = getattr(base, name), getattr(user, name)
        both_models = isinstance(mine, BaseModel) and type(mine) is type(theirs)
        changes[name] = _updated(mine, theirs, (*loc, name)) if both_models else theirs
    return _revalidated(base, changes, loc) if changes else base


def _revalidated(model: M, changes: Mapping[str, Any], loc: tuple[str, ...]) -> M:
    """`model.model_copy(update=changes)`, but validated: the model's own checks (min <= max
    replicas, the forecast quantile among the quantiles...) hold for the combination too. An error
    names the field from the top of the ScalerConfig, as validating the whole config would."""
    try:
        return type(model).model_validate({**dict(model), **changes})
    except ValidationError as e:
        errors = [{**err, "loc": (*loc, *err["loc"])} for err in e.errors()]
        raise ValidationError.from_exception_data(ScalerConfig.__name__, errors) from None  # type: ignore[arg-type]
