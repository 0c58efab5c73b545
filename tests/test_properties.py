"""Property tests (hypothesis) of the policy invariants.

The real Engine (embedding API: Engine(config), observe(Observation(...)), decide(now)) is driven
with generated configs (bounds, GPU budget, ratio, schedules, stabilisation windows, steps, mode,
forecasting) and generated observation sequences (random demand, NaN / infinite / negative /
missing values, late observations, gaps long enough to go stale), and every decision is checked:

- bounds: min_replicas <= target <= max_replicas for every role, always (the budget trims only
  down to the floors, scaler/policy/budget.py, so the floors win over the budget);
- budget: the serving roles' GPUs (sum of target x gpus_per_replica; the warm role's placeholder
  pods are not in the budget, engine.py) stay within gpu_budget whenever the floors fit in it;
- missing or stale data never lowers a target; stale data holds every role at max(last, floor);
  a role held for missing data next to a live one is not trimmed by the GPU budget (its held target
  is its floor there; the live roles give way) - the budget still holds, as the held target fitted
  in it at the last decision;
- advisory mode answers the current replicas (desired, else ready, else the floor) whatever the
  demand, and its advice obeys the same bounds and budget;
- a scale-down happens only when every recommendation of the scale-down window is <= the new
  target (engine level, with the other rules off).

The Stabiliser (scaler/policy/stabilisation.py) is tested directly against the HPA's semantics, and
the pure policy functions (bounds, step_limit, ratio, budget, missing_data, cascade, safety_net,
floors) get their own properties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.observation import Observation
from scaler.policy.bounds import bound
from scaler.policy.rule import Rule
from scaler.policy.budget import fit_budget
from scaler.policy.cascade import hold_while_starting
from scaler.policy.missing_data import hold, staleness
from scaler.policy.ratio import keep_ratio
from scaler.policy.safety_net import emergency_target
from scaler.policy.stabilisation import Stabiliser
from scaler.policy.step_limit import limit_step
from scaler.config import ScheduleEntry
from scaler.policy.floors import WEEKDAYS, lead_time_floor, scheduled_floor

# No explain phase: its line tracing makes each engine run many times slower while shrinking.
NO_EXPLAIN = [p for p in Phase if p is not Phase.explain]
ENGINE = settings(max_examples=150, deadline=None, derandomize=True, database=None, phases=NO_EXPLAIN,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PURE = settings(max_examples=400, deadline=None, derandomize=True, database=None)

REPLICA_HI = 1e5  # the sane range of replica counts (scaler/signals.py CLUSTER_SIGNALS, ready_workers)


# --- generated configs --------------------------------------------------------------------------

@st.composite
def schedules(draw) -> list[dict]:
    return draw(st.lists(st.builds(
        lambda days, start, end, n: {"days": days, "start": f"{start:02d}:00", "end": f"{end:02d}:00",
                                     "min_replicas": n},
        st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True),
        st.integers(0, 23), st.integers(0, 24), st.integers(0, 8)), max_size=2))


@st.composite
def role_configs(draw, kind: str) -> dict:
    lo = draw(st.integers(0, 4))
    hi = draw(st.integers(max(lo, 1), lo + 12))
    rc = {
        "kind": kind, "min_replicas": lo, "max_replicas": hi, "gpus_per_replica": draw(st.integers(1, 4)),
        "stabilisation": {"scale_up": draw(st.sampled_from([0, 15, 30, 120])),
                          "scale_down": draw(st.sampled_from([0, 30, 90, 300]))},
        "max_step": {"up": draw(st.one_of(st.none(), st.integers(1, 4))),
                     "up_ratio": draw(st.one_of(st.none(), st.sampled_from([0.5, 1.0]))),
                     "down": draw(st.one_of(st.none(), st.integers(1, 3)))},
        "schedule": draw(schedules()),
        "lead_time_floor": draw(st.booleans()),
        "no_cascade": draw(st.booleans()),
        "safety_net": {"enabled": draw(st.booleans()), "queued_requests": draw(st.sampled_from([None, 50.0]))},
        "startup": {"warm": draw(st.sampled_from([30, 90])), "cold": draw(st.sampled_from([120, 390])),
                    "learn": draw(st.booleans())},
    }
    if kind == "prefill":  # small capacities: ordinary demand asks for several replicas
        rc["prefill"] = {"tokens_per_s": draw(st.sampled_from([2_000.0, 10_000.0, 40_000.0]))}
    if kind == "decode":
        rc["decode"] = {"tokens_per_s": draw(st.sampled_from([1_000.0, 10_000.0])),
                        "kv_tokens": draw(st.sampled_from([50_000.0, 896_000.0]))}
    return rc


ANY_BUDGET = st.one_of(st.none(), st.integers(1, 40))
ANY_MODE = st.sampled_from(["active", "active", "advisory"])


@st.composite
def configs(draw, budget=ANY_BUDGET, mode=ANY_MODE) -> ScalerConfig:
    roles = {"prefill": draw(role_configs("prefill")), "decode": draw(role_configs("decode"))}
    if draw(st.booleans()):
        roles["warm"] = draw(role_configs("warm"))
    rmin = draw(st.one_of(st.none(), st.sampled_from([0.25, 0.5, 1.0, 1.5])))
    rmax = draw(st.one_of(st.none(), st.sampled_from([1.0, 2.0, 4.0]).filter(lambda x: rmin is None or x >= rmin)))
    graph = {
        "roles": roles,
        "mode": draw(mode),
        "gpu_budget": draw(budget),
        "prefill_decode_ratio": {"min": rmin, "max": rmax},
        "timezone": draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])),
        "decision_window": draw(st.sampled_from([30, 60])),
    }
    forecast = {"enabled": draw(st.booleans()),
                "model": draw(st.sampled_from(["holt", "planner-constant", "seasonal-naive", "auto"])),
                "max_growth": draw(st.sampled_from([None, 2.0]))}
    return ScalerConfig.model_validate({
        "poll_interval": 15, "stale_after": draw(st.sampled_from([30, 90])),
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "forecast": forecast, "graphs": {"g": graph},
    })


# --- generated observations ---------------------------------------------------------------------

BAD = [math.nan, math.inf, -1.0, 1e12]  # dropped by sanitize(), each with a note


def maybe(good, bad_in=8):
    """A value that is usually good, else (1 in `bad_in`) absent (None) or one sanitize() drops."""
    return st.integers(0, bad_in - 1).flatmap(
        lambda i: good if i else st.one_of(st.none(), st.sampled_from(BAD)))


replicas_value = maybe(st.one_of(st.integers(0, 20).map(float), st.floats(0, 20)), bad_in=3)
graph_signals = st.fixed_dictionaries({
    "request_rate": maybe(st.one_of(st.just(0.0), st.floats(0, 400))),
    "isl_mean": maybe(st.floats(1, 8000)),
    "osl_mean": maybe(st.floats(1, 4000)),
    "kv_block_size": maybe(st.just(16.0)),
}, optional={
    "ttft_p99": maybe(st.floats(0, 5)),
    "itl_p99": maybe(st.floats(0, 0.2)),
    "queued_requests": maybe(st.floats(0, 500)),
})
role_values = st.fixed_dictionaries({}, optional={
    "ready_workers": replicas_value, "ready_replicas": replicas_value, "desired_replicas": replicas_value,
    "kv_active_blocks": maybe(st.floats(0, 1e6)), "kv_usage": maybe(st.floats(0, 1)),
    "prefill_queued_tokens": maybe(st.floats(0, 1e6)),
})


@dataclass(frozen=True)
class Step:
    dt: float  # seconds since the previous decision
    kind: str  # "observe" (then decide), "gap" (decide only), "late" (an observation older than the last)
    signals: dict
    roles: dict


steps = st.lists(st.builds(
    Step,
    dt=st.sampled_from([0.0, 1.0, 5.0, 15.0, 15.0, 15.0, 30.0, 60.0, 200.0]),
    kind=st.sampled_from(["observe"] * 8 + ["gap", "late"]),
    signals=graph_signals,
    roles=st.fixed_dictionaries({}, optional={"prefill": role_values, "decode": role_values, "warm": role_values}),
), min_size=1, max_size=20)

start = st.integers(1_700_000_000, 1_800_000_000).map(float)  # any weekday and time of day, for schedules


def clean(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def usable(v) -> bool:
    return v is not None and math.isfinite(v) and 0 <= v <= REPLICA_HI


def replicas_now(values: dict, floor: int) -> int:
    """The oracle for advisory answers: spec.replicas, else ready (cluster, then router), else the floor."""
    for name in ("desired_replicas", "ready_replicas", "ready_workers"):
        if usable(values.get(name)):
            return int(values[name])
    return floor


def run(config: ScalerConfig, t0: float, plan: list[Step], check) -> None:
    """Drive an Engine through `plan`, calling check(decision, now, prev_targets, latest_obs_at, latest_roles)."""
    engine = Engine(config)
    now, latest_at, latest_roles = t0, None, {}
    prev: dict[str, int] | None = None
    for step in plan:
        now += step.dt
        if step.kind in ("observe", "late"):
            at = now if step.kind == "observe" else now - 1000.0
            obs = Observation("g", at, clean(step.signals), {r: clean(v) for r, v in step.roles.items()})
            engine.observe(obs)
            if latest_at is None or at > latest_at:  # older-than-latest observations are ignored
                latest_at, latest_roles = at, obs.roles
        d = engine.decide(now + 1.0)
        check(d, now + 1.0, prev, latest_at, latest_roles)
        prev = targets(d)


def targets(d) -> dict[str, int]:
    """What the policy decided per role: the answer, or in advisory mode the advice."""
    return {r: (rd.advised if rd.advised is not None else rd.replicas) for r, rd in d.roles.items()}


# --- engine properties --------------------------------------------------------------------------


def invariants(config: ScalerConfig):
    """The check of every decision (see the module docstring) for an engine running `config`."""
    gcfg = config.graphs["g"]
    roles = gcfg.roles
    serving = [r for r, rc in roles.items() if rc.kind != "warm"]
    advisory = gcfg.mode == "advisory"

    def check(d, now, prev, latest_at, latest_roles):
        want = targets(d)
        assert set(want) == set(roles)
        # Bounds: always, for every role (the budget never goes below the floors).
        for r, rc in roles.items():
            assert rc.min_replicas <= want[r] <= rc.max_replicas, (r, want[r], d.roles[r].steps)
        # Budget: the serving roles' GPUs whenever the floors alone fit.
        if gcfg.gpu_budget is not None:
            if any(rd.reason.rule == "gpu-budget" for rd in d.roles.values()):
                event("the budget binds")
            floors = sum(roles[r].min_replicas * roles[r].gpus_per_replica for r in serving)
            used = sum(want[r] * roles[r].gpus_per_replica for r in serving)
            if floors <= gcfg.gpu_budget:
                assert used <= gcfg.gpu_budget, (used, gcfg.gpu_budget, {r: d.roles[r].steps for r in serving})
            else:
                event("floors exceed the budget")
        # Stale or no data: every role held at max(last target, floor) - never lowered.
        stale = latest_at is None or now - latest_at > config.stale_after
        assert (staleness(now, latest_at, config.stale_after) is not None) == stale
        for r, rc in roles.items():
            first = d.roles[r].steps[0] if d.roles[r].steps else ""
            if stale:
                event("stale")
                assert first.startswith("no-data:" if latest_at is None else "stale-data:"), first
                assert want[r] == (rc.min_replicas if prev is None else max(prev[r], rc.min_replicas))
            elif first.startswith("missing-data:"):
                event("missing-data")
                if gcfg.gpu_budget is not None and any(d.roles[o].steps[0].startswith(("capacity", "forecast"))
                                                       for o in serving if o != r):
                    event("missing-data next to a live role, with a budget")
                assert prev is None or want[r] >= prev[r], (r, prev[r], want[r], d.roles[r].steps)
        # Advisory: the answer is the current replicas whatever the demand; the advice is exported.
        for r, rc in roles.items():
            rd = d.roles[r]
            if advisory:
                assert rd.advised is not None
                assert rd.replicas == replicas_now(latest_roles.get(r, {}), rc.min_replicas), (r, latest_roles)
            else:
                assert rd.advised is None

    return check


@ENGINE
@given(config=configs(), t0=start, plan=steps)
def test_every_decision_keeps_the_policy_invariants(config, t0, plan):
    run(config, t0, plan, invariants(config))


def phase(signals, decode, size):
    return st.lists(st.builds(Step, dt=st.just(15.0), kind=st.just("observe"), signals=signals,
                              roles=st.fixed_dictionaries({"decode": st.fixed_dictionaries(
                                  {"kv_active_blocks": decode})})),
                    min_size=1, max_size=size)


# Traffic with every signal, then the request rate lost (a failing query) while the decode pool's KV
# usage - still read - rises: the prefill role is held for want of data next to a live decode role
# that grows into the GPU budget.
rate_lost = st.tuples(
    phase(st.fixed_dictionaries({"request_rate": st.floats(10, 400), "isl_mean": st.floats(100, 8000),
                                 "osl_mean": st.floats(1, 2000), "kv_block_size": st.just(16.0)}),
          st.floats(0, 1e5), 5),
    phase(st.fixed_dictionaries({"kv_block_size": st.just(16.0)}, optional={"isl_mean": st.floats(100, 8000)}),
          st.floats(0, 1e6), 5),
).map(lambda phases: phases[0] + phases[1])


@ENGINE
@given(config=configs(budget=st.integers(1, 40), mode=st.just("active")), t0=start, plan=rate_lost)
def test_a_role_held_for_missing_data_is_not_trimmed_by_the_budget(config, t0, plan):
    run(config, t0, plan, invariants(config))


def test_the_budget_trims_the_live_role_not_the_held_one():
    """The case the property above found: prefill held at 7 for want of the request rate while decode,
    sized on its KV usage, grows into a 10-GPU budget - decode gives way, prefill keeps its 7."""
    config = ScalerConfig.model_validate({
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"}, "forecast": {"enabled": False},
        "graphs": {"g": {"gpu_budget": 10, "roles": {
            "prefill": {"kind": "prefill", "max_replicas": 10, "stabilisation": {"scale_down": 0}},
            "decode": {"kind": "decode", "max_replicas": 10, "safety_net": {"enabled": False}}}}}})
    e = Engine(config)
    e.observe(Observation("g", 0, {"request_rate": 100, "isl_mean": 2000, "osl_mean": 10, "kv_block_size": 16},
                          {"decode": {"kv_active_blocks": 0}}))
    assert e.decide(1).replicas == {"prefill": 7, "decode": 1}
    e.observe(Observation("g", 15, {"kv_block_size": 16}, {"decode": {"kv_active_blocks": 200_000}}))
    d = e.decide(16)
    assert d.replicas == {"prefill": 7, "decode": 3}
    assert d.roles["prefill"].reason.rule == "missing-data" and d.roles["decode"].reason.rule == "gpu-budget"


@st.composite
def stabilised_configs(draw) -> ScalerConfig:
    """Only the capacity rule, the stabilisation windows and the bounds: no forecast, step limit,
    safety net, no-cascade, schedule, ratio or budget."""
    roles = {}
    for kind in ("prefill", "decode"):
        lo = draw(st.integers(0, 3))
        roles[kind] = {
            "kind": kind, "min_replicas": lo, "max_replicas": draw(st.integers(max(lo, 1), lo + 15)),
            "stabilisation": {"scale_up": draw(st.sampled_from([0, 30])),
                              "scale_down": draw(st.sampled_from([0, 45, 120, 300]))},
            "safety_net": {"enabled": False}, "no_cascade": False, "lead_time_floor": False,
            "prefill": {"tokens_per_s": 2_000.0}, "decode": {"tokens_per_s": 1_000.0},
        }
    return ScalerConfig.model_validate({
        "poll_interval": 15, "stale_after": 90, "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "forecast": {"enabled": False}, "graphs": {"g": {"roles": roles}},
    })


@ENGINE
@given(config=stabilised_configs(), t0=start, plan=steps)
def test_a_scale_down_needs_every_recommendation_of_the_window_at_or_below_it(config, t0, plan):
    roles = config.graphs["g"].roles
    history: dict[str, list[tuple[float, int]]] = {r: [] for r in roles}  # (t, recommendation)

    def check(d, now, prev, latest_at, latest_roles):
        for r, rd in d.roles.items():
            rc = roles[r]
            if "reactive_replicas" in rd.reason.figures:  # a live decision: its recommendation fed the window
                history[r].append((now, max(0, math.ceil(rd.reason.figures["reactive_replicas"] - 1e-9))))
            if prev is not None and rd.replicas < prev[r]:
                event("scaled down")
                window = [rec for t, rec in history[r] if t >= now - rc.stabilisation.scale_down]
                assert window and max(window) <= rd.replicas, (r, prev[r], rd.replicas, window, rd.steps)

    run(config, t0, plan, check)


# --- the Stabiliser, directly (HPA semantics) ---------------------------------------------------

windows = st.sampled_from([0.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0])
recommendations = st.lists(st.tuples(st.sampled_from([0.0, 1.0, 5.0, 15.0, 15.0, 60.0, 400.0]), st.integers(0, 30)),
                           min_size=1, max_size=60)


def stabilise(up, down, current, recs):
    """Run a Stabiliser over (dt, recommendation) pairs, the output fed back as the current count;
    returns [(t, recommendation, current before, target)]."""
    s, t, out = Stabiliser(up, down), 0.0, []
    for dt, rec in recs:
        t += dt
        target, note = s.apply(t, rec, current)
        assert (note is None) == (target == rec)
        out.append((t, rec, current, target))
        current = target
    return out


def turns(xs) -> int:
    """How often a series changes direction (runs of equal values ignored)."""
    d = [b - a for a, b in pairwise(xs) if b != a]
    return sum(1 for a, b in pairwise(d) if (a > 0) != (b > 0))


@PURE
@given(up=windows, down=windows, current=st.integers(0, 30), recs=recommendations)
def test_stabiliser_follows_the_hpa_semantics(up, down, current, recs):
    seen = []
    for t, rec, before, target in stabilise(up, down, current, recs):
        seen.append((t, rec))
        in_up = [r for tt, r in seen if tt >= t - up]  # the windows include their edge (and now)
        in_down = [r for tt, r in seen if tt >= t - down]
        # Never below the lowest recommendation of the scale-up window, nor above the highest of the
        # scale-down window; it moves only to those, and only when the current count is outside them.
        assert min(in_up) <= target <= max(in_down)
        if target < before:  # a scale-down: every recommendation of the scale-down window is <= it
            assert target == max(in_down) and all(r <= target for r in in_down)
        elif target > before:  # a scale-up: every recommendation of the scale-up window is >= it
            assert target == min(in_up) and all(r >= target for r in in_up)
        else:
            assert min(in_up) <= before <= max(in_down)
        if up == down == 0 and all(tt < t for tt, _ in seen[:-1]):
            assert target == rec  # no windows: the recommendation itself


@PURE
@given(up=windows, down=windows, current=st.integers(0, 30), recs=recommendations)
def test_stabilisation_never_adds_oscillation(up, down, current, recs):
    out = stabilise(up, down, current, recs)
    assert turns([current] + [o[3] for o in out]) <= turns([current] + [o[1] for o in out])


@PURE
@given(a=windows, b=windows, fixed=windows, current=st.integers(0, 30), recs=recommendations)
def test_longer_windows_only_ever_delay(a, b, fixed, current, recs):
    """A longer scale-down window never scales down sooner or further; a longer scale-up window never
    scales up sooner or further (step by step, on the same recommendations)."""
    short, long = sorted((a, b))
    lo_down = [o[3] for o in stabilise(fixed, short, current, recs)]
    hi_down = [o[3] for o in stabilise(fixed, long, current, recs)]
    assert all(x <= y for x, y in zip(lo_down, hi_down))
    lo_up = [o[3] for o in stabilise(short, fixed, current, recs)]
    hi_up = [o[3] for o in stabilise(long, fixed, current, recs)]
    assert all(x >= y for x, y in zip(lo_up, hi_up))


# --- pure policy functions ----------------------------------------------------------------------

counts = st.integers(0, 60)


@PURE
@given(n=counts, lo=st.integers(0, 20), span=st.integers(0, 20))
def test_bound(n, lo, span):
    hi = max(lo + span, 1)
    v, which = bound(n, lo, hi)
    assert lo <= v <= hi
    assert (which is None) == (v == n)
    assert which == (Rule.MIN_REPLICAS if n < lo else Rule.MAX_REPLICAS if n > hi else None)
    assert bound(v, lo, hi) == (v, None)  # idempotent


@PURE
@given(target=counts, current=counts, up=st.one_of(st.none(), st.integers(1, 10)),
       down=st.one_of(st.none(), st.integers(1, 10)), ratio=st.one_of(st.none(), st.floats(0.01, 3)))
def test_step_limit(target, current, up, down, ratio):
    v, note = limit_step(target, current, up, down, ratio)
    assert (note is None) == (v == target)
    assert min(target, current) <= v <= max(target, current)  # same direction, never past the target
    if target > current:
        allowed = max(([current + up] if up is not None else []) +
                      ([current + max(1, math.ceil(current * ratio))] if ratio is not None else []),
                      default=math.inf)
        assert v == min(target, allowed)
    elif target < current:
        assert v == (max(target, current - down) if down is not None else target)


@PURE
@given(p=counts, d=counts, lo=st.one_of(st.none(), st.floats(0.05, 4)), span=st.one_of(st.none(), st.floats(0, 4)))
def test_ratio_only_raises_and_reaches_the_bound_minimally(p, d, lo, span):
    hi = None if span is None else (lo or 0.05) + span
    np_, nd, note = keep_ratio(p, d, lo, hi)
    assert np_ >= p and nd >= d and (np_ == p or nd == d)  # raise only, one side at most
    assert (note is None) == ((np_, nd) == (p, d))
    if np_ > p:  # prefill raised to the least count that meets the minimum
        assert np_ / nd >= lo - 1e-9 and (np_ - 1) / nd < lo
    elif nd > d:  # decode raised to the least count that meets the maximum
        assert np_ / nd <= hi + 1e-9 and np_ / (nd - 1) > hi
    else:
        assert d == 0 or lo is None or p / d >= lo - 1e-9
        assert d == 0 or p == 0 or hi is None or p / d <= hi + 1e-9


budget_roles = st.dictionaries(st.sampled_from(["prefill", "decode", "other"]),
                               st.tuples(st.integers(0, 40), st.integers(1, 4), st.integers(0, 5)), min_size=1)


@PURE
@given(roles=budget_roles, budget=st.one_of(st.none(), st.integers(1, 120)))
def test_budget_fits_keeps_floors_and_wastes_nothing(roles, budget):
    targets = {r: max(t, f) for r, (t, g, f) in roles.items()}
    gpus = {r: g for r, (t, g, f) in roles.items()}
    floors = {r: f for r, (t, g, f) in roles.items()}
    out, note = fit_budget(targets, gpus, floors, budget)
    used = sum(out[r] * gpus[r] for r in out)
    asked = sum(targets[r] * gpus[r] for r in out)
    assert all(floors[r] <= out[r] <= targets[r] for r in out)  # floors first, never above the ask
    if budget is None or asked <= budget:
        assert out == targets and note is None
        return
    assert note is not None and f"GPU budget {budget}" in note
    if sum(floors[r] * gpus[r] for r in out) <= budget:
        assert used <= budget
        # Work-conserving: no role left short could take one more replica within the budget.
        assert all(used + gpus[r] > budget for r in out if out[r] < targets[r])
    else:
        assert out == floors  # only the floors, even though they exceed the budget


@PURE
@given(prev=st.one_of(st.none(), counts), lo=st.integers(0, 10), span=st.integers(0, 20))
def test_hold_never_lowers_and_stays_in_bounds(prev, lo, span):
    hi = max(lo + span, 1)
    n = hold(prev, lo, hi)
    assert lo <= n <= hi
    if prev is None:
        assert n == lo
    elif prev <= hi:
        assert n == max(prev, lo)


@PURE
@given(now=st.floats(0, 1e6), age=st.floats(-100, 1e4), stale_after=st.floats(1, 1000))
def test_staleness(now, age, stale_after):
    assert staleness(now, None, stale_after) is not None
    assert (staleness(now, now - age, stale_after) is not None) == (now - (now - age) > stale_after)


@PURE
@given(target=counts, desired=st.one_of(st.none(), counts), ready=st.one_of(st.none(), counts), unqueued=counts)
def test_no_cascade_only_holds_a_rise_while_replicas_start(target, desired, ready, unqueued):
    v, note = hold_while_starting(target, desired, ready, unqueued)
    assert v <= target and (note is None) == (v == target)
    if note:
        assert v == max(desired, unqueued) and ready < desired and v < target


@PURE
@given(current=counts, ratio=st.floats(0.01, 3))
def test_emergency_step_is_at_least_one_replica(current, ratio):
    n = emergency_target(current, ratio)
    assert n >= current + 1 and n >= current * (1 + ratio) - 1e-9


@PURE
@given(needs=st.lists(st.floats(0, 100)))
def test_lead_time_floor_covers_every_need(needs):
    f = lead_time_floor(needs)
    assert all(f >= n - 1e-9 for n in needs) and f >= 0
    assert f == 0 or any(f - 1 < n for n in needs)  # the least integer covering them


@PURE
@given(now=st.integers(1_700_000_000, 1_800_000_000).map(float),
       entries=st.lists(st.builds(lambda days, start, end, n: ScheduleEntry(days=days, start=start, end=end,
                                                                             min_replicas=n),
                                  st.lists(st.sampled_from(WEEKDAYS), min_size=1, unique=True),
                                  st.times(), st.times(), st.integers(0, 10)), max_size=4),
       tz=st.sampled_from(["UTC", "Europe/Paris", "Pacific/Auckland"]))
def test_scheduled_floor_is_the_highest_active_entry(now, entries, tz):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    n, which = scheduled_floor(now, entries, tz)

    def active(e):  # from the definition: in a window that started today, or yesterday past midnight
        day, t = WEEKDAYS[local.weekday()], local.time()
        if e.start < e.end:
            return day in e.days and e.start <= t < e.end
        yesterday = WEEKDAYS[(local - timedelta(days=1)).weekday()]
        return (day in e.days and t >= e.start) or (yesterday in e.days and t < e.end)

    assert n == max((e.min_replicas for e in entries if active(e)), default=0)
    assert (which is None) == (n == 0) and (which is None or (active(which) and which.min_replicas == n))
