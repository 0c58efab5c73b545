"""The `pdscaler` command line: serve, render, explain, config (the product's commands).

The test bench's commands (emulate, demo, backtest, forecast-eval) plug in through the entry-point
group `pdscaler.commands` (scaler/testbench/cli.py): the product names no module of the bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import re
import signal
import sys

from scaler import __version__

log = logging.getLogger("pdscaler.cli")


class UserError(Exception):
    """A mistake of the person running a command (a port in use, a missing or malformed input file):
    `main` prints its message as one line on stderr, `pdscaler <command>: <message>`, and exits 2."""


def check_port_free(host: str | None, port: int, what: str, flag: str) -> None:
    """UserError unless `host:port` can be bound now (port 0, ephemeral, always can): a port in use
    says so and names the option choosing another, before a server starts and fails half-way."""
    if port is None or port <= 0:
        return
    from scaler.http_admin import listen_sockets

    try:
        socks = listen_sockets(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            hint = " (Prometheus' own default port: a local Prometheus?)" if port == 9090 else ""
            raise UserError(f"{what} port {port} is already in use{hint}: is another pdscaler running? "
                            f"Choose another port with {flag}") from None
        raise UserError(f"cannot listen on {host or '[::]'}:{port} ({what} port, {flag}): "
                        f"{getattr(e, 'strerror', None) or e}") from None
    for s in socks:
        s.close()


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


def tls_client_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The client certificate names `serve` admits under mTLS: --tls-client-name, else the default."""
    from scaler.server import DEFAULT_CLIENT_NAMES

    names = tuple(n.strip() for value in args.tls_client_name for n in value.split(",") if n.strip())
    return names or DEFAULT_CLIENT_NAMES


