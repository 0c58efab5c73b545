"""Locust load for an OpenAI-compatible LLM endpoint (a Dynamo frontend, or `pdscaler emulate`).

Each request is a STREAMING chat completion (`stream: true`, `stream_options.include_usage`) whose
prompt is sized to the request's ISL (`--chars-per-token` characters per token) and whose
`max_tokens` is its OSL (with `ignore_eos`, so a real engine generates all of them). Per request,
besides locust's own row (POST, response time = full stream duration), two more rows are recorded:
`TTFT` (send -> first content token) and `ITL` (mean gap between tokens after the first, from the
usage token count), in milliseconds, so they show in the stats, CSV and HTML report. HTTP errors,
error events inside the stream and streams that end without `data: [DONE]` are failures.

Without `--shape` this is classic closed-loop locust: `-u` users sending back to back (plus
`--think-time`), lengths from `--trace` (in order, cycling) or `--isl`/`--osl`. With `--shape
trace|diurnal|burst|constant` it is open-loop: see shapes.py; each request then also reports a
`LAG` row (actual - scheduled send time) that measures how faithfully the schedule was kept.

    locust -f load/locustfile.py --headless --host http://127.0.0.1:8000 -u 4 -t 30s --csv out
    locust -f load/locustfile.py --headless --host http://127.0.0.1:8000 \
        --shape trace --trace azure-code --trace-duration 300 --speedup 5 --csv out --html out.html
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.lock import Semaphore
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shapes.py, whichever way this file is loaded

from schedules import Arrival, resolve_trace  # noqa: E402
from scaler.testbench.traces import load_rate_curve  # noqa: E402
from scaler.testbench.traces import resolve_trace as _trace_file  # noqa: E402
from shapes import CHAT_PATH, SHAPES  # noqa: E402

log = logging.getLogger("pdscaler.load")

_FILLER_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
                 "wizards", "quietly", "judge", "boxing", "matches", "in", "northern", "valleys")


# --------------------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("pdscaler load", "OpenAI streaming chat load; see load/README.md")
    g.add_argument("--model", default=os.environ.get("PDSCALER_LOAD_MODEL", ""),
                   help="model name (env PDSCALER_LOAD_MODEL); default: the first of GET /v1/models")
    g.add_argument("--shape", choices=["none", *SHAPES], default="none",
                   help="open-loop arrival shape; none = closed-loop locust with -u users")
    g.add_argument("--trace", default="",
                   help="per-request trace: Azure CSV / Mooncake JSONL path or azure-code / azure-conv. "
                        "Timing + lengths for --shape trace; lengths (sampled) otherwise")
    g.add_argument("--trace-format", choices=["", "azure", "mooncake"], default="", help="default: inferred")
    g.add_argument("--isl", type=int, default=512, help="prompt tokens when no --trace")
    g.add_argument("--osl", type=int, default=64, help="max_tokens when no --trace")
    g.add_argument("--chars-per-token", type=float, default=4.0,
                   help="prompt characters per ISL token (the emulator counts 4; English BPE ~4)")
    g.add_argument("--ignore-eos", type=int, choices=[0, 1], default=1,
                   help="send ignore_eos so real engines generate exactly max_tokens (Dynamo, vLLM, SGLang)")
    g.add_argument("--think-time", type=float, default=0.0, help="closed loop: seconds between a user's requests")
    g.add_argument("--request-timeout", type=float, default=600.0, help="socket read timeout per request (s)")
    # open loop
    g.add_argument("--speedup", type=float, default=1.0, help="trace: divide trace times by this")
    g.add_argument("--trace-start", type=float, default=0.0, help="trace: first trace second to replay")
    g.add_argument("--trace-duration", type=float, default=0.0, help="trace: trace seconds to replay (0: all)")
    g.add_argument("--max-requests", type=int, default=0, help="trace: stop after this many (0: no limit)")
    g.add_argument("--rate-scale", type=float, default=1.0,
                   help="trace: copy/thin requests to k x the rate; diurnal with --peak-rate 0: scale rates")
    g.add_argument("--rates", default="", help="diurnal: ServeGen rate CSV (category_model,t_s,total_rate_rps,...) "
                   "or the bundled servegen-language")
    g.add_argument("--series", default="", help="diurnal: category_model series (needed if the CSV has several)")
    g.add_argument("--day-minutes", type=float, default=10.0, help="diurnal: wall minutes per curve day")
    g.add_argument("--curve-start", type=float, default=0.0, help="diurnal: curve hour to start at")
    g.add_argument("--curve-hours", type=float, default=24.0, help="diurnal: curve hours to play")
    g.add_argument("--peak-rate", type=float, default=10.0,
                   help="diurnal: scale the window's peak to this many req/s (0: keep rates x --rate-scale)")
    g.add_argument("--rate", type=float, default=2.0, help="burst/constant: base rate, req/s")
    g.add_argument("--duration", type=float, default=60.0, help="burst/constant: schedule length, s")
    g.add_argument("--burst-factor", type=float, default=4.0, help="burst: rate multiplier during the burst")
    g.add_argument("--burst-at", type=float, default=20.0, help="burst: start, s")
    g.add_argument("--burst-for", type=float, default=15.0, help="burst: length, s")
    g.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson",
                   help="rate shapes: Poisson arrivals, or evenly spaced in the integrated rate")
    g.add_argument("--seed", type=int, default=0, help="arrival times and sampled lengths")
    g.add_argument("--lead-in", type=float, default=1.0, help="s between test start and the first arrival (spawn)")
    g.add_argument("--drain", type=float, default=30.0, help="s to wait for in-flight requests after the schedule")
    g.add_argument("--latency-budget", type=float, default=30.0,
                   help="size the user pool so no arrival waits while requests finish within this many s")
    g.add_argument("--pool", type=int, default=0, help="fixed user pool size (0: from --latency-budget)")
    g.add_argument("--max-users", type=int, default=2000, help="cap of the computed pool")


# --------------------------------------------------------------------------- per-process state


class Dispatcher:
    """This process's share of the schedule, handed out in arrival order to whichever user is idle."""

    def __init__(self, arrivals: list[Arrival], origin: float) -> None:
        self.arrivals = arrivals
        self.origin = origin  # time.time() of t = 0
        self.next = 0

    @property
    def exhausted(self) -> bool:
        return self.next >= len(self.arrivals)

    def take(self) -> Arrival | None:
        if self.exhausted:
            return None
        a = self.arrivals[self.next]
        self.next += 1
        return a


