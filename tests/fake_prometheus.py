"""A stand-in Prometheus HTTP API for fault tests: answers /api/v1/query (GET and POST, single-graph
and batched `=~"a|b"` ... `by (label)` queries) with plausible values of a Dynamo graph, or a fault."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def value_for(query: str, demand: float) -> str:
    """Plausible answers of a Dynamo graph under `demand` prefill tokens/s."""
    if "kvstats_gpu_cache_usage" in query:
        return "0.5"
    if "time_to_first_token" in query:
        return "0.2"
    if "inter_token_latency" in query:
        return "0.02"
    if "block_size" in query:
        return "16"
    if query.startswith("count"):
        return "2"
    mean = "_count" in query
    if "input_sequence_tokens_sum" in query:
        return "2000" if mean else str(demand)
    if "output_sequence_tokens_sum" in query:
        return "200" if mean else str(demand / 10)
    if "requests_total" in query:
        return str(demand / 2000)
    return "0"


_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def series_result(query: str, series: list[tuple[dict[str, str], float]]) -> list[dict]:
    """An instant vector from `series`: the values of the series the query's first selector matches
    (its label matchers as in PromQL: a missing label is "", regexes anchored at both ends; the metric
    name is not checked), summed by the labels of its `by (...)` (but le in a histogram_quantile)."""
    m = _SELECTOR.search(query)
    matchers = [(k, op, re.sub(r"\\(.)", r"\1", v)) for k, op, v in _MATCHER.findall(m.group(1) if m else "")]

    def selected(labels: dict[str, str]) -> bool:
        for k, op, v in matchers:
            have = labels.get(k, "")
            hit = have == v if op in ("=", "!=") else re.fullmatch(v, have) is not None
            if hit != (op in ("=", "=~")):
                return False
        return True

    by = re.search(r"by \(([^)]*)\)", query)
    quantile = query.lstrip().startswith("histogram_quantile")
    keys = [k.strip() for k in by.group(1).split(",") if not (quantile and k.strip() == "le")] if by else []
    groups: dict[tuple, float] = {}
    for labels, value in series:
        if selected(labels):
            key = tuple((k, labels.get(k, "")) for k in keys)
            groups[key] = groups.get(key, 0.0) + value
    return [{"metric": dict(key), "value": [time.time(), str(v)]} for key, v in groups.items()]


class FakePrometheus:
    """`mode`: ok | slow | empty | nan | inf | negative | http500 | hang | trickle | duplicate. `queries`
    counts the requests.

    trickle: a valid answer (status line, headers, body) sent one byte every `trickle_delay` seconds
    (each read gets a byte in time: only a total deadline ends the request).
    duplicate: every series of an answer appears twice.
    `sample_age` (seconds, or None): samples are stamped that long before the query's `time`.
    `series` ([(labels, value)], or None): answers come from these series (see series_result).

    hang: every request is held open, unanswered, until `close()`; `holding` counts the requests
    held right now and `held` is set once one is (an event to wait on: the client is blocked).
    `ranges` (or None): /api/v1/query_range answers `ranges(query, start, end, step)`, a list of
    {"metric": labels, "values": [[t, "v"], ...]} (a matrix)."""

    def __init__(self) -> None:
        self.mode, self.demand, self.queries = "ok", 200_000.0, 0
        self.trickle_delay = 1.0
        self.sample_age: float | None = None
        self.series: list[tuple[dict[str, str], float]] | None = None
        self.ranges = None
        self.seen: list[str] = []
        self.held, self.released = threading.Event(), threading.Event()
        self.holding = 0
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, params: dict) -> None:
                fake.queries += 1
                q = params.get("query", [""])[0]
                fake.seen.append(q)
                mode = fake.mode
                if mode == "hang":
                    with lock:
                        fake.holding += 1
                    fake.held.set()
                    fake.released.wait()
                    with lock:
                        fake.holding -= 1
                    return  # closed without an answer
                if mode == "slow":
                    time.sleep(1.5)
                if mode == "http500":
                    self.send_response(500)
                    self.end_headers()
                    return
                if fake.ranges is not None and "query_range" in self.path:
                    matrix = fake.ranges(q, *(float(params[k][0]) for k in ("start", "end", "step")))
                    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": matrix}})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                    return
                value = {"nan": "NaN", "inf": "+Inf", "negative": "-5"}.get(mode, value_for(q, fake.demand))
                batched = re.search(r'(\w+)=~"([^"]*)"', q) if " by (" in q else None
                if batched and "|" in batched.group(2) or (batched and not batched.group(2).startswith(".+")):
                    label, values = batched.group(1), batched.group(2).replace("\\\\", "").split("|")
                    result = [{"metric": {label: v}, "value": [time.time(), value]} for v in values]
                else:
                    result = [{"metric": {}, "value": [time.time(), value]}]
                if mode == "empty":
                    result = []
                if fake.series is not None:
                    result = series_result(q, fake.series)
                if fake.sample_age is not None:
                    at = float(params.get("time", [time.time()])[0]) - fake.sample_age
                    result = [{**s, "value": [at, s["value"][1]]} for s in result]
                if mode == "duplicate":
                    result = [s for s in result for _ in (0, 1)]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                if mode == "trickle":
                    head = f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    try:
                        for b in head.encode() + body:
                            if fake.released.wait(fake.trickle_delay):
                                return
                            self.wfile.write(bytes([b]))
                    except OSError:
                        pass  # the client gave up
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def do_GET(self):
                self._answer(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self._answer(urllib.parse.parse_qs(self.rfile.read(n).decode()))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
