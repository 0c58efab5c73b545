"""The `pdscaler` command line: serve, config, emulate, demo, forecast-eval."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from scaler import __version__


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _load_config(path: str):
    """The config at `path`, or None after printing the error (path, field, value) to stderr."""
    from scaler.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"pdscaler: {e}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    from scaler.config import PrometheusSourceConfig

    config = _load_config(args.config)
    if config is None:
        return 2
    if args.prometheus_url:
        if not isinstance(config.source, PrometheusSourceConfig):
            print("pdscaler: --prometheus-url needs source.kind: prometheus in the config", file=sys.stderr)
            return 2
        config = config.model_copy(update={"source": config.source.model_copy(update={"url": args.prometheus_url})})
    return asyncio.run(_serve(config, args.host, args.port))


async def _serve(config, host: str, port: int) -> int:
    from scaler.clock import SystemClock
    from scaler.engine import Engine
    from scaler.loop import DecisionLoop
    from scaler.server import start_server
    from scaler.sources import build_source
    from scaler.store import DecisionStore

    store = DecisionStore()
    loop = DecisionLoop(Engine(config), build_source(config), store, SystemClock())
    server, bound = await start_server(config, store, port, host)
    loop.start()
    print(f"pdscaler {__version__}: KEDA external scaler on {host}:{bound} for graphs {', '.join(config.graphs)}", flush=True)
    stop = asyncio.Event()
    aloop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        aloop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    loop.stop()
    loop.source.close()
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from scaler.config import example_config_text

    sys.stdout.write(example_config_text())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load_config(args.file)
    if config is None:
        return 2
    roles = sum(len(g.roles) for g in config.graphs.values())
    print(f"{args.file}: valid ({len(config.graphs)} graphs, {roles} roles, source {config.source.kind})")
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from scaler.emulator.app import run

    return run(
        port=args.port,
        host=args.host,
        speedup=args.speedup,
        trace=args.trace,
        trace_format=args.format,
        rate_scale=args.rate_scale,
        graph=args.graph,
        namespace=args.namespace,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from scaler.demo import DemoOptions, run_demo

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


def cmd_forecast_eval(args: argparse.Namespace) -> int:
    import json

    from forecasting.evaluation import evaluate, registry_specs
    from forecasting.series import load_series
    from scaler.config import parse_duration

    try:
        horizons = [parse_duration(h) for h in args.horizon.split(",") if h.strip()]
        step = parse_duration(args.step) if args.step else None
        warmup = parse_duration(args.warmup) if args.warmup else None
        quantiles = [float(q) for q in args.quantiles.split(",") if q.strip()]
        names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        series = load_series(args.trace, args.format, args.series, args.signal, step)
        specs = registry_specs(names)
        progress = (lambda msg: print(f"pdscaler forecast-eval: {msg}", file=sys.stderr, flush=True)) if args.progress else None
        ev = evaluate(series, specs, horizons, quantiles, args.max_origins, args.seed, warmup,
                      signal=args.signal, trace=args.trace, progress=progress)
    except (ValueError, OSError) as e:
        print(f"pdscaler forecast-eval: {e}", file=sys.stderr)
        return 2
    print(ev.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(ev.to_json(), f, indent=2, allow_nan=False)
            f.write("\n")
    if args.plot:
        ev.plot(args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdscaler", description="Predictive KEDA external scaler for disaggregated LLM serving")
    p.add_argument("--version", action="version", version=f"pdscaler {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the KEDA external scaler (gRPC)")
    s.add_argument("--config", required=True, help="config file (see `pdscaler config example`)")
    s.add_argument("--port", type=int, default=6000, help="gRPC port (default 6000)")
    s.add_argument("--host", default="[::]", help="address to bind (default all)")
    s.add_argument("--prometheus-url", help="override source.url of a prometheus source")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("config", help="example and check configuration files")
    csub = c.add_subparsers(dest="config_command", required=True)
    ce = csub.add_parser("example", help="print a complete, commented example config")
    ce.set_defaults(func=cmd_config_example)
    cc = csub.add_parser("check", help="validate a config file")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)

    e = sub.add_parser("emulate", help="emulate a disaggregated serving graph (OpenAI API, Dynamo metrics, /scale)")
    e.add_argument("--port", type=int, default=8000)
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--speedup", type=float, default=1.0, help="virtual time runs this many times faster")
    e.add_argument("--trace", help="replay a trace internally: a path, or azure-code / azure-conv")
    e.add_argument("--format", choices=["azure", "mooncake"], help="trace format (default: detected)")
    e.add_argument("--rate-scale", type=float, default=1.0, help="multiply the trace's arrival rate")
    e.add_argument("--graph", default="demo", help="graph (DGD) name used in metric labels and adapters")
    e.add_argument("--namespace", default="default")
    e.set_defaults(func=cmd_emulate)

    d = sub.add_parser("demo", help="replay a real trace against the emulator with pdscaler and KEDA/HPA emulation")
    d.add_argument("--duration", type=float, default=None, help="wall seconds to run (default: the whole trace)")
    d.add_argument("--speedup", type=float, default=30.0, help="virtual seconds per wall second (default 30)")
    d.add_argument("--grpc-port", type=int, default=0, help="keep the scaler's gRPC server on this port (default: ephemeral)")
    d.add_argument("--no-ui", action="store_true", help="plain log lines instead of the live terminal view")
    d.add_argument("--trace", default="azure-code", help="azure-code (default), azure-conv, or a trace path")
    d.add_argument("--rate-scale", type=float, default=10.0, help="multiply the trace's arrival rate (default 10)")
    d.add_argument("--start", type=float, default=0.0, help="start this many trace seconds in")
    d.set_defaults(func=cmd_demo)

    fe = sub.add_parser("forecast-eval", help="rolling-origin evaluation of the forecasting models on a trace")
    fe.add_argument("--trace", required=True, help="per-request trace (Azure CSV, Mooncake JSONL) or ServeGen rate CSV")
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
    fe.add_argument("--progress", action="store_true", help="log each model's progress to stderr")
    fe.set_defaults(func=cmd_forecast_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
