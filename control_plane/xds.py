"""ADS server (state of the world) over grpcio aio, serving the current snapshot to Envoy.

Envoy's snapshots live in a `SnapshotStore`, the control plane's one `Cache` type configured
for xDS: types in push order (clusters before the routes that name them), Envoy's references
checked (a route naming a cluster the snapshot lacks is refused), removed clusters and model
routes lingering, and per Envoy and per type what was sent (version, nonce) and ACKed or
NACKed. A NACK is logged with Envoy's error and nothing else changes: Envoy keeps the last
config it accepted, and so does our record of it.

Besides the compiled config, the store serves the fleet's membership: the bootstrap's local
cluster (`FLEET_CLUSTER`, EDS) lists one endpoint per node id connected over ADS. A node that
connects or whose stream ends changes it, and every Envoy gets the new list: the quota safety
net (`local_cluster_rate_limit`) divides each bucket by its size.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable, Iterator

import grpc
import structlog
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.cache import Cache, Due, NodeState, WholeResources, digest
from control_plane.compile import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    MODEL_ROUTE_PREFIX,
    PRIORITY_GROUP_TYPE,
    PUSH_ORDER,
    ROUTE_TYPE,
    Snapshot,
)
from control_plane.compile.names import ENDPOINT_TYPE, FLEET_CLUSTER
from control_plane.compile.quotas import fleet_assignment
from protos import envoy_vendor_pb2

log = structlog.get_logger("switchyard.xds")

_HCM = http_connection_manager_pb2.HttpConnectionManager


def envoy_references(type_url: str, resource: Message) -> Iterator[tuple[str, str]]:
    """The resources an xDS resource names: a route configuration's clusters (plain, weighted,
    priority groups), a listener's RDS route configuration."""
    if type_url == ROUTE_TYPE:
        assert isinstance(resource, route_pb2.RouteConfiguration)
        for vhost in resource.virtual_hosts:
            for route in vhost.routes:
                if not route.HasField("route"):
                    continue
                action = route.route
                if action.cluster:
                    yield CLUSTER_TYPE, action.cluster
                for weighted in action.weighted_clusters.clusters:
                    yield CLUSTER_TYPE, weighted.name
                plugin = action.inline_cluster_specifier_plugin.extension.typed_config
                if plugin.type_url == PRIORITY_GROUP_TYPE:
                    spec = envoy_vendor_pb2.PriorityGroupClusterSpecifier.FromString(plugin.value)
                    for group in spec.priority_groups:
                        for c in group.clusters:
                            yield CLUSTER_TYPE, c.cluster_name
    elif type_url == LISTENER_TYPE:
        assert isinstance(resource, listener_pb2.Listener)
        for chain in resource.filter_chains:
            for f in chain.filters:
                if f.typed_config.Is(_HCM.DESCRIPTOR):
                    hcm = _HCM()
                    f.typed_config.Unpack(hcm)
                    if hcm.HasField("rds"):
                        yield ROUTE_TYPE, hcm.rds.route_config_name


def node_listener(envoy: NodeState, resource: Message) -> Message:
    """A fleet node's own listener address: `switchyard node --listen HOST:PORT` puts it in
    its Envoy's node metadata (`listen`), so nodes sharing a host (or a config) each bind their
    own. Same resource otherwise; the version stays the snapshot's."""
    listen = envoy.metadata.get("listen", "")
    if not listen or not isinstance(resource, listener_pb2.Listener):
        return resource
    host, _, port = listen.rpartition(":")
    patched = listener_pb2.Listener()
    patched.CopyFrom(resource)
    patched.address.socket_address.address = host
    patched.address.socket_address.port_value = int(port)
    return patched


class ModelRoutes:
    """Model routes linger inside the one route configuration: a removed model's route is
    served after the current model routes and before the catch-alls."""

    def parts(self, resources: tuple[Message, ...]) -> dict[str, Message]:
        if not resources:
            return {}
        config = resources[0]
        assert isinstance(config, route_pb2.RouteConfiguration)
        return {r.name: r for r in config.virtual_hosts[0].routes
                if r.name.startswith(MODEL_ROUTE_PREFIX)}

    def merge(self, resources: tuple[Message, ...], lingering: list[Message]
              ) -> tuple[Message, ...]:
        merged = route_pb2.RouteConfiguration()
        merged.CopyFrom(resources[0])
        routes = list(merged.virtual_hosts[0].routes)
        models = [r for r in routes if r.name.startswith(MODEL_ROUTE_PREFIX)]
        rest = [r for r in routes if not r.name.startswith(MODEL_ROUTE_PREFIX)]
        del merged.virtual_hosts[0].routes[:]
        merged.virtual_hosts[0].routes.extend([*models, *lingering, *rest])
        return (merged, *resources[1:])


