"""The chaos proxy's trickle fault (load/chaos.py, `prometheus-trickle`) without the full chaos run:
in front of the fake Prometheus, with `make chaos`'s source settings (timeout 1 s, poll every 2 s),
it sends each byte of an answer within the per-read timeout, so only the total deadlines end a poll.
Unbounded, one query would take minutes; the wait below is generous, the assertions are on reasons."""

from __future__ import annotations

import threading

from load.chaos import Proxy
from scaler.config import ScalerConfig
from scaler.sources.prometheus import UNREACHABLE, PrometheusSource
from tests.conftest import BackgroundLoop
from tests.fake_prometheus import FakePrometheus


def test_a_trickling_proxy_to_prometheus_is_cut_off_by_the_query_deadline():
    prom, bg = FakePrometheus(), BackgroundLoop()
    proxy = Proxy(int(prom.url.rsplit(":", 1)[1]))
    bg.run(proxy.start())
    roles = {"prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}
    cfg = ScalerConfig.model_validate({
        "poll_interval": "2s", "source": {"kind": "prometheus", "url": f"http://127.0.0.1:{proxy.port}", "timeout": "1s"},
        "graphs": {"demo": {"namespace": "dynamo", "roles": roles}}})
    src = PrometheusSource(cfg)
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
