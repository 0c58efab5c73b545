"""The latest decisions, shared between the background loop (writer) and the gRPC server (readers).

Reads never block: `publish` swaps in a new immutable mapping, and a reader sees either the old or
the new one. Listeners (the StreamIsActive streams) are told after each publish.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from scaler.decision import Decision


class DecisionStore:
    def __init__(self) -> None:
        self._decisions: Mapping[str, Decision] = MappingProxyType({})
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._graphs: frozenset[str] | None = None  # set by retain(): only these graphs are kept
        self.version = 0

    def publish(self, decisions: Mapping[str, Decision]) -> None:
        with self._lock:
            merged = {**self._decisions, **decisions}
            if self._graphs is not None:
                merged = {g: d for g, d in merged.items() if g in self._graphs}
            self._decisions = MappingProxyType(merged)
            self.version += 1
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def retain(self, graphs: Iterable[str]) -> None:
        """Keep only these graphs' decisions, now and in every later publish (a config reload removed
        the others: nothing answers, explains or exports them any more); listeners are told."""
        with self._lock:
            self._graphs = frozenset(graphs)
            self._decisions = MappingProxyType({g: d for g, d in self._decisions.items() if g in self._graphs})
            self.version += 1
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def get(self, graph: str) -> Decision | None:
        return self._decisions.get(graph)

    def all(self) -> Mapping[str, Decision]:
        return self._decisions

    def subscribe(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` after every publish (from the publishing thread); returns an unsubscribe."""
        with self._lock:
            self._listeners.append(notify)

        def unsubscribe() -> None:
            with self._lock:
                if notify in self._listeners:
                    self._listeners.remove(notify)

        return unsubscribe
