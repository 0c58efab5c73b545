"""PromQL rendered from the signal table, with Dynamo's names, overrides and label selection."""

from scaler.config import ScalerConfig
from scaler.sources.prometheus import PrometheusSource


def source(**src):
    cfg = ScalerConfig.model_validate(
        {
            "source": {"kind": "prometheus", "url": "http://127.0.0.1:1", **src},
            "graphs": {
                "llm": {
                    "namespace": "prod",
                    "roles": {
                        "prefill": {"kind": "prefill"},
                        "decode": {"kind": "decode", "component": "VllmDecodeWorker"},
                    },
                },
                "any": {"roles": {"p": {"kind": "prefill"}}},
            },
        }
    )
    return PrometheusSource(cfg)


def by_name(queries):
    return {(role, s.name): q for (role, s), q in queries.items()}


def test_default_queries_use_dynamo_names_and_graph_selector():
    q = by_name(source().queries("llm"))
    assert q[(None, "request_rate")] == 'sum(rate(dynamo_frontend_requests_total{dynamo_namespace="prod-llm"}[60s]))'
    assert q[(None, "ttft_p99")] == (
        'histogram_quantile(0.99, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket'
        '{dynamo_namespace="prod-llm"}[60s])))'
    )
    assert q[(None, "isl_mean")].startswith("sum(rate(dynamo_frontend_input_sequence_tokens_sum{")
    assert q[("prefill", "prefill_queued_tokens")] == (
        'sum(dynamo_frontend_worker_active_prefill_tokens{dynamo_namespace="prod-llm",worker_type="prefill"})'
    )
    assert q[("decode", "kv_active_blocks")] == (
        'sum(dynamo_component_kvstats_active_blocks{dynamo_namespace="prod-llm",dynamo_component="VllmDecodeWorker"})'
    )
    assert ("prefill", "kv_active_blocks") not in q  # decode signals only for decode roles


def test_graph_without_namespace_matches_any_namespace_prefix():
    q = by_name(source().queries("any"))
    assert 'dynamo_namespace=~".+-any"' in q[(None, "request_rate")]


def test_renamed_metrics_window_and_whole_query_override():
    q = by_name(
        source(metric_names={"ttft": "my_ttft"}, rate_window="2m", queries={"request_rate": "vector(42)"}).queries("llm")
    )
    assert "my_ttft_bucket" in q[(None, "ttft_p99")] and "[120s]" in q[(None, "ttft_p99")]
    assert q[(None, "request_rate")] == "vector(42)"


def test_unreachable_prometheus_is_reported_once_and_fast():
    obs = source(timeout=0.5).collect_graph("llm", now=1000.0)
    assert obs.signals == {} and all(not v for v in obs.roles.values())
    assert any("prometheus unreachable" in e for e in obs.errors)
    assert len(obs.errors) == 2  # the first failure and the note; the remaining queries were skipped


def test_graphs_with_the_default_selector_are_read_in_batches():
    """Seventeen queries a poll for any number of default-labelled graphs, not seventeen per graph;
    graphs with their own labels, and overridden signals, are read one graph at a time."""
    from tests.fake_prometheus import FakePrometheus

    prom = FakePrometheus()
    roles = {"prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}
    graphs = {f"g{i}": {"namespace": "prod", "roles": roles} for i in range(30)}
    graphs["own"] = {"labels": {"team": "x", "model": "y"}, "roles": roles}
    try:
        cfg = ScalerConfig.model_validate({"source": {"kind": "prometheus", "url": prom.url}, "graphs": graphs})
        src = PrometheusSource(cfg)
        per_graph = len(src.queries("g0"))
        observations = {o.graph: o for o in src.collect(1000.0)}
        assert prom.queries == 2 * per_graph  # one batch for the 30 graphs, one graph alone
        batched = [q for q in prom.seen if "dynamo_namespace=~" in q]
        assert len(batched) == per_graph and all(" by (" in q and "prod-g29" in q for q in batched)
        for g in ("g0", "g17", "own"):
            o = observations[g]
            assert o.errors == () and o.signals["request_rate"] == 100.0 and o.signals["ttft_p99"] == 0.2
            assert o.roles["decode"]["kv_usage"] == 0.5 and o.roles["prefill"]["ready_workers"] == 2.0
        prom.seen.clear()
        cfg2 = cfg.model_copy(update={"source": cfg.source.model_copy(update={"queries": {"request_rate": "vector(7)"}})})
        observations = {o.graph: o for o in PrometheusSource(cfg2).collect(1000.0)}
        assert prom.seen.count("vector(7)") == len(graphs)  # the override, once per graph
        assert observations["g3"].signals["request_rate"] == 0.0  # the fake's answer to vector(7)
        assert observations["g3"].signals["ttft_p99"] == 0.2  # the rest still batched
    finally:
        prom.close()
