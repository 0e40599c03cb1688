"""The ext_proc's view of the routing table: plain, immutable lookups built once per update.

The protobuf table from the control plane is turned into slotted objects and dicts so the
request path does a dict lookup, never a protobuf field walk. Tables are swapped atomically;
a request keeps the backend objects it started with even if a reload removes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import structlog

from protos import routing_pb2, routing_pb2_grpc

log = structlog.get_logger("switchyard.ext_proc.table")


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    kind: str
    authority: bytes
    path_prefix: str
    api_key: str
    headers: tuple[tuple[str, str], ...]
    options: dict[str, str]
    tls: bool = False
    #: A GPU pool's endpoint-picker settings as JSON ("" when not a pool).
    pool_json: str = ""

    def __repr__(self) -> str:  # never print the key
        return f"ProviderInfo(name={self.name!r}, kind={self.kind!r})"


@dataclass(frozen=True, slots=True)
class BackendInfo:
    cluster: str
    provider: ProviderInfo
    model: str
    price_input: float
    price_output: float
    context_window: int
    #: "provider/model", for logs, metrics and the x-switchyard-backend header.
    label: str
    #: USD per 1M cached prompt tokens. The table always sets it (the input price when the
    #: config has none); left out (negative), it is the input price too.
    price_cached_input: float = -1.0
    #: Configured quality prior (0..1) for every task category (negative: none) and per
    #: category (overrides it), for selection.
    quality: float = -1.0
    quality_by: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    #: Capabilities (contract.CAPABILITIES) this backend lacks: requests needing one never
    #: go to it.
    lacks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.price_cached_input < 0:
            object.__setattr__(self, "price_cached_input", self.price_input)

    def quality_for(self, category: str) -> float | None:
        """The configured quality prior for a task category (None: not configured)."""
        q = self.quality_by.get(category)
        if q is not None:
            return q
        return self.quality if self.quality >= 0 else None


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """A model's `routing:` block (absent: the configured order, unhealthy last)."""

    #: ordered | cost | latency | throughput | quality | balanced
    strategy: str = "ordered"
    weight_cost: float = 1.0
    weight_latency: float = 1.0
    weight_quality: float = 1.0
    #: 0: no SLO on that figure.
    slo_ttft_ms: float = 0.0
    slo_tpot_ms: float = 0.0
    percentile: float = 95.0
    #: 0: no floor.
    min_quality: float = 0.0
    #: Share of requests sent to a non-best backend to keep its statistics fresh.
    explore: float = 0.0
    #: Expected USD per request above which a backend is only a fallback (0: no cap).
    max_price_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    #: Configured fallback order.
    backends: tuple[BackendInfo, ...]
    max_retries: int
    per_try_timeout_ms: int
    first_byte_timeout_ms: int
    hedge_after_ms: int
    routing: RoutingPolicy | None = None


@dataclass(frozen=True, slots=True)
class Routes:
    version: str
    models: dict[str, ModelInfo]
    clusters: dict[str, BackendInfo]
    #: Tenants (key digests), quotas, priorities, Redis URL as JSON: admission reads it once
    #: per table (`ext_proc.admission.gate.Gate.configure`).
    admission_json: str = ""

    @classmethod
    def from_proto(cls, table: routing_pb2.RoutingTable) -> Routes:
        providers = {
            p.name: ProviderInfo(
                name=p.name,
                kind=p.kind,
                authority=p.host.encode(),
                path_prefix=p.path_prefix,
                tls=p.tls,
                api_key=p.api_key,
                headers=tuple(sorted(p.headers.items())),
                options=dict(p.options),
                pool_json=p.pool_json,
            )
            for p in table.providers
        }
        clusters = {
            b.cluster: BackendInfo(
                cluster=b.cluster,
                provider=providers[b.provider],
                model=b.model,
                price_input=b.price_input,
                price_output=b.price_output,
                price_cached_input=b.price_cached_input,
                context_window=b.context_window,
                label=f"{b.provider}/{b.model}",
                quality=b.quality if b.HasField("quality") else -1.0,
                quality_by=dict(b.quality_by_category),
                lacks=frozenset(b.lacks),
            )
            for b in table.backends
        }
        models = {
            m.name: ModelInfo(
                name=m.name, backends=tuple(clusters[c] for c in m.backends),
                max_retries=m.max_retries, per_try_timeout_ms=m.per_try_timeout_ms,
                first_byte_timeout_ms=m.first_byte_timeout_ms, hedge_after_ms=m.hedge_after_ms,
                routing=_policy(m.routing) if m.HasField("routing") else None)
            for m in table.models
        }
        return cls(version=table.version, models=models, clusters=clusters,
                   admission_json=table.admission_json)


def _policy(r: routing_pb2.Routing) -> RoutingPolicy:
    return RoutingPolicy(
        strategy=r.strategy or "ordered", weight_cost=r.weight_cost,
        weight_latency=r.weight_latency, weight_quality=r.weight_quality,
        slo_ttft_ms=r.slo_ttft_ms, slo_tpot_ms=r.slo_tpot_ms, percentile=r.percentile or 95.0,
        min_quality=r.min_quality, explore=r.explore, max_price_usd=r.max_price_usd)


EMPTY = Routes(version="", models={}, clusters={})


class RoutingClient:
    """Watches the control plane's RoutingTable stream and keeps `routes` current."""

    def __init__(self, target: str, node_id: str,
                 on_update: Callable[[Routes], None] | None = None) -> None:
        self.target = target
        self.node_id = node_id
        self.on_update = on_update
        self.routes: Routes = EMPTY
        self.ready = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub = routing_pb2_grpc.RoutingServiceStub(channel)
                    stream = stub.Watch(routing_pb2.WatchRequest(node_id=self.node_id))
                    async for table in stream:
                        self.routes = Routes.from_proto(table)
                        if self.on_update is not None:
                            self.on_update(self.routes)
                        self.ready.set()
                        backoff = 0.1
                        log.info(
                            "routing table updated",
                            version=table.version,
                            models=sorted(self.routes.models),
                        )
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "routing table stream lost; keeping last table",
                    code=str(exc.code()),
                    retry_in_s=backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
