"""One snapshot cache for everything the control plane serves: Envoy (over ADS) and the ext_proc
fleet (the RoutingTable stream) each read a `Cache`.

A cache holds:
- **versioned, name-indexed snapshots**: a snapshot maps a resource type to its resources (each
  found by name) and to a content-hash version per type; a cache serves its types in a fixed
  `order` (clusters before the routes that name them);
- **consistency**: a snapshot is checked before it is served; one whose resources name a
  resource it lacks (a route naming a missing cluster, a listener naming a missing route
  configuration) is refused with `InconsistentSnapshot`, and the last good one keeps serving.
  References may also be resolved in another cache (`depends_on`): the RoutingTable cache
  only takes a table whose backends' clusters Envoy's cache already serves;
- **linger**: parts of resources a new snapshot removes (clusters, model routes) stay in the
  served view for `linger_s`, so requests routed by the previous snapshot (and their retries)
  still find them; `expire()` drops them when their time is up;
- **delivery state per node** (what each connected client was sent, ACKed, NACKed, per type),
  with a wait for every node's answer to a version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import Message


class InconsistentSnapshot(ValueError):
    """A snapshot names resources it (and the caches it depends on) lacks; it is not served."""


class Snapshot(Protocol):
    """What a cache serves: a frozen dataclass with these fields (more are carried along)."""

    @property
    def version(self) -> str: ...

    @property
    def resources(self) -> Mapping[str, tuple[Message, ...]]: ...

    @property
    def versions(self) -> Mapping[str, str]: ...


S = TypeVar("S", bound=Snapshot)


def digest(messages: Iterable[Message]) -> str:
    """A resource type's version: the hash of its resources' deterministic serialisation."""
    h = hashlib.sha256()
    for m in messages:
        h.update(m.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def resource_name(resource: Message) -> str:
    return str(getattr(resource, "name", ""))


#: (type_url, resource) -> the (type_url, name) pairs that resource needs to be served.
References = Callable[[str, Message], Iterable[tuple[str, str]]]


class Linger(Protocol):
    """How the removed parts of one resource type linger: which named parts a type's resources
    have, and how lingering parts are put back into the current resources."""

    def parts(self, resources: tuple[Message, ...]) -> dict[str, Message]: ...

    def merge(self, resources: tuple[Message, ...], lingering: list[Message]
              ) -> tuple[Message, ...]: ...


class WholeResources:
    """Linger whole resources (clusters): a lingering one is served after the current ones."""

    def parts(self, resources: tuple[Message, ...]) -> dict[str, Message]:
        return {resource_name(r): r for r in resources}

    def merge(self, resources: tuple[Message, ...], lingering: list[Message]
              ) -> tuple[Message, ...]:
        return resources + tuple(lingering)


@dataclass
class TypeState:
    """One node's delivery state for one resource type."""

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
class NodeState:
    """What one connected client (an Envoy, an ext_proc server) has been sent and accepted."""

    node_id: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    #: What the node said about itself (Envoy: its bootstrap's node metadata).
    metadata: dict[str, str] = field(default_factory=dict)

    def acked(self, type_url: str) -> str:
        state = self.types.get(type_url)
        return state.acked_version if state else ""


@dataclass(frozen=True)
class Due:
    """What a node should be sent next for one type."""

    type_url: str
    version: str
    resources: tuple[Message, ...]


