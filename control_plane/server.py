"""The control plane process: watch the config file, compile, serve ADS + RoutingTable.

A config change is loaded, validated and compiled whole; any error is logged with file:line
and the last good snapshot keeps serving. A good snapshot is published in a safe order:
Envoy gets the new clusters and model routes first (we wait for every Envoy's CDS and RDS
ACK, bounded), then ext_proc gets the routing table that names them, so no request is sent to
a route or cluster Envoy lacks. Clusters and model routes a reload removes linger in Envoy for
`RETIRED_CLUSTER_TTL_S` (kept by Envoy's cache, `control_plane.cache`): requests (and their
retries) routed by the previous table still find them. A snapshot the cache finds
inconsistent (a route naming a cluster it lacks) is refused like an invalid config.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import time
from pathlib import Path

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc

from control_plane.cache import InconsistentSnapshot
from control_plane.compile import CLUSTER_TYPE, ROUTE_TYPE, Snapshot, compile_config
from control_plane.config import ConfigError, load_config
from control_plane.routing import RoutingService, RoutingTableStore
from control_plane.xds import AdsServer, SnapshotStore
from protos import routing_pb2_grpc
from switchyard.helpfmt import HelpFormatter
from switchyard.logs import configure_logging

log = structlog.get_logger("switchyard.control_plane")

#: How long a publish waits for Envoy to ACK new clusters/routes before updating ext_proc anyway.
ACK_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.25
#: How long a cluster removed from the config stays in Envoy for in-flight requests.
RETIRED_CLUSTER_TTL_S = 120.0


class ControlPlane:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.envoy_store = SnapshotStore(linger_s=RETIRED_CLUSTER_TTL_S)
        self.routing_store = RoutingTableStore(envoy=self.envoy_store)
        self._digest = ""
        #: alias -> Unix time this control plane first loaded it (`created` in /v1/models);
        #: kept across reloads so an unchanged model keeps its timestamp (and routes version).
        self._first_seen: dict[str, int] = {}

    @property
    def snapshot(self) -> Snapshot | None:
        """The last good snapshot (as compiled, without lingering resources)."""
        return self.envoy_store.latest

    def _read(self) -> tuple[str, bytes] | None:
        try:
            data = self.config_path.read_bytes()
        except OSError:
            return None
        return hashlib.sha256(data).hexdigest(), data

    async def load(self, read: tuple[str, bytes] | None = None) -> bool:
        """Load, validate and compile the file (or the content `watch` just read); publish if
        good. True if a new snapshot went out."""
        read = read or self._read()
        if read is None:
            log.error("config file unreadable; keeping last good config",
                      file=str(self.config_path))
            return False
        digest, data = read
        self._digest = digest
        try:
            cfg = load_config(self.config_path, data)
            now = int(time.time())
            first_seen = {alias: self._first_seen.get(alias, now) for alias in cfg.models}
            snapshot = compile_config(cfg, created=first_seen)
        except ConfigError as exc:
            log.error("invalid config rejected; last good config keeps serving",
                      error=str(exc), file=exc.file, line=exc.line, field=exc.field,
                      serving_version=self.snapshot.version if self.snapshot else None)
            return False
        self._first_seen = {**self._first_seen, **first_seen}
        if self.snapshot and snapshot.version == self.snapshot.version:
            return False
        try:
            await self.publish(snapshot)
        except InconsistentSnapshot as exc:
            log.error("inconsistent snapshot refused; last good config keeps serving",
                      error=str(exc), version=snapshot.version,
                      serving_version=self.snapshot.version if self.snapshot else None)
            return False
        return True

    async def publish(self, snapshot: Snapshot) -> None:
        """Envoy first (clusters and routes, ACKed), then the ext_proc routing table: a model
        is only handed to ext_proc once Envoy can route it. Raises `InconsistentSnapshot`
        (before anything is served) for a snapshot naming resources it lacks."""
        view = await self.envoy_store.set(snapshot)
        acked = all([
            await self.envoy_store.wait_acked(type_url, view.versions[type_url], ACK_TIMEOUT_S)
            for type_url in (CLUSTER_TYPE, ROUTE_TYPE)])
        await self.routing_store.set(snapshot.routing)
        log.info("config published", version=snapshot.version, models=len(snapshot.routing.models),
                 envoy_acked=acked, envoys=len(self.envoy_store.envoys))

    async def watch(self) -> None:
        """Poll the file's content hash: robust to editors that replace files by rename."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            # Lingering clusters and routes whose time is up leave Envoy.
            await self.envoy_store.expire()
            read = self._read()
            if read is not None and read[0] != self._digest:
                log.info("config file changed", file=str(self.config_path))
                await self.load(read)


async def serve(config_path: Path, address: str, port: int, status_address: str = "127.0.0.1",
                status_port: int = 0) -> None:
    cp = ControlPlane(config_path)
    if not await cp.load():
        raise SystemExit(f"switchyard control plane: no valid config at {config_path}")
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 30_000)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AdsServer(cp.envoy_store), server)
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(
        RoutingService(cp.routing_store), server)
    bound = server.add_insecure_port(f"{address}:{port}")
    await server.start()
    log.info("control plane listening", address=address, port=bound, config=str(config_path))
    watcher = asyncio.create_task(cp.watch())
    from control_plane.status import start_status

    status = await start_status(cp, status_address, status_port) if status_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    if status is not None:
        await status.cleanup()
    await server.stop(grace=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard control-plane",
        description="Watch a config, compile it and serve it over ADS (Envoy) and the "
                    "RoutingTable stream (ext_proc) to every node that connects.",
        formatter_class=HelpFormatter)
    parser.add_argument("--config", required=True, type=Path,
                        help="gateway config file (hot-reloaded when it changes)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address of the gRPC (ADS + RoutingTable) listener; nodes on other "
                             "hosts need a reachable one, e.g. 0.0.0.0")
    parser.add_argument("--port", type=int, default=18000, help="gRPC port nodes connect to")
    parser.add_argument("--status-address", default="127.0.0.1",
                        help="address of the status page and fleet API (/, /api/fleet)")
    parser.add_argument("--status-port", type=int, default=18001,
                        help="port of the status page and fleet API; 0: off")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"), help="log level")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    import uvloop

    uvloop.run(serve(args.config, args.address, args.port, args.status_address,
                     args.status_port))


if __name__ == "__main__":
    main()
