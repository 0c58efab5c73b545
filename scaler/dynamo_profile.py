"""Dynamo's pre-deployment profiler output -> pdscaler's capacity profile (`pdscaler profile import`).

Dynamo's profiler (ai-dynamo/dynamo, benchmarks/profiler) writes, per role, the interpolation data its
SLA Planner loads (components/planner/.../utils/perf_interpolation.py):

- prefill: `selected_prefill_interpolation/raw_data.npz`, or `prefill_raw_data.json` beside that
  directory (same keys: the ConfigMap the profiler generates), 1-D arrays of equal length:
  `prefill_isl` (tokens), `prefill_ttft` (ms, at that ISL), `prefill_thpt_per_gpu` (tokens/s/GPU).
- decode: `selected_decode_interpolation/raw_data.npz`, or `decode_raw_data.json`, 1-D arrays of equal
  length, one entry per measured point: `x_kv_usage` (active KV share, 0-1), `y_context_length`
  (tokens), `z_itl` (ms), `z_thpt_per_gpu` (decode tokens/s/GPU), and `max_kv_tokens` (KV capacity of
  one engine: a one-element array in the NPZ, an integer in the JSON).

The conversion at the graph's SLOs (the figures Dynamo's Planner sizes with, per replica):

- prefill, per profiled ISL: `prefill_thpt_per_gpu` x the engine's GPUs (the Planner divides the
  predicted prefill tokens/s by exactly that). An ISL whose profiled TTFT is above the TTFT target
  cannot meet it on any number of replicas (the profiler measures an unloaded engine): its throughput
  is kept, as the Planner keeps it, and a warning names it; when no ISL meets the target the import
  fails.
- decode, per profiled context length: the throughput at the highest KV usage whose ITL is within
  the target, ITL and throughput linear in KV usage between measured points (the Planner scans its
  cubic grid of the same points the same way, downwards from full KV). A context whose lowest measured
  load is already above the target keeps the throughput of that load (the Planner's fallback) with a
  warning; when no context meets the target the import fails.
- decode KV tokens per replica: `max_kv_tokens`.
- GPUs per replica: `--prefill-gpus` / `--decode-gpus` (a count or `tp=2,pp=1,dp=1`), else the role's
  `gpus_per_replica` when the config sets it, else what the profiler output records: the planner's
  `--{prefill,decode}-engine-num-gpu` in `config_with_planner.yaml`, else the worker's GPUs (resources,
  else tp x pp x dp of its arguments) in `selected_<role>_interpolation/config.yaml`; else 1, with a
  warning.

Between points pdscaler interpolates linearly and holds the ends flat (the Planner: cubic, ISL clamped
to the sampled range). Every malformed input raises DynamoProfileError, one line naming the file. This
module reads and converts (numpy and YAML only); scaler/capacity_profile.py validates the result
(`import_dynamo_profile`, also behind `load_profile`) and scaler/profile_import.py is the command.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


class DynamoProfileError(ValueError):
    """A profiler output that cannot be converted; the message is one line naming the file and the problem."""

PREFILL_NPZ = Path("selected_prefill_interpolation") / "raw_data.npz"
DECODE_NPZ = Path("selected_decode_interpolation") / "raw_data.npz"
PREFILL_JSON = "prefill_raw_data.json"
DECODE_JSON = "decode_raw_data.json"
PREFILL_KEYS = ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")
DECODE_KEYS = ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")


@dataclass(frozen=True)
class PrefillData:
    source: Path
    isl: np.ndarray
    ttft_ms: np.ndarray
    thpt_per_gpu: np.ndarray


@dataclass(frozen=True)
class DecodeData:
    source: Path
    kv_usage: np.ndarray
    context: np.ndarray
    itl_ms: np.ndarray
    thpt_per_gpu: np.ndarray
    max_kv_tokens: float


@dataclass(frozen=True)
class Converted:
    """A converted profile in the capacity profile's schema (scaler/capacity_profile.py validates it), the
    warnings of the conversion (lines for a person) and where each figure came from."""

    data: dict
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- Finding the files ------------------------------------------------------------------------------


def looks_like_profiler_output(path: str | Path) -> bool:
    """A directory, an .npz or a .json file: what `load_profile` converts instead of reading as YAML."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in (".npz", ".json")


