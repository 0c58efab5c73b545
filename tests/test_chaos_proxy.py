"""Pieces of `make chaos` (load/chaos.py) without the full run.

The proxy's trickle fault (`prometheus-trickle`): in front of the fake Prometheus, with `make chaos`'s
source settings (timeout 1 s, poll every 2 s), it sends each byte of an answer within the per-read
timeout, so only the total deadlines end a poll. Unbounded, one query would take minutes; the wait
below is generous, the assertions are on reasons.

The proxy's one-poll spike (`one-poll-spike`): one poll's three arrival-rate queries rewritten, nothing
else. The emulator's `POST /admin/drop` (`series-dropped`): the families left out of /metrics."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from load.chaos import SPIKED, Proxy
from scaler.config import ScalerConfig
from scaler.sources.prometheus import UNREACHABLE, PrometheusSource
from tests.conftest import BackgroundLoop
from tests.fake_prometheus import FakePrometheus


def source_through(proxy: Proxy) -> PrometheusSource:
    roles = {"prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}
    cfg = ScalerConfig.model_validate({
        "poll_interval": "2s", "source": {"kind": "prometheus", "url": f"http://127.0.0.1:{proxy.port}", "timeout": "1s"},
        "graphs": {"demo": {"namespace": "dynamo", "roles": roles}}})
    return PrometheusSource(cfg)


def test_a_trickling_proxy_to_prometheus_is_cut_off_by_the_query_deadline():
    prom, bg = FakePrometheus(), BackgroundLoop()
    proxy = Proxy(int(prom.url.rsplit(":", 1)[1]))
    bg.run(proxy.start())
    src = source_through(proxy)
    try:
        assert src.collect(1_000_000.0)[0].errors == ()  # passing through
        proxy.mode = "trickle"
        out: list = []
        t = threading.Thread(target=lambda: out.append(src.collect(1_000_000.0)), daemon=True)
        t.start()
        t.join(60)
        assert out, "the poll did not end"
        (obs,) = out[0]
        assert obs.signals == {} and len(obs.errors) == 1 and obs.errors[0].startswith(UNREACHABLE)
        # Cut off by the total deadline: no single read waited past the timeout.
        assert "QueryDeadlineExceeded: no complete answer within 1s" in obs.errors[0], obs.errors
        proxy.mode = "pass"
        assert src.collect(1_000_000.0)[0].errors == ()  # recovered by itself
    finally:
        src.close()
        bg.run(proxy.stop())
        bg.close()
        prom.close()


def test_a_spike_rewrites_one_polls_arrival_rates_and_nothing_else():
    prom, bg = FakePrometheus(), BackgroundLoop()
    proxy = Proxy(int(prom.url.rsplit(":", 1)[1]))
    bg.run(proxy.start())
    src = source_through(proxy)
    try:
        src.collect(1_000_000.0)
        plain = list(prom.seen)
        proxy.spike()
        prom.seen.clear()
        (obs,) = src.collect(1_000_001.0)
        assert obs.errors == ()
        spiked = [q for q in prom.seen if q.startswith("1000 * (")]
        rates = [q for q in plain if any(p in q and "/" not in q for p in SPIKED)]
        assert [q[len("1000 * ("):-1] for q in spiked] == rates
        assert len(spiked) == len(SPIKED) and len(prom.seen) == len(plain)  # the same queries, three rewritten
        assert [q for _, q in proxy.spiked] == [q[len("1000 * ("):-1] for q in spiked]
        prom.seen.clear()
        src.collect(1_000_002.0)
        assert prom.seen == plain  # one poll only
    finally:
        src.close()
        bg.run(proxy.stop())
        bg.close()
        prom.close()


def test_the_emulator_leaves_dropped_families_out_of_its_metrics():
    from scaler.testbench.emulator.app import Emulator

    bg = BackgroundLoop()
    emu = Emulator()
    bg.run(emu.start())

    def post(query: str) -> bytes:
        return urllib.request.urlopen(urllib.request.Request(f"{emu.url}/admin/drop{query}", method="POST"),
                                      timeout=5).read()

    def metrics() -> str:
        return urllib.request.urlopen(f"{emu.url}/metrics", timeout=5).read().decode()

    try:
        kv = "dynamo_component_kvstats_active_blocks"
        assert kv in metrics() and "dynamo_frontend_requests_total{" in metrics()
        post(f"?families={kv},dynamo_frontend_requests_total")
        text = metrics()
        assert kv not in text and "dynamo_frontend_requests_total" not in text
        assert "dynamo_component_kvstats_total_blocks" in text  # only those
        assert b"dynamo_frontend_requests_total" in urllib.request.urlopen(f"{emu.url}/admin/drop", timeout=5).read()
        with pytest.raises(urllib.error.HTTPError) as e:
            post("?families=no_such_family")
        assert e.value.code == 400 and b"no_such_family" in e.value.read()
        assert kv not in metrics()  # a refused request changes nothing
        post("")
        assert kv in metrics() and "dynamo_frontend_requests_total{" in metrics()
    finally:
        bg.run(emu.stop())
        bg.close()
