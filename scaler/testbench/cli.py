"""The test bench's subcommands of `pdscaler`: emulate, demo, backtest, frontier, forecast-eval.

Registered through the `pdscaler.commands` entry point (pyproject.toml); each imports what it runs
only when it runs, so building the parser costs nothing.
"""

from __future__ import annotations

import argparse
import errno
import sys

from scaler.cli import UserError, check_port_free
from scaler.testbench.traces import TRACE_HELP, TraceError, resolve_trace


def register(sub) -> None:
    e = sub.add_parser("emulate", help="emulate a disaggregated serving graph (OpenAI API, Dynamo metrics, /scale)")
    e.add_argument("--port", type=int, default=8000)
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--speedup", type=float, default=1.0, help="virtual time runs this many times faster")
    e.add_argument("--trace", help="replay a per-request trace internally: " + TRACE_HELP)
    e.add_argument("--format", choices=["azure", "mooncake"], help="trace format (default: detected)")
    e.add_argument("--rate-scale", type=float, default=1.0, help="multiply the trace's arrival rate")
    e.add_argument("--graph", default="example", help="graph (DGD) name used in metric labels and adapters "
                   "(default example, the graph of `pdscaler config example`)")
    e.add_argument("--namespace", default="dynamo", help="Kubernetes namespace in metric labels and adapters "
                   "(default dynamo, the example config's)")
    e.set_defaults(func=cmd_emulate)

    d = sub.add_parser("demo", help="replay a real trace against the emulator with pdscaler and KEDA/HPA emulation")
    d.add_argument("--duration", type=float, default=None, help="wall seconds to run (default: the whole trace)")
    d.add_argument("--speedup", type=float, default=30.0, help="virtual seconds per wall second (default 30)")
    d.add_argument("--grpc-port", type=int, default=0, help="keep the scaler's gRPC server on this port (default: ephemeral)")
    d.add_argument("--no-ui", action="store_true", help="plain log lines instead of the live terminal view")
    d.add_argument("--trace", default="azure-code", help="per-request trace (default azure-code): " + TRACE_HELP)
    d.add_argument("--rate-scale", type=float, default=10.0, help="multiply the trace's arrival rate (default 10)")
    d.add_argument("--start", type=float, default=0.0, help="start this many trace seconds in")
    d.set_defaults(func=cmd_demo)

    fe = sub.add_parser("forecast-eval", help="rolling-origin evaluation of the forecasting models on a trace")
    fe.add_argument("--trace", required=True, help=TRACE_HELP)
    fe.add_argument("--format", choices=["azure", "mooncake", "rates"], help="trace format (default: detected)")
    fe.add_argument("--series", help="category_model of a rate curve (e.g. language/m-large)")
    fe.add_argument("--signal", default="request_rate",
                    choices=["request_rate", "prefill_tokens_per_s", "decode_tokens_per_s"],
                    help="what to forecast (rate curves: request_rate only)")
    fe.add_argument("--horizon", required=True, help="lead time(s), comma-separated: 2m,5m,10m,1h")
    fe.add_argument("--step", help="bin width of a per-request trace (default 30s); rate curves: their resolution")
    fe.add_argument("--models", help="comma-separated registry names (default: all)")
    fe.add_argument("--quantiles", default="0.5,0.9", help="quantiles scored by pinball loss (default 0.5,0.9)")
    fe.add_argument("--max-origins", type=int, help="score an evenly spaced subsample of N origins (same for all models)")
    fe.add_argument("--seed", type=int, default=0)
    fe.add_argument("--warmup", help="fit on this much history (default: 25%% of the series, >= 3 days if it spans >= 6)")
    fe.add_argument("--json", help="write the metrics as JSON to this file")
    fe.add_argument("--plot", help="write a PNG: actual vs the selected model's forecast and the best baseline")
    fe.add_argument("--progress", action="store_true", default=None,
                    help="log each model's progress to stderr (default: when stderr is a terminal)")
    fe.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    fe.set_defaults(func=cmd_forecast_eval)

    bt = sub.add_parser("backtest", help="replay a trace through the fluid model under several scaling policies")
    _replay_args(bt, trace_required=False)
    _prometheus_args(bt)
    bt.add_argument("--policies", help="comma-separated (default oracle,static-peak,static-mean,static-best,reactive-ttft,"
                    "llmd-keda,planner,planner-load,pdscaler; also planner-prophet)")
    bt.add_argument("--json", help="write the results as JSON to this file")
    bt.add_argument("--plot", help="write a PNG: demand, replicas per role per policy, SLO breaches")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a TTY)")
    bt.set_defaults(func=cmd_backtest)

    fr = sub.add_parser("frontier", help="attainment against GPU-hours: each backtest policy swept over its knob")
    _replay_args(fr)
    fr.add_argument("--policies", help="comma-separated (default oracle,static,reactive-ttft,llmd-keda,planner,"
                    "planner-load,pdscaler; static = sizes around static-best; others one point each)")
    fr.add_argument("--target", type=float, default=0.99, help="attainment target of the headline and static-best "
                    "(TTFT and ITL; default 0.99)")
    fr.add_argument("--json", help="write every point, the fronts and the headline as JSON to this file")
    fr.add_argument("--plot", help="write a PNG: GPU-hours vs min(TTFT, ITL) attainment, a line per policy")
    fr.add_argument("--no-progress", action="store_true", help="no progress lines (also off when stderr is not a TTY)")
    fr.set_defaults(func=cmd_frontier)