def _root_of(path: Path) -> Path:
    """The profiler output directory a file belongs to."""
    parent = path.parent
    if parent.name in ("selected_prefill_interpolation", "selected_decode_interpolation"):
        return parent.parent
    return parent


def _role_of_file(path: Path) -> str | None:
    name, parent = path.name.lower(), path.parent.name
    if name == PREFILL_JSON or parent == "selected_prefill_interpolation":
        return "prefill"
    if name == DECODE_JSON or parent == "selected_decode_interpolation":
        return "decode"
    return None


def locate(path: str | Path) -> tuple[Path, Path, Path]:
    """(root directory, prefill file, decode file) of a profiler output directory or one of its files.
    NPZ first, then JSON, as Dynamo's Planner reads them."""
    path = Path(path)
    if not path.exists():
        raise DynamoProfileError(f"{path}: no such file or directory")
    given: dict[str, Path] = {}
    if path.is_dir():
        root = path
    else:
        role = _role_of_file(path)
        if role is None:
            raise DynamoProfileError(
                f"{path}: not a Dynamo profiler file (expected {PREFILL_JSON}, {DECODE_JSON} or "
                f"selected_{{prefill,decode}}_interpolation/raw_data.npz, or their directory)")
        root = _root_of(path)
        given[role] = path
    found = {}
    for role, npz, js in (("prefill", PREFILL_NPZ, PREFILL_JSON), ("decode", DECODE_NPZ, DECODE_JSON)):
        if role in given:
            found[role] = given[role]
            continue
        for candidate in (root / npz, root / js):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            where = f"{path} (beside it)" if path != root else str(root)
            raise DynamoProfileError(f"{where}: no {role} data: expected {root / npz} or {root / js}")
    return root, found["prefill"], found["decode"]


# --- Reading and checking the arrays ----------------------------------------------------------------


def _raw_arrays(path: Path) -> dict[str, object]:
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DynamoProfileError(f"{path}: not a readable NPZ file ({e})") from e
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DynamoProfileError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise DynamoProfileError(f"{path}: not a JSON text file ({e.reason})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DynamoProfileError(f"{path}: not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, dict):
        raise DynamoProfileError(f"{path}: expected a JSON object of arrays, got {type(data).__name__}")
    return data


