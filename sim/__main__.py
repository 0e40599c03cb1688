"""`python -m sim --provider NAME:KIND:PORT ...`: several simulated providers in one process."""

import argparse
import asyncio
import signal
import sys

import uvloop

from sim.server import LOOPBACK, PROVIDERS, SimOptions, SimRunner, start_sim


def run(
    providers: list[tuple[str, str, int]],
    options: SimOptions,
    *,
    require_key: str | None = None,
) -> None:
    """Serve `(name, kind, port)` providers on 127.0.0.1 until SIGINT/SIGTERM."""
    _check(providers)
    uvloop.run(_serve(providers, options, require_key))


def _check(providers: list[tuple[str, str, int]]) -> None:
    if not providers:
        raise ValueError("at least one provider is required")
    names = [name for name, _, _ in providers]
    ports = [port for _, _, port in providers if port != 0]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate provider names: {names}")
    if len(set(ports)) != len(ports):
        raise ValueError(f"duplicate provider ports: {ports}")
    for name, kind, port in providers:
        if kind not in PROVIDERS:
            raise ValueError(f"{name}: unknown kind {kind!r}; known: {sorted(PROVIDERS)}")
        if not 0 <= port <= 65535:
            raise ValueError(f"{name}: bad port {port}")


async def _serve(
    providers: list[tuple[str, str, int]], options: SimOptions, require_key: str | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners: list[SimRunner] = []
    try:
        for name, kind, port in providers:
            # Options are swapped, never mutated, so providers can share the initial object.
            runner = await start_sim(kind, name, LOOPBACK, port, options, require_key=require_key)
            runners.append(runner)
            print(f"sim: {name} ({kind}) listening on {runner.base_url}", flush=True)
        print("sim: ready", flush=True)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        print("sim: stopped", flush=True)


def _provider_arg(value: str) -> tuple[str, str, int]:
    parts = value.split(":")
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:KIND:PORT, got {value!r}")
    return parts[0], parts[1], int(parts[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    parser.add_argument(
        "--provider",
        action="append",
        type=_provider_arg,
        required=True,
        metavar="NAME:KIND:PORT",
        help=f"a simulated provider; KIND is one of {', '.join(sorted(PROVIDERS))}",
    )
    parser.add_argument(
        "--ttft-ms",
        type=float,
        default=SimOptions.ttft_ms,
        help="delay before the first token (default %(default)s)",
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=SimOptions.tokens_per_s,
        help="stream rate after the first token; <= 0: no delay (default %(default)s)",
    )
    parser.add_argument("--require-key", default=None, help="API key every request must carry")
    args = parser.parse_args(argv)
    try:
        options = SimOptions(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s)
        _check(args.provider)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run(args.provider, options, require_key=args.require_key)
    except OSError as exc:  # e.g. port already in use
        print(f"sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