def cmd_serve(args: argparse.Namespace) -> int:
    from scaler.config import PrometheusSourceConfig

    config = _load_config(args.config)
    if config is None:
        return 2
    if args.prometheus_url and args.scrape_url:
        raise UserError("give --prometheus-url or --scrape-url, not both")
    if args.prometheus_url:
        if not isinstance(config.source, PrometheusSourceConfig):
            print("pdscaler: --prometheus-url needs source.kind: prometheus in the config", file=sys.stderr)
            return 2
    if args.scrape_url and len(config.graphs) != 1:
        raise UserError(f"--scrape-url reads one graph's /metrics, and {args.config} configures "
                        f"{len(config.graphs)} ({', '.join(config.graphs)}): use source.kind: scrape with targets per graph")

    def adjust(cfg):  # command-line overrides, re-applied to every reload
        if args.prometheus_url and isinstance(cfg.source, PrometheusSourceConfig):
            return cfg.model_copy(update={"source": cfg.source.model_copy(update={"url": args.prometheus_url})})
        if args.scrape_url:
            from scaler.config import ScrapeSourceConfig

            src = ScrapeSourceConfig(targets={g: list(args.scrape_url) for g in cfg.graphs},
                                     timeout=cfg.source.timeout, rate_window=cfg.source.rate_window,
                                     metric_names=cfg.source.metric_names)
            return cfg.model_copy(update={"source": src})
        return cfg

    config = adjust(config)
    for g, gc in config.graphs.items():
        for line in gc.ignored_settings(g):
            log.warning("config: %s", line)
    tls = None
    if args.tls_client_name and not args.tls_client_ca:
        print("pdscaler: --tls-client-name needs --tls-client-ca (client certificates exist only under mTLS)",
              file=sys.stderr)
        return 2
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            print("pdscaler: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
            return 2
        from scaler.server import TlsFiles

        try:
            tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca, tls_client_names(args))
            tls.credentials()
        except (OSError, ValueError) as e:
            print(f"pdscaler: {e}", file=sys.stderr)
            return 2
    from scaler.http_admin import HttpLimits
    from scaler.server import GrpcLimits, RepeatedLinesFilter

    grpc_limits = GrpcLimits(args.grpc_max_rpcs, args.grpc_max_streams_per_connection)
    http_limits = HttpLimits(max_connections=args.http_max_connections, idle_timeout=args.http_idle_timeout)
    fds = _raise_file_limit()
    if fds is not None and http_limits.max_connections > fds // 4:
        # the HTTP port must never take the descriptors the gRPC port (and the worker) need
        log.warning("--http-max-connections %d lowered to %d: a quarter of the %d open files allowed",
                    http_limits.max_connections, max(1, fds // 4), fds)
        http_limits = dataclasses.replace(http_limits, max_connections=max(1, fds // 4))
    check_port_free(args.host, args.port, "the gRPC", "--port")
    if args.http_port is not None and args.http_port >= 0:
        check_port_free(args.http_host, args.http_port, "the HTTP", "--http-port (-1: off)")
    repeats = RepeatedLinesFilter()  # a flood of identical lines: one a minute, with its count
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(repeats)
    try:
        return asyncio.run(_serve(config, args.host, args.port, args.http_port, tls, args.config, adjust,
                                  http_host=args.http_host, grpc_limits=grpc_limits, http_limits=http_limits))
    finally:
        for handler in handlers:
            handler.removeFilter(repeats)


async def _serve(config, host: str, port: int, http_port: int | None = None, tls=None,
                 config_path: str | None = None, adjust=None, http_host: str | None = None,
                 grpc_limits=None, http_limits=None) -> int:
    """Run the server until SIGINT/SIGTERM. With `config_path`, SIGHUP or a change of the file reloads
    it (`adjust` re-applies command-line overrides); an invalid file keeps the running config.
    `http_host` None: the HTTP port listens on every address, IPv4 and IPv6."""
    from grpc_health.v1 import health_pb2

    from scaler.clock import SystemClock, Timeline
    from scaler.engine import Engine
    from scaler.metrics import AgeCollector, ScalerMetrics
    from scaler.server import SERVICE_NAME, start_server
    from scaler.sources import build_source
    from scaler.store import DecisionStore
    from scaler.worker import DecisionWorker

    store, clock = DecisionStore(), Timeline(SystemClock())  # ages and timeouts on the monotonic clock
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
    worker = DecisionWorker(config, store, clock, registry=metrics.registry)
    metrics.extra = worker.child_metrics  # the decision series, rendered in the decision process
    metrics.registry.register(AgeCollector(store, clock.now))
    try:
        server = await start_server(config, store, port, host, tls, [metrics.interceptor()], grpc_limits)
    except (RuntimeError, OSError) as e:  # taken since check_port_free, or an address not of this host
        raise UserError(f"cannot listen on {host}:{port} (gRPC port, --port): {e}") from None

    async def report_health(serving: bool | None) -> bool:
        """gRPC health (and the pdscaler_healthy gauge) from worker.healthy(); /healthz asks it directly."""
        ok, why = worker.healthy()
        metrics.healthy.set(1 if ok else 0)
        if ok != serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await server.health.set(name, status)
            (log.info if ok or serving is None else log.error)("health: %s", why)
        return ok

    # start_server said SERVING: not so until the first answers are ready (scaler/worker.py)
    serving = await report_health(None)
    graphs = list(config.graphs)  # shared with the HTTP port; updated in place on reload
    http = None
    if http_port is not None and http_port >= 0:
        from scaler.http_admin import ALL_ADDRESSES, start_http

        try:
            http, http_bound = await start_http(store, graphs, http_host, http_port, metrics,
                                                health=worker.healthy, limits=http_limits)
        except OSError as e:  # taken since check_port_free
            await server.stop(grace=None)
            raise UserError(f"cannot listen on port {http_port} (HTTP port, --http-port; -1: off): "
                            f"{e.strerror or e}") from None
        shown = "[::]" if http_host in ALL_ADDRESSES else f"[{http_host.strip('[]')}]" if ":" in http_host else http_host
        print(f"pdscaler {__version__}: explain and metrics on http://{shown}:{http_bound}/explain, /metrics"
              + (" (every address, IPv4 and IPv6)" if http_host in ALL_ADDRESSES else ""), flush=True)
    worker.start()
    print(f"pdscaler {__version__}: KEDA external scaler on {host}:{server.port} for graphs {', '.join(config.graphs)}", flush=True)

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
    changed = asyncio.Event()  # the worker's state changed (child down, started, first answers ready)
    worker.on_change = lambda: aloop.call_soon_threadsafe(changed.set)
    while not stop.is_set():  # every few seconds and at each change of the worker: health, the config file
        changed.clear()
        serving = await report_health(serving)
        if reloader is not None:
            reloader.check()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())]
        _, pending = await asyncio.wait(waits, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
    await server.stop(grace=5)
    if http is not None:
        await http.cleanup()
    worker.stop()
    return 0


UNSHARDED_ADDRESS = "pdscaler.pdscaler.svc.cluster.local:6000"
SHARD_ADDRESS = "pdscaler-shard-{shard}.pdscaler.svc.cluster.local:6000"  # manifests/overlays/sharded


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
    address = args.scaler_address or (SHARD_ADDRESS if args.shards > 1 else UNSHARDED_ADDRESS)
    if args.shards < 1 or (args.shards > 1 and "{shard}" not in address):
        print("pdscaler render: --shards must be >= 1, and with more than one the --scaler-address must "
              "hold {shard} (e.g. " + SHARD_ADDRESS + ")", file=sys.stderr)
        return 2
    if args.shards > 1:  # the Service of the shard that owns this graph (sharding.shard_of)
        from scaler.config import ShardingConfig

        md = dgds[0].get("metadata") or {}
        ns = args.namespace or md.get("namespace") or "default"
        address = address.format(shard=ShardingConfig(shards=args.shards, index=0).shard_of(str(md.get("name")), ns))
    try:
        objects, snippet = render(dgds[0], args.namespace, scaler_address=address,
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
            body = r.read().decode()
        sys.stdout.write(body if args.json else readable_times(body))
        return 0
    except urllib.error.HTTPError as e:
        print(f"pdscaler explain: {e.read().decode().strip() or e.reason} (HTTP {e.code} from {url})", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"pdscaler explain: cannot reach {args.server}: {reason} (is `pdscaler serve` running with "
              f"--http-port?)", file=sys.stderr)
        return 2


_EPOCH = re.compile(r"\bt=(\d{9,}(?:\.\d+)?)")


def readable_times(text: str, now: float | None = None) -> str:
    """The epoch times of an explain text (`t=1764650000.0`) as ISO-8601 UTC with their age:
    `2025-12-02T05:53:20Z, 12 s ago`."""
    import time
    from datetime import datetime, timezone

    now = time.time() if now is None else now

    def one(m: re.Match) -> str:
        t = float(m.group(1))
        iso = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        age = now - t
        ago = f"{age:.0f} s ago" if abs(age) < 120 else f"{age / 60:.0f} min ago" if abs(age) < 7200 \
            else f"{age / 3600:.1f} h ago"
        return f"{iso}, {ago}" if age >= -1 else f"{iso}, in {-age:.0f} s"

    return _EPOCH.sub(one, text)


def cmd_config_example(args: argparse.Namespace) -> int:
    from scaler.config import example_config_text

    sys.stdout.write(example_config_text())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load_config(args.file)
    if config is None:
        return 2
    from scaler.capacity_profile import ProfileError

    for g, gc in config.graphs.items():  # a profile file is read when the scaler starts: read it now
        if isinstance(gc.profile, str):
            try:
                gc.capacity_profile()
            except (ProfileError, ValueError, OSError) as e:
                print(f"pdscaler: {args.file}: graphs.{g}.profile: {e}", file=sys.stderr)
                return 2
    roles = sum(len(g.roles) for g in config.graphs.values())
    print(f"{args.file}: valid ({_count(len(config.graphs), 'graph')}, {_count(roles, 'role')}, "
          f"source {config.source.kind})")
    sharding = getattr(config, "sharding", None)
    if sharding is not None and sharding.shards > 1:
        print(f"shard {sharding.index} of {sharding.shards} (PDSCALER_SHARD_INDEX or sharding.index): "
              f"its graphs {', '.join(config.graphs) or 'none'}")
    for g, gc in config.graphs.items():
        for line in gc.ignored_settings(g):
            print(f"warning: {line}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _raise_file_limit(want: int = 65536) -> int | None:
    """Raise this process's soft limit on open files towards the hard one (at most `want`); returns the
    soft limit in force (None where there is no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def _positive_float(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return x


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _non_negative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


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
    s.add_argument("--scrape-url", action="append", default=[], metavar="URL",
                   help="read the config's one graph straight from this /metrics URL (repeatable) instead of its "
                        "source: a scrape source, e.g. `pdscaler emulate`'s http://127.0.0.1:8000/metrics")
    s.add_argument("--http-port", type=int, default=9090,
                   help="HTTP port for /explain, /metrics and /healthz (default 9090; -1 = off)")
    s.add_argument("--http-host", default=None,
                   help="address the HTTP port binds (default: every address, IPv4 and IPv6; '::' too)")
    s.add_argument("--http-max-connections", type=_positive, default=256,
                   help="HTTP connections open at once; one more closes the oldest idle one, or is answered 503 "
                        "when all are busy (default 256)")
    s.add_argument("--http-idle-timeout", type=_positive_float, default=15.0,
                   help="seconds an HTTP connection may stay without a complete request, or idle after an answer, "
                        "before it is closed (default 15)")
    s.add_argument("--grpc-max-rpcs", type=_non_negative, default=4096,
                   help="gRPC RPCs in progress at once, streams included; more are answered RESOURCE_EXHAUSTED "
                        "(default 4096; 0 = no limit)")
    s.add_argument("--grpc-max-streams-per-connection", type=_non_negative, default=4096,
                   help="HTTP/2 streams one gRPC connection may have open; a client wanting more waits (default 4096)")
    s.add_argument("--tls-cert", help="serve gRPC over TLS with this PEM certificate (needs --tls-key)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this PEM CA (mTLS)")
    s.add_argument("--tls-client-name", action="append", default=[], metavar="NAME[,NAME...]",
                   help="with --tls-client-ca, serve only clients whose certificate's subject CN or a "
                        "subjectAltName is one of these (repeatable or comma-separated; default: "
                        "keda-operator, KEDA's client certificate in manifests/overlays/tls)")
    s.set_defaults(func=cmd_serve)

    rd = sub.add_parser("render", help="ScaledObjects and config attaching pdscaler to a DynamoGraphDeployment")
    rd.add_argument("--dgd", required=True, help="a DynamoGraphDeployment manifest (YAML or JSON; '-' = stdin)")
    rd.add_argument("--namespace", help="namespace of the ScaledObjects (default: the DGD's, else default)")
    rd.add_argument("--scaler-address", help="pdscaler's gRPC address as KEDA reaches it (default: the manifests' "
                    f"Service, {UNSHARDED_ADDRESS}; with --shards, {SHARD_ADDRESS}: {{shard}} is the graph's shard)")
    rd.add_argument("--shards", type=int, default=1, help="the fleet is split over this many pdscaler shards "
                    "(sharding.shards): point the ScaledObjects at the shard that owns the graph")
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

    from scaler.profile_import import register as register_profile

    register_profile(sub)  # `pdscaler profile import`: Dynamo's profiler output -> capacity profile

    _plug_in(sub)
    return p


def _plug_in(sub) -> None:
    """Subcommands registered by installed packages (`pdscaler.commands` entry points: `register(sub)`)."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="pdscaler.commands"), key=lambda ep: ep.name):
        ep.load()(sub)


def main(argv: list[str] | None = None) -> int:
    from scaler.capacity_profile import ProfileError

    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.func(args)
    except (UserError, ProfileError) as e:  # ProfileError: a graph's capacity profile that cannot be used
        print(f"pdscaler {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