class _State:
    dispatcher: Dispatcher | None = None
    lengths: itertools.cycle | None = None
    model: str | None = None
    model_lock = Semaphore()
    filler = ""


_state = _State()


def _options_of(environment: Any) -> Any:
    return environment.parsed_options


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    o = _options_of(environment)
    if o is None or isinstance(environment.runner, WorkerRunner):
        return  # workers get the master's options with the first spawn message (see _on_test_start)
    if o.shape == "diurnal" and o.rates:
        try:
            load_rate_curve(_trace_file(o.rates), o.series or None)
        except ValueError as e:
            print(f"locustfile: --rates: {e}", file=sys.stderr)
            sys.exit(2)
    if o.trace:  # a trace that is neither a file nor a bundled name, or malformed: one line, exit 2, before the run
        try:
            resolve_trace(o.trace, o.trace_format or None)
        except ValueError as e:
            print(f"locustfile: --trace: {e}", file=sys.stderr)
            sys.exit(2)
    if o.shape != "none" and environment.shape_class is None:
        shape = SHAPES[o.shape]()
        shape.runner = environment.runner
        environment.shape_class = shape


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    o = _options_of(environment)
    ChatUser.network_timeout = o.request_timeout
    ChatUser.connection_timeout = min(60.0, o.request_timeout)
    _state.dispatcher = None
    _state.lengths = None
    if o.shape == "none":
        if o.trace:
            reqs = resolve_trace(o.trace, o.trace_format or None)
            _state.lengths = itertools.cycle([(r.isl, r.osl) for r in reqs])
        return
    if isinstance(environment.runner, MasterRunner):
        return  # the master only runs the shape (pool size, end); the workers send
    schedule = SHAPES[o.shape].build(o)
    index, count = 0, 1
    if isinstance(environment.runner, WorkerRunner):
        index, count = environment.runner.worker_index, max(1, int(o.expect_workers or 1))
    mine = schedule.share(index, count)
    origin = time.time() + o.lead_in
    _state.dispatcher = Dispatcher(mine, origin)
    log.info("open-loop %s; this process sends %d (share %d/%d), origin %.6f (unix)",
             schedule.description, len(mine), index, count, origin)


@events.quitting.add_listener
def _on_quit(environment: Any, **_: Any) -> None:
    d = _state.dispatcher
    if d is not None and d.next < len(d.arrivals):
        log.warning("open-loop schedule cut short: %d of %d arrivals were not sent", len(d.arrivals) - d.next,
                    len(d.arrivals))


def prompt(isl: int, chars_per_token: float) -> str:
    """Text of about `isl` tokens: `round(isl * chars_per_token)` characters of plain English words,
    starting with a random tag so no two prompts share a cached prefix."""
    n = max(1, round(isl * chars_per_token))
    if len(_state.filler) < n:
        words = itertools.cycle(_FILLER_WORDS)
        parts, size = [], 0
        while size < 2 * n + 64:
            w = next(words)
            parts.append(w)
            size += len(w) + 1
        _state.filler = " ".join(parts)
    tag = f"{random.getrandbits(32):08x} "
    return (tag + _state.filler)[:n]


