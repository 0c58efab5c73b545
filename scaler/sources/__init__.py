"""Metrics sources: adapters that turn a serving graph's metrics into Observations.

Each source implements `collect(now) -> list[Observation]` (one per configured graph) and never
raises for a graph's data problems: it reports them in Observation.errors instead. A source that
keeps its metrics' past (Prometheus) also answers `history(...)`, which forecasts warm start from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from scaler.config import PrometheusSourceConfig, ScalerConfig, ScrapeSourceConfig
from scaler.observation import Observation

if TYPE_CHECKING:
    import numpy as np

SeriesKey = tuple[str | None, str]
"""(role or None for the graph, signal name)."""


class MetricsSource(Protocol):
    keeps_history: bool
    """Whether `history` can return past values (range queries); False: forecasts start cold."""

    def collect(self, now: float) -> list[Observation]: ...

    def history(
        self, graph: str, wanted: list[SeriesKey], start: float, end: float, step: float
    ) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        """The `wanted` series of `graph` over [start, end] every `step` seconds: key -> (timestamps,
        values). A series the source cannot read is left out (it starts cold); a source that keeps
        no history returns nothing."""
        ...

    def close(self) -> None: ...


def build_source(config: ScalerConfig) -> MetricsSource:
    if isinstance(config.source, PrometheusSourceConfig):
        from scaler.sources.prometheus import PrometheusSource

        return PrometheusSource(config)
    if isinstance(config.source, ScrapeSourceConfig):
        from scaler.sources.scrape import ScrapeSource

        return ScrapeSource(config)
    raise TypeError(f"unknown source {config.source!r}")
