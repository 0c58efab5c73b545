"""Shared test helpers: configs, a real gRPC server on loopback in a background event loop, and
`pdscaler serve` / `pdscaler emulate` child processes (scaler/testbench/processes.py) whose output is
printed with the report of a test that fails while they run (or that started them)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from scaler.config import ScalerConfig, example_config_text, parse_config
from scaler.store import DecisionStore
from scaler.testbench import processes


def make_config(**overrides) -> ScalerConfig:
    data = {
        "poll_interval": 15,
        "stale_after": 90,
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1"},
        "graphs": {
            "g1": {
                "namespace": "ns",
                "roles": {
                    "prefill": {"kind": "prefill", "min_replicas": 1, "max_replicas": 10},
                    "decode": {"kind": "decode", "min_replicas": 2, "max_replicas": 8},
                },
            }
        },
    }
    data.update(overrides)
    return ScalerConfig.model_validate(data)


def reactive_config(**overrides) -> ScalerConfig:
    """make_config with forecasting and scale-down stabilisation off: targets follow observed demand
    at once (for tests of the wire and of the capacity rule, not of the policy)."""
    data = make_config(forecast={"enabled": False}, **overrides).model_dump()
    for graph in data["graphs"].values():
        for role in graph["roles"].values():
            role["stabilisation"]["scale_down"] = 0.0
    return ScalerConfig.model_validate(data)


@pytest.fixture
def config() -> ScalerConfig:
    return make_config()


@pytest.fixture
def example_config() -> ScalerConfig:
    return parse_config(example_config_text())


class BackgroundLoop:
    """An asyncio loop in a thread, for running grpc.aio servers under synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextmanager
def grpc_server(config: ScalerConfig, store: DecisionStore):
    """A real pdscaler gRPC server on 127.0.0.1 (ephemeral port); yields (channel, port)."""
    from scaler.server import start_server

    bg = BackgroundLoop()
    server, port = bg.run(start_server(config, store, 0, "127.0.0.1"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, port
    finally:
        channel.close()
        bg.run(server.stop(grace=0))
        bg.close()


# --------------------------------------------------------------------------- child processes


def example_config_file(path: Path, edit=None) -> Path:
    """What `pdscaler config example` prints, written to `path` (through `edit(dict) -> dict`, if given)."""
    text = example_config_text()
    if edit is not None:
        import yaml

        text = yaml.safe_dump(edit(yaml.safe_load(text)), sort_keys=False)
    path.write_text(text)
    return path


def metric_total(url: str, name: str) -> float:
    """The sum of a metric's samples (every label set) on a /metrics page (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


@pytest.fixture
def serve():
    """Start `pdscaler serve` (processes.serve_process arguments); stopped at the end of the test."""
    started: list[processes.ManagedProcess] = []

    def start(config, *, wait: bool = True, **kw) -> processes.ScalerProcess:
        p = processes.serve_process(config, **kw)
        started.append(p)
        return p.start(wait=wait)

    yield start
    for p in started:
        p.stop()


SLOW_KINDS = ("e2e", "chaos", "load", "fuzz")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """e2e, chaos, load and fuzz tests are slow too: `make test-fast` (-m "not slow") leaves them out."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


_MARK = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_MARK] = processes.ManagedProcess.mark()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report shows the output of the child processes it started or that still run."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    mark = item.stash.get(_MARK, 0)
    shown = {id(p): p for p in processes.started_since(mark) + processes.running()}
    for p in shown.values():
        report.sections.append((f"output of {p.name} (pid {p.proc.pid}, exit code {p.poll()})", p.tail(200)))
