"""Every dashboard query with its variables substituted, for running against a real Prometheus.

`dashboard_queries("default", "demo")` -> [(dashboard title, panel title, PromQL), ...] in panel order.
The dashboards' own variables take concrete values: `$namespace`, `$graph` as given; `$horizon`
(the forecast horizon, also the `offset` that lines a forecast up with the demand it predicted) 60 by
default so that a run of a few minutes already has a forecast made one horizon earlier; the SLO and
warm-role textboxes their dashboard defaults; Grafana's `$__rate_interval`, `$__interval`, `$__range`
(and `_s` / `_ms` forms) short windows.

Queries that can be empty on a healthy system (listed in dashboards.build.OPTIONAL with the reason:
current replicas and cluster-reading age need cluster reads, gRPC latency needs KEDA traffic, model
fit duration needs a warm start from Prometheus; the headroom panels are optional only while the
calibrated headroom is off by default) are left out unless `include_optional=True`.
"""

from __future__ import annotations

import json
import re

from dashboards import build

VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * units[m.group(2)]


def dashboards() -> list[dict]:
    """The generated dashboards as Grafana JSON models (what the committed files hold)."""
    return [json.loads(text) for text in build.generate().values()]


def variable_defaults(dash: dict) -> dict[str, str]:
    """The current/default value of each custom or textbox variable of a dashboard."""
    out = {}
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") in ("custom", "textbox", "constant"):
            cur = var.get("current", {}).get("value")
            out[var["name"]] = str(cur if cur not in (None, "") else var.get("query", "")).split(",")[0]
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return VAR.sub(one, expr)


def panel_targets(dash: dict):
    """(panel, target) for every query target of every panel (rows' nested panels included)."""
    for panel in dash.get("panels", []):
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets") or []:
                yield p, t


def dashboard_queries(namespace: str, graph: str, *, horizon: str = "60", rate_interval: str = "1m",
                      interval: str = "15s", range_: str = "5m", include_optional: bool = False,
                      variables: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) for every query, variables substituted by concrete values."""
    build.generate()  # fills build.OPTIONAL
    optional = dict(build.OPTIONAL)
    grafana = {
        "__rate_interval": rate_interval, "__interval": interval, "__range": range_,
        "__interval_ms": str(int(_seconds(interval) * 1000)), "__range_s": str(int(_seconds(range_))),
        "__range_ms": str(int(_seconds(range_) * 1000)),
    }
    out = []
    for dash in dashboards():
        values = {**variable_defaults(dash), "namespace": namespace, "graph": graph, "horizon": horizon,
                  "datasource": "prometheus", **grafana, **(variables or {})}
        for panel, target in panel_targets(dash):
            expr = target.get("expr", "")
            if not expr or (expr in optional and not include_optional):
                continue
            out.append((dash["title"], panel["title"], substitute(expr, values)))
    return out


if __name__ == "__main__":
    for d, p, e in dashboard_queries("default", "demo"):
        print(f"{d} | {p} | {e}")
