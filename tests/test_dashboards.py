"""The generated Grafana dashboards: committed JSON up to date, every panel described and queried,
every query well formed and built only on metrics (and labels) that pdscaler or the emulator export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboards import build
from dashboards.queries import VAR, dashboard_queries, dashboards, panel_targets, substitute

GRAFANA_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "inf", "nan"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count", "_created"), "counter": ("_total", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("_sum", "_count", "_created"), "unknown": ("",)}


# ---- what the scaler and the emulator export: name -> label names -----------------------------------

def _scaler_series() -> dict[str, set[str]]:
    from scaler.config import ScalerConfig
    from scaler.metrics import DecisionCollector, ScalerMetrics
    from scaler.store import DecisionStore

    m = ScalerMetrics()
    labels_of = {i._name: set(i._labelnames) for i in vars(m).values() if hasattr(i, "_labelnames")}
    out: dict[str, set[str]] = {}
    for fam in m.registry.collect():
        for suffix in SUFFIXES[fam.type]:
            out[fam.name + suffix] = labels_of[fam.name] | ({"le"} if suffix == "_bucket" else set())
    config = ScalerConfig.model_validate({"graphs": {"g": {"roles": {"p": {"kind": "prefill"}}}}})
    for fam in DecisionCollector(config, DecisionStore(), None, None, lambda: 0.0).collect():
        out[fam.name] = set(fam._labelnames)
    return out


def _emulator_series() -> dict[str, set[str]]:
    from scaler.testbench.emulator.metrics import EmulatorMetrics
    from scaler.testbench.emulator.model import GraphSim
    from scaler.testbench.emulator.profile import EmulatorProfile

    em = EmulatorMetrics(GraphSim(EmulatorProfile(), 0.0, {"prefill": 1, "decode": 1}))
    out: dict[str, set[str]] = {}
    for fam in em.registry.collect():
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


EXPORTED = {**_scaler_series(), **_emulator_series()}
DASHBOARDS = dashboards()


def _targets():
    for dash in DASHBOARDS:
        for panel, target in panel_targets(dash):
            yield dash, panel, target


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def _vars_outside_strings(expr: str) -> str:
    """Variables outside string literals (`offset ${horizon}s`, `[$__range:1m]`) replaced by a number."""
    parts = re.split(r'("(?:[^"\\]|\\.)*")', expr)
    return "".join(p if i % 2 else VAR.sub("1", p) for i, p in enumerate(parts))


def _drop_label_lists(expr: str) -> str:
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) of every vector selector with a metric name."""
    expr = _drop_label_lists(_vars_outside_strings(expr))
    strings = [m.span() for m in re.finditer(r'"(?:[^"\\]|\\.)*"', expr)]  # e.g. label_replace's arguments
    out = []
    for m in re.finditer(r'(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*(\{((?:[^{}"]|"(?:[^"\\]|\\.)*")*)\})?', expr):
        if any(a <= m.start() < b for a, b in strings):
            continue
        name, body = m.group(1), m.group(3)
        rest = expr[m.end():]
        if name in KEYWORDS or rest.lstrip().startswith("("):
            continue
        matchers = dict(re.findall(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body or ""))
        out.append((name, matchers))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (functions, keywords, label lists and strings skipped)."""
    e = _strip_strings(_vars_outside_strings(expr))
    e = re.sub(r"\{[^{}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", "", e)  # ranges, subqueries
    e = _drop_label_lists(e)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[a-zA-Z_:][\w:]*", e):
        if m.group(0) in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


# ---- the committed files --------------------------------------------------------------------------

def test_committed_json_is_what_the_code_generates(tmp_path: Path) -> None:
    assert build.main(["--check"]) == 0, "run: python -m dashboards.build"
    # and --check notices a difference
    for name, text in build.generate().items():
        (tmp_path / name).write_text(text.replace("pdscaler", "pd-scaler", 1))
    assert build.main(["--check", "--out", str(tmp_path)]) == 1


def test_files_are_grafana_dashboards_without_machine_paths() -> None:
    uids = set()
    for name in build.DASHBOARDS:
        text = (build.OUT_DIR / name).read_text()
        assert "/work" not in text and "/tmp" not in text and "/home" not in text
        dash = json.loads(text)
        assert dash["title"] and dash["uid"] and dash["uid"] not in uids
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
        for p in dash["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24 and g["h"] > 0
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_template_variables() -> None:
    for dash in DASHBOARDS:
        v = {x["name"]: x for x in dash["templating"]["list"]}
        assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
        assert v["namespace"]["type"] == "query"
        assert v["namespace"]["query"] == "label_values(pdscaler_graph_info, namespace)"
        assert v["graph"]["query"] == 'label_values(pdscaler_graph_info{namespace=~"$namespace"}, graph)'
        for name in ("namespace", "graph"):
            assert v[name]["datasource"]["uid"] == "${datasource}"
        assert v["horizon"]["type"] == "custom" and v["horizon"]["current"]["value"] in v["horizon"]["query"].split(",")


# ---- panels and queries ---------------------------------------------------------------------------

def test_every_panel_is_described_and_queried() -> None:
    panels = 0
    for dash in DASHBOARDS:
        for p in dash["panels"]:
            if p["type"] == "row":
                continue
            panels += 1
            assert len(p.get("description", "")) > 40, p["title"]
            assert any(t.get("expr") for t in p.get("targets", [])), p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
    assert panels >= 20


@pytest.mark.parametrize("dash,panel,target", list(_targets()), ids=lambda x: x.get("title", x.get("refId")) if isinstance(x, dict) else x)
def test_expr_is_well_formed(dash, panel, target) -> None:
    expr = target["expr"]
    # balanced brackets and quotes (outside strings)
    assert expr.count('"') % 2 == 0, expr
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r"\$\{(\w+)(?::\w+)?\}", r"$\1", _strip_strings(expr)):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], expr
    assert not stack, expr
    # every variable is a template variable or one of Grafana's
    defined = {x["name"] for x in dash["templating"]["list"]} | GRAFANA_VARS
    used = {a or b for a, b in VAR.findall(expr)}
    assert used <= defined, used - defined
    # every metric is one pdscaler or the emulator exports, with labels it has
    names = metric_names(expr)
    assert names or re.fullmatch(r"vector\(\$\w+\)", expr), expr  # a metric, or an SLO line
    unknown = names - set(EXPORTED)
    assert not unknown, f"{unknown} in {expr}"
    labels_in_query = set(TARGET_LABELS)
    for name, matchers in selectors(expr):
        assert set(matchers) <= EXPORTED[name] | TARGET_LABELS, (name, matchers)
        labels_in_query |= EXPORTED[name]
        if name.startswith("dynamo_"):
            assert matchers.get("dynamo_namespace") == "$namespace-$graph", expr
        elif "graph" in EXPORTED[name] and expr != "pdscaler_graph_info":  # that table lists every graph
            assert matchers.get("graph") == "$graph", expr
    for group in re.findall(r"\b(?:by|without)\s*\(([^()]*)\)", expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in labels_in_query, (label, expr)
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
        assert label in labels_in_query, (label, expr)


def test_variable_queries_use_exported_metrics() -> None:
    for dash in DASHBOARDS:
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"])
                assert m, v["query"]
                (name, _), = selectors(m.group(1))
                assert m.group(2) in EXPORTED[name]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    """A real PromQL parser: promtool checks the substituted queries as recording rules."""
    queries = dashboard_queries("default", "demo", include_optional=True)
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)]}]}
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the helper for end-to-end runs ----------------------------------------------------------------

def test_dashboard_queries_are_concrete_and_short() -> None:
    queries = dashboard_queries("default", "demo")
    titles = {d["title"] for d in DASHBOARDS}
    assert {d for d, _, _ in queries} == titles
    every = sum(1 for _ in _targets())
    optional = dashboard_queries("default", "demo", include_optional=True)
    assert len(optional) == every > len(queries)
    left_out = {e for _, _, e in optional} - {e for _, _, e in queries}
    assert any("pdscaler_current_replicas" in e for e in left_out)
    for dash_title, panel_title, expr in queries:
        assert "$" not in expr, expr
        assert 'dynamo_namespace="default-demo"' in expr or "dynamo_" not in expr
        assert '"$graph"' not in expr and "graph=\"demo\"" in expr or "graph=" not in expr
        for n, unit in re.findall(r"offset\s+(\d+)([smh])", expr):  # short enough for a few minutes' run
            assert int(n) * {"s": 1, "m": 60, "h": 3600}[unit] <= 60, expr
    exprs = [e for _, _, e in queries]
    assert 'pdscaler_forecast{graph="demo", series="prefill_tokens_per_s", horizon="60", quantile="0.9"} offset 60s' in exprs
    assert "vector(0.5)" in exprs and "vector(0.03)" in exprs  # the SLO lines
    assert any('role="warm"' in e for e in exprs)
    # substitutions are configurable
    long = dashboard_queries("prod", "g1", horizon="300", rate_interval="2m", variables={"warm_role": "balloon"})
    joined = "\n".join(e for _, _, e in long)
    assert "offset 300s" in joined and "[2m]" in joined and 'role="balloon"' in joined
    assert 'dynamo_namespace="prod-g1"' in joined


def test_substitute_refuses_unknown_variables() -> None:
    assert substitute("x[$__rate_interval] offset ${h}s", {"__rate_interval": "1m", "h": "60"}) == "x[1m] offset 60s"
    with pytest.raises(KeyError):
        substitute("$nope", {})


def test_metric_name_extraction() -> None:
    e = ('sum by (role) (sum_over_time((sum by (role) (a_total{graph="x", s=~"a|b"}))[5m:1m])) / 60 '
         'or on() histogram_quantile(0.9, rate(b_bucket[1m])) offset 5m + vector(0.5)')
    assert metric_names(e) == {"a_total", "b_bucket"}
    assert selectors('c{graph="$graph", role=""} / d') == [("c", {"graph": "$graph", "role": ""}), ("d", {})]
    assert selectors('label_replace(sum(0 * e{a="b"}), "result", "none", "", "")') == [("e", {"a": "b"})]


# ---- the panels of the metrics added last, and the calibrated headroom ------------------------------------

def _panels():
    for dash in DASHBOARDS:
        for p in dash["panels"]:
            if p["type"] != "row":
                yield dash, p


def test_health_reloads_and_failed_decisions_have_panels_the_e2e_must_fill() -> None:
    """pdscaler_healthy, pdscaler_decide_errors_total and pdscaler_config_reloads_total each on a panel
    whose description names the metric, in a query that is not optional (the e2e requires data): the
    counters, whose series appear only with their first increment, fall back to 0 while the scaler
    exports at all."""
    required = {e for _, _, e in dashboard_queries("default", "demo")}
    for metric in ("pdscaler_healthy", "pdscaler_decide_errors_total", "pdscaler_config_reloads_total"):
        panels = [(d, p) for d, p in _panels() if metric in p["description"]]  # the panels about it
        assert panels, metric
        for _, p in panels:
            assert any(metric in t.get("expr", "") for t in p["targets"]), (metric, p["title"])
        exprs = [e for _, _, e in dashboard_queries("default", "demo") if metric in e]
        assert exprs and set(exprs) <= required
        if metric.endswith("_total"):
            assert all(" or on(" in e for e in exprs), exprs
            assert not any("rate(" in e or "increase(" in e for e in exprs), "a rate misses the first increment"
    # the health strip leads with health and ends with failed decisions, on both dashboards, in one row of 24
    for dash in DASHBOARDS:
        strip = [p for p in dash["panels"] if p["type"] == "stat" and p["gridPos"]["h"] == 5]
        titles = [p["title"] for p in strip]
        assert titles[0] == "Scaler healthy" and titles[-1] == "Failed decisions", titles
        assert sum(p["gridPos"]["w"] for p in strip) == 24


def test_headroom_panels_follow_the_default_and_query_exported_figures() -> None:
    """On by default, the headroom panels' queries are required (the e2e runs on the defaults and must
    see them); off by default, they are optional with that reason. The descriptions say which."""
    from scaler import metrics
    from scaler.config import ScalerConfig

    on = ScalerConfig.model_validate({"graphs": {"g": {"roles": {"p": {"kind": "prefill"}}}}}).forecast.headroom.enabled
    headroom = [(d, p) for d, p in _panels() if "headroom" in p["title"].lower()]
    assert {p["title"] for _, p in headroom} == {"Calibrated headroom per role", "Headroom now"}
    build.generate()
    for _, p in headroom:
        assert "forecast.headroom.enabled" in p["description"]
        assert ("on by default" if on else "off by default") in p["description"]
        figures = {f for t in p["targets"] for f in re.findall(r'figure="(\w+)"', t["expr"])}
        assert figures == {"headroom", "headroom_windows"}
        for t in p["targets"]:
            if on:
                assert t["expr"] not in build.OPTIONAL
            else:
                assert "forecast.headroom.enabled" in build.OPTIONAL[t["expr"]]
    # every decision figure a panel queries is one the scaler exports, at the default detail too
    queried = {f for _, p in _panels() for t in p["targets"]
               for group in re.findall(r'figure=~?"([^"]+)"', t.get("expr", "")) for f in group.split("|")}
    assert queried <= set(metrics.FIGURES)
    shown_by_default = getattr(metrics, "DASHBOARD_FIGURES", metrics.FIGURES)
    assert queried <= set(shown_by_default), sorted(queried - set(shown_by_default))
