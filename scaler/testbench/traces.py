"""Request traces: loading real LLM inference traces and reshaping their rate. Pure (no clock, no I/O
beyond reading the given file).

Formats
- ``azure``: Azure LLM inference trace CSV (Azure/AzurePublicDataset, Splitwise ISCA'24), header
  ``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps like ``2023-11-16 18:17:03.9799600``
  (7 decimal places: parsed as exact integers, so sub-microsecond spacing survives).
- ``mooncake``: Mooncake JSONL (kvcache-ai/Mooncake FAST'25 traces), one object per line with
  ``timestamp`` (ms), ``input_length``, ``output_length``.
- ServeGen rate curves (``category_model,t_s,total_rate_rps,active_clients``) are not per-request
  traces; :func:`load_rate_curve` returns them as arrays for a generator to drive.

Times are seconds relative to the earliest request of the file.
"""

from __future__ import annotations

import calendar
import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = [
    "TraceRequest",
    "load_trace",
    "load_rate_curve",
    "scale_rate",
    "bundled_trace",
    "resolve_trace",
    "TraceError",
    "BUNDLED_TRACES",
    "TRACE_FORMATS",
    "TRACE_HELP",
]

TRACE_FORMATS = ("azure", "mooncake")

#: Traces shipped in ``scaler/testbench/data/traces`` (see NOTICE): the Azure LLM inference traces
#: (CC-BY-4.0, Azure/AzurePublicDataset) and ServeGen's language rate curves (Apache-2.0, derived from
#: alibaba/ServeGen).
BUNDLED_TRACES: dict[str, str] = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "servegen-language": "servegen_language_rates.csv",
}

#: What one bundled trace is, for `--help` and error messages.
BUNDLED_DESCRIPTIONS: dict[str, str] = {
    "azure-code": "Azure code trace, 8,818 requests in 57 min, bursty",
    "azure-conv": "Azure conversation trace, 19,365 requests in 58 min, steady",
    "servegen-language": "ServeGen rate curves, 14 days, series language/m-large and language/m-mid",
}

#: The one help text of every command's --trace option.
TRACE_HELP = ("a trace file (Azure CSV, Mooncake JSONL, ServeGen rate CSV) or a bundled trace: "
              + ", ".join(BUNDLED_TRACES))


class TraceError(ValueError):
    """A trace that cannot be used (no such file or bundled name, or a malformed file): the message
    names the file (and line) and says what was expected."""

_AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_RATE_HEADER = ("category_model", "t_s", "total_rate_rps", "active_clients")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: arrival `t` (seconds from the trace start), input and output lengths in tokens."""

    t: float
    isl: int
    osl: int


def bundled_trace(name: str) -> Path:
    """Path of a trace shipped with the package (`azure-code`, `azure-conv`, `servegen-language`)."""
    try:
        filename = BUNDLED_TRACES[name]
    except KeyError:
        raise TraceError(
            f"unknown bundled trace {name!r}; available: {', '.join(sorted(BUNDLED_TRACES))}"
        ) from None
    return Path(__file__).resolve().parent / "data" / "traces" / filename


def resolve_trace(spec: str | os.PathLike[str]) -> Path:
    """The file of a `--trace` value: an existing path, else a bundled trace's name. The one resolution
    of every command (demo, emulate, backtest, frontier, forecast-eval, the load tests): a value that is
    neither raises TraceError naming the closest bundled name, if one is close."""
    import difflib

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in BUNDLED_TRACES:
        return bundled_trace(text)
    if path.exists():
        raise TraceError(f"trace {text!r} is not a file")
    close = difflib.get_close_matches(text, list(BUNDLED_TRACES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise TraceError(f"no trace file {text!r} and no bundled trace of that name; {hint}"
                     f"bundled traces: {', '.join(BUNDLED_TRACES)}")


def load_trace(path: str | os.PathLike[str], fmt: str | None = None) -> list[TraceRequest]:
    """Read a per-request trace, sorted by arrival time.

    `fmt` is "azure" or "mooncake"; None infers it from the first non-empty line. Raises ValueError
    naming the file and line for malformed rows, negative lengths or an unknown format.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8", newline="") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file (expected an Azure CSV or Mooncake JSONL trace)") from None
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror or e}") from None
    if fmt is None:
        fmt = _infer_format(path, lines)
    if fmt == "azure":
        requests = _parse_azure(path, lines)
    elif fmt == "mooncake":
        requests = _parse_mooncake(path, lines)
    else:
        raise TraceError(f"{path}: unknown trace format {fmt!r}; expected one of {TRACE_FORMATS}")
    requests.sort(key=lambda r: r.t)
    return requests


def _infer_format(path: Path, lines: list[str]) -> str:
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.startswith("{"):
        return "mooncake"
    if tuple(c.strip() for c in first.lstrip("\ufeff").split(",")) == _AZURE_HEADER:
        return "azure"
    if tuple(c.strip() for c in first.lstrip("\ufeff").split(",")) == _RATE_HEADER:
        raise TraceError(f"{path}: a ServeGen rate curve, not a per-request trace: this command needs an "
                         f"Azure CSV or Mooncake JSONL trace (backtest, frontier and forecast-eval take rate curves)")
    raise TraceError(
        f"{path}:1: not a trace (cannot infer its format from the first line {first[:80]!r}); expected an Azure CSV header "
        f"{','.join(_AZURE_HEADER)!r} or Mooncake JSONL (one JSON object per line)"
    )