def _array(path: Path, raw: dict[str, object], key: str) -> np.ndarray:
    if key not in raw:
        has = ", ".join(sorted(raw)) or "nothing"
        raise DynamoProfileError(f"{path}: missing array '{key}' (the file has: {has})")
    value = raw[key]
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DynamoProfileError(f"{path}: '{key}' must be an array of numbers") from None
    if a.ndim != 1:
        raise DynamoProfileError(f"{path}: '{key}' must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise DynamoProfileError(f"{path}: '{key}' is empty")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise DynamoProfileError(f"{path}: '{key}'[{bad[0]}] is {a[bad[0]]} (every value must be a finite number)")
    return a


def _positive(path: Path, key: str, a: np.ndarray, unit: str) -> None:
    bad = np.flatnonzero(a <= 0)
    if bad.size:
        raise DynamoProfileError(f"{path}: '{key}'[{bad[0]}] is {a[bad[0]]:g}: {unit} must be more than 0")


def _same_length(path: Path, arrays: dict[str, np.ndarray]) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise DynamoProfileError(f"{path}: the arrays must have one entry per point, but their lengths differ ({shown})")


def _milliseconds(path: Path, key: str, a: np.ndarray) -> None:
    """Dynamo writes latencies in milliseconds; all below 1 ms is a file written in seconds."""
    if float(a.max()) < 1.0:
        raise DynamoProfileError(f"{path}: '{key}' looks like seconds (largest {a.max():g}): Dynamo's profiler "
                           f"writes milliseconds (e.g. 61.9 for 61.9 ms)")


def read_prefill(path: Path) -> PrefillData:
    raw = _raw_arrays(path)
    arrays = {k: _array(path, raw, k) for k in PREFILL_KEYS}
    _same_length(path, arrays)
    isl, ttft, thpt = (arrays[k] for k in PREFILL_KEYS)
    _positive(path, "prefill_isl", isl, "an input length (tokens)")
    _positive(path, "prefill_ttft", ttft, "a TTFT (ms)")
    _positive(path, "prefill_thpt_per_gpu", thpt, "a throughput (tokens/s/GPU)")
    _milliseconds(path, "prefill_ttft", ttft)
    steps = np.flatnonzero(np.diff(isl) <= 0)
    if steps.size:
        i = int(steps[0]) + 1
        raise DynamoProfileError(f"{path}: 'prefill_isl' must increase strictly, but [{i}] = {isl[i]:g} follows "
                           f"{isl[i - 1]:g}")
    return PrefillData(path, isl, ttft, thpt)


def _max_kv_tokens(path: Path, raw: dict[str, object]) -> float:
    if "max_kv_tokens" not in raw:
        has = ", ".join(sorted(raw)) or "nothing"
        raise DynamoProfileError(f"{path}: missing 'max_kv_tokens' (the file has: {has})")
    value = raw["max_kv_tokens"]
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DynamoProfileError(f"{path}: 'max_kv_tokens' must be a number of tokens") from None
    if a.size != 1 or a.ndim > 1:
        raise DynamoProfileError(f"{path}: 'max_kv_tokens' must be one number (the KV capacity of one engine), "
                           f"got shape {a.shape}")
    v = float(a.reshape(-1)[0])
    if not math.isfinite(v) or v <= 0:
        raise DynamoProfileError(f"{path}: 'max_kv_tokens' is {v:g}: the KV capacity must be more than 0 tokens")
    return v


def read_decode(path: Path) -> DecodeData:
    raw = _raw_arrays(path)
    arrays = {k: _array(path, raw, k) for k in DECODE_KEYS}
    _same_length(path, arrays)
    kv, ctx, itl, thpt = (arrays[k] for k in DECODE_KEYS)
    max_kv = _max_kv_tokens(path, raw)
    _positive(path, "x_kv_usage", kv, "a KV usage")
    if float(kv.max()) > 1.0:
        i = int(np.argmax(kv))
        hint = " (a percentage? Dynamo writes a share, 0.5 for 50 %)" if kv.max() <= 100 else ""
        raise DynamoProfileError(f"{path}: 'x_kv_usage'[{i}] is {kv[i]:g}: the active KV share must be at most 1{hint}")
    _positive(path, "y_context_length", ctx, "a context length (tokens)")
    _positive(path, "z_itl", itl, "an ITL (ms)")
    _positive(path, "z_thpt_per_gpu", thpt, "a throughput (tokens/s/GPU)")
    _milliseconds(path, "z_itl", itl)
    for c in np.unique(ctx):
        at = kv[ctx == c]
        dup = at[np.flatnonzero(np.diff(np.sort(at)) == 0)]
        if dup.size:
            raise DynamoProfileError(f"{path}: two points at x_kv_usage {dup[0]:g} for y_context_length {c:g}: "
                               f"each measured point needs its own KV usage")
    return DecodeData(path, kv, ctx, itl, thpt, max_kv)


# --- The conversion at the SLOs ---------------------------------------------------------------------


def decode_at_itl(kv: np.ndarray, itl_ms: np.ndarray, thpt: np.ndarray, target_ms: float) -> tuple[float, float, bool]:
    """(throughput, KV usage, met) at the highest KV usage whose ITL is within `target_ms`, for the points
    of one context length: ITL and throughput linear in KV usage between points, no extrapolation. When
    even the lowest load misses the target, the lowest load's figures and met=False."""
    order = np.argsort(kv)
    kv, itl_ms, thpt = kv[order], itl_ms[order], thpt[order]
    if itl_ms[-1] <= target_ms:
        return float(thpt[-1]), float(kv[-1]), True
    for j in range(len(kv) - 2, -1, -1):  # the highest segment that crosses the target upwards
        if itl_ms[j] <= target_ms < itl_ms[j + 1]:
            f = (target_ms - itl_ms[j]) / (itl_ms[j + 1] - itl_ms[j])
            return float(thpt[j] + f * (thpt[j + 1] - thpt[j])), float(kv[j] + f * (kv[j + 1] - kv[j])), True
    return float(thpt[0]), float(kv[0]), False


def _ranges(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def convert(pre: PrefillData, dec: DecodeData, ttft_s: float, itl_s: float,
            prefill_gpus: int = 1, decode_gpus: int = 1) -> tuple[dict, list[str]]:
    """The capacity profile (its schema, as data) at TTFT `ttft_s` and ITL `itl_s` (seconds), and the
    conversion's warnings."""
    warnings: list[str] = []
    ttft_ms, itl_ms = ttft_s * 1000.0, itl_s * 1000.0
    meets = pre.ttft_ms <= ttft_ms
    if not meets.any():
        i = int(np.argmin(pre.ttft_ms))
        raise DynamoProfileError(f"{pre.source}: no profiled ISL meets the TTFT target {ttft_s:g} s (lowest TTFT "
                           f"{pre.ttft_ms[i]:g} ms, at ISL {pre.isl[i]:g}): set a looser --ttft or profile faster engines")
    if not meets.all():
        warnings.append(f"prefill: the profiled TTFT is above the {ttft_s:g} s target at ISL "
                        f"{_ranges(list(pre.isl[~meets]))} even on an idle engine: no replica count meets the "
                        f"target there (their throughput is kept, as Dynamo's Planner keeps it)")
    prefill = {
        "gpus_per_replica": prefill_gpus, "ttft_target_s": ttft_s,
        "tokens_per_s": [{"isl": float(x), "tokens_per_s": float(t) * prefill_gpus}
                         for x, t in zip(pre.isl, pre.thpt_per_gpu)],
    }
    points, missed = [], []
    for c in np.unique(dec.context):
        at = dec.context == c
        thpt, _, met = decode_at_itl(dec.kv_usage[at], dec.itl_ms[at], dec.thpt_per_gpu[at], itl_ms)
        if not met:
            missed.append(float(c))
        points.append({"context": float(c), "tokens_per_s": round(thpt * decode_gpus, 1)})
    if len(missed) == len(points):
        raise DynamoProfileError(f"{dec.source}: no profiled context meets the ITL target {itl_s * 1000:g} ms (lowest ITL "
                           f"{dec.itl_ms.min():g} ms): set a looser --itl or profile faster engines")
    if missed:
        warnings.append(f"decode: the profiled ITL is above the {itl_s * 1000:g} ms target at context "
                        f"{_ranges(missed)} even at the lowest load measured: no replica count meets the target "
                        f"there (the lowest load's throughput is kept, as Dynamo's Planner keeps it)")
    decode = {"gpus_per_replica": decode_gpus, "itl_target_s": itl_s, "kv_tokens": dec.max_kv_tokens,
              "tokens_per_s": points}
    return {"prefill": prefill, "decode": decode}, warnings


# --- GPUs per replica -------------------------------------------------------------------------------

_PARALLEL = re.compile(r"^\s*(tp|pp|dp)\s*=\s*(\d+)\s*$", re.I)


def parse_gpus(text: str) -> int:
    """GPUs of one engine from a count ("2") or its parallelism ("tp=2,pp=1,dp=2": the product)."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
    else:
        n, seen = 1, set()
        for part in text.split(","):
            m = _PARALLEL.match(part)
            if not m or m.group(1).lower() in seen:
                raise ValueError(f"invalid GPU count {text!r}: give a number (2) or the engine's parallelism "
                                 f"(tp=2,pp=1,dp=1)")
            seen.add(m.group(1).lower())
            n *= int(m.group(2))
    if n < 1:
        raise ValueError(f"invalid GPU count {text!r}: an engine has at least 1 GPU")
    return n


def _yaml_docs(path: Path) -> list:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DynamoProfileError(f"{path}: cannot read the profiler's engine config: {e}") from e


def _args(container: dict) -> list[str]:
    out: list[str] = []
    for key in ("command", "args"):
        v = container.get(key) or []
        for item in [v] if isinstance(v, str) else v:
            try:
                out += shlex.split(str(item))
            except ValueError:
                out += str(item).split()
    return out


def _flag(args: list[str], names: tuple[str, ...]) -> int | None:
    for i, a in enumerate(args):
        key, _, inline = a.partition("=")
        if key in names:
            value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
            if value.isdigit() and int(value) >= 1:
                return int(value)
    return None


def _get(d: object, *keys: str) -> dict:
    """d[k1][k2]..., {} where a level is missing or not a mapping (hand-edited configs)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def _planner_gpus(root: Path, role: str) -> tuple[int, str] | None:
    path = root / "config_with_planner.yaml"
    if not path.is_file():
        return None
    flag = f"--{role}-engine-num-gpu"
    for doc in _yaml_docs(path):
        for svc in _get(doc, "spec", "services").values():
            if isinstance(svc, dict):
                n = _flag(_args(_get(svc, "extraPodSpec", "mainContainer")), (flag,))
                if n:
                    return n, f"{flag}={n} in {path.name}"
    return None


def _engine_config_gpus(root: Path, role: str) -> tuple[int, str] | None:
    path = root / f"selected_{role}_interpolation" / "config.yaml"
    if not path.is_file():
        return None
    found = []
    for doc in _yaml_docs(path):
        for name, svc in _get(doc, "spec", "services").items():
            if not isinstance(svc, dict) or svc.get("componentType") in ("frontend", "planner") \
                    or name in ("Frontend", "Planner"):
                continue
            count = str(_get(svc, "multinode").get("nodeCount", 1)).strip()
            nodes = int(count) if count.isdigit() and int(count) >= 1 else 1
            gpu = str(_get(svc, "resources", "limits").get("gpu", "")).strip()
            if gpu.isdigit() and int(gpu) >= 1:
                found.append((int(gpu) * nodes, f"{name}'s resources.limits.gpu {gpu}"
                              + (f" x {nodes} nodes" if nodes > 1 else "") + f" in {path.parent.name}/{path.name}"))
                continue
            args = _args(_get(svc, "extraPodSpec", "mainContainer"))
            tp = _flag(args, ("--tensor-parallel-size", "--tp", "--tp-size"))
            pp = _flag(args, ("--pipeline-parallel-size", "--pp", "--pp-size"))
            dp = _flag(args, ("--data-parallel-size", "--dp", "--dp-size"))
            if "--enable-dp-attention" in args:  # SGLang: attention DP runs inside the TP group
                dp = None
            if tp or pp or dp:
                n = (tp or 1) * (pp or 1) * (dp or 1)
                found.append((n, f"{name}'s tp={tp or 1} pp={pp or 1} dp={dp or 1} in {path.parent.name}/{path.name}"))
    return found[0] if len(found) == 1 else None


def engine_gpus(root: Path, role: str, given: int | None, given_how: str) -> tuple[int, str, str | None]:
    """(GPUs per replica, where it came from, a warning or None)."""
    if given is not None:
        return given, given_how, None
    for finder in (_planner_gpus, _engine_config_gpus):
        got = finder(root, role)
        if got:
            return got[0], got[1], None
    return 1, "assumed", (f"{role}: the profiler output does not say how many GPUs one engine has; 1 assumed "
                          f"(give --{role}-gpus N or tp=..,pp=..,dp=.., or the role's gpus_per_replica)")


# --- The one entry point (scaler.capacity_profile.import_dynamo_profile: the CLI and load_profile) ---


def convert_output(path: str | Path, ttft_s: float, itl_s: float, prefill_gpus: int | None = None,
                   decode_gpus: int | None = None, prefill_how: str = "given", decode_how: str = "given") -> Imported:
    """Read a profiler output directory (or one of its files) and convert it at the SLOs (seconds).
    `*_gpus`: GPUs of one engine when known (`*_how`: from where), else read from the profiler output."""
    root, pfile, dfile = locate(path)
    pre, dec = read_prefill(pfile), read_decode(dfile)
    pg, pg_how, pw = engine_gpus(root, "prefill", prefill_gpus, prefill_how)
    dg, dg_how, dw = engine_gpus(root, "decode", decode_gpus, decode_how)
    profile, warnings = convert(pre, dec, ttft_s, itl_s, pg, dg)

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    notes = [
        f"prefill: {rel(pfile)}, {len(pre.isl)} ISL points ({pre.isl.min():g}-{pre.isl.max():g}); "
        f"{pg} GPU(s) per replica ({pg_how}); tokens/s = prefill_thpt_per_gpu x GPUs",
        f"decode: {rel(dfile)}, {len(np.unique(dec.context))} contexts x {len(dec.kv_usage)} points; {dg} GPU(s) "
        f"per replica ({dg_how}); tokens/s at the highest KV usage within the ITL target; kv_tokens = max_kv_tokens",
    ]
    return Converted(profile, [w for w in (pw, dw) if w] + warnings, notes)
