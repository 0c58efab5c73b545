"""Prometheus source: one instant PromQL query per signal, rendered from scaler/signals.py.

Templates use Dynamo's metric names (renamable with source.metric_names) and can be replaced whole
per signal with source.queries; placeholders: {sel} (the graph's and role's label matchers),
{window} (source.rate_window), {q} (the quantile) and {metric} (the metric's name).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

import numpy as np

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from scaler.config import PrometheusSourceConfig, ScalerConfig
from scaler.observation import Observation
from scaler.signals import GRAPH_SIGNALS, Signal, metric_names, role_signals
from scaler.sources.selection import Matcher, graph_matchers, role_matchers

log = logging.getLogger("pdscaler.sources.prometheus")
UNREACHABLE = "prometheus unreachable"

TEMPLATES: dict[str, str] = {
    "rate": "sum(rate({metric}{{{sel}}}[{window}]))",
    "rate_sum": "sum(rate({metric}_sum{{{sel}}}[{window}]))",
    "mean": "sum(rate({metric}_sum{{{sel}}}[{window}])) / sum(rate({metric}_count{{{sel}}}[{window}]))",
    "quantile": "histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[{window}])))",
    "sum": "sum({metric}{{{sel}}})",
    "avg": "avg({metric}{{{sel}}})",
    "max": "max({metric}{{{sel}}})",
    "count": "count({metric}{{{sel}}})",
}

def render_matchers(matchers: list[Matcher]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"')

    return ",".join(f'{k}{op}"{esc(v)}"' for k, op, v in matchers)


def promql_window(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds != int(seconds) else f"{int(seconds)}s"


def render(signal: Signal, names: dict[str, str], matchers: list[Matcher], window: float, template: str | None = None) -> str:
    return (template or TEMPLATES[signal.agg]).format(
        metric=names[signal.metric],
        sel=render_matchers(matchers),
        window=promql_window(window),
        q=signal.quantile if signal.quantile is not None else "",
    )


class PrometheusSource:
    def __init__(self, config: ScalerConfig) -> None:
        assert isinstance(config.source, PrometheusSourceConfig)
        self.config = config
        self.src = config.source
        self.names = metric_names(self.src.metric_names)
        # One quick retry for a dropped connection; no backoff: the next poll is the real retry.
        retry = Retry(total=1, connect=1, read=0, status=0, backoff_factor=0)
        self.prom = PrometheusConnect(url=self.src.url, disable_ssl=False, timeout=self.src.timeout, retry=retry)

    def queries(self, graph: str) -> dict[tuple[str | None, Signal], str]:
        """(role or None, signal) -> PromQL, for one graph."""
        gcfg = self.config.graphs[graph]
        gsel = graph_matchers(graph, gcfg)
        out: dict[tuple[str | None, Signal], str] = {}
        for s in GRAPH_SIGNALS:
            out[(None, s)] = render(s, self.names, gsel, self.src.rate_window, self.src.queries.get(s.name))
        for role, rcfg in gcfg.roles.items():
            for s in role_signals(rcfg.kind):
                sel = gsel + role_matchers(s, rcfg)
                out[(role, s)] = render(s, self.names, sel, self.src.rate_window, self.src.queries.get(s.name))
        return out

    def _query(self, promql: str, now: float) -> float | None:
        result = self.prom.custom_query(query=promql, params={"time": f"{now:.3f}"})
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"returned {len(result)} series, expected 1")
        return float(result[0]["value"][1])

    def collect_graph(self, graph: str, now: float) -> Observation:
        signals: dict[str, float] = {}
        roles: dict[str, dict[str, float]] = {r: {} for r in self.config.graphs[graph].roles}
        errors: list[str] = []
        for (role, signal), promql in self.queries(graph).items():
            name = signal.name
            try:
                value = self._query(promql, now)
            except Exception as e:  # network, HTTP status, parse: all reported, none fatal
                errors.append(f"{role + ': ' if role else ''}{name}: query failed: {_short(e)}")
                if _unreachable(e):
                    errors.append(f"{UNREACHABLE}: skipped the remaining queries")
                    break
                continue
            if value is None or (math.isnan(value) and signal.agg in ("mean", "quantile")):
                continue  # no series, or no events in the window (0/0): absent, not an error
            (roles[role] if role else signals)[name] = value
        return Observation(graph=graph, at=now, signals=signals, roles=roles, errors=tuple(errors))

    def history(
        self, graph: str, wanted: list[tuple[str | None, str]], start: float, end: float, step: float
    ) -> dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]]:
        """Range queries for warm start: (role or None, signal name) -> (timestamps, values).

        A query that fails or returns nothing is left out (the caller starts that series cold).
        """
        queries = {(role, s.name): q for (role, s), q in self.queries(graph).items()}
        out: dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]] = {}
        # Prometheus refuses more than 11,000 points per series: split long ranges into chunks.
        chunk = step * 10_000
        for key in wanted:
            promql = queries.get(key)
            if promql is None:
                continue
            ts, ys = [], []
            try:
                for a in np.arange(start, end, chunk):
                    b = min(end, a + chunk - step)
                    result = self.prom.custom_query_range(
                        query=promql,
                        start_time=datetime.fromtimestamp(a, timezone.utc),
                        end_time=datetime.fromtimestamp(b, timezone.utc),
                        step=promql_window(step),
                    )
                    if len(result) == 1:
                        for t, v in result[0]["values"]:
                            ts.append(float(t))
                            ys.append(float(v))
            except Exception as e:
                log.warning("warm start of %s %s failed: %s", graph, key, _short(e))
                if _unreachable(e):
                    break
                continue
            if ts:
                out[key] = (np.asarray(ts), np.asarray(ys))
        return out

    def collect(self, now: float) -> list[Observation]:
        """Every graph's observation. Once Prometheus proved unreachable (refused or timed out) in this
        poll, the remaining graphs are not queried: with hundreds of graphs, one timeout each would stall
        the loop for minutes. They get an observation without values, whose note says why."""
        out: list[Observation] = []
        down: str | None = None
        for g in self.config.graphs:
            if down is not None:
                out.append(Observation(graph=g, at=now, roles={r: {} for r in self.config.graphs[g].roles},
                                       errors=(down,)))
                continue
            obs = self.collect_graph(g, now)
            out.append(obs)
            if any(e.startswith(UNREACHABLE) for e in obs.errors):
                down = f"{UNREACHABLE}: not queried this poll ({g} failed first)"
        return out

    def close(self) -> None:
        self.prom._session.close()


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


def _unreachable(e: Exception) -> bool:
    import requests

    return isinstance(e, (requests.ConnectionError, requests.Timeout))
