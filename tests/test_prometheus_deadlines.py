"""Bounded waits on Prometheus: a query must be answered completely within source.timeout, a poll's
queries within source.poll_deadline. A Prometheus that trickles valid answers (a byte at a time, each
read in time) must not stall the decision loop: the poll ends, the graphs it did not read are held
(missing data) and the reason says so. Over loopback, against tests/fake_prometheus.py (mode trickle).

The polls run in a thread and are waited on with a generous bound: the assertions are on the
reasons, not on measured durations."""

from __future__ import annotations

import threading

import pytest

from scaler.clock import ManualClock
from scaler.config import ScalerConfig
from scaler.engine import Engine
from scaler.loop import DecisionLoop
from scaler.metrics import ScalerMetrics
from scaler.sources.prometheus import DEADLINE, UNREACHABLE, PrometheusSource, poll_deadline
from scaler.store import DecisionStore
from tests.fake_prometheus import FakePrometheus

HELD = {"missing-data", "stale-data", "no-data"}
ROLES = {"prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 20},
         "decode": {"kind": "decode", "min_replicas": 1, "max_replicas": 20}}
WAIT_S = 60.0  # generous: the fixed polls end within a second or two; unbounded ones take many minutes


@pytest.fixture
def prom():
    p = FakePrometheus()
    yield p
    p.close()


def config(url: str, **source) -> ScalerConfig:
    return ScalerConfig.model_validate({
        "poll_interval": 15, "stale_after": 90,
        "source": {"kind": "prometheus", "url": url, **source},
        "forecast": {"enabled": False},
        # Batched graphs (namespace) and one read on its own (no namespace: a regex selector).
        "graphs": {"alpha": {"namespace": "ns", "roles": ROLES}, "beta": {"namespace": "ns", "roles": ROLES},
                   "solo": {"roles": ROLES}},
    })


def finished(fn, *args):
    """Run fn(*args) in a thread; its result once it returns, or a failure after WAIT_S."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    t.join(WAIT_S)
    assert out, f"{getattr(fn, '__name__', fn)} did not return within {WAIT_S:.0f}s"
    return out[0]


def test_a_poll_against_a_trickling_prometheus_ends_at_its_deadline_and_holds(prom):
    """Every read gets a byte in time (source.timeout 30 s, a byte every 50 ms), so only the poll's
    deadline (1 s) ends it; the decisions hold on missing data with the reason, and recover."""
    cfg = config(prom.url, timeout="30s", poll_deadline="1s")
    clock = ManualClock(1_000_000.0)
    store, metrics = DecisionStore(), ScalerMetrics()
    engine = Engine(cfg)
    metrics.watch(cfg, store, engine, now=clock.now)
    loop = DecisionLoop(engine, PrometheusSource(cfg), store, clock, metrics=metrics)
    for _ in range(4):
        loop.tick()
        clock.advance(15)
    good = {g: store.get(g).replicas for g in cfg.graphs}
    assert good["alpha"]["prefill"] > 1
    prom.mode, prom.trickle_delay = "trickle", 0.05
    for _ in range(3):
        before = prom.queries
        decisions = finished(loop.tick)
        clock.advance(15)
        assert prom.queries - before == 1  # the poll stopped at the query the deadline cut off
        for g, d in decisions.items():
            assert {r.reason.rule for r in d.roles.values()} <= HELD, d.explain()
            assert all(n >= good[g][r] for r, n in d.replicas.items()), (g, d.replicas, good[g])
            assert any(n.startswith(f"{DEADLINE} (1s)") for n in d.notes), d.notes
            assert DEADLINE in d.explain()  # the reason of the held roles names it
    problems = metrics.registry.get_sample_value("pdscaler_data_problems", {"graph": "alpha"})
    assert problems == len(store.get("alpha").notes) >= 1  # exported
    prom.mode = "ok"
    d = finished(loop.tick)["alpha"]
    assert d.notes == () and not {r.reason.rule for r in d.roles.values()} & HELD


def test_a_query_trickled_past_the_timeout_is_cut_off_and_the_poll_stops(prom):
    """One query answered a byte every 0.2 s, source.timeout 1 s: the query ends at its timeout
    (a total deadline, not per read) and, as with any timeout, the rest of the poll is not sent."""
    src = PrometheusSource(config(prom.url, timeout="1s", poll_deadline="12s"))
    prom.mode, prom.trickle_delay = "trickle", 0.2
    observations = finished(src.collect, 1_000_000.0)
    assert prom.queries == 1
    for o in observations:
        assert o.signals == {} and all(not v for v in o.roles.values())
        assert len(o.errors) == 1 and o.errors[0].startswith(UNREACHABLE), o.errors
        assert "QueryDeadlineExceeded: no complete answer within 1s" in o.errors[0]
    one = finished(src.collect_graph, "solo", 1_000_000.0)  # one graph's queries, read one by one
    assert "QueryDeadlineExceeded" in one.errors[0] and one.errors[1].startswith(UNREACHABLE)
    assert prom.queries == 2
    prom.mode = "ok"
    assert all(o.errors == () and o.signals for o in finished(src.collect, 1_000_000.0))


def test_the_poll_deadline_defaults_to_three_timeouts_below_the_poll_interval():
    def deadline(**kw) -> float:
        return poll_deadline(ScalerConfig.model_validate({
            "poll_interval": kw.pop("poll_interval", 15), "source": {"kind": "prometheus", **kw},
            "graphs": {"g": {"roles": {"p": {"kind": "prefill"}}}}}))

    assert deadline() == 6.0  # timeout 2 s
    assert deadline(timeout="1s") == 3.0
    assert deadline(timeout="10s") == 12.0  # 0.8 x poll_interval
    assert deadline(poll_deadline="4s") == 4.0
    assert deadline(poll_deadline="1m") == 12.0
    with pytest.raises(ValueError):
        deadline(poll_deadline="0s")
