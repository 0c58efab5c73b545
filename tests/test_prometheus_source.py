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


def _collect(prom, graphs, now=1_000_000.0, **src):
    cfg = ScalerConfig.model_validate({"source": {"kind": "prometheus", "url": prom.url, **src}, "graphs": graphs})
    source = PrometheusSource(cfg)
    try:
        return cfg, {o.graph: o for o in source.collect(now)}
    finally:
        source.close()


def test_a_graph_without_namespace_does_not_count_another_graphs_series():
    """`chat` (no namespace) matches <any namespace>-chat, namespaces with '-' included, but not
    x-support-chat: that is graph support-chat's, with a namespace (its exact value) or without one
    (.+-support-chat). Answered by the fake from the series whose labels the query's matchers select."""
    from tests.fake_prometheus import FakePrometheus

    prom = FakePrometheus()
    roles = {"p": {"kind": "prefill"}}
    prom.series = [({"dynamo_namespace": "prod-chat"}, 10.0), ({"dynamo_namespace": "team-a-chat"}, 5.0),
                   ({"dynamo_namespace": "x-support-chat"}, 1000.0), ({"dynamo_namespace": "prod-chatty"}, 300.0)]
    try:
        for support in ({"namespace": "x", "roles": roles}, {"roles": roles}):
            _, obs = _collect(prom, {"chat": {"roles": roles}, "support-chat": support})
            assert obs["chat"].errors == () and obs["support-chat"].errors == ()
            assert obs["chat"].signals["request_rate"] == 15.0  # prod-chat + team-a-chat
            assert obs["support-chat"].signals["request_rate"] == 1000.0
        q = by_name(source().queries("any"))[(None, "request_rate")]
        assert 'dynamo_namespace=~".+-any"' in q and "!~" not in q  # no other graph ends in -any
    finally:
        prom.close()


def test_duplicate_series_are_not_used_and_noted():
    """Two series where one is expected (a batched graph's label value twice, or a single graph's
    query): the value is not used (missing data) and the observation says why."""
    from scaler.engine import Engine
    from tests.fake_prometheus import FakePrometheus

    prom = FakePrometheus()
    prom.mode = "duplicate"
    roles = {"prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}
    graphs = {"batched": {"namespace": "ns", "roles": roles}, "alone": {"roles": roles}}
    try:
        cfg, obs = _collect(prom, graphs)
        for g in graphs:
            o = obs[g]
            assert "request_rate" not in o.signals and "kv_usage" not in o.roles["decode"]
            assert "request_rate: 2 series where 1 is expected: not used" in o.errors, o.errors
            assert "decode: kv_usage: 2 series where 1 is expected: not used" in o.errors, o.errors
        engine = Engine(cfg)
        engine.observe(obs["batched"])
        d = engine.decide(1_000_000.0, "batched")
        assert "request_rate: 2 series where 1 is expected: not used" in d.notes  # pdscaler_data_problems counts these
        assert {r.reason.rule for r in d.roles.values()} == {"missing-data"}
    finally:
        prom.close()


def test_samples_older_than_stale_after_are_dropped_as_stale_and_noted():
    from tests.fake_prometheus import FakePrometheus

    prom = FakePrometheus()
    roles = {"prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}
    graphs = {"batched": {"namespace": "ns", "roles": roles}, "alone": {"roles": roles}}
    try:
        prom.sample_age = 3600.0  # stale_after is 90 s
        _, obs = _collect(prom, graphs)
        for o in obs.values():
            assert o.signals == {} and all(not v for v in o.roles.values())
            assert "request_rate: sample is 3600s old (stale after 90s): not used" in o.errors, o.errors
            assert "prefill: prefill_queued_tokens: sample is 3600s old (stale after 90s): not used" in o.errors
        prom.sample_age = 30.0  # fresh enough
        _, obs = _collect(prom, graphs)
        assert all(o.errors == () and o.signals["request_rate"] == 100.0 for o in obs.values())
    finally:
        prom.close()
