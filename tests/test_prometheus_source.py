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
