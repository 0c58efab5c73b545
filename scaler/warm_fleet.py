"""Warm start for a fleet: every graph's forecasts fitted on Prometheus history in a worker process.

One graph at a time in the decision loop (scaler/loop.py's `warm_start_graph`), a warm start costs
about a second of CPU per series (14 days at 1-minute steps), run between polls: for 1,000 graphs x 3
series the last graphs would forecast cold for almost two hours. For a fleet (at least
FLEET_MIN_GRAPHS graphs read from Prometheus) the loop instead hands the graphs, CHUNK_GRAPHS at a
time, to WORKERS spawned processes (niced, so polls and answers keep their CPU), each of which

1. reads the chunk's history with one batched range query per signal for up to RANGE_BATCH graphs
   (`PrometheusSource.history_many`, the same PromQL the polls batch),
2. fits all the chunk's series together (`forecasting.demand.warm_start_many`, which batches the
   replay of `auto` models: forecasting/fleet_fit.py, the same state as fitting one by one),
3. sends the fitted models back. Between polls the loop adopts them (`Engine.warm_start(fitted=...)`):
   the points the graph observed since its fit began are replayed into them, so the result is what
   fitting in the loop at that moment would have given.

Decisions go on every poll meanwhile; a graph forecasts cold until its chunk is adopted. A chunk that
fails (Prometheus down, a worker killed) leaves its graphs cold, as a failed warm start does.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Mapping

import numpy as np

from forecasting.demand import FORECAST_SERIES, DemandForecaster, warm_start_many
from scaler.config import ScalerConfig

log = logging.getLogger("pdscaler.warm_fleet")

FLEET_MIN_GRAPHS = 20  # fewer graphs: warm-started in the loop, one at a time (a batch pays off from ~60 series)
CHUNK_GRAPHS = 100  # graphs per worker task (300 series fitted together, about 100 MB in the worker)
WORKERS = 1  # worker processes (one core; the other serves and decides)
NICE = 5  # the workers' niceness: polls and gRPC answers first

Fitted = dict[str, tuple[dict, "float | None"]]  # graph -> (series name -> fitted model, last history time)


def fit_histories(config: ScalerConfig, histories: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                  live: bool = True, min_batch: int = 64) -> Fitted:
    """Fit new forecasters of these graphs (built as the Engine builds its own) on their histories
    (graph -> series name -> (timestamps on the loop's timeline, values))."""
    from forecasting.registry import MODELS

    fc = config.forecast
    params = MODELS[fc.model].live_params if live else None
    graphs = [g for g in histories if g in config.graphs]
    forecasters = [DemandForecaster(fc.model, step_s=config.poll_interval, seed=fc.seed, quantiles=fc.quantiles,
                                    model_params=params) for _ in graphs]
    fitted = warm_start_many(forecasters, [histories[g] for g in graphs], min_batch=min_batch)
    return {g: ({n: f.models[n] for n in names}, f.last_t) for g, f, names in zip(graphs, forecasters, fitted)}


def fit_chunk(config: ScalerConfig, graphs: list[str], end: float, offset: float, source=None,
              live: bool = True) -> Fitted:
    """Read the graphs' last `forecast.warm_start` of history up to `end` (wall time) and fit them;
    timestamps are moved by -offset onto the loop's timeline (as `DecisionLoop.warm_start_graph`)."""
    fc = config.forecast
    own = source is None
    if own:
        from scaler.sources import build_source

        source = build_source(config)
    try:
        wanted = [(None, name) for name in FORECAST_SERIES]
        got = source.history_many(graphs, wanted, end - fc.warm_start, end, fc.warm_start_step)
    finally:
        if own:
            source.close()
    histories = {g: {name: (ts - offset if offset else ts, ys) for (_, name), (ts, ys) in series.items()}
                 for g, series in got.items()}
    del got
    return fit_histories(config, histories, live=live)


def _worker_init() -> None:  # pragma: no cover - runs in the worker
    try:
        os.nice(NICE)
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING)


def _task(config: ScalerConfig, graphs: list[str], end: float, offset: float) -> tuple[Fitted, float, float]:
    """In the worker: (fitted, CPU seconds, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fit_chunk(config, graphs, end, offset)
    return out, time.process_time() - c0, time.perf_counter() - w0


class FleetWarmStart:
    """The chunks of one fleet warm start, running in worker processes; `finished()` between polls."""

    def __init__(self, config: ScalerConfig, graphs: list[str], end: float, offset: float,
                 workers: int = WORKERS, chunk: int = CHUNK_GRAPHS) -> None:
        self.started = time.monotonic()
        self.pool = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init)
        n = max(1, min(chunk, math.ceil(len(graphs) / max(1, workers))))
        self.futures: dict[Future, list[str]] = {
            self.pool.submit(_task, config, graphs[i:i + n], end, offset): graphs[i:i + n]
            for i in range(0, len(graphs), n)}
        self.cpu_s = 0.0

    def finished(self) -> list[tuple[list[str], Fitted | None, str | None, float]]:
        """The chunks done since the last call: (graphs, fitted or None, why it failed, the worker's
        wall seconds for them)."""
        out = []
        for fut in [f for f in self.futures if f.done()]:
            graphs = self.futures.pop(fut)
            try:
                fitted, cpu, wall = fut.result()
                self.cpu_s += cpu
                log.info("warm start of %d graphs fitted in a worker: %.1f CPU-s, %.1f s", len(graphs), cpu, wall)
                out.append((graphs, fitted, None, wall))
            except Exception as e:  # a worker that died, Prometheus down: those graphs start cold
                out.append((graphs, None, f"{type(e).__name__}: {e}", 0.0))
        return out

    @property
    def done(self) -> bool:
        return not self.futures

    def close(self) -> None:
        """Stop: the chunks not done are dropped and the workers ended (they are this object's own)."""
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        self.futures.clear()
