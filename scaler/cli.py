"""The `pdscaler` command line: serve, explain, config, emulate, demo, forecast-eval, backtest."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from scaler import __version__

log = logging.getLogger("pdscaler.cli")


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
    def adjust(cfg):  # command-line overrides, re-applied to every reload
        if args.prometheus_url and isinstance(cfg.source, PrometheusSourceConfig):
            return cfg.model_copy(update={"source": cfg.source.model_copy(update={"url": args.prometheus_url})})
        return cfg

    config = adjust(config)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            print("pdscaler: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
            return 2
        from scaler.server import TlsFiles

        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
        try:
            tls.credentials()
        except OSError as e:
            print(f"pdscaler: {e}", file=sys.stderr)
            return 2
    return asyncio.run(_serve(config, args.host, args.port, args.http_port, tls, args.config, adjust))


async def _serve(config, host: str, port: int, http_port: int | None = None, tls=None,
                 config_path: str | None = None, adjust=None) -> int:
    """Run the server until SIGINT/SIGTERM. With `config_path`, SIGHUP or a change of the file reloads
    it (`adjust` re-applies command-line overrides); an invalid file keeps the running config."""
    from grpc_health.v1 import health_pb2

    from scaler.clock import SystemClock
    from scaler.engine import Engine
    from scaler.metrics import AgeCollector, ScalerMetrics
    from scaler.server import SERVICE_NAME, start_server
    from scaler.sources import build_source
    from scaler.store import DecisionStore
    from scaler.worker import DecisionWorker

    store, clock = DecisionStore(), SystemClock()
    metrics = ScalerMetrics(parts=("server",))
    if config.kubernetes.enabled:  # fail at start-up, in this process, when there are no credentials
        from scaler.kube.api import KubeApi

        try:
            KubeApi.from_config(config.kubernetes).close()
        except Exception as e:
            print(f"pdscaler: kubernetes.enabled but no API credentials: {e}", file=sys.stderr)
            return 2
    # The decision loop (metrics source, forecasts, cluster reads) runs in a child process, so that its
    # CPU work never holds this process's GIL while KEDA waits for an answer (scaler/worker.py).
    worker = DecisionWorker(config, store, clock)
    metrics.extra = worker.child_metrics  # the decision series, rendered in the decision process
    metrics.registry.register(AgeCollector(store, clock.now))
    server, bound = await start_server(config, store, port, host, tls, [metrics.interceptor()])
    graphs = list(config.graphs)  # shared with the HTTP port; updated in place on reload
    http = None
    if http_port is not None and http_port >= 0:
        from scaler.http_admin import start_http

        http, http_bound = await start_http(store, graphs, host.strip("[]") or "::", http_port, metrics,
                                            health=worker.healthy)
        print(f"pdscaler {__version__}: explain and metrics on http://{host}:{http_bound}/explain, /metrics", flush=True)
    worker.start()
    print(f"pdscaler {__version__}: KEDA external scaler on {host}:{bound} for graphs {', '.join(config.graphs)}", flush=True)

    def apply(new) -> None:
        if new.kubernetes != worker.config.kubernetes:
            log.warning("config reload: the kubernetes section changed; it takes effect at the next restart")
        Engine(new, live=True)  # raise here, before anything changes
        build_source(new).close()
        worker.reload(new)
        server.scaler.config = new
        graphs[:] = list(new.graphs)

    reloader = None
    if config_path is not None:
        from scaler.config import load_config
        from scaler.reload import ConfigReloader

        reloader = ConfigReloader(config_path, config, apply, lambda r: metrics.config_reloads.labels(r).inc())
        if adjust is not None:
            reloader.load = lambda path: adjust(load_config(path))
    stop = asyncio.Event()
    aloop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        aloop.add_signal_handler(sig, stop.set)
    if reloader is not None:
        aloop.add_signal_handler(signal.SIGHUP, lambda: reloader.reload("SIGHUP"))
    serving = True
    while not stop.is_set():  # every few seconds: health, and the config file
        ok, why = worker.healthy()
        metrics.healthy.set(1 if ok else 0)
        if ok != serving:
            serving = ok
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await server.health.set(name, status)
            (log.info if ok else log.error)("health: %s", why)
        if reloader is not None:
            reloader.check()
        try:
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        except asyncio.TimeoutError:
            pass
    await server.stop(grace=5)
    if http is not None:
        await http.cleanup()
    worker.stop()
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Print ScaledObjects for a DGD's prefill and decode adapters, and the matching config."""
    import yaml

    from scaler.render import RenderError, render

    try:
        text = sys.stdin.read() if args.dgd == "-" else open(args.dgd, encoding="utf-8").read()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except OSError as e:
        print(f"pdscaler render: cannot read {args.dgd}: {e.strerror}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"pdscaler render: {args.dgd} is not YAML: {e}", file=sys.stderr)
        return 2
    dgds = [d for d in docs if isinstance(d, dict) and d.get("kind") == "DynamoGraphDeployment"]
    if len(dgds) != 1:
        kinds = ", ".join(str(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs) or "nothing"
        print(f"pdscaler render: {args.dgd} must hold exactly one DynamoGraphDeployment (found: {kinds})",
              file=sys.stderr)
        return 2
    if not 0 <= args.min_replicas <= args.max_replicas or args.max_replicas < 1:
        print("pdscaler render: need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1", file=sys.stderr)
        return 2
    try:
        objects, snippet = render(dgds[0], args.namespace, scaler_address=args.scaler_address,
                                  min_replicas=args.min_replicas, max_replicas=args.max_replicas)
    except RenderError as e:
        print(f"pdscaler render: {e}", file=sys.stderr)
        return 2
    config_text = yaml.safe_dump(snippet, sort_keys=False)
    out = yaml.safe_dump_all(objects, sort_keys=False)
    if args.config_out:
        with open(args.config_out, "w", encoding="utf-8") as f:
            f.write(config_text)
    else:
        out += "# pdscaler config for this graph (merge under the scaler's config; `pdscaler config check`):\n"
        out += "".join(f"# {line}\n" for line in config_text.splitlines())
    sys.stdout.write(out)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Ask a running `pdscaler serve` for its latest decision (its HTTP port) and print it."""
    import urllib.error
    import urllib.parse
    import urllib.request

    query = {"graph": args.graph} if args.graph else {}
    if args.json:
        query["format"] = "json"
    url = args.server.rstrip("/") + "/explain" + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            sys.stdout.write(r.read().decode())
        return 0
    except urllib.error.HTTPError as e:
        print(f"pdscaler explain: {e.read().decode().strip() or e.reason} (HTTP {e.code} from {url})", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"pdscaler explain: cannot reach {args.server}: {reason} (is `pdscaler serve` running with "
              f"--http-port?)", file=sys.stderr)
        return 2


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
    return _report(ev, args)


def cmd_backtest(args: argparse.Namespace) -> int:
    from scaler.config import ConfigError
    from scaler.config import parse_duration
    from scaler.sim.backtest import progress_wanted, run_backtest
    from scaler.sim.context import SimContext
    from scaler.sim.nodes import NodeSettings
    from scaler.sim.policies import DEFAULT_POLICIES
    from scaler.sim.workload import load_workload

    try:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(DEFAULT_POLICIES)
        warm, cold = parse_duration(args.warm_start), parse_duration(args.cold_start)
        if cold < warm:
            raise ValueError(f"--cold-start ({cold:g}s) must be at least --warm-start ({warm:g}s)")
        workload = load_workload(
            args.trace, args.format, series=args.series, rate_scale=args.rate_scale, dt=args.dt, seed=args.seed,
            isl=args.isl, osl=args.osl, interpolation=args.interpolation,
            history_s=parse_duration(args.history) if args.history is not None else None,
        ).sliced(parse_duration(args.start), parse_duration(args.duration) if args.duration else None)
        nodes = NodeSettings(warm, cold - warm, parse_duration(args.scale_down_unneeded))
        overrides = None
        if args.config:
            import yaml

            from scaler.config import load_config

            load_config(args.config)  # validated as a whole first: errors name the path and value
            with open(args.config, encoding="utf-8") as f:
                overrides = yaml.safe_load(f)
        ctx = SimContext(workload, ttft_slo=args.slo_ttft, itl_slo=args.slo_itl, nodes=nodes,
                         profile_path=args.profile, max_replicas=args.max_replicas, engine_overrides=overrides)
        bt = run_backtest(args.trace, ctx, policies, progress=progress_wanted(args.no_progress))
    except (ValueError, OSError, ConfigError) as e:
        print(f"pdscaler backtest: {e}", file=sys.stderr)
        return 2
    return _report(bt, args)


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
    s.add_argument("--http-port", type=int, default=9090,
                   help="HTTP port for /explain, /metrics and /healthz (default 9090; -1 = off)")
    s.add_argument("--tls-cert", help="serve gRPC over TLS with this PEM certificate (needs --tls-key)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this PEM CA (mTLS)")
    s.set_defaults(func=cmd_serve)

    rd = sub.add_parser("render", help="ScaledObjects and config attaching pdscaler to a DynamoGraphDeployment")
    rd.add_argument("--dgd", required=True, help="a DynamoGraphDeployment manifest (YAML or JSON; '-' = stdin)")
    rd.add_argument("--namespace", help="namespace of the ScaledObjects (default: the DGD's, else default)")
    rd.add_argument("--scaler-address", default="pdscaler.pdscaler.svc.cluster.local:6000",
                    help="pdscaler's gRPC address as KEDA reaches it (default: the manifests' Service)")
    rd.add_argument("--min-replicas", type=int, default=1)
    rd.add_argument("--max-replicas", type=int, default=16)
    rd.add_argument("--config-out", help="write the config snippet to this file instead of as comments")
    rd.set_defaults(func=cmd_render)

    x = sub.add_parser("explain", help="the latest decision of a running scaler, with every input and rule")
    x.add_argument("--graph", help="the serving graph (default: all)")
    x.add_argument("--server", default="http://127.0.0.1:9090", help="the scaler's HTTP port (serve --http-port)")
    x.add_argument("--json", action="store_true", help="print JSON instead of text")
    x.add_argument("--timeout", type=float, default=5.0)
    x.set_defaults(func=cmd_explain)

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

    bt = sub.add_parser("backtest", help="replay a trace through the fluid model under several scaling policies")
    bt.add_argument("--trace", required=True, help="per-request trace (Azure CSV, Mooncake JSONL), ServeGen rate CSV, "
                    "or azure-code / azure-conv")
    bt.add_argument("--format", choices=["azure", "mooncake", "rates"], help="trace format (default: detected)")
    bt.add_argument("--series", help="category_model of a rate curve (e.g. language/m-large)")
    bt.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate (default 1)")
    bt.add_argument("--policies", help="comma-separated (default oracle,static-peak,static-mean,reactive-ttft,planner,"
                    "pdscaler; also planner-prophet)")
    bt.add_argument("--profile", help="capacity profile file handed to pdscaler's config")
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
    bt.add_argument("--json", help="write the results as JSON to this file")
    bt.add_argument("--plot", help="write a PNG: demand, replicas per role per policy, SLO breaches")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a TTY)")
    bt.set_defaults(func=cmd_backtest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
