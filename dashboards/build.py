"""Generate pdscaler's Grafana dashboards (grafana-foundation-sdk) and write them as committed JSON.

    python -m dashboards.build           # (re)write dashboards/*.json
    python -m dashboards.build --check   # exit 1 if a committed file differs from what this code generates

Two dashboards, both with the variables `datasource` (Prometheus), `namespace` and `graph` (from
pdscaler_graph_info), `horizon` (forecast horizon shown, s), the SLO lines `ttft_slo` / `itl_slo` (s)
and `warm_role` (the name of the graph's warm role):
- pdscaler-overview.json, the operator's view of one serving graph: demand against what was forecast
  for it, the prefill queue and TTFT, KV pressure and ITL, replicas per role, warm capacity,
  GPUs and GPU-hours, the decisions and their reasons, the calibrated headroom (when enabled), a
  strip of scaler health (healthy, source up, data and decision age, data problems, failed decisions);
- pdscaler-internals.json, the scaler's own health: metrics source, data and decision age, loop
  durations and time per stage, health per process, failed decisions, gRPC traffic and latency,
  errors, config reloads.

Dynamo's series are selected with dynamo_namespace="$namespace-$graph" (Dynamo's default label, the
one pdscaler reads unless a graph's `labels` say otherwise); pdscaler's with graph="$graph".
Metric names come from scaler/metrics.py (pdscaler_*) and scaler/signals.py (Dynamo's defaults);
tests/test_dashboards.py checks every name against what the scaler and the emulator export.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from scaler.config import HeadroomConfig

OUT_DIR = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
DYN = 'dynamo_namespace="$namespace-$graph"'  # Dynamo's series of the selected graph
G = 'graph="$graph"'  # pdscaler's series of the selected graph
TAGS = ["pdscaler", "dynamo", "autoscaling"]

# Queries that can legitimately return nothing on a healthy system, and why (dashboards/queries.py
# leaves them out unless asked for). Keyed by expression; filled as the dashboards are built.
OPTIONAL: dict[str, str] = {}


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    needs: str | None = None  # a reason the query may be empty (no cluster reads, no gRPC traffic, ...)


def _target(q: Q, ref: str) -> pb.Dataquery:
    t = pb.Dataquery().expr(q.expr).ref_id(ref).datasource(DS)
    if q.legend:
        t = t.legend_format(q.legend)
    t = t.instant() if q.instant else t.range()
    if q.table:
        t = t.format(PromQueryFormat.TABLE)
    if q.needs:
        OPTIONAL[q.expr] = q.needs
    return t


def _with_targets(panel, queries: list[Q]):
    for i, q in enumerate(queries):
        panel = panel.with_target(_target(q, chr(ord("A") + i)))
    return panel


def _ts(title: str, desc: str, queries: list[Q], unit: str = "short", w: int = 12, h: int = 8,
        stack: bool = False, minimum: float | None = 0) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
         .line_width(1).fill_opacity(10 if not stack else 60).show_points(cm.VisibilityMode.NEVER)
         .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                 .placement(cm.LegendPlacement.BOTTOM))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE)))
    if minimum is not None:
        p = p.min(minimum)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    return _with_targets(p, queries)


def _stat(title: str, desc: str, queries: list[Q], unit: str = "short", w: int = 6, h: int = 5,
          steps: list[tuple[float | None, str]] | None = None, mappings: list | None = None) -> stat.Panel:
    p = (stat.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
         .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if steps:
        p = p.thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
                         .steps([dm.Threshold(value=v, color=c) for v, c in steps]))
    if mappings:
        p = p.mappings(mappings)
    return _with_targets(p, queries)


def _timeline(title: str, desc: str, queries: list[Q], mappings: list, w: int = 12, h: int = 8
              ) -> statetimeline.Panel:
    p = (statetimeline.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
         .mappings(mappings).fill_opacity(80).line_width(0).show_value(cm.VisibilityMode.NEVER)
         .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                 .placement(cm.LegendPlacement.BOTTOM)))
    return _with_targets(p, queries)


def _table(title: str, desc: str, queries: list[Q], hide: list[str], w: int = 12, h: int = 8) -> table.Panel:
    p = (table.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
         .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
         .with_transformation(dm.DataTransformerConfig(
             id_val="organize", options={"excludeByName": {name: True for name in hide}})))
    return _with_targets(p, queries)


def _value_map(options: dict[str, tuple[str, str]]) -> dm.ValueMap:
    return dm.ValueMap(options={k: dm.ValueMappingResult(text=t, color=c, index=i)
                                for i, (k, (t, c)) in enumerate(options.items())})


def _slo_line(name: str) -> list[dm.DynamicConfigValue]:
    """Style of an SLO series: a red dashed line without fill."""
    return [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
            dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]


def _row(title: str) -> db.Row:
    return db.Row(title).collapsed(False)


# ---- variables ------------------------------------------------------------------------------

def _variables() -> list:
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        db.QueryVariable("namespace").label("Namespace").datasource(DS)
        .query("label_values(pdscaler_graph_info, namespace)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .description("Kubernetes namespace of the serving graph (pdscaler_graph_info)"),
        db.QueryVariable("graph").label("Graph").datasource(DS)
        .query('label_values(pdscaler_graph_info{namespace=~"$namespace"}, graph)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .description("pdscaler graph (a DynamoGraphDeployment); Dynamo series carry dynamo_namespace=<namespace>-<graph>"),
        db.CustomVariable("horizon").label("Forecast horizon (s)").values("60,300,600")
        .current(dm.VariableOption(selected=True, text="300", value="300"))
        .description("Forecast horizon drawn on the demand panels; the forecast is shifted by it so that it "
                     "lines up with the demand it predicted"),
        db.TextBoxVariable("ttft_slo").label("TTFT SLO (s)").default_value("0.5")
        .current(dm.VariableOption(selected=True, text="0.5", value="0.5"))
        .description("The graph's slo.ttft_s (pdscaler's default: 0.5 s)"),
        db.TextBoxVariable("itl_slo").label("ITL SLO (s)").default_value("0.03")
        .current(dm.VariableOption(selected=True, text="0.03", value="0.03"))
        .description("The graph's slo.itl_s (pdscaler's default: 0.03 s)"),
        db.TextBoxVariable("warm_role").label("Warm role").default_value("warm")
        .current(dm.VariableOption(selected=True, text="warm", value="warm"))
        .description("Name of the graph's role of kind warm (GPU placeholder pods)"),
    ]


def _dashboard(uid: str, title: str, desc: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(desc).tags(TAGS).editable().refresh("30s")
            .time("now-3h", "now").timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .variables(_variables()))


def _hist_q(metric: str, q: float, by: str = "le", sel: str = DYN) -> str:
    m = f"{metric}_bucket{{{sel}}}" if sel else f"{metric}_bucket"
    return f"histogram_quantile({q:g}, sum by ({by}) (rate({m}[$__rate_interval])))"


# ---- panels shared by both dashboards ------------------------------------------------------------

def _none_if_empty(expr: str, graph_scoped: bool = True) -> str:
    """`expr`, else 0 while the scaler is exporting (honest: a counter or family that was never
    incremented has no series)."""
    alive = f"sum(0 * pdscaler_graph_info{{{G}}})" if graph_scoped else "sum(0 * pdscaler_polls_total)"
    return f"{expr} or on() {alive}"


def _health_strip() -> list:
    return [
        _stat("Scaler healthy", "1 while the scaler's decision loop completes its polls and its first answers "
              "are ready (pdscaler_healthy, per serving process): the same verdict as /healthz, the readiness "
              "probe, and gRPC health. 0 past stuck_after without a completed poll, or while the decision "
              "process restarts; KEDA then keeps the last answers. The minimum over the scaler's replicas.",
              [Q("min(pdscaler_healthy)", "healthy")], w=4,
              steps=[(None, "red"), (1, "green")],
              mappings=[_value_map({"0": ("unhealthy", "red"), "1": ("healthy", "green")})]),
        _stat("Metrics source up", "1 when the scaler's last poll of its metrics source (Prometheus or the "
              "scraped /metrics) succeeded (pdscaler_source_up, per scaler process).",
              [Q("min(pdscaler_source_up)", "source up")], w=4,
              steps=[(None, "red"), (1, "green")],
              mappings=[_value_map({"0": ("down", "red"), "1": ("up", "green")})]),
        _stat("Data age", "Age of the observation the latest decision used (pdscaler_data_age_seconds). "
              "Past the config's stale_after the roles are held: never scaled down on stale data.",
              [Q(f"max(pdscaler_data_age_seconds{{{G}}})", "data age")], unit="s", w=4,
              steps=[(None, "green"), (60, "orange"), (90, "red")]),
        _stat("Decision age", "Time since the graph's latest decision (pdscaler_decision_age_seconds); "
              "grows past the poll interval when the decision loop is stuck.",
              [Q(f"max(pdscaler_decision_age_seconds{{{G}}})", "decision age")], unit="s", w=4,
              steps=[(None, "green"), (60, "orange"), (120, "red")]),
        _stat("Data problems", "Problems with the latest data: values dropped as absurd, source errors "
              "(pdscaler_data_problems). `pdscaler explain` lists them.",
              [Q(f"max(pdscaler_data_problems{{{G}}})", "problems")], w=4,
              steps=[(None, "green"), (1, "orange")]),
        _stat("Failed decisions", "Polls whose decision for this graph raised an error, since each scaler process "
              "started (pdscaler_decide_errors_total, summed over the scaler's replicas): the graph keeps its "
              "last decision, the other graphs are decided as usual, and the scaler logs the traceback. 0 = "
              "none while the scaler exports this graph.",
              [Q(_none_if_empty(f"sum(pdscaler_decide_errors_total{{{G}}})"), "failed decisions")], w=4,
              steps=[(None, "green"), (1, "red")]),
    ]


# ---- the operator's view -------------------------------------------------------------------------

def _demand_panel(series: str, label: str) -> timeseries.Panel:
    fc = f'pdscaler_forecast{{{G}, series="{series}", horizon="$horizon"'
    return (_ts(
        f"{label} demand vs forecast",
        f"Observed {label.lower()} demand (pdscaler_observed, signal {series}: tokens/s arriving at the "
        f"frontend, as pdscaler read it) against the p50-p90 band pdscaler forecast $horizon s earlier for "
        f"this moment (pdscaler_forecast at horizon $horizon, shifted by `offset ${{horizon}}s`). Demand "
        f"above the band was under-forecast; the p90 is what the roles are sized on by default.",
        [Q(f'pdscaler_observed{{{G}, role="", signal="{series}"}}', "observed"),
         Q(f'{fc}, quantile="0.5"}} offset ${{horizon}}s', "forecast p50"),
         Q(f'{fc}, quantile="0.9"}} offset ${{horizon}}s', "forecast p90")],
        unit="short")
        .override_by_name("forecast p90", [dm.DynamicConfigValue(id_val="custom.fillBelowTo", value="forecast p50"),
                                           dm.DynamicConfigValue(id_val="custom.lineStyle",
                                                                 value={"fill": "dash", "dash": [4, 4]})])
        .override_by_name("forecast p50", [dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                                           dm.DynamicConfigValue(id_val="custom.lineStyle",
                                                                 value={"fill": "dash", "dash": [4, 4]})])
        .override_by_name("observed", [dm.DynamicConfigValue(id_val="custom.lineWidth", value=2),
                                       dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]))


# The headroom panels follow the config's default: on by default, their queries must return data (the
# e2e runs on the defaults); off by default, they are optional and say so. A changed default changes
# the generated JSON (and `--check` fails until it is regenerated).
HEADROOM_ON_BY_DEFAULT = bool(HeadroomConfig.model_fields["enabled"].default)
HEADROOM_NEEDS = None if HEADROOM_ON_BY_DEFAULT else (
    "the calibrated headroom (forecast.headroom.enabled: true; off by default, and then no headroom "
    "figure is exported)")
HEADROOM_OFF = (
    ("The calibrated headroom is on by default (forecast.headroom.enabled); with it off," if HEADROOM_ON_BY_DEFAULT
     else "Only with forecast.headroom.enabled: true. It is off by default; then")
    + " the roles are sized on forecast.quantile at each role's target_utilization, pdscaler exports no "
    "headroom figure and this panel shows No data.")


def _headroom_panels() -> list:
    """The calibrated headroom (scaler/policy/headroom.py): its level per role now and over time, with
    the settled windows it was learned from (decision figures headroom, headroom_windows)."""
    fig = f'pdscaler_decision_figure{{{G}, figure="%s"}}'
    level, windows = fig % "headroom", fig % "headroom_windows"
    return [
        _ts("Calibrated headroom per role",
            "The multiple of the median forecast's need each role is sized on (pdscaler_decision_figure "
            "figure=headroom, left axis): the slo.attainment quantile of realised peak / plan over the settled "
            "windows of the last headroom.window, bounded to [headroom.min, headroom.max]; before any evidence "
            "the prior (headroom.prior, 2x), relaxing towards the evidence as windows settle. Why it moved: "
            "the settled windows (figure=headroom_windows, right axis, dashed): a step up with no new window "
            "is a burst's sample leaving or entering the quantile; a climbing count with a falling level is "
            "the prior losing weight. The attainment feedback's gain, which multiplies it further after "
            "polls that broke the latency SLO, is not exported as a series: `pdscaler explain <graph>` gives "
            "both in words (sized on p50 x headroom ...; attainment gain ...). " + HEADROOM_OFF,
            [Q(level, "{{role}} headroom", needs=HEADROOM_NEEDS),
             Q(windows, "{{role}} settled windows", needs=HEADROOM_NEEDS)], unit="suffix:x", w=16, minimum=None)
        .override_by_regexp(".* settled windows", [
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            dm.DynamicConfigValue(id_val="unit", value="short"),
            dm.DynamicConfigValue(id_val="min", value=0),
            dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [4, 4]})]),
        _stat("Headroom now",
              "The latest decision's headroom per role (the multiple of the median forecast's need it sizes on) "
              "and the settled windows it was learned from (pdscaler_decision_figure figure=headroom, "
              "headroom_windows). 0 windows = still the prior. " + HEADROOM_OFF,
              [Q(level, "{{role}}", needs=HEADROOM_NEEDS),
               Q(windows, "{{role}} windows", needs=HEADROOM_NEEDS)], unit="suffix:x", w=8, h=8)
        .decimals(2)
        .override_by_regexp(".* windows", [dm.DynamicConfigValue(id_val="unit", value="short"),
                                           dm.DynamicConfigValue(id_val="decimals", value=0)])
        .graph_mode(cm.BigValueGraphMode.NONE),
    ]


def overview() -> db.Dashboard:
    d = _dashboard("pdscaler-overview", "pdscaler / overview",
                   "One serving graph as pdscaler sees and sizes it: demand and forecast, SLOs, replicas, "
                   "GPUs, decisions. Generated by dashboards/build.py - edit the code, not this JSON.")

    d = d.with_row(_row("Demand and forecast"))
    d = d.with_panel(_demand_panel("prefill_tokens_per_s", "Prefill"))
    d = d.with_panel(_demand_panel("decode_tokens_per_s", "Decode"))

    d = d.with_row(_row("Prefill: queue and TTFT"))
    d = d.with_panel(
        _ts("Prefill queue",
            "Requests waiting for their first token at the frontend (dynamo_frontend_queued_requests, left "
            "axis) and the prefill tokens assigned to prefill workers and not yet prefilled "
            "(dynamo_frontend_worker_active_prefill_tokens{worker_type=\"prefill\"}, right axis). A growing "
            "backlog is what pdscaler's prefill rule drains within backlog_drain and its safety net reacts to.",
            [Q(f"sum(dynamo_frontend_queued_requests{{{DYN}}})", "queued requests"),
             Q(f'sum(dynamo_frontend_worker_active_prefill_tokens{{{DYN}, worker_type="prefill"}})',
               "prefill tokens at workers")])
        .override_by_name("prefill tokens at workers",
                          [dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                           dm.DynamicConfigValue(id_val="unit", value="short")]))
    d = d.with_panel(
        _ts("TTFT p99 vs SLO",
            "Time to first token at the frontend: p99 and p50 from "
            "dynamo_frontend_time_to_first_token_seconds (histogram_quantile over $__rate_interval, as "
            "coarse as Dynamo's buckets), against the TTFT SLO (variable ttft_slo: set it to the graph's "
            "slo.ttft_s). NaN/gaps: no request got its first token in the window.",
            [Q(_hist_q("dynamo_frontend_time_to_first_token_seconds", 0.99), "TTFT p99"),
             Q(_hist_q("dynamo_frontend_time_to_first_token_seconds", 0.5), "TTFT p50"),
             Q("vector($ttft_slo)", "SLO")], unit="s")
        .override_by_name("SLO", _slo_line("SLO")))

    d = d.with_row(_row("Decode: KV pressure and ITL"))
    d = d.with_panel(
        _ts("KV-cache pressure",
            "KV-cache usage per worker component: mean of dynamo_component_kvstats_gpu_cache_usage_percent "
            "(a 0..1 share despite its name) and active / total KV blocks "
            "(dynamo_component_kvstats_active_blocks / _total_blocks). The decode role's safety net steps "
            "up at kv_usage (default 0.95, the dashed threshold).",
            [Q(f"avg by (dynamo_component) (dynamo_component_kvstats_gpu_cache_usage_percent{{{DYN}}})",
               "{{dynamo_component}} usage"),
             Q(f"sum by (dynamo_component) (dynamo_component_kvstats_active_blocks{{{DYN}}}) / "
               f"sum by (dynamo_component) (dynamo_component_kvstats_total_blocks{{{DYN}}})",
               "{{dynamo_component}} active/total blocks")], unit="percentunit")
        .max(1).thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
                           .steps([dm.Threshold(value=None, color="green"), dm.Threshold(value=0.95, color="red")]))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)))
    d = d.with_panel(
        _ts("ITL p99 vs SLO",
            "Inter-token latency at the frontend: p99 and p50 from dynamo_frontend_inter_token_latency_seconds "
            "(histogram_quantile over $__rate_interval) against the ITL SLO (variable itl_slo: the graph's "
            "slo.itl_s). Observed once per generated token; a wait for decode room counts as one long gap.",
            [Q(_hist_q("dynamo_frontend_inter_token_latency_seconds", 0.99), "ITL p99"),
             Q(_hist_q("dynamo_frontend_inter_token_latency_seconds", 0.5), "ITL p50"),
             Q("vector($itl_slo)", "SLO")], unit="s")
        .override_by_name("SLO", _slo_line("SLO")))

    d = d.with_row(_row("Replicas and GPUs"))
    d = d.with_panel(
        _ts("Replicas per role: target / current / ready",
            "Per role: the target pdscaler answers KEDA with (pdscaler_target_replicas), the replicas as they "
            "stand (pdscaler_current_replicas: the scale subresource's spec.replicas, only with cluster reads "
            "on) and the ready ones (pdscaler_ready_replicas: the cluster's count, else the workers that "
            "report to Dynamo's router). Target above ready for long = replicas not starting (quota, nodes).",
            [Q(f"pdscaler_target_replicas{{{G}}}", "{{role}} target"),
             Q(f"pdscaler_current_replicas{{{G}}}", "{{role}} current",
               needs="cluster reads (kubernetes.enabled): spec.replicas of the scale targets"),
             Q(f"pdscaler_ready_replicas{{{G}}}", "{{role}} ready")], w=12))
    d = d.with_panel(
        _ts("Warm capacity",
            "The warm role (variable warm_role): GPU placeholder pods kept so that forecast scale-ups land on "
            "provisioned nodes. Target pods (pdscaler_target_replicas), the GPUs the forecast needs within the "
            "cold start-up time plus the decision window, and the GPUs the serving roles' targets already hold "
            "(pdscaler_decision_figure forecast_gpus / serving_gpus; absent while the role is held).",
            [Q(f'pdscaler_target_replicas{{{G}, role="$warm_role"}}', "placeholder pods (target)"),
             Q(f'max(pdscaler_decision_figure{{{G}, role="$warm_role", figure="forecast_gpus"}})',
               "GPUs the forecast needs"),
             Q(f'max(pdscaler_decision_figure{{{G}, role="$warm_role", figure="serving_gpus"}})',
               "GPUs held by serving targets")], w=12))
    d = d.with_panel(
        _ts("Target GPUs by role",
            "GPUs the targets hold: target replicas x gpus_per_replica (pdscaler_target_gpus), stacked by role.",
            [Q(f"sum by (role) (pdscaler_target_gpus{{{G}}})", "{{role}}")], stack=True, w=12))
    d = d.with_panel(
        _stat("GPU-hours over the range (targets)",
              "GPU-hours the targets held over the dashboard's time range: pdscaler_target_gpus sampled once a "
              "minute (a subquery [$__range:1m]), summed, divided by 60 - each sample counts as one minute "
              "of that many GPUs. Independent of the scrape interval; a graph that existed for part of the "
              "range counts only that part. Targets, not billed GPUs: replicas starting or draining differ.",
              [Q(f"sum by (role) (sum_over_time((sum by (role) (pdscaler_target_gpus{{{G}}}))[$__range:1m])) / 60",
                 "{{role}}", instant=True),
               Q(f"sum(sum_over_time((sum(pdscaler_target_gpus{{{G}}}))[$__range:1m])) / 60", "all roles",
                 instant=True)],
              w=12, h=8)
        .graph_mode(cm.BigValueGraphMode.NONE).decimals(1))

    d = d.with_row(_row("Decisions"))
    d = d.with_panel(
        _timeline("Binding rule per role",
                  "Which rule set each role's target, over time (pdscaler_decision_rule{rule}: 1 for the rule "
                  "that bound): e.g. predictive, reactive, safety-net, stabilisation, max-step, "
                  "lead-time floor, min/max bounds, no-data/stale-data holds. `pdscaler explain <graph>` "
                  "gives the full reason of the latest decision.",
                  [Q(f"pdscaler_decision_rule{{{G}}} == 1", "{{role}}: {{rule}}")],
                  [_value_map({"1": ("binding", "blue")})], w=12))
    d = d.with_panel(
        _table("Decisions now",
               "The latest decision per role: the binding rule, the target, whether it is held for want of "
               "usable data (pdscaler_decision_rule, pdscaler_target_replicas, pdscaler_decision_held).",
               [Q(f"pdscaler_decision_rule{{{G}}} == 1", instant=True, table=True),
                Q(f"pdscaler_target_replicas{{{G}}}", instant=True, table=True),
                Q(f"pdscaler_decision_held{{{G}}}", instant=True, table=True)],
               hide=["Time", "__name__", "job", "instance", "Value #A", "endpoint", "pod", "service",
                     "container", "namespace"], w=12)
        .override_by_name("Value #B", [dm.DynamicConfigValue(id_val="displayName", value="target")])
        .override_by_name("Value #C", [dm.DynamicConfigValue(id_val="displayName", value="held"),
                                       dm.DynamicConfigValue(id_val="mappings", value=[
                                           _value_map({"0": ("no", "green"), "1": ("HELD", "red")})])]))
    d = d.with_panel(
        _timeline("Held roles",
                  "Roles held for want of usable data (pdscaler_decision_held: rules no-data, stale-data, "
                  "missing-data): the last target is kept and never lowered until data returns.",
                  [Q(f"pdscaler_decision_held{{{G}}}", "{{role}}")],
                  [_value_map({"0": ("deciding", "green"), "1": ("held", "red")})], w=8))
    d = d.with_panel(
        _ts("Need: reactive vs predictive",
            "The figures behind each target (pdscaler_decision_figure): replicas the observed demand needs "
            "(reactive_replicas), the forecast over [now + lead time, + decision window] needs "
            "(predictive_replicas), and the cap on what a forecast may ask for (forecast_cap_replicas).",
            [Q(f'pdscaler_decision_figure{{{G}, figure=~"reactive_replicas|predictive_replicas|forecast_cap_replicas"}}',
               "{{role}} {{figure}}")], w=10))
    d = d.with_panel(
        _stat("Ownership conflicts",
              "Other autoscalers (HPAs, ScaledObjects, Dynamo's Planner) found on a role pdscaler scales "
              "(pdscaler_ownership_conflicts, one series per role and owner; needs cluster reads). 0 = none "
              "found while the scaler exports this graph.",
              [Q(_none_if_empty(f"sum by (role, owner_kind, owner) (pdscaler_ownership_conflicts{{{G}}})"),
                 "{{role}} <- {{owner_kind}}/{{owner}}")],
              w=6, h=8, steps=[(None, "green"), (1, "red")]))
    for p in _headroom_panels():
        d = d.with_panel(p)

    d = d.with_row(_row("Scaler health"))
    for p in _health_strip():
        d = d.with_panel(p)
    return d


# ---- the scaler's health ---------------------------------------------------------------------------

def internals() -> db.Dashboard:
    d = _dashboard("pdscaler-internals", "pdscaler / internals",
                   "pdscaler's own health: metrics source, data and decision age, loop durations, gRPC "
                   "(KEDA) traffic and latency, errors. Process-wide series are not per graph. "
                   "Generated by dashboards/build.py - edit the code, not this JSON.")
    d = d.with_row(_row("Now"))
    for p in _health_strip():
        d = d.with_panel(p)

    d = d.with_row(_row("Metrics source and data"))
    d = d.with_panel(
        _timeline("Metrics source up",
                  "pdscaler_source_up per scaler process: whether the last poll of the metrics source "
                  "succeeded. While it is down, decisions age and roles are eventually held.",
                  [Q("pdscaler_source_up", "{{instance}}")],
                  [_value_map({"0": ("down", "red"), "1": ("up", "green")})], w=12))
    d = d.with_panel(
        _ts("Source errors",
            "Failed polls of the metrics source per second, by error (pdscaler_source_errors_total); 0 while "
            "none has happened since the scaler started.",
            [Q(_none_if_empty("sum by (error) (rate(pdscaler_source_errors_total[$__rate_interval]))", False),
               "{{error}}")], unit="ops", w=12))
    d = d.with_panel(
        _ts("Data and decision age",
            "Age of the data the latest decision used (pdscaler_data_age_seconds), of the decision itself "
            "(pdscaler_decision_age_seconds) and of the last cluster reading "
            "(pdscaler_cluster_reading_age_seconds, only with cluster reads). A saw-tooth up to the poll "
            "interval is normal.",
            [Q(f"pdscaler_data_age_seconds{{{G}}}", "data age"),
             Q(f"pdscaler_decision_age_seconds{{{G}}}", "decision age"),
             Q(f"pdscaler_cluster_reading_age_seconds{{{G}}}", "cluster reading age",
               needs="cluster reads (kubernetes.enabled)")], unit="s", w=12))
    d = d.with_panel(
        _ts("Data problems and cluster read errors",
            "Problems with the latest data (pdscaler_data_problems: values dropped as absurd, source errors) "
            "and failed cluster reads per second (pdscaler_cluster_read_errors_total; 0 while none happened).",
            [Q(f"pdscaler_data_problems{{{G}}}", "data problems"),
             Q(_none_if_empty(f"sum(rate(pdscaler_cluster_read_errors_total{{{G}}}[$__rate_interval]))"),
               "cluster read errors/s")], w=12))

    d = d.with_row(_row("Decision loop"))
    d = d.with_panel(
        _ts("Loop durations p99",
            "p99 over $__rate_interval of one poll (collect + observe + decide, pdscaler_poll_duration_seconds), "
            "of reading the metrics source (pdscaler_source_collect_duration_seconds) and of deciding every "
            "graph (pdscaler_decide_duration_seconds). Compare with the poll interval.",
            [Q(_hist_q("pdscaler_poll_duration_seconds", 0.99, sel=""), "poll p99"),
             Q(_hist_q("pdscaler_source_collect_duration_seconds", 0.99, sel=""), "collect p99"),
             Q(_hist_q("pdscaler_decide_duration_seconds", 0.99, sel=""), "decide p99")], unit="s", w=12))
    d = d.with_panel(
        _ts("Polls per second",
            "Decision-loop polls per second (pdscaler_polls_total): 1 / poll_interval when the loop keeps up.",
            [Q("sum(rate(pdscaler_polls_total[$__rate_interval]))", "polls/s")], unit="ops", w=6))
    d = d.with_panel(
        _ts("Model fit duration (warm start)",
            "Mean time to fit a graph's forecasts on history at start-up (pdscaler_model_fit_duration_seconds); "
            "only when warm_start fetched history from Prometheus.",
            [Q(f"sum(pdscaler_model_fit_duration_seconds_sum{{{G}}}) / sum(pdscaler_model_fit_duration_seconds_count{{{G}}})",
               "mean fit", needs="a warm start (forecast.warm_start > 0 with a Prometheus source)")],
            unit="s", w=6))

    d = d.with_panel(
        _ts("Poll time by stage (mean)",
            "Mean wall time of one poll in each stage of the decision loop over $__rate_interval "
            "(pdscaler_stage_seconds, stacked): collect (read the metrics source), observe (clean the data, feed "
            "the forecasters), forecast, decide (capacity, rules), publish (to the answers) and send (the "
            "decisions and the decision process's /metrics page to the serving process). The stack's top is "
            "about one poll: compare with the poll interval. The stage that grows with the graphs is the one "
            "to shard for.",
            [Q("sum by (stage) (rate(pdscaler_stage_seconds_sum[$__rate_interval])) / "
               "sum by (stage) (rate(pdscaler_stage_seconds_count[$__rate_interval]))", "{{stage}}")],
            unit="s", w=12, stack=True))
    d = d.with_panel(
        _ts("Decision-loop CPU by stage",
            "CPU seconds per second (cores) the decision loop's threads spend in each stage "
            "(pdscaler_stage_cpu_seconds_total, stacked). Wall time well above CPU time in a stage is "
            "waiting: on the metrics source in collect, on the other process in send.",
            [Q("sum by (stage) (rate(pdscaler_stage_cpu_seconds_total[$__rate_interval]))", "{{stage}}")],
            unit="short", w=12, stack=True))
    d = d.with_panel(
        _timeline("Scaler health per process",
                  "pdscaler_healthy per serving process (instance): healthy while its decision loop completes "
                  "polls and its first answers are ready, as /healthz (the readiness probe) and gRPC health "
                  "report it. Unhealthy past stuck_after without a completed poll or while the decision process "
                  "restarts; KEDA keeps the last answers meanwhile.",
                  [Q("pdscaler_healthy", "{{instance}}")],
                  [_value_map({"0": ("unhealthy", "red"), "1": ("healthy", "green")})], w=12))
    d = d.with_panel(
        _ts("Failed decisions (count since start)",
            "Polls whose decision for this graph raised an error, counted since each scaler process started "
            "(pdscaler_decide_errors_total, per instance): a step up is a failed decision; the graph kept "
            "its last one and the log has the traceback. The count itself, not its rate, so that the first "
            "failure shows too (the series appears with it). 0 while none happened.",
            [Q(f"sum by (instance) (pdscaler_decide_errors_total{{{G}}}) "
               f"or on(instance) sum by (instance) (0 * pdscaler_graph_info{{{G}}})", "{{instance}}")], w=12))

    d = d.with_row(_row("gRPC (KEDA external scaler)"))
    d = d.with_panel(
        _ts("gRPC requests by method and code",
            "Requests per second to the external-scaler gRPC service by method and status code "
            "(pdscaler_grpc_requests_total; streams counted when opened, code STREAM). KEDA calls "
            "GetMetrics for every ScaledObject each pollingInterval. 0 while none has been served.",
            [Q(_none_if_empty("sum by (method, code) (rate(pdscaler_grpc_requests_total[$__rate_interval]))", False),
               "{{method}} {{code}}")], unit="reqps", w=8))
    d = d.with_panel(
        _ts("gRPC p99 latency by method",
            "p99 latency of unary gRPC requests by method over $__rate_interval "
            "(pdscaler_grpc_request_duration_seconds). Answers are read from memory: milliseconds at most.",
            [Q(_hist_q("pdscaler_grpc_request_duration_seconds", 0.99, by="le, method", sel=""), "{{method}} p99",
               needs="gRPC traffic (KEDA asking) within the rate window")], unit="s", w=8))
    d = d.with_panel(
        _ts("gRPC errors",
            "gRPC requests per second that did not end OK (pdscaler_grpc_requests_total{code!~\"OK|STREAM\"}): "
            "NOT_FOUND = a ScaledObject naming an unknown graph or role, INVALID_ARGUMENT = bad metadata. "
            "0 while none happened.",
            [Q(_none_if_empty('sum by (method, code) (rate(pdscaler_grpc_requests_total{code!~"OK|STREAM"}'
                              '[$__rate_interval]))', False), "{{method}} {{code}}")], unit="reqps", w=8))

    d = d.with_row(_row("Configuration"))
    d = d.with_panel(
        _table("Graphs",
               "Every graph the scaler is configured with: Kubernetes namespace, DynamoGraphDeployment, mode "
               "(active, or advisory: computed and exported, KEDA kept at the current replicas), with each "
               "role's min/max replicas (pdscaler_graph_info, pdscaler_min_replicas, pdscaler_max_replicas).",
               [Q("pdscaler_graph_info", instant=True, table=True)],
               hide=["Time", "__name__", "job", "instance", "Value", "endpoint", "pod", "service", "container"],
               w=12))
    d = d.with_panel(
        _table("Role bounds",
               "Configured floor and ceiling of each role of the graph (pdscaler_min_replicas, "
               "pdscaler_max_replicas).",
               [Q(f"pdscaler_min_replicas{{{G}}}", instant=True, table=True),
                Q(f"pdscaler_max_replicas{{{G}}}", instant=True, table=True)],
               hide=["Time", "__name__", "job", "instance", "endpoint", "pod", "service", "container"], w=12)
        .override_by_name("Value #A", [dm.DynamicConfigValue(id_val="displayName", value="min")])
        .override_by_name("Value #B", [dm.DynamicConfigValue(id_val="displayName", value="max")]))
    d = d.with_panel(
        _ts("Config reloads by result (count since start)",
            "Reloads of the config file (on SIGHUP, and when a mounted ConfigMap's content changes), counted "
            "since the scaler started, by result (pdscaler_config_reloads_total): applied (the new config "
            "runs), unchanged, invalid (did not validate: the old config keeps running, the log has the "
            "path and value) and failed (valid but could not be applied, e.g. a source that cannot be built). "
            "Counts, not rates, so that the first reload shows; 'none yet' while there was none.",
            [Q('sum by (result) (pdscaler_config_reloads_total) or on() '
               'label_replace(sum(0 * pdscaler_healthy), "result", "none yet", "", "")', "{{result}}")], w=24)
        .override_by_regexp("invalid|failed", [
            dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})]))
    return d


# ---- output ------------------------------------------------------------------------------------

DASHBOARDS = {"pdscaler-overview.json": overview, "pdscaler-internals.json": internals}


def to_dict(builder: db.Dashboard) -> dict:
    """The dashboard as Grafana's JSON model, every panel (rows included) with its own id."""
    d = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for i, panel in enumerate(d.get("panels", []), start=1):
        panel["id"] = i
    for var in d.get("templating", {}).get("list", []):
        var.pop("id", None)  # the SDK's all-zero placeholder
    return d


def render(builder: db.Dashboard) -> str:
    return json.dumps(to_dict(builder), indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> the JSON the code generates."""
    OPTIONAL.clear()
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the generated one")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="directory of the JSON files")
    args = ap.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python -m dashboards.build`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
