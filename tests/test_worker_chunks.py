"""The decision process's sends in chunks (scaler/worker.py, `split` and `DecisionWorker._receive`):
a send of more graphs than one chunk arrives whole and in order, only its last chunk carries the
metrics page, `polled_at` and `ready`, and the serving side takes a tick as its latest (ready, the
page) only once all of that tick's decisions are published. The serving side's receive thread reads a
real pipe; every wait is on an event or a queue with a generous deadline, nothing is timed."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from types import SimpleNamespace

import pytest

from scaler.clock import ManualClock
from scaler.decision import Decision
from scaler.store import DecisionStore
from scaler.worker import SEND_CHUNK_GRAPHS, DecisionWorker, Tick, split
from tests.conftest import make_config

WAIT = 60.0  # s: deadline of each wait on a shared machine; nothing is timed
ROLES = {"prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 10}}


def fleet(n: int):
    return make_config(forecast={"enabled": False},
                       graphs={f"g{i:04d}": {"namespace": "ns", "roles": ROLES} for i in range(n)})


def decisions(graphs, at: float) -> dict[str, Decision]:
    return {g: Decision(graph=g, at=at, roles={}) for g in graphs}


def test_a_send_of_many_graphs_is_chunks_in_order_with_the_page_and_ready_on_the_last():
    names = [f"g{i:04d}" for i in range(2 * SEND_CHUNK_GRAPHS + 7)]
    tick = Tick(at=5.0, decisions=decisions(names, 5.0), metrics=b"page", polled_at=4.0, ready=True)
    parts = split(tick)
    assert [len(p.decisions) for p in parts] == [SEND_CHUNK_GRAPHS, SEND_CHUNK_GRAPHS, 7]
    assert [g for p in parts for g in p.decisions] == names  # whole, in order, each graph once
    assert all(p.decisions[g] is tick.decisions[g] for p in parts for g in p.decisions)
    *first, last = parts
    assert all(p.partial and p.metrics == b"" and p.polled_at is None and not p.ready for p in first)
    assert not last.partial and (last.metrics, last.polled_at, last.ready, last.at) == (b"page", 4.0, True, 5.0)
    # an exact multiple: the last chunk is a full one, never an empty one
    assert [len(p.decisions) for p in split(tick, size=len(names))] == [len(names)]
    assert [len(p.decisions) for p in split(Tick(at=1.0, decisions=decisions(names[:6], 1.0)), size=3)] == [3, 3]


@pytest.mark.parametrize("n", [0, 1, SEND_CHUNK_GRAPHS])
def test_a_send_of_at_most_one_chunk_is_the_tick_itself(n):
    tick = Tick(at=1.0, decisions=decisions([f"g{i}" for i in range(n)], 1.0), metrics=b"m", ready=True)
    assert split(tick) == [tick] and split(tick)[0] is tick and not tick.partial


class Serving:
    """A DecisionWorker's serving side on one end of a real pipe (no child process: the test writes
    the other end); every publish recorded with the tick the worker held while it was made."""

    def __init__(self, config) -> None:
        self.published: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        outer = self

        class Recording(DecisionStore):
            def publish(self, d) -> None:
                seen = outer.worker.tick if hasattr(outer, "worker") else None  # None: the constructor's
                super().publish(d)
                outer.published.put((list(d), seen))

        self.store = Recording()
        self.worker = DecisionWorker(config, self.store, ManualClock())
        self.published.get_nowait()  # the floors, published by the constructor
        self.worker.on_change = self.ready.set
        self.conn, self.child = mp.Pipe()
        self.worker._conn = self.conn
        self.worker.proc = SimpleNamespace(is_alive=lambda: True, exitcode=None, pid=0)  # a running child
        self.thread = threading.Thread(target=self.worker._receive, args=(self.conn,), daemon=True)
        self.thread.start()

    def next_publish(self) -> tuple[list[str], Tick | None]:
        return self.published.get(timeout=WAIT)

    def close(self) -> None:
        self.child.close()  # end of file: the receive thread returns
        self.thread.join(WAIT)
        self.conn.close()


@pytest.fixture
def serving():
    made = []

    def make(n: int) -> Serving:
        made.append(Serving(fleet(n)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_chunks_are_published_as_they_arrive_and_the_tick_is_taken_only_with_the_last(serving):
    s = serving(7)
    w, names = s.worker, list(s.worker.config.graphs)
    tick = Tick(at=3.0, decisions=decisions(names, 3.0), metrics=b"page", polled_at=2.0, ready=True)
    first, second, last = split(tick, size=3)

    s.child.send(first)
    assert s.next_publish() == (names[:3], None)
    assert w.tick is None and w.child_metrics() == b""  # nothing of the tick but its decisions yet
    assert [s.store.get(g).at for g in names] == [3.0] * 3 + [0.0] * 4  # the others: still the floors
    ok, why = w.healthy()
    assert not ok and why.startswith("waiting for the first answers") and not s.ready.is_set()

    s.child.send(second)
    assert s.next_publish() == (names[3:6], None)
    assert w.tick is None and not s.ready.is_set()

    s.child.send(last)
    assert s.next_publish() == (names[6:], None)  # its decisions published before the tick was taken
    assert s.ready.wait(WAIT)  # told once the tick is taken
    assert w.tick == last and w.child_metrics() == b"page" and w.healthy()[0]
    assert {g: s.store.get(g) for g in names} == tick.decisions
    assert w.last_decisions == tick.decisions  # what a restarted child would start from
    assert list(w.last_decisions) == names


def test_a_reader_never_sees_a_tick_ready_before_all_its_decisions(serving):
    n, size, ticks = 25, 4, 30
    s = serving(n)
    w, names = s.worker, list(s.worker.config.graphs)
    done, bad, reads = threading.Event(), [], [0]

    def reader() -> None:  # reads as the answers and health do: the tick, then the decisions
        while not done.is_set():
            tick = w.tick
            if tick is not None:
                stale = [g for g in names if s.store.get(g).at < tick.at]
                if stale:
                    bad.append((tick.at, stale))
                    return
            reads[0] += 1

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        sent = []
        for k in range(1, ticks + 1):
            tick = Tick(at=float(k), decisions=decisions(names, float(k)), metrics=b"%d" % k,
                        polled_at=float(k), ready=True)
            sent.append(split(tick, size=size))
            for part in sent[-1]:
                s.child.send(part)
        for k, parts in enumerate(sent, 1):
            for part in parts:  # every chunk published, in order, while the tick before was the latest
                got, seen = s.next_publish()
                assert got == list(part.decisions)
                assert (seen.at if seen is not None else 0) == k - 1
        assert s.ready.wait(WAIT)
        s.child.close()  # end of file once all is read: the receive thread returns
        s.thread.join(WAIT)
        assert not s.thread.is_alive()
        assert w.tick == sent[-1][-1] and w.child_metrics() == b"%d" % ticks
    finally:
        done.set()
        t.join(WAIT)
    assert not bad, bad
    assert reads[0] > 0
