"""Warm start for a fleet: every graph's forecasts fitted on Prometheus history in a worker process.

One graph at a time in the decision loop (scaler/loop.py's `warm_start_graph`), a warm start costs
about a second of CPU per series (14 days at 1-minute steps), run between polls: for 1,000 graphs x 3
series the last graphs would forecast cold for almost two hours. For a fleet (at least
FLEET_MIN_GRAPHS graphs read from Prometheus) the loop instead hands the graphs, CHUNK_GRAPHS at a
time, to WORKERS worker processes (`python -m scaler.warm_fleet`, niced so that polls and answers
keep their CPU), each of which

1. reads the chunk's history with one batched range query per signal for up to RANGE_BATCH graphs
   (`PrometheusSource.history_many`, the same PromQL the polls batch),
2. fits all the chunk's series together (`forecasting.demand.warm_start_many`, which batches the
   replay of `auto` models: forecasting/fleet_fit.py, the same state as fitting one by one),
3. writes the fitted models to a result file per chunk (a temporary directory). Between polls the loop adopts them (`Engine.warm_start(fitted=...)`):
   the points the graph observed since its fit began are replayed into them, so the result is what
   fitting in the loop at that moment would have given.

Decisions go on every poll meanwhile; a graph forecasts cold until its chunk is adopted. A chunk that
fails (Prometheus down, a worker killed) leaves its graphs cold, as a failed warm start does.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from forecasting.demand import FORECAST_SERIES, DemandForecaster, warm_start_many
from scaler.config import ScalerConfig

log = logging.getLogger("pdscaler.warm_fleet")

FLEET_MIN_GRAPHS = 20  # fewer graphs: warm-started in the loop, one at a time (a batch pays off from ~60 series)
CHUNK_GRAPHS = 50  # graphs per worker task (150 series fitted together; the worker's RSS ~200 MB)
WORKERS = 1  # worker processes (one core; the other serves and decides)
NICE = 5  # the workers' niceness over the decision process's (PDSCALER_WARM_NICE): polls and answers first
RANGE_TIMEOUT = 60.0  # s: a worker's range query (RANGE_BATCH graphs x 10,000 steps) at least this long

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
    if own:  # range queries of many graphs over days take longer than a poll's instant queries
        from scaler.sources import build_source

        src = config.source
        if hasattr(src, "timeout") and src.timeout < RANGE_TIMEOUT:
            config = config.model_copy(update={"source": src.model_copy(update={"timeout": RANGE_TIMEOUT})})
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


class FleetWarmStart:
    """One fleet warm start: WORKERS worker processes (`python -m scaler.warm_fleet`; plain
    subprocesses, since the decision process is itself a daemonic child) fit the chunks, each writing
    one result file per chunk; `finished()`, between polls, collects those written so far."""

    def __init__(self, config: ScalerConfig, graphs: list[str], end: float, offset: float,
                 workers: int = WORKERS, chunk: int = CHUNK_GRAPHS) -> None:
        self.started = time.monotonic()
        self.cpu_s = 0.0
        self._dir = tempfile.TemporaryDirectory(prefix="pdscaler-warm-")
        self.dir = Path(self._dir.name)
        workers = max(1, min(workers, math.ceil(len(graphs) / max(1, chunk))))
        chunks = [graphs[i:i + chunk] for i in range(0, len(graphs), max(1, chunk))]
        self.pending: dict[int, list[str]] = dict(enumerate(chunks))
        self.procs: list[tuple[subprocess.Popen, list[int], Path]] = []
        for w in range(workers):
            mine = list(range(w, len(chunks), workers))
            task = self.dir / f"task-{w}.pkl"
            task.write_bytes(pickle.dumps((config, [(i, chunks[i]) for i in mine], end, offset)))
            err = self.dir / f"worker-{w}.log"
            with open(err, "wb") as log_file:
                proc = subprocess.Popen([sys.executable, "-m", "scaler.warm_fleet", str(task), str(self.dir)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file)
            self.procs.append((proc, mine, err))

    def finished(self) -> list[tuple[list[str], Fitted | None, str | None, float]]:
        """The chunks done since the last call: (graphs, fitted or None, why it failed, the worker's
        wall seconds for them)."""
        out = []
        for i in sorted(self.pending):
            path = self.dir / f"result-{i}.pkl"
            if not path.exists():
                continue
            graphs = self.pending.pop(i)
            try:
                fitted, cpu, wall, error = pickle.loads(path.read_bytes())
            except Exception as e:
                fitted, cpu, wall, error = None, 0.0, 0.0, f"unreadable result ({type(e).__name__}: {e})"
            path.unlink(missing_ok=True)
            self.cpu_s += cpu
            if error is None:
                log.info("warm start of %d graphs fitted in a worker: %.1f CPU-s, %.1f s", len(graphs), cpu, wall)
            out.append((graphs, fitted, error, wall))
        for proc, mine, err in self.procs:  # a worker that died: its chunks not written start cold
            if proc.poll() is not None:
                lost = [i for i in mine if i in self.pending and not (self.dir / f"result-{i}.pkl").exists()]
                if lost:
                    why = f"worker exited with code {proc.returncode}: {_tail(err)}"
                    out += [(self.pending.pop(i), None, why, 0.0) for i in lost]
        return out

    @property
    def done(self) -> bool:
        return not self.pending

    def close(self) -> None:
        """Stop: the chunks not done are dropped and the workers ended (they are this object's own)."""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pending.clear()
        self._dir.cleanup()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1][:200] if lines else "no output"


def malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc keeps it for reuse otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _trim() -> None:
    """The worker, after a chunk: collect, then give what the chunk freed back."""
    import gc

    gc.collect()
    malloc_trim()


def worker_main(task: str, outdir: str) -> int:  # pragma: no cover - runs in the worker process
    """`python -m scaler.warm_fleet TASK OUTDIR`: fit each chunk of the task, one result file each."""
    try:  # added to the decision process's own niceness
        os.nice(int(os.environ.get("PDSCALER_WARM_NICE", NICE)))
    except (OSError, ValueError):
        pass
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, chunks, end, offset = pickle.loads(Path(task).read_bytes())
    parent = os.getppid()
    for i, graphs in chunks:
        if os.getppid() != parent:  # the decision process is gone: nobody adopts what is fitted
            shutil.rmtree(outdir, ignore_errors=True)
            return 1
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            result = (fit_chunk(config, graphs, end, offset), None)
        except Exception as e:  # this chunk starts cold; the next ones are tried
            result = (None, f"{type(e).__name__}: {e}")
        body = pickle.dumps((result[0], time.process_time() - c0, time.perf_counter() - w0, result[1]),
                            protocol=pickle.HIGHEST_PROTOCOL)
        tmp = Path(outdir) / f"result-{i}.pkl.tmp"
        tmp.write_bytes(body)
        tmp.rename(Path(outdir) / f"result-{i}.pkl")  # whole, or not there
        del result, body
        _trim()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
