"""ADS protocol details, driven over a real gRPC stream with Envoy's own discovery messages.

(The integration tests run the real Envoy; these pin the state machine: first response, ACK,
NACK, stale nonces, push order and resource-name filtering.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from control_plane.compile import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    compile_config,
)
from control_plane.compile.names import ENDPOINT_TYPE, FLEET_CLUSTER
from control_plane.config import parse_config
from control_plane.xds import AdsServer, SnapshotStore

CONFIG = """\
providers:
  p: {kind: openai, base_url: "http://127.0.0.1:9"}
models:
  m:
    backends: [{provider: p, model: a}]
"""


def _snapshot(model: str = "a"):  # type: ignore[no-untyped-def]
    return compile_config(parse_config(CONFIG.replace("model: a", f"model: {model}")))


class Client:
    """A minimal xDS client speaking to the ADS server like Envoy does."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
                 node_id: str = "test-envoy") -> None:
        self.node_id = node_id
        self.out: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        # Cancelling a pending read cancels the whole RPC, so one task reads everything.
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for resp in self.call:
            await self.inbox.put(resp)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (req := await self.out.get()) is not None:
            yield req

    async def send(self, type_url: str, version: str = "", nonce: str = "",
                   names: tuple[str, ...] = (), error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce,
            resource_names=list(names), node=base_pb2.Node(id=self.node_id))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.out.put(req)

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def close(self) -> None:
        await self.out.put(None)
        self.call.cancel()
        self._reader.cancel()


@pytest.fixture
async def ads_stub() -> AsyncIterator[tuple[SnapshotStore,
                                            ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    store = SnapshotStore()
    await store.set(_snapshot())
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AdsServer(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield store, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await server.stop(0)


@pytest.fixture
async def ads(ads_stub: tuple[SnapshotStore, ads_pb2_grpc.AggregatedDiscoveryServiceStub]
              ) -> AsyncIterator[tuple[SnapshotStore, Client]]:
    store, stub = ads_stub
    client = Client(stub)
    yield store, client
    await client.close()


async def test_first_request_gets_full_state_then_ack_is_recorded(
        ads: tuple[SnapshotStore, Client]) -> None:
    store, client = ads
    await client.send(CLUSTER_TYPE)
    resp = await client.recv()
    assert resp.type_url == CLUSTER_TYPE and resp.nonce
    assert [r.type_url for r in resp.resources] == [CLUSTER_TYPE]
    snap = store.snapshot
    assert snap is not None and resp.version_info == snap.versions[CLUSTER_TYPE]
    await client.send(CLUSTER_TYPE, version=resp.version_info, nonce=resp.nonce)
    assert await store.wait_acked(CLUSTER_TYPE, resp.version_info, timeout=2)
    envoy = next(iter(store.envoys.values()))
    assert envoy.node_id == "test-envoy" and envoy.acked(CLUSTER_TYPE) == resp.version_info
    with pytest.raises(TimeoutError):  # nothing more to send after an ACK of the latest
        await client.recv(timeout=0.3)


async def test_nack_is_recorded_and_not_resent_until_a_new_version(
        ads: tuple[SnapshotStore, Client]) -> None:
    store, client = ads
    await client.send(CLUSTER_TYPE)
    first = await client.recv()
    await client.send(CLUSTER_TYPE, version="", nonce=first.nonce, error="bad cluster")
    assert await store.wait_acked(CLUSTER_TYPE, first.version_info, timeout=2)
    state = next(iter(store.envoys.values())).types[CLUSTER_TYPE]
    assert state.nacked_version == first.version_info and state.last_error == "bad cluster"
    assert state.acked_version == ""  # Envoy kept what it had before
    with pytest.raises(TimeoutError):
        await client.recv(timeout=0.3)
    await store.set(_snapshot("b"))  # a new config: sent again
    second = await client.recv()
    assert second.version_info != first.version_info and second.nonce != first.nonce


async def test_stale_nonce_is_ignored_and_updates_follow_acks(
        ads: tuple[SnapshotStore, Client]) -> None:
    store, client = ads
    await client.send(CLUSTER_TYPE)
    first = await client.recv()
    await client.send(CLUSTER_TYPE, version=first.version_info, nonce="stale-nonce")
    await store.set(_snapshot("b"))
    with pytest.raises(TimeoutError):  # still waiting for the ACK of `first`
        await client.recv(timeout=0.3)
    await client.send(CLUSTER_TYPE, version=first.version_info, nonce=first.nonce)
    second = await client.recv()
    assert second.version_info == store.snapshot.versions[CLUSTER_TYPE]  # type: ignore[union-attr]


async def test_routes_filtered_by_requested_name_and_listeners_full_set(
        ads: tuple[SnapshotStore, Client]) -> None:
    _, client = ads
    await client.send(LISTENER_TYPE)
    listeners = await client.recv()
    assert listeners.type_url == LISTENER_TYPE and len(listeners.resources) == 1
    await client.send(ROUTE_TYPE, names=("nope",))
    empty = await client.recv()
    assert empty.type_url == ROUTE_TYPE and len(empty.resources) == 0
    await client.send(ROUTE_TYPE, version=empty.version_info, nonce=empty.nonce,
                      names=(ROUTE_CONFIG_NAME,))
    with pytest.raises(TimeoutError):  # same version: nothing new for a re-subscription
        await client.recv(timeout=0.3)


async def test_reconnecting_envoy_with_current_version_gets_nothing(
        ads: tuple[SnapshotStore, Client]) -> None:
    store, client = ads
    version = store.snapshot.versions[CLUSTER_TYPE]  # type: ignore[union-attr]
    await client.send(CLUSTER_TYPE, version=version)
    with pytest.raises(TimeoutError):
        await client.recv(timeout=0.3)


def _members(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    (packed,) = resp.resources
    cla = endpoint_pb2.ClusterLoadAssignment()
    packed.Unpack(cla)
    assert cla.cluster_name == FLEET_CLUSTER
    return [e.endpoint.address.pipe.path.rsplit("/", 1)[-1]
            for e in cla.endpoints[0].lb_endpoints]


async def test_fleet_membership_follows_the_connected_envoys(
        ads_stub: tuple[SnapshotStore, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    """The local cluster (EDS) lists every connected Envoy's node id: a node joining or
    leaving is pushed to the others, and no config version changes for it."""
    store, stub = ads_stub
    config_version = store.snapshot.version  # type: ignore[union-attr]
    one = Client(stub, "node-1")
    await one.send(ENDPOINT_TYPE, names=(FLEET_CLUSTER,))
    first = await one.recv()
    assert first.type_url == ENDPOINT_TYPE and _members(first) == ["node-1"]  # alone: 1 member
    await one.send(ENDPOINT_TYPE, first.version_info, first.nonce, names=(FLEET_CLUSTER,))
    two = Client(stub, "node-2")
    await two.send(ENDPOINT_TYPE, names=(FLEET_CLUSTER,))
    assert _members(await two.recv()) == ["node-1", "node-2"]
    joined = await one.recv()  # pushed to the node already there
    assert _members(joined) == ["node-1", "node-2"]
    await one.send(ENDPOINT_TYPE, joined.version_info, joined.nonce, names=(FLEET_CLUSTER,))
    await two.close()
    left = await one.recv()
    assert _members(left) == ["node-1"] and left.version_info == first.version_info
    assert store.members == ("node-1",)
    assert store.snapshot.version == config_version  # type: ignore[union-attr]
    await one.close()
