"""The RoutingTable for ext_proc (`protos/routing.proto`): providers with resolved credentials
and per-kind options, backends with prices and context windows, models with their failover."""

from __future__ import annotations

from control_plane.compile.names import cluster_name, max_retries
from control_plane.config import Backend, GatewayConfig, Provider
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
        )
    for cname, backend in sorted(backends.items()):
        table.backends.add(
            cluster=cname, provider=backend.provider, model=backend.model,
            price_input=backend.price.input if backend.price else 0.0,
            price_output=backend.price.output if backend.price else 0.0,
            price_cached_input=backend.price.cached_input if backend.price else 0.0,
            context_window=backend.context_window or 0,
        )
    for alias, model in sorted(cfg.models.items()):
        f = model.failover
        table.models.add(
            name=alias, backends=[cluster_name(b) for b in model.backends],
            max_retries=max_retries(f, len(model.backends)),
            per_try_timeout_ms=int(f.per_try_timeout_s * 1000),
            first_byte_timeout_ms=int(f.first_byte_timeout_s * 1000),
            hedge_after_ms=int(f.hedge_after_s * 1000) if f.hedge_after_s else 0)
    return table


def _authority(provider: Provider) -> str:
    default = 443 if provider.tls else 80
    return provider.host if provider.port == default else f"{provider.host}:{provider.port}"
