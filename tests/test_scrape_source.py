"""The scrape source against a real /metrics HTTP endpoint, with Prometheus' rate and quantile semantics."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scaler.config import ScalerConfig
from scaler.sources.scrape import ScrapeSource, histogram_quantile


def test_histogram_quantile_interpolates_like_prometheus():
    b = {"0.1": 10, "0.5": 50, "1.0": 90, "+Inf": 100}
    assert histogram_quantile(0.5, b) == pytest.approx(0.5)
    assert histogram_quantile(0.9, b) == pytest.approx(1.0)
    assert histogram_quantile(0.05, b) == pytest.approx(0.05)
    assert histogram_quantile(0.99, b) == pytest.approx(1.0)  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {"1.0": 0, "+Inf": 0}) != histogram_quantile(0.5, {"1.0": 0, "+Inf": 0})  # NaN


def serve_metrics(body):
    """A /metrics endpoint on loopback answering `body()` (bytes) at every GET; (server, url)."""

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/metrics"


def stop(server) -> None:
    server.shutdown()
    server.server_close()


class Exporter:
    """A real HTTP /metrics endpoint serving a prometheus_client registry with Dynamo's names."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        lbl = ["model", "dynamo_namespace"]
        self.requests = Counter("dynamo_frontend_requests", "", lbl, registry=r)
        self.isl = Histogram("dynamo_frontend_input_sequence_tokens", "", lbl, buckets=(100, 1000, 10000), registry=r)
        self.ttft = Histogram("dynamo_frontend_time_to_first_token_seconds", "", lbl, buckets=(0.1, 0.5, 1, 5), registry=r)
        self.prefill_tokens = Gauge("dynamo_frontend_worker_active_prefill_tokens", "", ["worker_id", "worker_type"], registry=r)
        self.decode_blocks = Gauge("dynamo_frontend_worker_active_decode_blocks", "", ["worker_id", "worker_type"], registry=r)
        self.kv_active = Gauge("dynamo_component_kvstats_active_blocks", "", ["dynamo_component", "worker_id"], registry=r)
        self.server, self.url = serve_metrics(lambda: generate_latest(self.registry))

    def close(self):
        stop(self.server)


@pytest.fixture
def exporter():
    e = Exporter()
    yield e
    e.close()


def scrape_config(urls):
    return ScalerConfig.model_validate(
        {
            "source": {"kind": "scrape", "targets": {"g": urls}, "rate_window": 60},
            "graphs": {
                "g": {
                    "roles": {
                        "prefill": {"kind": "prefill"},
                        "decode": {"kind": "decode", "component": "DecodeWorker"},
                    }
                }
            },
        }
    )


def test_rates_means_quantiles_and_role_filters(exporter):
    src = ScrapeSource(scrape_config([exporter.url]))
    labels = dict(model="m", dynamo_namespace="ns-g")
    exporter.requests.labels(**labels).inc(0)
    exporter.isl.labels(**labels)
    exporter.ttft.labels(**labels)
    exporter.prefill_tokens.labels("0", "prefill").set(5000)
    exporter.prefill_tokens.labels("1", "prefill").set(3000)
    exporter.decode_blocks.labels("2", "decode").set(10)
    exporter.kv_active.labels("DecodeWorker", "2").set(700)
    exporter.kv_active.labels("PrefillWorker", "0").set(99)  # another role's workers: not counted
    first = src.collect_graph("g", now=100.0)
    assert "request_rate" not in first.signals  # a rate needs two scrapes
    assert first.roles["prefill"]["prefill_queued_tokens"] == 8000
    assert first.roles["prefill"]["ready_workers"] == 2
    assert first.roles["decode"]["ready_workers"] == 1
    assert first.roles["decode"]["kv_active_blocks"] == 700

    for _ in range(200):
        exporter.requests.labels(**labels).inc()
        exporter.isl.labels(**labels).observe(500)
    for i in range(100):
        exporter.ttft.labels(**labels).observe(0.3 if i < 98 else 3.0)
    obs = src.collect_graph("g", now=110.0)
    assert obs.signals["request_rate"] == pytest.approx(20.0)  # 200 in 10 s
    assert obs.signals["isl_mean"] == pytest.approx(500)
    # 2 of 100 above 1 s: p99 lies in the (1, 5] bucket: 1 + 4 * (99 - 98) / 2 = 3.
    assert obs.signals["ttft_p99"] == pytest.approx(3.0)