def _prometheus_args(bt) -> None:
    """`backtest --prometheus`: a graph's own history instead of a trace (scaler/testbench/sim/history.py)."""
    g = bt.add_argument_group("a graph's own history, from Prometheus (instead of --trace)")
    g.add_argument("--prometheus", metavar="URL", help="read the graph's history from this Prometheus (the queries "
                   "`pdscaler serve` sends) and replay it; policy as-run is the replicas that ran")
    g.add_argument("--graph", help="the graph (default: --config's only graph)")
    g.add_argument("--namespace", help="its Kubernetes namespace (default: the config's, else any)")
    g.add_argument("--range", default="7d", help="how much history to replay, up to --end (default 7d)")
    g.add_argument("--step", default="1m", help="resolution of the range queries, a multiple of --dt (default 1m)")
    g.add_argument("--end", help="end of the range: epoch seconds or ISO 8601 (default: now)")


def _replay_args(bt, trace_required: bool = True) -> None:
    """The workload, hardware and cluster options `backtest` and `frontier` share."""
    bt.add_argument("--trace", required=trace_required, help=TRACE_HELP)
    bt.add_argument("--format", choices=["azure", "mooncake", "rates"], help="trace format (default: detected)")
    bt.add_argument("--series", help="category_model of a rate curve (e.g. language/m-large)")
    bt.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate (default 1)")
    bt.add_argument("--profile", help="capacity profile file handed to pdscaler's config instead of the "
                    "simulated hardware's")
    bt.add_argument("--config", help="a pdscaler config: its forecast section and first graph's settings and "
                    "roles (matched by kind) apply to the pdscaler policy")
    bt.add_argument("--slo-ttft", type=float, default=0.5, help="TTFT SLO, seconds (default 0.5)")
    bt.add_argument("--slo-itl", type=float, default=0.03, help="ITL SLO, seconds (default 0.03)")
    bt.add_argument("--duration", help="simulate this long (e.g. 2h, 3d; default: the whole trace)")
    bt.add_argument("--start", default="0", help="skip this much of the simulated span (default 0)")
    bt.add_argument("--history", help="trace kept as history before the simulation (default: 1 day if the trace "
                    "spans 2 days or more, else 0)")
    bt.add_argument("--dt", type=float, default=1.0, help="simulation step, seconds (default 1)")
    bt.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals of rate curves")
    bt.add_argument("--isl", type=float, help="mean input length (rate curves: default per series)")
    bt.add_argument("--osl", type=float, help="mean output length (rate curves: default per series)")
    bt.add_argument("--interpolation", choices=["linear", "step"], default="linear",
                    help="rate curves: between 10-minute points (default linear)")
    bt.add_argument("--warm-start", default="90s", help="replica start-up on a provisioned GPU (default 90s)")
    bt.add_argument("--cold-start", default="300s", help="replica start-up when a node must be provisioned (default 300s)")
    bt.add_argument("--scale-down-unneeded", default="600s", help="idle GPU node kept this long (default 600s)")
    bt.add_argument("--max-replicas", type=int, default=1000, help="per-role ceiling of the adaptive policies")


def trace_path(spec: str) -> str:
    """A --trace value (a path or a bundled name) as the path of its file; UserError otherwise."""
    try:
        return str(resolve_trace(spec))
    except TraceError as e:
        raise UserError(str(e)) from None


def cmd_emulate(args: argparse.Namespace) -> int:
    from scaler.testbench.emulator.app import run

    trace = trace_path(args.trace) if args.trace else None
    check_port_free(args.host, args.port, "the emulator's", "--port")
    try:
        return run(
            port=args.port,
            host=args.host,
            speedup=args.speedup,
            trace=trace,
            trace_format=args.format,
            rate_scale=args.rate_scale,
            graph=args.graph,
            namespace=args.namespace,
        )
    except OSError as e:  # the port taken between the check and the bind
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} is already in use: choose another with --port") from None
        raise


def cmd_demo(args: argparse.Namespace) -> int:
    from scaler.testbench.demo import DemoOptions, run_demo

    trace_path(args.trace)  # a file or a bundled name, else one line now
    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration must be more than 0 seconds, not {args.duration:g}")
    if not args.speedup > 0 or not args.rate_scale >= 0 or not args.start >= 0:
        raise UserError("--speedup must be more than 0, --rate-scale and --start 0 or more")
    check_port_free("127.0.0.1", args.grpc_port, "the scaler's gRPC", "--grpc-port")
    try:
        return run_demo(
            DemoOptions(
                duration=args.duration,
                speedup=args.speedup,
                grpc_port=args.grpc_port,
                ui=not args.no_ui,
                trace=args.trace,
                rate_scale=args.rate_scale,
                start=args.start,
            )
        )
    except TraceError as e:
        raise UserError(str(e)) from None


