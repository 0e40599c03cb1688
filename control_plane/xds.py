"""ADS server (state of the world) over grpcio aio, serving the current snapshot to Envoy.

Per Envoy and per resource type it tracks what was sent (version, nonce) and what was ACKed
or NACKed. A NACK is logged with Envoy's error and nothing else changes: Envoy keeps the last
config it accepted, and so does our record of it.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from control_plane.compile import PUSH_ORDER, Snapshot

log = structlog.get_logger("switchyard.xds")


@dataclass
class _TypeState:
    subscribed: bool = False
    names: tuple[str, ...] = ()
    sent_version: str = ""
    nonce: str = ""
    #: True while a response is unanswered (no ACK/NACK for `nonce` yet).
    in_flight: bool = False
    acked_version: str = ""
    nacked_version: str = ""
    last_error: str = ""


@dataclass
class EnvoyState:
    """What one connected Envoy has been sent and has accepted, per type."""

    node_id: str = ""
    types: dict[str, _TypeState] = field(default_factory=dict)

    def acked(self, type_url: str) -> str:
        state = self.types.get(type_url)
        return state.acked_version if state else ""


class SnapshotStore:
    """The current snapshot plus a change signal; shared by the ADS and RoutingTable servers."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._changed = asyncio.Condition()
        self.envoys: dict[int, EnvoyState] = {}
        self._acks = asyncio.Condition()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    async def set(self, snapshot: Snapshot) -> None:
        async with self._changed:
            self._snapshot = snapshot
            self._changed.notify_all()

    async def wait_newer(self, version: str | None) -> Snapshot:
        """Return the snapshot once its version differs from `version`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._snapshot is not None and self._snapshot.version != version)
            assert self._snapshot is not None
            return self._snapshot

    async def notify_ack(self) -> None:
        async with self._acks:
            self._acks.notify_all()

    async def wait_acked(self, type_url: str, version: str, timeout: float) -> bool:
        """Wait until every connected Envoy ACKed (or NACKed) `version` of `type_url`."""

        def done() -> bool:
            return all(
                (t := e.types.get(type_url)) is None or not t.subscribed
                or version in (t.acked_version, t.nacked_version)
                for e in self.envoys.values())

        async with self._acks:
            try:
                await asyncio.wait_for(self._acks.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Aggregated discovery: one stream per Envoy carries CDS, LDS and RDS in push order."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        stream_id = next(self._ids)
        envoy = EnvoyState()
        self._store.envoys[stream_id] = envoy
        events: asyncio.Queue[discovery_pb2.DiscoveryRequest | Snapshot | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    req = await context.read()
                    if req is grpc.aio.EOF:
                        break
                    await events.put(req)
            finally:
                await events.put(None)

        async def watch() -> None:
            version: str | None = None
            while True:
                snap = await self._store.wait_newer(version)
                version = snap.version
                await events.put(snap)

        tasks = [asyncio.create_task(read()), asyncio.create_task(watch())]
        try:
            while True:
                event = await events.get()
                if event is None:
                    break
                if isinstance(event, discovery_pb2.DiscoveryRequest):
                    await self._on_request(envoy, event)
                for resp in self._due(envoy):
                    await context.write(resp)
        finally:
            for t in tasks:
                t.cancel()
            self._store.envoys.pop(stream_id, None)
            await self._store.notify_ack()
            log.info("envoy disconnected", node=envoy.node_id)

    async def _on_request(self, envoy: EnvoyState, req: discovery_pb2.DiscoveryRequest) -> None:
        if req.node.id and not envoy.node_id:
            envoy.node_id = req.node.id
            log.info("envoy connected", node=envoy.node_id)
        state = envoy.types.setdefault(req.type_url, _TypeState())
        state.subscribed = True
        state.names = tuple(req.resource_names)
        if req.response_nonce and req.response_nonce == state.nonce:
            state.in_flight = False
            if req.HasField("error_detail"):
                state.nacked_version = state.sent_version
                state.last_error = req.error_detail.message
                log.error("envoy rejected config (NACK); it keeps its last accepted config",
                          node=envoy.node_id, type_url=req.type_url,
                          rejected_version=state.sent_version, kept_version=req.version_info,
                          error=req.error_detail.message)
            else:
                state.acked_version = req.version_info
                log.info("envoy accepted config (ACK)", node=envoy.node_id,
                         type_url=req.type_url, version=req.version_info)
            await self._store.notify_ack()
        elif req.response_nonce and req.response_nonce != state.nonce:
            return  # stale: an answer to an older response we already superseded
        else:
            # First request on this stream (or after reconnect): the client's version tells
            # us what it already has.
            state.in_flight = False
            state.acked_version = req.version_info

    def _due(self, envoy: EnvoyState) -> list[discovery_pb2.DiscoveryResponse]:
        snap = self._store.snapshot
        if snap is None:
            return []
        out = []
        for type_url in PUSH_ORDER:
            state = envoy.types.get(type_url)
            if state is None or not state.subscribed or state.in_flight:
                continue
            version = snap.versions[type_url]
            if version in (state.sent_version, state.acked_version):
                continue
            resources = snap.resources[type_url]
            if state.names:
                resources = tuple(r for r in resources
                                  if getattr(r, "name", None) in state.names)
            packed = []
            for r in resources:
                a = any_pb2.Any()
                a.Pack(r)
                packed.append(a)
            state.nonce = str(next(self._nonces))
            state.sent_version = version
            state.in_flight = True
            out.append(discovery_pb2.DiscoveryResponse(
                version_info=version, resources=packed, type_url=type_url, nonce=state.nonce))
        return out
