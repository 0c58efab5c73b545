"""Metrics sources: adapters that turn a serving graph's metrics into Observations.

Each source implements `collect(now) -> list[Observation]` (one per configured graph) and never
raises for a graph's data problems: it reports them in Observation.errors instead.
"""

from __future__ import annotations

from typing import Protocol

from scaler.config import PrometheusSourceConfig, ScalerConfig, ScrapeSourceConfig
from scaler.observation import Observation


class MetricsSource(Protocol):
    def collect(self, now: float) -> list[Observation]: ...

    def close(self) -> None: ...


def build_source(config: ScalerConfig) -> MetricsSource:
    if isinstance(config.source, PrometheusSourceConfig):
        from scaler.sources.prometheus import PrometheusSource

        return PrometheusSource(config)
    if isinstance(config.source, ScrapeSourceConfig):
        from scaler.sources.scrape import ScrapeSource

        return ScrapeSource(config)
    raise TypeError(f"unknown source {config.source!r}")
