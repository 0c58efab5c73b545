"""Each policy rule in isolation, with a fake clock (times passed in)."""

from hypothesis import given
from hypothesis import strategies as st

from scaler.policy.budget import fit_budget
from scaler.policy.cascade import hold_while_starting
from scaler.policy.ratio import keep_ratio
from scaler.policy.stabilisation import Stabiliser
from scaler.policy.step_limit import limit_step


def test_scale_down_waits_for_the_window():
    s = Stabiliser(up_window=0, down_window=300)
    assert s.apply(0, 10, current=1) == (10, None)
    assert s.apply(60, 2, current=10)[0] == 10  # the 10 at t=0 is still in the window
    assert "scale-down stabilised" in s.apply(120, 2, current=10)[1]
    assert s.apply(300, 2, current=10)[0] == 10  # t=0 is exactly at the cutoff: still counts
    assert s.apply(301, 2, current=10) == (2, None)


def test_scale_up_window_takes_the_minimum():
    s = Stabiliser(up_window=60, down_window=0)
    assert s.apply(0, 2, current=2) == (2, None)
    t, note = s.apply(30, 8, current=2)
    assert t == 2 and "scale-up stabilised" in note  # a 30 s spike is not enough
    assert s.apply(61, 8, current=2) == (8, None)  # the 2 at t=0 left the window


@given(st.lists(st.integers(0, 50), min_size=1, max_size=60))
def test_stabilisation_never_adds_direction_changes(recs):
    """The stabilised series changes direction no more often than the recommendations do."""
    s = Stabiliser(up_window=30, down_window=120)
    current, out = recs[0], []
    for i, r in enumerate(recs):
        current, _ = s.apply(i * 15.0, r, current)
        out.append(current)

    def turns(xs):
        d = [b - a for a, b in zip(xs, xs[1:]) if b != a]
        return sum(1 for a, b in zip(d, d[1:]) if (a > 0) != (b > 0))

    assert turns(out) <= turns(recs)


def test_step_limit():
    assert limit_step(20, 4, max_up=4, max_down=None) == (8, "scale-up limited to +4 per interval")
    assert limit_step(20, 4, max_up=2, max_down=None, max_up_ratio=1.0)[0] == 8  # the larger of the two
    assert limit_step(1, 10, max_up=None, max_down=3) == (7, "scale-down limited to -3 per interval")
    assert limit_step(6, 4, max_up=4, max_down=1) == (6, None)


def test_no_cascade_while_replicas_start():
    assert hold_while_starting(9, desired=6, ready=3)[0] == 6
    assert hold_while_starting(9, desired=6, ready=6) == (9, None)
    assert hold_while_starting(4, desired=6, ready=3) == (4, None)  # scaling down is not held here
    assert hold_while_starting(9, desired=None, ready=None) == (9, None)
    # What the arriving or forecast demand needs without the queue is not held: it is not waiting
    # behind the starting replicas.
    v, note = hold_while_starting(12, desired=6, ready=3, unqueued=9)
    assert v == 9 and "without the queue needs 9" in note
    assert hold_while_starting(9, desired=6, ready=3, unqueued=10) == (9, None)


def test_budget_scales_down_proportionally_and_keeps_floors():
    out, note = fit_budget({"prefill": 8, "decode": 8}, {"prefill": 1, "decode": 1}, {"prefill": 1, "decode": 1}, 8)
    assert sum(out.values()) == 8 and out == {"prefill": 4, "decode": 4} and "GPU budget 8" in note
    out, _ = fit_budget({"prefill": 6, "decode": 2}, {"prefill": 2, "decode": 1}, {"prefill": 1, "decode": 1}, 9)
    assert out["prefill"] * 2 + out["decode"] <= 9 and out["prefill"] >= 1 and out["decode"] >= 1
    assert fit_budget({"p": 3}, {"p": 1}, {"p": 1}, None) == ({"p": 3}, None)


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.tuples(st.integers(0, 40), st.integers(1, 4), st.integers(0, 5)),
                    min_size=1),
    st.integers(0, 100),
)
def test_budget_holds_whenever_the_floors_fit(roles, budget):
    targets = {r: max(t, f) for r, (t, g, f) in roles.items()}
    gpus = {r: g for r, (t, g, f) in roles.items()}
    floors = {r: f for r, (t, g, f) in roles.items()}
    out, _ = fit_budget(targets, gpus, floors, budget)
    assert all(floors[r] <= out[r] <= targets[r] for r in out)
    if sum(floors[r] * gpus[r] for r in out) <= budget:
        assert sum(out[r] * gpus[r] for r in out) <= max(budget, 0)


def test_ratio_bounds_raise_the_starved_side():
    assert keep_ratio(1, 8, min_ratio=0.25, max_ratio=4)[:2] == (2, 8)
    assert keep_ratio(12, 2, min_ratio=0.25, max_ratio=4)[:2] == (12, 3)
    assert keep_ratio(3, 3, 0.25, 4) == (3, 3, None)


def test_scheduled_floor_by_weekday_time_and_zone():
    from datetime import datetime, time
    from zoneinfo import ZoneInfo

    from scaler.config import ScheduleEntry
    from scaler.policy.floors import scheduled_floor

    def ScheduledFloor(days, start, end, n):
        return ScheduleEntry(days=list(days), start=start, end=end, min_replicas=n)

    day = ScheduledFloor(("mon", "tue", "wed", "thu", "fri"), time(8), time(20), 4)
    night = ScheduledFloor(("fri",), time(22), time(2), 6)  # Friday 22:00 to Saturday 02:00
    paris = ZoneInfo("Europe/Paris")

    def at(*args):
        return datetime(*args, tzinfo=paris).timestamp()

    assert scheduled_floor(at(2026, 11, 23, 9, 0), [day, night], "Europe/Paris")[0] == 4  # Monday 09:00
    assert scheduled_floor(at(2026, 11, 23, 7, 59), [day, night], "Europe/Paris")[0] == 0
    assert scheduled_floor(at(2026, 11, 28, 1, 0), [day, night], "Europe/Paris")[0] == 6  # Saturday 01:00
    assert scheduled_floor(at(2026, 11, 29, 1, 0), [day, night], "Europe/Paris")[0] == 0  # Sunday 01:00
    # The same instant is 08:30 in Paris but 07:30 UTC: the zone matters.
    assert scheduled_floor(at(2026, 11, 23, 8, 30), [day], "UTC")[0] == 0


def test_lead_time_floor():
    from scaler.policy.floors import lead_time_floor

    assert lead_time_floor([1.2, 3.0, 2.5]) == 3
    assert lead_time_floor([]) == 0


def test_safety_net_breaches_and_step():
    from scaler.policy.safety_net import Limits, breaches, emergency_target

    limits = Limits(queued_requests=100, ttft_p99_s=0.5, kv_usage=0.9, itl_p99_s=0.03)
    assert breaches("prefill", limits, {"queued_requests": 250, "ttft_p99": 0.2}, {}) == ["queued_requests=250 > 100"]
    assert breaches("decode", limits, {"itl_p99": 0.01}, {"kv_usage": 0.97}) == ["kv_usage=0.97 > 0.9"]
    assert breaches("decode", limits, {}, {}) == []  # missing data is not a breach (and not a scale-down)
    assert emergency_target(4, 0.5) == 6 and emergency_target(1, 0.1) == 2