def test_counter_reset_is_not_a_negative_rate(exporter):
    src = ScrapeSource(scrape_config([exporter.url]))
    c = exporter.requests.labels(model="m", dynamo_namespace="x")
    c.inc(1000)
    src.collect_graph("g", now=0.0)
    exporter.registry.unregister(exporter.requests)  # the process restarted: the counter starts again
    exporter.requests = Counter("dynamo_frontend_requests", "", ["model", "dynamo_namespace"], registry=exporter.registry)
    exporter.requests.labels(model="m", dynamo_namespace="x").inc(30)
    obs = src.collect_graph("g", now=10.0)
    assert obs.signals["request_rate"] == pytest.approx(3.0)


def test_unreachable_target_is_reported_not_raised():
    src = ScrapeSource(scrape_config(["http://127.0.0.1:1/metrics"]))
    obs = src.collect_graph("g", now=0.0)
    assert obs.signals == {}
    assert any("scrape http://127.0.0.1:1/metrics failed" in e for e in obs.errors)


def test_the_scrape_source_keeps_no_history_so_forecasts_start_cold():
    from scaler.clock import ManualClock
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.store import DecisionStore

    config = scrape_config(["http://127.0.0.1:1/metrics"])
    src = ScrapeSource(config)
    assert not src.keeps_history and src.history("g", [(None, "request_rate")], 0.0, 600.0, 60.0) == {}
    loop = DecisionLoop(Engine(config), src, DecisionStore(), ManualClock(1000.0))
    assert config.forecast.warm_start > 0 and not loop.can_warm_start() and loop.warm_start() == {}
    src.close()


class RawExporter:
    """A /metrics endpoint serving the exposition text it is given, as is."""

    def __init__(self, text: str):
        self.text = text
        self.server, self.url = serve_metrics(lambda: self.text.encode())

    def close(self):
        stop(self.server)


PREFILL = 'dynamo_frontend_worker_active_prefill_tokens{worker_id="0",worker_type="prefill"} 5000'
KV = 'dynamo_component_kvstats_active_blocks{dynamo_component="DecodeWorker",worker_id="2"} 700'


def test_a_series_twice_in_one_exposition_is_not_used_and_noted():
    e = RawExporter(f"{PREFILL}\n{PREFILL}\n{KV}\n")
    try:
        obs = ScrapeSource(scrape_config([e.url])).collect_graph("g", now=100.0)
        assert "prefill_queued_tokens" not in obs.roles["prefill"]  # neither copy (nor their sum) is used
        assert obs.errors == (f"dynamo_frontend_worker_active_prefill_tokens: a series appears twice at {e.url}: not used",)
        assert obs.roles["decode"]["kv_active_blocks"] == 700  # the other metrics are
    finally:
        e.close()


def test_samples_stamped_longer_ago_than_stale_after_are_not_used_and_noted():
    import time

    old_ms = int((time.time() - 3600) * 1000)
    e = RawExporter(f"{PREFILL}\n{KV} {old_ms}\n")
    try:
        src = ScrapeSource(scrape_config([e.url]))
        obs = src.collect_graph("g", now=100.0)
        assert "kv_active_blocks" not in obs.roles["decode"] and obs.roles["prefill"]["prefill_queued_tokens"] == 5000
        assert len(obs.errors) == 1 and obs.errors[0].startswith(
            f"dynamo_component_kvstats_active_blocks: sample at {e.url} is 3600s old (stale after 90s): not used"), obs.errors
        e.text = f"{PREFILL}\n{KV} {int((time.time() - 5) * 1000)}\n"  # stamped, and fresh
        obs = src.collect_graph("g", now=115.0)
        assert obs.errors == () and obs.roles["decode"]["kv_active_blocks"] == 700
    finally:
        e.close()


def test_a_scrape_that_trickles_ends_at_the_timeout():
    """Each read gets a byte in time (every 0.5 s, timeout 2 s): only the total deadline ends it."""
    from tests.fake_prometheus import FakePrometheus

    prom = FakePrometheus()
    prom.mode, prom.trickle_delay = "trickle", 0.5
    src = ScrapeSource(scrape_config([prom.url + "/metrics"]))
    out: list = []
    try:
        t = threading.Thread(target=lambda: out.append(src.collect_graph("g", now=100.0)), daemon=True)
        t.start()
        t.join(45)  # generous: the scrape ends at 2 s; unbounded, it takes about 90 s
        assert out, "the scrape did not end"
        assert out[0].signals == {} and out[0].errors == (f"scrape {prom.url}/metrics failed: QueryDeadlineExceeded",)
    finally:
        prom.close()