class Cache(Generic[S]):
    """Versioned, name-indexed, consistent snapshots + linger + per-node delivery state."""

    def __init__(self, order: tuple[str, ...], *, references: References | None = None,
                 depends_on: Cache[Any] | None = None, linger_s: float = 0.0,
                 linger: Mapping[str, Linger] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.order = order
        self._references = references
        self._depends_on = depends_on
        self.linger_s = linger_s
        self._linger = dict(linger or {})
        self._clock = clock
        #: The last snapshot `set` (as compiled) and the view served (it plus lingering parts).
        self._latest: S | None = None
        self._view: S | None = None
        self._index: dict[str, dict[str, Message]] = {}
        #: type_url -> part name -> (part, clock expiry) of parts removed by a newer snapshot.
        self._retired: dict[str, dict[str, tuple[Message, float]]] = {}
        self._changed = asyncio.Condition()
        self._acks = asyncio.Condition()
        self.nodes: dict[Hashable, NodeState] = {}

    # -- snapshots -----------------------------------------------------------------------------

    @property
    def snapshot(self) -> S | None:
        """The view served now (the latest snapshot plus lingering parts)."""
        return self._view

    @property
    def latest(self) -> S | None:
        """The latest snapshot set, without lingering parts."""
        return self._latest

    def get(self, type_url: str, name: str) -> Message | None:
        """A served resource by type and name."""
        return self._index.get(type_url, {}).get(name)

    def names(self, type_url: str) -> list[str]:
        return list(self._index.get(type_url, {}))

    def select(self, type_url: str, names: Iterable[str] = ()) -> tuple[Message, ...]:
        """The served resources of a type, in snapshot order; only `names` if any are given."""
        if self._view is None:
            return ()
        resources = self._view.resources.get(type_url, ())
        wanted = set(names)
        if not wanted:
            return resources
        return tuple(r for r in resources if resource_name(r) in wanted)

    def check(self, snapshot: S) -> None:
        """Refuse a snapshot with a dangling reference (or without one of the cache's types)."""
        missing_types = [t for t in self.order if t not in snapshot.resources]
        if missing_types:
            raise InconsistentSnapshot(f"snapshot lacks resource types {missing_types}")
        if self._references is None:
            return
        have = {t: {resource_name(r) for r in rs} for t, rs in snapshot.resources.items()}
        missing: list[str] = []
        for type_url, resources in snapshot.resources.items():
            for r in resources:
                for ref_type, ref in self._references(type_url, r):
                    if ref in have.get(ref_type, ()):
                        continue
                    if (ref_type not in have and self._depends_on is not None
                            and self._depends_on.get(ref_type, ref) is not None):
                        continue
                    missing.append(f"{type_url.rsplit('.', 1)[-1]} {resource_name(r)!r} names "
                                   f"{ref_type.rsplit('.', 1)[-1]} {ref!r}")
        if missing:
            raise InconsistentSnapshot("; ".join(sorted(set(missing))))

    async def set(self, snapshot: S) -> S:
        """Check `snapshot`, retire what it removes, serve it (plus lingering parts) and wake
        the watchers. Returns the served view. Raises `InconsistentSnapshot` (nothing changes)."""
        self.check(snapshot)
        if self._latest is not None:
            self._retire(self._latest, snapshot)
        self._latest = snapshot
        view = self._with_lingering(snapshot)
        await self._serve(view)
        return view

    async def expire(self) -> bool:
        """Drop lingering parts whose time is up and serve the view without them. True if
        something expired."""
        if self._latest is None:
            return False
        now = self._clock()
        if not any(expiry <= now for parts in self._retired.values()
                   for _, expiry in parts.values()):
            return False
        await self._serve(self._with_lingering(self._latest))
        return True

    @property
    def lingering(self) -> dict[str, list[str]]:
        """type_url -> names of the removed parts served now only because they linger."""
        if self._latest is None:
            return {}
        now = self._clock()
        out = {}
        for type_url, parts in self._retired.items():
            have = self._linger[type_url].parts(self._latest.resources.get(type_url, ()))
            names = sorted(n for n, (_, expiry) in parts.items() if expiry > now and n not in have)
            if names:
                out[type_url] = names
        return out

    async def wait_newer(self, version: str | None) -> S:
        """Return the served view once its version differs from `version`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._view is not None and self._view.version != version)
            assert self._view is not None
            return self._view

    async def _serve(self, view: S) -> None:
        async with self._changed:
            self._view = view
            self._index = {t: {resource_name(r): r for r in rs}
                           for t, rs in view.resources.items()}
            self._changed.notify_all()

    def _retire(self, previous: S, snapshot: S) -> None:
        """Remember the parts `snapshot` removes from `previous`, for `linger_s`."""
        if self.linger_s <= 0:
            return
        expires = self._clock() + self.linger_s
        for type_url, policy in self._linger.items():
            current = policy.parts(snapshot.resources.get(type_url, ()))
            retired = self._retired.setdefault(type_url, {})
            for name, part in policy.parts(previous.resources.get(type_url, ())).items():
                if name not in current:
                    retired[name] = (part, expires)

    def _with_lingering(self, snapshot: S) -> S:
        """The snapshot plus the parts still lingering after removal (the snapshot itself when
        none do). Its versions are re-hashed and its version gets a suffix."""
        now = self._clock()
        self._retired = {t: {n: v for n, v in parts.items() if v[1] > now}
                         for t, parts in self._retired.items()}
        resources = dict(snapshot.resources)
        added = False
        for type_url, parts in self._retired.items():
            policy = self._linger[type_url]
            have = policy.parts(snapshot.resources.get(type_url, ()))
            lingering = [p for n, (p, _) in sorted(parts.items()) if n not in have]
            if lingering:
                resources[type_url] = policy.merge(snapshot.resources.get(type_url, ()),
                                                   lingering)
                added = True
        if not added:
            return snapshot
        versions = {t: digest(r) for t, r in resources.items()}
        suffix = "".join(versions[t][:4] for t in sorted(versions))
        return dataclasses.replace(snapshot, resources=resources,  # type: ignore[type-var]
                                   versions=versions, version=f"{snapshot.version}+{suffix}")

    # -- nodes ---------------------------------------------------------------------------------

    def connect(self, key: Hashable, node_id: str = "") -> NodeState:
        node = self.nodes[key] = NodeState(node_id=node_id)
        return node

    def drop(self, key: Hashable) -> NodeState | None:
        """Forget a node (no wake-up for `wait_acked`: see `disconnect`)."""
        return self.nodes.pop(key, None)

    async def disconnect(self, key: Hashable) -> NodeState | None:
        """Forget a node; a `wait_acked` that only waited for it finishes."""
        node = self.drop(key)
        await self._notify_ack()
        return node

    def subscribe(self, node: NodeState, type_url: str, names: Iterable[str] = ()) -> TypeState:
        """A request for `type_url` (of these names; none: all) from `node`."""
        state = node.types.setdefault(type_url, TypeState())
        state.subscribed = True
        state.names = tuple(names)
        return state

    def resume(self, node: NodeState, type_url: str, version: str) -> None:
        """A node's first request for a type (or after reconnecting): it already has
        `version`, so that counts as accepted and nothing is in flight."""
        state = node.types.setdefault(type_url, TypeState())
        state.in_flight = False
        state.acked_version = version

    def due(self, node: NodeState) -> list[Due]:
        """What `node` should be sent now, in the cache's order: every subscribed type with
        nothing in flight whose served version the node has neither been sent nor accepted."""
        view = self._view
        if view is None:
            return []
        out = []
        for type_url in self.order:
            state = node.types.get(type_url)
            if state is None or not state.subscribed or state.in_flight:
                continue
            version = view.versions[type_url]
            if version in (state.sent_version, state.acked_version):
                continue
            out.append(Due(type_url, version, self.select(type_url, state.names)))
        return out

    def sent(self, node: NodeState, type_url: str, version: str, nonce: str = "",
             expect_ack: bool = True) -> None:
        """`version` of `type_url` went to `node` (awaiting its ACK/NACK if `expect_ack`)."""
        state = node.types.setdefault(type_url, TypeState())
        state.nonce = nonce
        state.sent_version = version
        state.in_flight = expect_ack

    async def ack(self, node: NodeState, type_url: str, version: str) -> None:
        state = node.types.setdefault(type_url, TypeState())
        state.in_flight = False
        state.acked_version = version
        await self._notify_ack()

    async def nack(self, node: NodeState, type_url: str, error: str) -> None:
        """The node rejected what it was last sent; it keeps (and we record) what it had."""
        state = node.types.setdefault(type_url, TypeState())
        state.in_flight = False
        state.nacked_version = state.sent_version
        state.last_error = error
        await self._notify_ack()

    async def wait_acked(self, type_url: str, version: str, timeout: float) -> bool:
        """Wait until every connected node subscribed to `type_url` ACKed (or NACKed)
        `version`. False on timeout."""

        def done() -> bool:
            return all(
                (t := n.types.get(type_url)) is None or not t.subscribed
                or version in (t.acked_version, t.nacked_version)
                for n in self.nodes.values())

        async with self._acks:
            try:
                await asyncio.wait_for(self._acks.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True

    async def _notify_ack(self) -> None:
        async with self._acks:
            self._acks.notify_all()
