"""RoutingTable service: streams the compiled routing table to ext_proc servers.

ext_proc never reads the YAML: it gets exactly what the control plane compiled, and only
after Envoy has the clusters the table names (see `ControlPlane.publish`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog

from protos import routing_pb2, routing_pb2_grpc

log = structlog.get_logger("switchyard.routing")


class RoutingTableStore:
    """The table ext_proc servers should use now, with a change signal."""

    def __init__(self) -> None:
        self._table: routing_pb2.RoutingTable | None = None
        self._changed = asyncio.Condition()

    @property
    def table(self) -> routing_pb2.RoutingTable | None:
        return self._table

    async def set(self, table: routing_pb2.RoutingTable) -> None:
        async with self._changed:
            self._table = table
            self._changed.notify_all()

    async def wait_newer(self, version: str | None) -> routing_pb2.RoutingTable:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._table is not None and self._table.version != version)
            assert self._table is not None
            return self._table


class RoutingService(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(self, store: RoutingTableStore) -> None:
        self._store = store

    async def Watch(
        self, request: routing_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[routing_pb2.RoutingTable]:
        log.info("ext_proc watching routing table", node=request.node_id)
        version: str | None = None
        try:
            while True:
                table = await self._store.wait_newer(version)
                version = table.version
                yield table
        except asyncio.CancelledError:
            log.info("ext_proc stopped watching", node=request.node_id)
