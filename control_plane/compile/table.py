"""The RoutingTable for ext_proc (`protos/routing.proto`): providers with resolved credentials
and per-kind options, backends with prices and context windows, models with their failover."""

from __future__ import annotations

import json

from control_plane.compile.endpoints import pool_json
from control_plane.compile.names import cluster_name, max_retries
from control_plane.config import (
    Backend,
    GatewayConfig,
    ModelQuota,
    Provider,
    QuotaLimits,
    Routing,
)
from protos import routing_pb2


def routing_table(cfg: GatewayConfig, backends: dict[str, Backend]) -> routing_pb2.RoutingTable:
    """The table (without its version: `compile_config` stamps the snapshot's version on it)."""
    table = routing_pb2.RoutingTable()
    for name, provider in sorted(cfg.providers.items()):
        table.providers.add(
            name=name, kind=provider.kind, host=_authority(provider),
            path_prefix=provider.path_prefix, tls=provider.tls,
            api_key=(provider.api_key.resolve() or "") if provider.api_key else "",
            headers=provider.headers, options=provider.options(),
            pool_json=pool_json(provider),
        )
    for cname, backend in sorted(backends.items()):
        added = table.backends.add(
            cluster=cname, provider=backend.provider, model=backend.model,
            price_input=backend.price.input if backend.price else 0.0,
            price_output=backend.price.output if backend.price else 0.0,
            price_cached_input=backend.price.cached_input if backend.price else 0.0,
            context_window=backend.context_window or 0,
            lacks=backend.lacks(cfg.providers[backend.provider].kind),
        )
        if isinstance(backend.quality, dict):
            added.quality_by_category.update(backend.quality)
        elif backend.quality is not None:
            added.quality = backend.quality
    for alias, model in sorted(cfg.models.items()):
        f = model.failover
        table.models.add(
            name=alias, backends=[cluster_name(b) for b in model.backends],
            max_retries=max_retries(f, len(model.backends)),
            per_try_timeout_ms=int(f.per_try_timeout_s * 1000),
            first_byte_timeout_ms=int(f.first_byte_timeout_s * 1000),
            hedge_after_ms=int(f.hedge_after_s * 1000) if f.hedge_after_s else 0,
            routing=_routing(model.routing) if model.routing else None)
    table.admission_json = admission_json(cfg, backends)
    return table


def _routing(r: Routing) -> routing_pb2.Routing:
    """A model's selection policy, defaults resolved (explore: 0.02, 0 for `ordered`)."""
    explore = r.explore if r.explore is not None else (0.0 if r.strategy == "ordered" else 0.02)
    return routing_pb2.Routing(
        strategy=r.strategy, weight_cost=r.weights.cost, weight_latency=r.weights.latency,
        weight_quality=r.weights.quality,
        slo_ttft_ms=(r.slo.ttft_ms or 0.0) if r.slo else 0.0,
        slo_tpot_ms=(r.slo.tpot_ms or 0.0) if r.slo else 0.0,
        percentile=r.slo.percentile if r.slo else 95.0,
        min_quality=r.min_quality or 0.0, explore=explore, max_price_usd=r.max_price_usd or 0.0)


def _quota(limits: QuotaLimits | ModelQuota | None) -> dict[str, float | int]:
    return {k: v for k, v in limits.model_dump().items() if v is not None} if limits else {}


def admission_json(cfg: GatewayConfig, backends: dict[str, Backend]) -> str:
    """What admission control needs, resolved here so ext_proc never sees a caller's key: only
    SHA-256 digests travel (a key whose environment variable is unset admits nobody)."""
    tenants = None
    if cfg.tenants is not None:
        tenants = {
            name: {"priority": t.priority,
                   "api_keys": [{"sha256": d} for k in t.api_keys if (d := k.digest())],
                   "limits": _quota(t.limits),
                   "models": {a: _quota(q) for a, q in t.models.items()}}
            for name, t in cfg.tenants.items()}
    doc = {
        "tenants": tenants,
        "providers": {n: q for n, p in cfg.providers.items() if (q := _quota(p.limits))},
        "backends": {c: q for c, b in backends.items() if (q := _quota(b.limits))},
        "priorities": {n: {k: v for k, v in s.model_dump().items() if v is not None}
                       for n, s in cfg.priorities.items()},
        "redis": cfg.shared_state.redis.url if cfg.shared_state and cfg.shared_state.redis
        else None,
    }
    if doc == {"tenants": None, "providers": {}, "backends": {}, "priorities": {},
               "redis": None}:
        return ""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _authority(provider: Provider) -> str:
    default = 443 if provider.tls else 80
    return provider.host if provider.port == default else f"{provider.host}:{provider.port}"