# --------------------------------------------------------------------------- the user


class ChatUser(FastHttpUser):
    """Streams chat completions; open-loop when a shape is active, closed-loop otherwise."""

    concurrency = 1  # one request at a time per user; the pool size is the concurrency
    _pending: Arrival | None = None

    def wait_time(self) -> float:
        d = _state.dispatcher
        if d is None:
            return _options_of(self.environment).think_time
        self._pending = d.take()
        if self._pending is None:
            return 1.0  # schedule done: idle until the shape stops the run
        return max(0.0, d.origin + self._pending.t - time.time())

    def on_start(self) -> None:
        self.opts = _options_of(self.environment)
        with _state.model_lock:
            if not self.opts.model and _state.model is None:
                _state.model = self._discover_model()
        self.model = self.opts.model or _state.model

    def _discover_model(self) -> str | None:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as r:
            try:
                return r.json()["data"][0]["id"]
            except Exception as e:  # noqa: BLE001 - any malformed answer is a failure of this request
                r.failure(f"cannot read a model id from /v1/models: {e}")
                return None

    @task
    def chat(self) -> None:
        d = _state.dispatcher
        if d is None:
            isl, osl = next(_state.lengths) if _state.lengths is not None else (self.opts.isl, self.opts.osl)
            self.send(isl, osl)
            return
        a, self._pending = self._pending, None
        if a is None:  # first iteration (wait_time has not run yet)
            a = d.take()
            if a is None:
                return
            gevent.sleep(max(0.0, d.origin + a.t - time.time()))
        lag_ms = (time.time() - d.origin - a.t) * 1000.0
        self.environment.events.request.fire(request_type="LAG", name="schedule", response_time=max(0.0, lag_ms),
                                              response_length=0, exception=None, context={})
        self.send(a.isl, a.osl)

    def send(self, isl: int, osl: int) -> None:
        if not self.model:
            raise RuntimeError("no model name: pass --model or serve GET /v1/models")
        osl = max(1, int(osl))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt(isl, self.opts.chars_per_token)}],
            "max_tokens": osl,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.opts.ignore_eos:
            body["ignore_eos"] = True
        events = self.environment.events
        start = time.perf_counter()
        with self.client.post(CHAT_PATH, data=json.dumps(body), name=CHAT_PATH, stream=True, catch_response=True,
                              headers={"Content-Type": "application/json", "Accept": "text/event-stream"}) as r:
            if getattr(r, "error", None) is not None or r.status_code >= 400:
                if r.status_code and r.status_code >= 400:
                    text = ""
                    try:
                        text = (r.text or "")[:300]
                    except Exception:  # noqa: BLE001
                        pass
                    r.failure(f"HTTP {r.status_code}: {text}")
                r.request_meta["response_time"] = (time.perf_counter() - start) * 1000.0
                return  # a connection error is reported by the context manager itself
            first = last = None
            chunks = 0
            tokens = None
            done = False
            error = None
            nbytes = 0
            try:
                # readline, not iter_content: geventhttpclient's read(n) blocks until n bytes have
                # arrived, which would hold tokens back and inflate TTFT.
                stream = r._response
                while raw := stream.readline(b"\n"):
                    nbytes += len(raw)
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, SSE comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    if obj.get("error"):
                        error = f"error event in stream: {json.dumps(obj['error'])[:300]}"
                        continue
                    for choice in obj.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content") or delta.get("reasoning_content"):
                            now = time.perf_counter()
                            if first is None:
                                first = now
                            last = now
                            chunks += 1
                    usage = obj.get("usage")
                    if usage and usage.get("completion_tokens") is not None:
                        tokens = int(usage["completion_tokens"])
            except Exception as e:  # noqa: BLE001 - a broken or malformed stream fails the request
                error = f"broken stream: {type(e).__name__}: {e}"
            end = time.perf_counter()
            r.request_meta["response_time"] = (end - start) * 1000.0
            r.request_meta["response_length"] = nbytes
            if error is None and not done:
                error = f"stream ended without [DONE] after {chunks} content chunks"
            if error is None and first is None:
                error = "stream carried no tokens"
            if error is not None:
                r.failure(error)
                return
            r.success()
        n = tokens if tokens is not None else chunks
        events.request.fire(request_type="TTFT", name=CHAT_PATH, response_time=(first - start) * 1000.0,
                            response_length=isl, exception=None, context={})
        if n >= 2 and last is not None and last > first:
            events.request.fire(request_type="ITL", name=CHAT_PATH, response_time=(last - first) * 1000.0 / (n - 1),
                                response_length=n, exception=None, context={})