def _report(result, args: argparse.Namespace) -> int:
    """Print a result's table; write its JSON (--json) and plot (--plot) when asked."""
    import json

    print(result.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=2, allow_nan=False)
            f.write("\n")
    if args.plot:
        result.plot(args.plot)
    return 0


def cmd_forecast_eval(args: argparse.Namespace) -> int:
    from forecasting.evaluation.rolling_origin import evaluate, registry_specs
    from forecasting.evaluation.series import load_series
    from scaler.config import parse_duration

    path = trace_path(args.trace)
    try:
        horizons = [parse_duration(h) for h in args.horizon.split(",") if h.strip()]
        step = parse_duration(args.step) if args.step else None
        warmup = parse_duration(args.warmup) if args.warmup else None
        quantiles = [float(q) for q in args.quantiles.split(",") if q.strip()]
        names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        series = load_series(path, args.format, args.series, args.signal, step)
        specs = registry_specs(names)
        wanted = sys.stderr.isatty() if args.progress is None else args.progress
        progress = (lambda msg: print(f"pdscaler forecast-eval: {msg}", file=sys.stderr, flush=True)) if wanted else None
        ev = evaluate(series, specs, horizons, quantiles, args.max_origins, args.seed, warmup,
                      signal=args.signal, trace=args.trace, progress=progress)
    except (ValueError, OSError) as e:
        print(f"pdscaler forecast-eval: {e}", file=sys.stderr)
        return 2
    return _report(ev, args)


def _replay_context(args: argparse.Namespace):
    """The SimContext of `backtest` / `frontier` from their shared options."""
    from scaler.config import load_config, parse_duration
    from scaler.testbench.sim.context import SimContext
    from scaler.testbench.sim.nodes import NodeSettings
    from scaler.testbench.sim.workload import load_workload

    path = trace_path(args.trace)
    warm, cold = parse_duration(args.warm_start), parse_duration(args.cold_start)
    if cold < warm:
        raise ValueError(f"--cold-start ({cold:g}s) must be at least --warm-start ({warm:g}s)")
    workload = load_workload(
        path, args.format, series=args.series, rate_scale=args.rate_scale, dt=args.dt, seed=args.seed,
        isl=args.isl, osl=args.osl, interpolation=args.interpolation,
        history_s=parse_duration(args.history) if args.history is not None else None,
    ).sliced(parse_duration(args.start), parse_duration(args.duration) if args.duration else None)
    nodes = NodeSettings(warm, cold - warm, parse_duration(args.scale_down_unneeded))
    overrides = None
    if args.config:
        import yaml

        load_config(args.config)  # validated as a whole first: errors name the path and value
        with open(args.config, encoding="utf-8") as f:
            overrides = yaml.safe_load(f)
    return SimContext(workload, ttft_slo=args.slo_ttft, itl_slo=args.slo_itl, nodes=nodes,
                      profile_path=args.profile, max_replicas=args.max_replicas, engine_overrides=overrides)


def cmd_backtest(args: argparse.Namespace) -> int:
    if args.prometheus:
        from scaler.testbench.sim.history import cmd_backtest_prometheus

        return cmd_backtest_prometheus(args, _report)
    if not args.trace:
        print("pdscaler backtest: give --trace (a trace to replay) or --prometheus URL (a graph's own history)",
              file=sys.stderr)
        return 2
    from scaler.config import ConfigError
    from scaler.testbench.sim.backtest import progress_wanted, run_backtest
    from scaler.testbench.sim.policies import DEFAULT_POLICIES

    try:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(DEFAULT_POLICIES)
        ctx = _replay_context(args)
        bt = run_backtest(args.trace, ctx, policies, progress=progress_wanted(args.no_progress))
    except (ValueError, OSError, ConfigError) as e:
        print(f"pdscaler backtest: {e}", file=sys.stderr)
        return 2
    return _report(bt, args)


def cmd_frontier(args: argparse.Namespace) -> int:
    from scaler.config import ConfigError
    from scaler.testbench.sim.backtest import progress_wanted
    from scaler.testbench.sim.frontier import FRONTIER_POLICIES, run_frontier

    try:
        if not 0 < args.target <= 1:
            raise ValueError(f"--target must be in (0, 1], got {args.target}")
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(FRONTIER_POLICIES)
        ctx = _replay_context(args)
        log = (lambda msg: print(f"pdscaler frontier: {msg}", file=sys.stderr, flush=True)) \
            if progress_wanted(args.no_progress) else None
        fr = run_frontier(args.trace, ctx, policies, target=args.target, progress=log)
    except (ValueError, OSError, ConfigError) as e:
        print(f"pdscaler frontier: {e}", file=sys.stderr)
        return 2
    return _report(fr, args)
