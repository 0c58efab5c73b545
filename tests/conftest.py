"""Shared test helpers: configs, and a real gRPC server on loopback in a background event loop."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

import grpc
import pytest

from scaler.config import ScalerConfig, example_config_text, parse_config
from scaler.store import DecisionStore


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
