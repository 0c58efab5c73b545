"""`pdscaler profile import`: Dynamo's pre-deployment profiler output -> a capacity profile YAML at the SLOs.

The reading and the conversion are scaler/dynamo_profile.py (documented there), behind
`scaler.capacity_profile.import_dynamo_profile`, the same code `load_profile` runs when a graph's
`profile:` names a profiler output. This module is the command: the SLOs and GPUs from the flags or a
config's graph, the YAML to --out or stdout, a summary and the warnings on stderr, and every
ProfileError as one line with exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# The parser is built at every `pdscaler` run: numpy, pydantic and the config load when the command runs.


def _slo_arg(bare_limit_s: float):
    """A duration option; a bare number this large is a forgotten unit (--itl 30 is 30 seconds)."""

    def parse(text: str) -> float:
        from scaler.config import parse_duration

        try:
            v = parse_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        if v >= bare_limit_s and re.fullmatch(r"\s*[\d.]+\s*", text):
            raise argparse.ArgumentTypeError(f"{text} means {v:g} seconds; give a unit (e.g. {text.strip()}ms)")
        return v

    return parse


def _gpus_arg(text: str) -> int:
    from scaler.dynamo_profile import parse_gpus

    try:
        return parse_gpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub) -> None:
    """Adds `profile import` to the `pdscaler` subcommands (`sub`: argparse subparsers)."""
    p = sub.add_parser("profile", help="capacity profiles: import Dynamo's pre-deployment profiler output")
    psub = p.add_subparsers(dest="profile_command", required=True)
    im = psub.add_parser(
        "import", help="convert Dynamo profiler output to a pdscaler capacity profile at the SLOs",
        description="Read the interpolation data Dynamo's SLA Planner loads (selected_prefill_interpolation/"
        "raw_data.npz or prefill_raw_data.json, selected_decode_interpolation/raw_data.npz or decode_raw_data.json) "
        "and write pdscaler's capacity profile (YAML) at the TTFT and ITL targets.")
    im.add_argument("path", help="the profiler's output directory, or one of those files")
    im.add_argument("--ttft", type=_slo_arg(10.0), help="TTFT target, e.g. 500ms or 0.5s "
                    "(default: the graph's slo.ttft_s with --config, else 0.5 s)")
    im.add_argument("--itl", type=_slo_arg(1.0), help="ITL target, e.g. 30ms "
                    "(default: the graph's slo.itl_s with --config, else 30 ms)")
    im.add_argument("--prefill-gpus", type=_gpus_arg, metavar="N|tp=..,pp=..,dp=..",
                    help="GPUs of one prefill engine (default: the config's role, else the profiler output's)")
    im.add_argument("--decode-gpus", type=_gpus_arg, metavar="N|tp=..,pp=..,dp=..",
                    help="GPUs of one decode engine (default: the config's role, else the profiler output's)")
    im.add_argument("--config", help="a pdscaler config: the SLOs and GPUs per replica of --graph are the defaults")
    im.add_argument("--graph", help="the graph of --config (default: its only graph)")
    im.add_argument("--out", help="write the profile to this file (default: stdout)")
    im.set_defaults(func=cmd_profile_import)


def graph_settings(config_path: str, graph: str | None) -> tuple[float, float, int | None, int | None]:
    """(TTFT s, ITL s, prefill GPUs or None, decode GPUs or None) of a config's graph."""
    from scaler.capacity_profile import ProfileError, role_gpus
    from scaler.config import ConfigError, load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise ProfileError(str(e)) from None
    if graph is None:
        if len(cfg.graphs) != 1:
            raise ProfileError(f"{config_path} has {len(cfg.graphs)} graphs ({', '.join(cfg.graphs)}): give --graph")
        graph = next(iter(cfg.graphs))
    if graph not in cfg.graphs:
        raise ProfileError(f"{config_path}: unknown graph {graph!r}; configured graphs: {', '.join(cfg.graphs)}")
    g = cfg.graphs[graph]
    gpus = role_gpus(g)
    return g.slo.ttft_s, g.slo.itl_s, gpus.get("prefill"), gpus.get("decode")


def cmd_profile_import(args: argparse.Namespace) -> int:
    from scaler.capacity_profile import ProfileError, import_dynamo_profile

    try:
        ttft, itl, pg, dg = 0.5, 0.03, None, None
        if args.config:
            ttft, itl, pg, dg = graph_settings(args.config, args.graph)
        elif args.graph:
            raise ProfileError("--graph needs --config")
        ttft = args.ttft if args.ttft is not None else ttft
        itl = args.itl if args.itl is not None else itl
        gpus, how = {}, {}
        for role, flag, cfg in (("prefill", args.prefill_gpus, pg), ("decode", args.decode_gpus, dg)):
            gpus[role], how[role] = ((flag, f"--{role}-gpus") if flag is not None
                                     else (cfg, "the config's gpus_per_replica"))
        got = import_dynamo_profile(args.path, ttft, itl, gpus["prefill"], gpus["decode"], how["prefill"], how["decode"])
        text = got.yaml(args.path)
        if args.out:
            try:
                Path(args.out).write_text(text, encoding="utf-8")
            except OSError as e:
                raise ProfileError(f"cannot write {args.out}: {e.strerror}") from None
        else:
            sys.stdout.write(text)
    except ProfileError as e:
        print(f"pdscaler profile import: {e}", file=sys.stderr)
        return 2
    for w in got.warnings:
        print(f"warning: {w}", file=sys.stderr)
    p, d = got.profile.prefill, got.profile.decode
    pre = ", ".join(f"{pt.isl:g}: {pt.tokens_per_s:,.0f}" for pt in p.tokens_per_s)
    dec = ", ".join(f"{pt.context:g}: {pt.tokens_per_s:,.0f}" for pt in d.tokens_per_s)
    print(f"prefill tokens/s per replica ({p.gpus_per_replica} GPU) by ISL at TTFT {p.ttft_target_s:g} s: {pre}",
          file=sys.stderr)
    print(f"decode tokens/s per replica ({d.gpus_per_replica} GPU) by context at ITL {d.itl_target_s * 1000:g} ms: "
          f"{dec}; KV {d.kv_tokens:,.0f} tokens", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
