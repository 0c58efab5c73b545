"""The capacity profile: what one replica of each role serves at the SLO targets.

A profile is measured on the real hardware (Dynamo's profiler, or any benchmark sweep) and given as a
YAML file or inline in the config:

    prefill:
      gpus_per_replica: 1
      ttft_target_s: 0.5
      tokens_per_s:              # prefill tokens/s per replica at the TTFT target, by input length
        - {isl: 512, tokens_per_s: 42000}
        - {isl: 8192, tokens_per_s: 36000}
    decode:
      gpus_per_replica: 1
      itl_target_s: 0.03
      kv_tokens: 896000          # KV-cache capacity of one replica, tokens
      tokens_per_s:              # decode tokens/s per replica at the ITL target, by context length
        - {context: 1024, tokens_per_s: 15800}
        - {context: 8192, tokens_per_s: 9000}

`profile:` may also name Dynamo's pre-deployment profiler output (its directory, or its
`prefill_raw_data.json` / `raw_data.npz` files): it is converted at load at the graph's SLOs, by the code
of `pdscaler profile import` (scaler/dynamo_profile.py).

Curves are interpolated linearly between points and held flat beyond the ends. Without a profile,
the roles' `prefill.tokens_per_s`, `decode.tokens_per_s` and `decode.kv_tokens` (flat curves; the
Dynamo SLA-planner profile by default) are used.

`scaler/data/profile.emulated.yaml` is the profile of the emulated hardware at the MLPerf interactive
SLOs (the default of the demo and the simulator); the test bench derives it
(`scaler.testbench.emulator.profile.capacity_profile`) and a test keeps the file equal to the derivation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scaler.validation import format_validation_error, yaml_error_line


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IslPoint(_Model):
    isl: float = Field(ge=0)
    tokens_per_s: float = Field(gt=0)


class ContextPoint(_Model):
    context: float = Field(ge=0)
    tokens_per_s: float = Field(gt=0)


def _sorted_unique(points: list, key: str) -> list:
    if not points:
        raise ValueError("a curve needs at least one point")
    xs = [getattr(p, key) for p in points]
    if len(set(xs)) != len(xs):
        raise ValueError(f"duplicate {key} values in {xs}")
    return sorted(points, key=lambda p: getattr(p, key))


def _interp(points: list, key: str, x: float, harmonic: bool = False) -> float:
    """tokens/s at `x` on a curve sorted by `key`, flat beyond the ends; between points linear, or with
    `harmonic` linear in the time per token (1 / tokens/s), which for a convex falling curve (decode
    throughput by context: each token reads the whole KV, so its time grows about linearly with the
    context) lies on the curve's side of the chord instead of above it."""
    xs = [getattr(p, key) for p in points]
    ys = np.array([p.tokens_per_s for p in points], dtype=float)
    if harmonic and (ys > 0).all():
        return float(1.0 / np.interp(x, xs, 1.0 / ys))
    return float(np.interp(x, xs, ys))


class PrefillProfile(_Model):
    gpus_per_replica: int = Field(1, ge=1)
    ttft_target_s: float = Field(0.5, gt=0, description="the TTFT the throughput points were measured at")
    tokens_per_s: list[IslPoint]

    @field_validator("tokens_per_s")
    @classmethod
    def _curve(cls, v: list[IslPoint]) -> list[IslPoint]:
        return _sorted_unique(v, "isl")

    def throughput(self, isl: float) -> float:
        """Prefill tokens/s of one replica for requests of mean input length `isl`."""
        return _interp(self.tokens_per_s, "isl", isl)


class DecodeProfile(_Model):
    gpus_per_replica: int = Field(1, ge=1)
    itl_target_s: float = Field(0.03, gt=0, description="the ITL the throughput points were measured at")
    kv_tokens: float = Field(gt=0, description="KV-cache capacity of one replica, tokens")
    tokens_per_s: list[ContextPoint]

    @field_validator("tokens_per_s")
    @classmethod
    def _curve(cls, v: list[ContextPoint]) -> list[ContextPoint]:
        return _sorted_unique(v, "context")

    def throughput(self, context: float) -> float:
        """Decode tokens/s of one replica when sequences hold `context` tokens on average (harmonic
        interpolation: see _interp)."""
        return _interp(self.tokens_per_s, "context", context, harmonic=True)


class CapacityProfile(_Model):
    prefill: PrefillProfile
    decode: DecodeProfile