class SnapshotStore(Cache[Snapshot]):
    """Envoy's snapshot cache; shared by the ADS server and the control plane's publisher.
    It also serves the fleet's membership, apart from the config's snapshots (see module
    doc): a node joining or leaving changes no config version."""

    def __init__(self, linger_s: float = 0.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        super().__init__(PUSH_ORDER, references=envoy_references, linger_s=linger_s,
                         linger={CLUSTER_TYPE: WholeResources(), ROUTE_TYPE: ModelRoutes()},
                         clock=clock)
        #: Node ids of the Envoys connected now: the local cluster's endpoints.
        self.members: tuple[str, ...] = ()
        self.members_assignment = fleet_assignment(())
        self.members_version = digest((self.members_assignment,))
        self._members_changed = asyncio.Condition()

    @property
    def envoys(self) -> dict[Hashable, NodeState]:
        """Connected Envoys (one per ADS stream) and what each was sent and accepted."""
        return self.nodes

    async def update_members(self) -> None:
        """Recount the connected Envoys; a changed membership wakes every stream."""
        members = tuple(sorted({n.node_id for n in self.nodes.values() if n.node_id}))
        if members == self.members:
            return
        self.members = members
        self.members_assignment = fleet_assignment(members)
        self.members_version = digest((self.members_assignment,))
        log.info("fleet membership", nodes=len(members), node_ids=list(members))
        async with self._members_changed:
            self._members_changed.notify_all()

    async def wait_members(self, version: str) -> str:
        """Return the membership's version once it differs from `version`."""
        async with self._members_changed:
            await self._members_changed.wait_for(lambda: self.members_version != version)
            return self.members_version

    async def disconnect(self, key: Hashable) -> NodeState | None:
        node = await super().disconnect(key)
        await self.update_members()
        return node

    def due(self, node: NodeState) -> list[Due]:
        """The config's types in push order, and before them the membership (the local
        cluster is static: nothing has to land before it) when the node asked for it."""
        out = super().due(node)
        state = node.types.get(ENDPOINT_TYPE)
        if (state is not None and state.subscribed and not state.in_flight
                and self.members_version not in (state.sent_version, state.acked_version)):
            wanted = not state.names or FLEET_CLUSTER in state.names
            out.insert(0, Due(ENDPOINT_TYPE, self.members_version,
                              (self.members_assignment,) if wanted else ()))
        return out


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Aggregated discovery: one stream per Envoy carries CDS, LDS and RDS in push order, and
    EDS for the fleet's local cluster."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        stream_id = next(self._ids)
        envoy = self._store.connect(stream_id)
        # a request, a new config view, a new membership version, or the end of the stream
        events: asyncio.Queue[discovery_pb2.DiscoveryRequest | Snapshot | str | None] = (
            asyncio.Queue())

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

        async def watch_members() -> None:
            version = self._store.members_version
            while True:
                version = await self._store.wait_members(version)
                await events.put(version)

        tasks = [asyncio.create_task(read()), asyncio.create_task(watch()),
                 asyncio.create_task(watch_members())]
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
            await self._store.disconnect(stream_id)
            log.info("envoy disconnected", node=envoy.node_id)

    async def _on_request(self, envoy: NodeState, req: discovery_pb2.DiscoveryRequest) -> None:
        if req.node.id and not envoy.node_id:
            envoy.node_id = req.node.id
            envoy.metadata = {k: v.string_value for k, v in req.node.metadata.fields.items()
                              if v.string_value}
            log.info("envoy connected", node=envoy.node_id, **envoy.metadata)
            await self._store.update_members()
        state = self._store.subscribe(envoy, req.type_url, req.resource_names)
        if req.response_nonce and req.response_nonce == state.nonce:
            if req.HasField("error_detail"):
                await self._store.nack(envoy, req.type_url, req.error_detail.message)
                log.error("envoy rejected config (NACK); it keeps its last accepted config",
                          node=envoy.node_id, type_url=req.type_url,
                          rejected_version=state.sent_version, kept_version=req.version_info,
                          error=req.error_detail.message)
            else:
                await self._store.ack(envoy, req.type_url, req.version_info)
                log.info("envoy accepted config (ACK)", node=envoy.node_id,
                         type_url=req.type_url, version=req.version_info)
        elif req.response_nonce and req.response_nonce != state.nonce:
            return  # stale: an answer to an older response we already superseded
        else:
            # First request on this stream (or after reconnect): the client's version tells
            # us what it already has.
            self._store.resume(envoy, req.type_url, req.version_info)

    def _due(self, envoy: NodeState) -> list[discovery_pb2.DiscoveryResponse]:
        out = []
        for due in self._store.due(envoy):
            packed = []
            for r in due.resources:
                a = any_pb2.Any()
                a.Pack(node_listener(envoy, r) if due.type_url == LISTENER_TYPE else r)
                packed.append(a)
            nonce = str(next(self._nonces))
            self._store.sent(envoy, due.type_url, due.version, nonce)
            out.append(discovery_pb2.DiscoveryResponse(
                version_info=due.version, resources=packed, type_url=due.type_url, nonce=nonce))
        return out
