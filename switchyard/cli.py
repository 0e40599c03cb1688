"""`switchyard` command line: up | validate | sim | replay | usage | control-plane | node |
ext-proc."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from control_plane.config import ConfigError, default_config_path, load_config
from switchyard.helpfmt import HelpFormatter


def _cmd_validate(args: argparse.Namespace) -> int:
    from control_plane.compile import PUSH_ORDER, compile_config

    if args.diff:
        from switchyard.config_diff import run as diff

        status, report = diff(*args.diff)
        print(report, file=sys.stderr if status else sys.stdout)
        return status

    try:
        snapshot = compile_config(load_config(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"config OK: {args.config} (version {snapshot.version})")
    for type_url in PUSH_ORDER:
        names = ", ".join(getattr(r, "name", "?") for r in snapshot.resources[type_url])
        print(f"  {type_url.rsplit('.', 1)[-1]}: {names}")
    print("routes:")
    for line in snapshot.summary:
        print(f"  {line}")
    return 0


def _stop_on_signals() -> Callable[[], bool]:
    """A predicate that turns true on SIGTERM or SIGINT (Ctrl-C): the supervisor's stop."""
    flag = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: flag.set())
    signal.signal(signal.SIGINT, lambda *_: flag.set())
    return flag.is_set


def _cmd_up(args: argparse.Namespace) -> int:
    from switchyard.launcher import Gateway

    try:
        gateway = Gateway(args.config, log_level=args.log_level)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stopped = _stop_on_signals()
    try:
        gateway.start()
    except RuntimeError as exc:  # a port is taken: say which, at once
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        gateway.wait_ready(timeout=args.ready_timeout)
        model = next(iter(sorted(gateway.cfg.models)), "MODEL")
        print(f"""
Switchyard is up: {gateway.url}/v1   (Envoy admin: http://{gateway.cfg.admin.address}:\
{gateway.cfg.admin.port}, config: {gateway.config_path})

  curl {gateway.url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c "import openai; c = openai.OpenAI(base_url='{gateway.url}/v1', api_key='none'); \
print(c.chat.completions.create(model='{model}', \
messages=[{{'role': 'user', 'content': 'Hi'}}]).choices[0].message.content)"

Edit the config file to add models (hot-reloaded). Ctrl-C stops everything.
""", file=sys.stderr, flush=True)
        return gateway.supervise(stopped)
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        gateway.stop()
        print("Switchyard stopped: Envoy, ext_proc, control plane and simulator have exited.",
              file=sys.stderr, flush=True)


