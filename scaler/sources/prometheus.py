"""Prometheus source: instant PromQL queries per signal, rendered from scaler/signals.py.

Templates use Dynamo's metric names (renamable with source.metric_names) and can be replaced whole
per signal with source.queries; placeholders: {sel} (the graph's and role's label matchers),
{window} (source.rate_window), {q} (the quantile) and {metric} (the metric's name).

Batching: graphs selected by one equality matcher on the same label (Dynamo's default,
dynamo_namespace="<ns>-<graph>") are read together, one query per signal for up to BATCH graphs
(`{label=~"a|b|..."}` aggregated `by (label)`), sent as POST. With hundreds of graphs that is 17
queries a poll instead of 17 per graph. Other graphs, and signals whose query is overridden, are
read one graph at a time.

Bounded waits: every query must be answered completely within source.timeout (connect to last byte:
a Prometheus that trickles its answer is cut off, scaler/sources/deadline.py), and a poll's queries
within source.poll_deadline; graphs not read by then get an observation without values noting
"Prometheus poll exceeded its deadline" (held: missing data). Series that cannot be trusted are not
used and noted: two series where one is expected, and samples older than stale_after.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone

import numpy as np
import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from scaler.config import PrometheusSourceConfig, ScalerConfig
from scaler.observation import Observation
from scaler.signals import GRAPH_SIGNALS, Signal, metric_names, role_signals
from scaler.sources.deadline import DeadlineAdapter, PollDeadlineExceeded
from scaler.sources.selection import Matcher, graph_matchers, role_matchers

log = logging.getLogger("pdscaler.sources.prometheus")
UNREACHABLE = "prometheus unreachable"
DEADLINE = "Prometheus poll exceeded its deadline"

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

# The same aggregations, kept per value of one label (the graphs' selecting label).
BY_TEMPLATES: dict[str, str] = {
    "rate": "sum by ({by}) (rate({metric}{{{sel}}}[{window}]))",
    "rate_sum": "sum by ({by}) (rate({metric}_sum{{{sel}}}[{window}]))",
    "mean": "sum by ({by}) (rate({metric}_sum{{{sel}}}[{window}])) / sum by ({by}) (rate({metric}_count{{{sel}}}[{window}]))",
    "quantile": "histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{window}])))",
    "sum": "sum by ({by}) ({metric}{{{sel}}})",
    "avg": "avg by ({by}) ({metric}{{{sel}}})",
    "max": "max by ({by}) ({metric}{{{sel}}})",
    "count": "count by ({by}) ({metric}{{{sel}}})",
}
BATCH = 200  # graphs per batched query
RANGE_BATCH = 10  # graphs per batched range query (warm start: 10,000 points each, parsed at once)


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
    keeps_history = True  # range queries over the retention

    def __init__(self, config: ScalerConfig) -> None:
        assert isinstance(config.source, PrometheusSourceConfig)
        self.config = config
        self.src = config.source
        self.names = metric_names(self.src.metric_names)
        # The source's own HTTP session: the client's instant and range queries and the batched POSTs
        # share its connections; close() closes it. TLS is verified (requests' default CA bundle or
        # REQUESTS_CA_BUNDLE); no auth, no extra headers.
        self.session = requests.Session()
        # One quick retry for a dropped connection; no backoff: the next poll is the real retry.
        # PrometheusConnect mounts it on the session for the URL (an HTTPAdapter with max_retries).
        retry = Retry(total=1, connect=1, read=0, status=0, backoff_factor=0)
        self.prom = PrometheusConnect(
            url=self.src.url, disable_ssl=False, timeout=self.src.timeout, retry=retry, session=self.session
        )
        # Replaces the client's adapter for the URL: the same retry, plus a total deadline per request.
        self.adapter = DeadlineAdapter(self.src.timeout, max_retries=retry)
        self.session.mount(self.prom.url, self.adapter)
        self.poll_deadline = poll_deadline(config)
        # Each graph's label matchers, once: a namespace-less graph's depend on every other graph.
        self.selectors = {g: graph_matchers(g, gcfg, config.graphs) for g, gcfg in config.graphs.items()}

    def _stale(self, series: dict, now: float) -> str | None:
        """Why a sample cannot be used for a decision at `now`: stamped more than stale_after ago."""
        try:
            age = now - float(series["value"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        limit = self.config.stale_after
        return f"sample is {age:.0f}s old (stale after {limit:.0f}s): not used" if age > limit else None

    def queries(self, graph: str) -> dict[tuple[str | None, Signal], str]:
        """(role or None, signal) -> PromQL, for one graph."""
        gcfg = self.config.graphs[graph]
        gsel = self.selectors[graph]
        out: dict[tuple[str | None, Signal], str] = {}
        for s in GRAPH_SIGNALS:
            out[(None, s)] = render(s, self.names, gsel, self.src.rate_window, self.src.queries.get(s.name))
        for role, rcfg in gcfg.roles.items():
            for s in role_signals(rcfg.kind):
                sel = gsel + role_matchers(s, rcfg)
                out[(role, s)] = render(s, self.names, sel, self.src.rate_window, self.src.queries.get(s.name))
        return out

    def _batches(self) -> tuple[list[tuple[str, dict[str, list[tuple[str, str | None]]], str]], list[str]]:
        """(batched queries, graphs read one at a time). A batched query comes with its label and, per
        value of the label, the (graph, role or None) its value belongs to."""
        groups: dict[tuple, dict[str, list[tuple[str, str | None]]]] = {}
        singles: list[str] = []
        for graph, gcfg in self.config.graphs.items():
            gsel = self.selectors[graph]
            if len(gsel) != 1 or gsel[0][1] != "=":
                singles.append(graph)
                continue
            label, _, value = gsel[0]
            wanted = [(None, s, []) for s in GRAPH_SIGNALS] + [
                (role, s, role_matchers(s, rcfg)) for role, rcfg in gcfg.roles.items() for s in role_signals(rcfg.kind)]
            for role, sig, rsel in wanted:
                if sig.name in self.src.queries:
                    continue  # overridden: read per graph (collect_graph reads only these then)
                key = (label, sig, tuple(rsel))
                groups.setdefault(key, {}).setdefault(value, []).append((graph, role))
        batches = []
        for (label, sig, rsel), members in groups.items():
            values = sorted(members)
            for i in range(0, len(values), BATCH):
                chunk = values[i:i + BATCH]
                regex = "|".join(_regex_escape(v) for v in chunk)
                sel = render_matchers([(label, "=~", regex), *rsel])
                promql = BY_TEMPLATES[sig.agg].format(
                    by=label, metric=self.names[sig.metric], sel=sel, window=promql_window(self.src.rate_window),
                    q=sig.quantile if sig.quantile is not None else "")
                batches.append((promql, label, sig, {v: members[v] for v in chunk}))
        return batches, singles

    def _post(self, promql: str, now: float) -> list[dict]:
        return self._api("query", {"query": promql, "time": f"{now:.3f}"})

    def _post_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        return self._api("query_range", {"query": promql, "start": round(start), "end": round(end),
                                         "step": promql_window(step)})

    def _api(self, endpoint: str, data: dict) -> list[dict]:
        """One POST to Prometheus' HTTP API; its result, or ValueError naming what failed."""
        r = self.session.post(f"{self.src.url}/api/v1/{endpoint}", data=data, timeout=self.src.timeout)
        if r.status_code != 200:
            raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(str(body.get("error", body))[:200])
        return body["data"]["result"]

    def _query(self, promql: str, now: float) -> tuple[float | None, str | None]:
        """(value or None, why a returned value is not used)."""
        result = self.prom.custom_query(query=promql, params={"time": f"{now:.3f}"})
        if not result:
            return None, None
        if len(result) > 1:
            return None, f"{len(result)} series where 1 is expected: not used"
        stale = self._stale(result[0], now)
        if stale:
            return None, stale
        return float(result[0]["value"][1]), None

    def collect_graph(self, graph: str, now: float, only: set[str] | None = None) -> Observation:
        """One graph's observation, one query per signal (`only`: just these signals)."""
        signals: dict[str, float] = {}
        roles: dict[str, dict[str, float]] = {r: {} for r in self.config.graphs[graph].roles}
        errors: list[str] = []
        for (role, signal), promql in self.queries(graph).items():
            if only is not None and signal.name not in only:
                continue
            name = signal.name
            try:
                value, problem = self._query(promql, now)
            except Exception as e:  # network, HTTP status, parse: all reported, none fatal
                errors.append(f"{role + ': ' if role else ''}{name}: query failed: {_short(e)}")
                if isinstance(e, PollDeadlineExceeded):
                    errors.append(f"{self._deadline_note()}: skipped the remaining queries")
                    break
                if _unreachable(e):
                    errors.append(f"{UNREACHABLE}: skipped the remaining queries")
                    break
                continue
            if problem:
                errors.append(f"{role + ': ' if role else ''}{name}: {problem}")
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

    def history_many(
        self, graphs: list[str], wanted: list[tuple[str | None, str]], start: float, end: float, step: float
    ) -> dict[str, dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]]]:
        """`history` for many graphs: graphs selected by one equality matcher on the same label are read
        together, one range query per graph-level signal for up to RANGE_BATCH graphs (as the polls
        batch: `{label=~"a|b|..."}` aggregated `by (label)`, POST), split into ranges of at most 10,000
        steps, at whole seconds like `history`'s client. Other graphs (and overridden queries) are read
        one at a time with `history`. A query that fails or returns nothing leaves those series out
        (they start cold)."""
        graph_level = {s.name: s for s in GRAPH_SIGNALS}
        out: dict[str, dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]]] = {g: {} for g in graphs}
        groups: dict[tuple, dict[str, list[str]]] = {}
        singles: list[str] = []
        for graph in graphs:
            gsel = self.selectors[graph]
            if len(gsel) != 1 or gsel[0][1] != "=" or any(
                    role is not None or name not in graph_level or name in self.src.queries for role, name in wanted):
                singles.append(graph)
                continue
            label, _, value = gsel[0]
            for _, name in wanted:
                groups.setdefault((label, name), {}).setdefault(value, []).append(graph)
        chunk = step * 10_000  # Prometheus refuses more than 11,000 points per series
        down = False
        shared = np.zeros(0)
        for (label, name), members in groups.items():
            sig = graph_level[name]
            values = sorted(members)
            for i in range(0, len(values), RANGE_BATCH):
                if down:
                    break
                part = values[i:i + RANGE_BATCH]
                regex = "|".join(_regex_escape(v) for v in part)
                promql = BY_TEMPLATES[sig.agg].format(
                    by=label, metric=self.names[sig.metric], sel=render_matchers([(label, "=~", regex)]),
                    window=promql_window(self.src.rate_window), q=sig.quantile if sig.quantile is not None else "")
                got: dict[str, tuple[list, list]] = {}
                dup: set[str] = set()
                try:
                    for a in np.arange(start, end, chunk):
                        b = min(end, a + chunk - step)
                        seen: set[str] = set()
                        for series in self._post_range(promql, float(a), float(b), step):
                            v = series.get("metric", {}).get(label)
                            if v in seen:
                                dup.add(v)
                            seen.add(v)
                            pts = series.get("values") or []
                            ts, ys = got.setdefault(v, ([], []))
                            ts.append(np.fromiter((p[0] for p in pts), float, len(pts)))
                            ys.append(np.array([p[1] for p in pts], dtype=float))
                except Exception as e:
                    log.warning("warm start of %d graphs (%s) failed: %s", len(part), name, _short(e))
                    down = _unreachable(e)
                    continue
                for v, (ts, ys) in got.items():
                    if v in dup or v not in members:
                        continue  # two series where one is expected: not used (as `history`)
                    t_all, y_all = np.concatenate(ts), np.concatenate(ys)
                    if len(t_all) and len(t_all) == len(shared) and np.array_equal(t_all, shared):
                        t_all = shared  # the same steps as the previous series: one array for both
                    shared = t_all
                    if len(t_all):
                        for g in members[v]:
                            out[g][(None, name)] = (t_all, y_all)
        for g in singles:
            if not down:
                out[g] = self.history(g, wanted, start, end, step)
        return out

    def _deadline_note(self) -> str:
        return f"{DEADLINE} ({self.poll_deadline:g}s)"

    def collect(self, now: float) -> list[Observation]:
        """Every graph's observation, within the poll's deadline. Once Prometheus proved unreachable
        (refused or timed out) in this poll, or the deadline passed, nothing more is queried: with
        hundreds of graphs, one timeout each would stall the loop for minutes. The graphs not read
        then get observations without values, whose note says why."""
        with self.adapter.poll(time.monotonic() + self.poll_deadline):
            return self._collect(now)

    def _collect(self, now: float) -> list[Observation]:
        batches, singles = self._batches()
        graphs = self.config.graphs
        values: dict[str, tuple[dict, dict, list]] = {g: ({}, {r: {} for r in graphs[g].roles}, []) for g in graphs}
        down: str | None = None
        for promql, label, sig, members in batches:
            if down is not None:
                break
            try:
                result = self._post(promql, now)
            except Exception as e:  # network, HTTP status, parse: all reported, none fatal
                note = f"{sig.name}: query failed: {_short(e)}"
                for pairs in members.values():
                    for g, role in pairs:
                        values[g][2].append((f"{role}: " if role else "") + note)
                if isinstance(e, PollDeadlineExceeded):
                    down = f"{self._deadline_note()}: not queried this poll"
                elif _unreachable(e):
                    down = f"{UNREACHABLE}: not queried this poll ({_short(e)})"
                continue
            by_value: dict[str, list[dict]] = {}
            for series in result:
                by_value.setdefault(series.get("metric", {}).get(label), []).append(series)
            for value, found in by_value.items():
                pairs = members.get(value)
                if not pairs:
                    continue
                problem = (f"{len(found)} series where 1 is expected: not used" if len(found) > 1
                           else self._stale(found[0], now))
                if problem:
                    for g, role in pairs:
                        values[g][2].append((f"{role}: " if role else "") + f"{sig.name}: {problem}")
                    continue
                try:
                    v = float(found[0]["value"][1])
                except (KeyError, IndexError, TypeError, ValueError):
                    continue
                if math.isnan(v) and sig.agg in ("mean", "quantile"):
                    continue  # no events in the window (0/0): absent, not an error
                for g, role in pairs:
                    (values[g][1][role] if role else values[g][0])[sig.name] = v
        out = []
        overridden = set(self.src.queries)
        for g in graphs:
            signals, roles, errors = values[g]
            if down is not None:
                out.append(Observation(graph=g, at=now, roles={r: {} for r in graphs[g].roles}, errors=(down,)))
                continue
            if g in singles or overridden:
                one = self.collect_graph(g, now, None if g in singles else overridden)
                signals |= dict(one.signals)
                for r, v in one.roles.items():
                    roles.setdefault(r, {}).update(v)
                errors += list(one.errors)
                if any(e.startswith(UNREACHABLE) for e in one.errors):
                    down = f"{UNREACHABLE}: not queried this poll ({g} failed first)"
                elif any(e.startswith(DEADLINE) for e in one.errors):
                    down = f"{self._deadline_note()}: not queried this poll"
            out.append(Observation(graph=g, at=now, signals=signals, roles=roles, errors=tuple(errors)))
        return out

    def close(self) -> None:
        self.session.close()


def poll_deadline(config: ScalerConfig) -> float:
    """The total time of one poll's queries: source.poll_deadline, by default 3 x source.timeout;
    at most 0.8 x poll_interval either way (a poll must end before the next one is due)."""
    src = config.source
    assert isinstance(src, PrometheusSourceConfig)
    wanted = src.poll_deadline if src.poll_deadline is not None else 3 * src.timeout
    return min(wanted, 0.8 * config.poll_interval)


def _regex_escape(value: str) -> str:
    """A label value as an RE2 literal (regex metacharacters escaped; render_matchers then escapes the
    backslashes and quotes for the PromQL string)."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in value)


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


def _unreachable(e: Exception) -> bool:
    return isinstance(e, (requests.ConnectionError, requests.Timeout))
