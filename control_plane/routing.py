"""RoutingTable service: streams the compiled routing table to ext_proc servers.

ext_proc never reads the YAML: it gets exactly what the control plane compiled, and only
after Envoy has the clusters the table names (see `ControlPlane.publish`; the table's cache
refuses a table naming a cluster Envoy's cache does not serve).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from control_plane.cache import Cache
from control_plane.compile import CLUSTER_TYPE
from protos import routing_pb2, routing_pb2_grpc

log = structlog.get_logger("switchyard.routing")

ROUTING_TYPE = "type.googleapis.com/" + routing_pb2.RoutingTable.DESCRIPTOR.full_name


@dataclass(frozen=True)
class TableSnapshot:
    """A routing table as a cache snapshot: one resource of one type, the table's version."""

    version: str
    resources: dict[str, tuple[Message, ...]]
    versions: dict[str, str]

    @classmethod
    def of(cls, table: routing_pb2.RoutingTable) -> TableSnapshot:
        return cls(version=table.version, resources={ROUTING_TYPE: (table,)},
                   versions={ROUTING_TYPE: table.version})


def table_references(type_url: str, resource: Message) -> Iterator[tuple[str, str]]:
    """A routing table names the Envoy clusters of its backends."""
    if type_url == ROUTING_TYPE:
        assert isinstance(resource, routing_pb2.RoutingTable)
        for backend in resource.backends:
            yield CLUSTER_TYPE, backend.cluster


class RoutingTableStore:
    """The table ext_proc servers should use now: a typed view of a `Cache`. Given Envoy's
    cache, a table is only taken once every cluster it names is served to Envoy."""

    def __init__(self, envoy: Cache[Any] | None = None) -> None:
        self.cache: Cache[TableSnapshot] = Cache(
            (ROUTING_TYPE,), references=table_references if envoy is not None else None,
            depends_on=envoy)

    @property
    def table(self) -> routing_pb2.RoutingTable | None:
        snap = self.cache.snapshot
        return _table(snap) if snap is not None else None

    async def set(self, table: routing_pb2.RoutingTable) -> None:
        await self.cache.set(TableSnapshot.of(table))

    async def wait_newer(self, version: str | None) -> routing_pb2.RoutingTable:
        return _table(await self.cache.wait_newer(version))


def _table(snap: TableSnapshot) -> routing_pb2.RoutingTable:
    table = snap.resources[ROUTING_TYPE][0]
    assert isinstance(table, routing_pb2.RoutingTable)
    return table


class RoutingService(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(self, store: RoutingTableStore) -> None:
        self._store = store

    async def Watch(
        self, request: routing_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[routing_pb2.RoutingTable]:
        log.info("ext_proc watching routing table", node=request.node_id)
        cache = self._store.cache
        key = object()
        node = cache.connect(key, request.node_id)
        cache.subscribe(node, ROUTING_TYPE)
        version: str | None = None
        try:
            while True:
                table = await self._store.wait_newer(version)
                version = table.version
                yield table
                cache.sent(node, ROUTING_TYPE, version, expect_ack=False)
        except asyncio.CancelledError:
            log.info("ext_proc stopped watching", node=request.node_id)
        finally:
            cache.drop(key)
