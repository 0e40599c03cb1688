"""The control plane's one snapshot cache: consistency refusal, linger of removed resources,
per-node delivery state (ACK/NACK), for Envoy's cache and the RoutingTable's."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from envoy.config.route.v3 import route_pb2

from control_plane.cache import InconsistentSnapshot
from control_plane.compile import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    PUSH_ORDER,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    Snapshot,
    compile_config,
)
from control_plane.config import parse_config
from control_plane.routing import ROUTING_TYPE, RoutingTableStore
from control_plane.xds import SnapshotStore

BASE = """\
providers:
  p: {kind: openai, base_url: "http://127.0.0.1:9"}
  q: {kind: openai, base_url: "http://127.0.0.2:9"}
models:
"""
A = "  a:\n    backends: [{provider: p, model: x}, {provider: q, model: y}]\n"
B = "  b:\n    backends: [{provider: p, model: z}]\n"
H = ("  h:\n    backends: [{provider: p, model: x}, {provider: q, model: w}]\n"
     "    failover: {hedge_after_s: 0.5}\n")


def _snapshot(*models: str) -> Snapshot:
    return compile_config(parse_config(BASE + "".join(models)))


def _names(snap: Snapshot | None, type_url: str) -> list[str]:
    assert snap is not None
    if type_url == ROUTE_TYPE:
        config = snap.resources[ROUTE_TYPE][0]
        assert isinstance(config, route_pb2.RouteConfiguration)
        return [r.name for r in config.virtual_hosts[0].routes]
    return [getattr(r, "name", "") for r in snap.resources[type_url]]


def _without_cluster(snap: Snapshot, name: str) -> Snapshot:
    clusters = tuple(c for c in snap.resources[CLUSTER_TYPE] if getattr(c, "name", "") != name)
    return dataclasses.replace(snap, resources={**snap.resources, CLUSTER_TYPE: clusters})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- consistency ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["p.x", "q.y", "hedge.h"])
async def test_snapshot_whose_routes_name_a_missing_cluster_is_refused(missing: str) -> None:
    store = SnapshotStore()
    good = _snapshot(A)
    await store.set(good)
    bad = _without_cluster(_snapshot(A, H), missing)  # priority groups and hedge cluster
    with pytest.raises(InconsistentSnapshot, match=missing.replace(".", r"\.")):
        await store.set(bad)
    assert store.snapshot is good and store.latest is good  # the last good one keeps serving
    assert store.get(CLUSTER_TYPE, "p.x") is not None and store.get(CLUSTER_TYPE, "q.w") is None


async def test_listener_naming_a_missing_route_configuration_is_refused() -> None:
    snap = _snapshot(A)
    bad = dataclasses.replace(snap, resources={**snap.resources, ROUTE_TYPE: ()})
    with pytest.raises(InconsistentSnapshot, match=ROUTE_CONFIG_NAME):
        await SnapshotStore().set(bad)


async def test_snapshot_without_one_of_the_types_is_refused() -> None:
    snap = _snapshot(A)
    resources = {t: r for t, r in snap.resources.items() if t != LISTENER_TYPE}
    with pytest.raises(InconsistentSnapshot, match="lacks resource types"):
        await SnapshotStore().set(dataclasses.replace(snap, resources=resources))


async def test_routing_table_waits_for_envoys_clusters() -> None:
    envoy = SnapshotStore()
    tables = RoutingTableStore(envoy=envoy)
    snap = _snapshot(A, B)
    with pytest.raises(InconsistentSnapshot, match=r"p\.x"):  # Envoy has nothing yet
        await tables.set(snap.routing)
    assert tables.table is None
    await envoy.set(snap)
    await tables.set(snap.routing)
    assert tables.table is snap.routing
    assert tables.cache.snapshot is not None
    assert tables.cache.snapshot.versions == {ROUTING_TYPE: snap.version}


async def test_index_and_selection_by_name_keep_snapshot_order() -> None:
    store = SnapshotStore()
    await store.set(_snapshot(A, B))
    assert store.names(CLUSTER_TYPE) == ["p.x", "p.z", "q.y"]
    assert store.get(ROUTE_TYPE, ROUTE_CONFIG_NAME) is not None
    assert [getattr(c, "name", "") for c in store.select(CLUSTER_TYPE, ["q.y", "p.x"])] == [
        "p.x", "q.y"]
    assert len(store.select(CLUSTER_TYPE)) == 3 and store.select(ROUTE_TYPE, ["nope"]) == ()


# -- linger --------------------------------------------------------------------------------


async def test_removed_clusters_and_model_routes_linger_then_expire() -> None:
    clock = Clock()
    store = SnapshotStore(linger_s=120.0, clock=clock)
    first = _snapshot(A, B)
    await store.set(first)
    assert store.snapshot is first and store.lingering == {}

    second = _snapshot(A)  # b (and its cluster p.z) removed
    view = await store.set(second)
    assert store.latest is second and view is store.snapshot
    assert view.version.startswith(second.version + "+")
    assert _names(view, CLUSTER_TYPE) == ["p.x", "q.y", "p.z"]  # current first, then lingering
    routes = _names(view, ROUTE_TYPE)
    assert routes.index("chat:a") < routes.index("chat:b") < routes.index("pending")
    assert store.lingering == {CLUSTER_TYPE: ["p.z"], ROUTE_TYPE: ["chat:b"]}
    assert view.versions[LISTENER_TYPE] == second.versions[LISTENER_TYPE]
    assert view.versions[CLUSTER_TYPE] != second.versions[CLUSTER_TYPE]

    clock.now += 119.0
    assert not await store.expire()  # not yet
    assert store.snapshot is view
    clock.now += 1.0
    assert await store.expire()
    assert store.snapshot is second and store.lingering == {}
    assert not await store.expire()


async def test_a_removed_resource_that_comes_back_is_served_once() -> None:
    clock = Clock()
    store = SnapshotStore(linger_s=120.0, clock=clock)
    await store.set(_snapshot(A, B))
    await store.set(_snapshot(A))
    back = _snapshot(A, B)
    view = await store.set(back)
    assert view is back  # nothing lingers that the snapshot has itself
    assert store.lingering == {}


async def test_no_linger_by_default() -> None:
    store = SnapshotStore()
    await store.set(_snapshot(A, B))
    second = _snapshot(A)
    assert await store.set(second) is second


async def test_watchers_see_each_new_view() -> None:
    clock = Clock()
    store = SnapshotStore(linger_s=10.0, clock=clock)
    await store.set(_snapshot(A, B))
    first = store.snapshot
    assert first is not None
    waiter = asyncio.ensure_future(store.wait_newer(first.version))
    await asyncio.sleep(0)
    assert not waiter.done()
    view = await store.set(_snapshot(A))
    assert await asyncio.wait_for(waiter, 1) is view
    clock.now += 10.0
    expiry = asyncio.ensure_future(store.wait_newer(view.version))
    await store.expire()
    assert (await asyncio.wait_for(expiry, 1)).version == _snapshot(A).version


# -- per-node delivery state ---------------------------------------------------------------


async def test_due_follows_push_order_and_waits_for_each_answer() -> None:
    store = SnapshotStore()
    snap = _snapshot(A)
    await store.set(snap)
    node = store.connect(1, "envoy-1")
    for type_url in reversed(PUSH_ORDER):
        store.subscribe(node, type_url)
    due = store.due(node)
    assert [d.type_url for d in due] == list(PUSH_ORDER)  # clusters before routes
    for i, d in enumerate(due):
        assert d.version == snap.versions[d.type_url]
        store.sent(node, d.type_url, d.version, nonce=str(i))
    assert store.due(node) == []  # all in flight

    await store.ack(node, CLUSTER_TYPE, snap.versions[CLUSTER_TYPE])
    assert node.acked(CLUSTER_TYPE) == snap.versions[CLUSTER_TYPE]
    assert store.due(node) == []  # acked the latest: nothing to send

    newer = _snapshot(A, B)
    await store.set(newer)
    assert [d.type_url for d in store.due(node)] == [CLUSTER_TYPE]  # others still in flight


async def test_nack_keeps_the_accepted_version_and_is_not_resent() -> None:
    store = SnapshotStore()
    snap = _snapshot(A)
    await store.set(snap)
    node = store.connect("n", "envoy-1")
    store.subscribe(node, CLUSTER_TYPE)
    store.resume(node, CLUSTER_TYPE, "old")  # reconnecting with "old"
    (due,) = store.due(node)
    store.sent(node, CLUSTER_TYPE, due.version, nonce="1")
    await store.nack(node, CLUSTER_TYPE, "bad cluster")
    state = node.types[CLUSTER_TYPE]
    assert state.nacked_version == due.version and state.last_error == "bad cluster"
    assert state.acked_version == "old" and not state.in_flight
    assert store.due(node) == []  # the rejected version is not sent again
    assert await store.wait_acked(CLUSTER_TYPE, due.version, timeout=0.1)  # NACK answers too


async def test_wait_acked_waits_for_every_subscribed_node() -> None:
    store = SnapshotStore()
    snap = _snapshot(A)
    await store.set(snap)
    version = snap.versions[CLUSTER_TYPE]
    one, two = store.connect(1), store.connect(2)
    idle = store.connect(3)  # never subscribed to clusters: not waited for
    store.subscribe(idle, LISTENER_TYPE)
    for node in (one, two):
        store.subscribe(node, CLUSTER_TYPE)
        store.sent(node, CLUSTER_TYPE, version, nonce="1")
    assert not await store.wait_acked(CLUSTER_TYPE, version, timeout=0.05)
    waiting = asyncio.ensure_future(store.wait_acked(CLUSTER_TYPE, version, timeout=2))
    await store.ack(one, CLUSTER_TYPE, version)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await store.disconnect(2)  # a node that goes away is not waited for
    assert await waiting
    assert set(store.envoys) == {1, 3}


async def test_routing_watch_streams_each_table_and_tracks_the_watcher() -> None:
    import grpc

    from control_plane.routing import RoutingService
    from protos import routing_pb2, routing_pb2_grpc

    envoy = SnapshotStore()
    tables = RoutingTableStore(envoy=envoy)
    first, second = _snapshot(A), _snapshot(A, B)
    await envoy.set(first)
    await tables.set(first.routing)
    server = grpc.aio.server()
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(RoutingService(tables), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = routing_pb2_grpc.RoutingServiceStub(channel).Watch(
                routing_pb2.WatchRequest(node_id="ext-proc-1"))
            got = await asyncio.wait_for(call.read(), 2)
            assert got.version == first.version
            await envoy.set(second)
            await tables.set(second.routing)
            got = await asyncio.wait_for(call.read(), 2)
            assert got.version == second.version
            (node,) = tables.cache.nodes.values()
            assert node.node_id == "ext-proc-1"
            call.cancel()
    finally:
        await server.stop(0)