def _parse_azure_timestamp(text: str) -> int:
    """`YYYY-MM-DD HH:MM:SS[.fffffff...]` (UTC assumed) -> integer nanoseconds since the epoch."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    if frac and (not frac.isdigit() or len(frac) > 9):
        raise ValueError(f"bad fractional seconds {frac!r}")
    seconds = calendar.timegm(dt.timetuple())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _parse_count(value: str, what: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {n}")
    return n


def _parse_azure(path: Path, lines: list[str]) -> list[TraceRequest]:
    rows: list[tuple[int, int, int]] = []
    header_seen = False
    for lineno, row in enumerate(csv.reader(lines), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if not header_seen:
            if tuple(c.strip().lstrip("\ufeff") for c in row) != _AZURE_HEADER:
                raise TraceError(
                    f"{path}:{lineno}: expected header {','.join(_AZURE_HEADER)!r}, got {','.join(row)!r}"
                )
            header_seen = True
            continue
        if len(row) != 3:
            raise TraceError(f"{path}:{lineno}: expected 3 columns, got {len(row)}: {','.join(row)!r}")
        try:
            ns = _parse_azure_timestamp(row[0])
            isl = _parse_count(row[1], "ContextTokens")
            osl = _parse_count(row[2], "GeneratedTokens")
        except ValueError as e:
            raise TraceError(f"{path}:{lineno}: malformed row {','.join(row)!r}: {e}") from None
        rows.append((ns, isl, osl))
    if not header_seen:
        raise TraceError(f"{path}:1: empty file, expected header {','.join(_AZURE_HEADER)!r}")
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    # Integer nanoseconds relative to the first request, then one division: exact to ~1e-16 relative.
    return [TraceRequest((ns - t0) / 1e9, isl, osl) for ns, isl, osl in rows]


def _parse_mooncake(path: Path, lines: list[str]) -> list[TraceRequest]:
    rows: list[tuple[float, int, int]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            ts = float(obj["timestamp"])
            if not math.isfinite(ts):
                raise ValueError(f"timestamp must be finite, got {ts}")
            isl = _parse_count(obj["input_length"], "input_length")
            osl = _parse_count(obj["output_length"], "output_length")
        except (ValueError, KeyError, TypeError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise TraceError(f"{path}:{lineno}: malformed Mooncake record: {detail}") from None
        rows.append((ts, isl, osl))
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    return [TraceRequest((ts - t0) / 1000.0, isl, osl) for ts, isl, osl in rows]


def load_rate_curve(
    path: str | os.PathLike[str], series: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a ServeGen rate CSV; return (t_s, total_rate_rps) of one series, sorted by t_s.

    `series` (a `category_model` value) is required when the file holds several; the error lists
    them. Zero-rate windows are returned as they are (in ServeGen they are likely data gaps, not idle
    periods: the caller decides how to fill them).
    """
    path = Path(path)
    by_series: dict[str, list[tuple[float, float]]] = {}
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header_seen = False
        for lineno, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if not header_seen:
                if tuple(c.strip().lstrip("\ufeff") for c in row) != _RATE_HEADER:
                    raise TraceError(
                        f"{path}:{lineno}: expected header {','.join(_RATE_HEADER)!r}, got {','.join(row)!r}"
                    )
                header_seen = True
                continue
            if len(row) != 4:
                raise TraceError(f"{path}:{lineno}: expected 4 columns, got {len(row)}")
            try:
                t, rate = float(row[1]), float(row[2])
                if not (math.isfinite(t) and math.isfinite(rate)) or rate < 0:
                    raise ValueError("t_s and total_rate_rps must be finite, rate >= 0")
            except ValueError as e:
                raise TraceError(f"{path}:{lineno}: malformed row {','.join(row)!r}: {e}") from None
            by_series.setdefault(row[0].strip(), []).append((t, rate))
    if not by_series:
        raise TraceError(f"{path}: no rows")
    available = ", ".join(sorted(by_series))
    if series is None:
        if len(by_series) > 1:
            raise TraceError(f"{path}: several series: pick one with --series: {available}")
        series = next(iter(by_series))
    if series not in by_series:
        raise TraceError(f"{path}: no series {series!r}; available: {available}")
    points = sorted(by_series[series])
    arr = np.array(points, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def scale_rate(requests: Sequence[TraceRequest], k: float, seed: int = 0) -> list[TraceRequest]:
    """Multiply the arrival rate by `k` keeping the trace's shape (its timing and lengths).

    Every request is copied floor(k) times, plus once more with probability frac(k) (so k < 1 thins
    the trace). Deterministic for a given seed; sorted by t (copies keep their original order).
    """
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"rate scale must be a finite number >= 0, got {k}")
    whole = math.floor(k)
    frac = k - whole
    if frac > 0:
        extra = np.random.default_rng(seed).random(len(requests)) < frac
    else:
        extra = np.zeros(len(requests), dtype=bool)
    out: list[TraceRequest] = []
    for r, e in zip(requests, extra.tolist(), strict=True):
        out.extend([r] * (whole + int(e)))
    out.sort(key=lambda r: r.t)
    return out