def _cmd_sim(args: argparse.Namespace) -> int:
    """Run every provider that has `simulate:` in the config, each with its own timing."""
    import uvloop

    from sim.server import SimOptions, start_sim
    from sim.vllm_engine import EngineConfig

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def serve() -> None:
        runners = []
        for name, p in sorted(cfg.providers.items()):
            if p.simulate is None:
                continue
            settings = p.simulate.model_dump(exclude={"replicas", "engine"})
            options = SimOptions(**settings)
            engine = (EngineConfig.from_dict(p.simulate.engine.model_dump())
                      if p.simulate.engine is not None else None)
            # A pool: one simulated replica (own engine, own /metrics) per endpoint.
            for host, port in p.endpoint_addresses:
                runners.append(await start_sim(p.kind, name, host, port, options,
                                               engine=engine))
                print(f"sim: {name} ({p.kind}) on http://{host}:{port}", file=sys.stderr,
                      flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for r in runners:
            await r.cleanup()

    uvloop.run(serve())
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    from switchyard.usage_query import run

    try:
        return run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _cmd_node(args: argparse.Namespace) -> int:
    from switchyard.fleet import Node

    node = Node(args.control_plane, listen=args.listen, admin=args.admin, metrics=args.metrics,
                concurrency=args.concurrency, log_level=args.log_level,
                usage_dir=args.usage_dir, log_dir=args.log_dir,
                **({"node_id": args.node_id} if args.node_id else {}))
    stopped = _stop_on_signals()
    node.start()
    try:
        node.wait_ready(timeout=args.ready_timeout)
        print(f"Switchyard node {node.node_id} is up (control plane {args.control_plane}, "
              f"listener {args.listen or 'from the config'}, metrics {node.status_url})",
              file=sys.stderr, flush=True)
        return node.supervise(stopped)
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        node.stop()
        print(f"Switchyard node {node.node_id} stopped.", file=sys.stderr, flush=True)


def _cmd_replay(args: argparse.Namespace) -> int:
    from switchyard.replay.cli import run

    return run(args)


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("switchyard")
    except PackageNotFoundError:
        return "0+unknown"


_FORMAT = HelpFormatter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__,
                                     formatter_class=_FORMAT)
    parser.add_argument("--version", action="version", version=f"switchyard {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    default = default_config_path()

    up = sub.add_parser("up", help="start the whole gateway (Envoy, control plane, ext_proc, sim)",
                        description="Start the control plane, one node (ext_proc + Envoy) and "
                                    "the simulator on this machine; Ctrl-C stops them all.",
                        formatter_class=_FORMAT)
    up.add_argument("--config", type=Path, default=default,
                    help="gateway config file (hot-reloaded when it changes)")
    up.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="log level of every child process")
    up.add_argument("--ready-timeout", type=float, default=60.0,
                    help="seconds to wait for the gateway to answer before giving up")
    up.set_defaults(func=_cmd_up)

    val = sub.add_parser("validate", help="validate a config and print the compiled routes",
                         description="Validate a config (exit 0 and print the compiled "
                                     "routes, or exit 1 naming file:line and field).",
                         formatter_class=_FORMAT)
    val.add_argument("config", type=Path, nargs="?", default=default,
                     help="config file to validate")
    val.add_argument("--diff", nargs=2, type=Path, metavar=("OLD", "NEW"), default=None,
                     help="print what changing OLD into NEW does (models, backends, prices, "
                          "limits, routing, tenants added / removed / changed); exit 1 when "
                          "NEW is invalid, 2 when OLD is")
    val.set_defaults(func=_cmd_validate)

    sim = sub.add_parser("sim", help="run the provider simulator for `simulate:` providers",
                         formatter_class=_FORMAT)
    sim.add_argument("--config", type=Path, default=default,
                     help="config whose `simulate:` providers to serve")
    sim.set_defaults(func=_cmd_sim)

    from switchyard.capacity.cli import add_parsers as add_capacity_parsers
    from switchyard.replay.cli import add_parser as add_replay_parser

    add_replay_parser(sub).set_defaults(func=_cmd_replay)
    add_capacity_parsers(sub)

    from switchyard.usage_query import add_parser as add_usage_parser

    add_usage_parser(sub, _FORMAT).set_defaults(func=_cmd_usage)

    node = sub.add_parser(
        "node", help="run one fleet node (Envoy + ext_proc) against a remote control plane",
        description="Envoy + ext_proc on this machine, configured by the control plane at "
                    "--control-plane; N nodes share one control plane (and one Redis).",
        formatter_class=_FORMAT)
    node.add_argument("--control-plane", required=True, metavar="HOST:PORT",
                      help="the control plane's gRPC address")
    node.add_argument("--listen", default="", metavar="HOST:PORT",
                      help="this node's client listener; default: the config's `listen`")
    node.add_argument("--admin", default="127.0.0.1:9901", metavar="HOST:PORT",
                      help="Envoy admin (keep it on loopback)")
    node.add_argument("--metrics", default="127.0.0.1:9464", metavar="HOST:PORT",
                      help="ext_proc /metrics, /healthz, /limits; the control plane polls it "
                           "for the status page, so make it reachable from there")
    node.add_argument("--node-id", default="",
                      help="name shown by the control plane; default: HOSTNAME-PID")
    node.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    node.add_argument("--usage-dir", type=Path, default=None,
                      help="usage ledger directory; default: no ledger")
    node.add_argument("--log-dir", type=Path, default=None,
                      help="write Envoy's and ext_proc's logs here; default: this stderr")
    node.add_argument("--log-level", default="info",
                      choices=("debug", "info", "warning", "error"), help="ext_proc log level")
    node.add_argument("--ready-timeout", type=float, default=60.0,
                      help="seconds to wait for the node to serve before giving up")
    node.set_defaults(func=_cmd_node)

    cp = sub.add_parser("control-plane", help="run only the control plane (a fleet's hub); "
                        "--help for its options", add_help=False)
    cp.set_defaults(func=None, module="control_plane.server")
    ep = sub.add_parser("ext-proc", help="run only the ext_proc server; --help for its options",
                        add_help=False)
    ep.set_defaults(func=None, module="ext_proc.server")

    args, rest = parser.parse_known_args(argv)
    if args.func is None:
        if args.module == "control_plane.server":
            from control_plane.server import main as cp_main

            cp_main(rest)
        else:
            from ext_proc.server import main as ep_main

            ep_main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