class ProfileError(Exception):
    """A profile file that cannot be used; the message says where and why."""


def load_profile(path: str | Path, ttft_s: float = 0.5, itl_s: float = 0.03, prefill_gpus: int | None = None,
                 decode_gpus: int | None = None) -> CapacityProfile:
    """A profile YAML file, or Dynamo's pre-deployment profiler output (a directory, or one of its .npz /
    .json files) converted at the SLOs `ttft_s` / `itl_s` by `import_dynamo_profile`, the code of
    `pdscaler profile import` (`*_gpus`: GPUs per replica, default the profiler output's)."""
    path = Path(path)
    from scaler.dynamo_profile import looks_like_profiler_output

    if looks_like_profiler_output(path):
        how = "the role's gpus_per_replica"
        got = import_dynamo_profile(path, ttft_s, itl_s, prefill_gpus, decode_gpus, how, how)
        for w in got.warnings:
            logging.getLogger("pdscaler.profile").warning("%s: %s", path, w)
        return got.profile
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ProfileError(f"cannot read capacity profile {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ProfileError(yaml_error_line(str(path), e)) from e
    try:
        return CapacityProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"{path}: invalid capacity profile\n{format_validation_error(e)}") from e


@dataclass(frozen=True)
class ImportedProfile:
    """A profile converted from Dynamo's profiler output, the conversion's warnings and where each figure came from."""

    profile: CapacityProfile
    warnings: list[str]
    notes: list[str]

    def yaml(self, path_shown: str) -> str:
        p, d = self.profile.prefill, self.profile.decode
        header = (
            f"# Capacity profile imported from Dynamo's pre-deployment profiler output ({path_shown})\n"
            f"# by `pdscaler profile import` at TTFT {p.ttft_target_s:g} s and ITL {d.itl_target_s * 1000:g} ms.\n"
            + "".join(f"# {n}\n" for n in self.notes)
            + "".join(f"# warning: {w}\n" for w in self.warnings)
        )
        return profile_yaml(self.profile, header)


def import_dynamo_profile(path: str | Path, ttft_s: float, itl_s: float, prefill_gpus: int | None = None,
                          decode_gpus: int | None = None, prefill_how: str = "given",
                          decode_how: str = "given") -> ImportedProfile:
    """Dynamo's pre-deployment profiler output (a directory or one of its files) as a capacity profile at
    the SLOs (seconds), converted by scaler/dynamo_profile.py; `*_gpus`: GPUs of one engine when known
    (`*_how`: from where), else read from the profiler output. ProfileError: one line naming the file."""
    from scaler.dynamo_profile import DynamoProfileError, convert_output

    try:
        got = convert_output(path, ttft_s, itl_s, prefill_gpus, decode_gpus, prefill_how, decode_how)
        return ImportedProfile(CapacityProfile.model_validate(got.data), got.warnings, got.notes)
    except DynamoProfileError as e:
        raise ProfileError(str(e)) from None
    except ValidationError as e:  # not expected: the conversion builds valid curves
        raise ProfileError(f"{path}: the converted profile is invalid: {format_validation_error(e)}") from None


def role_gpus(graph) -> dict[str, int]:
    """The GPUs per replica a graph's (GraphConfig) prefill / decode roles set explicitly, by kind (the first
    role of each kind): they override what a profiler output records."""
    out: dict[str, int] = {}
    for rc in graph.roles.values():
        if rc.kind in ("prefill", "decode") and rc.kind not in out and "gpus_per_replica" in rc.model_fields_set:
            out[rc.kind] = rc.gpus_per_replica
    return out


def flat_profile(prefill_tokens_per_s: float, decode_tokens_per_s: float, kv_tokens: float,
                 prefill_gpus: int = 1, decode_gpus: int = 1) -> CapacityProfile:
    """A profile with the same throughput at every length (the config's scalar figures)."""
    return CapacityProfile(
        prefill=PrefillProfile(gpus_per_replica=prefill_gpus, tokens_per_s=[IslPoint(isl=0, tokens_per_s=prefill_tokens_per_s)]),
        decode=DecodeProfile(gpus_per_replica=decode_gpus, kv_tokens=kv_tokens,
                             tokens_per_s=[ContextPoint(context=0, tokens_per_s=decode_tokens_per_s)]),
    )


def profile_yaml(profile: CapacityProfile, header: str = "") -> str:
    data = profile.model_dump(mode="json")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
