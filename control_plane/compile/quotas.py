"""Envoy's own safety net for provider quotas, independent of ext_proc's admission control.

* **Requests per minute** of a provider account or one backend: a local rate limit on the
  listener with one token bucket per provider and per backend, keyed by descriptors that the
  model routes read from the route phase's dynamic metadata (the request's first candidate).
  Envoy answers 429 itself once a bucket is empty, so a quota holds even if ext_proc misjudges.
  The buckets are shared by the fleet (`local_cluster_rate_limit`): the bootstrap's local
  cluster (`FLEET_CLUSTER`) has one endpoint per node connected to the control plane
  (`fleet_assignment`, pushed over ADS as nodes come and go), and each Envoy charges a request
  N tokens when it has N members, so N nodes together admit one quota, burst included.
  Local rate limits are not available as upstream (per-cluster) filters in Envoy 1.40, so the
  net covers first attempts; failovers are covered by admission control and circuit breakers.
* **Concurrency** (`max_concurrent`): the backend cluster's circuit breaker.

A bucket holds a minute's quota and refills smoothly (1/60 of it per second, in at least
50 ms steps), the shape of the providers' own limits. Tokens per minute need the response's
usage and stay with admission control.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import (  # noqa: F401  (Any registry)
    local_rate_limit_pb2,
)
from google.protobuf import json_format

from control_plane.compile.names import FLEET_CLUSTER
from control_plane.config import Backend, GatewayConfig, Provider
from switchyard.contract import FIRST_BACKEND_KEY, FIRST_PROVIDER_KEY, METADATA_NAMESPACE

#: Descriptor keys of the listener's local rate limit.
BACKEND_DESCRIPTOR = "switchyard_backend"
PROVIDER_DESCRIPTOR = "switchyard_provider"
#: Smallest fill interval Envoy accepts.
_MIN_FILL_S = 0.05


def rpm_limits(cfg: GatewayConfig, backends: dict[str, Backend]
               ) -> tuple[dict[str, float], dict[str, float]]:
    """(provider -> rpm, backend cluster -> rpm) for every configured requests-per-minute."""
    providers = {n: p.limits.rpm for n, p in cfg.providers.items() if p.limits and p.limits.rpm}
    clusters = {c: b.limits.rpm for c, b in backends.items() if b.limits and b.limits.rpm}
    return providers, clusters


def max_concurrent(provider: Provider, backend: Backend) -> int:
    """The backend cluster's circuit-breaker size: the tightest configured concurrency."""
    caps = [provider.max_concurrent_requests]
    for lim in (provider.limits, backend.limits):
        if lim is not None and lim.max_concurrent:
            caps.append(lim.max_concurrent)
    return min(caps)


def _bucket(rpm: float) -> dict[str, Any]:
    per_s = rpm / 60.0
    interval = max(_MIN_FILL_S, 1.0 / per_s)
    return {"max_tokens": max(1, math.floor(rpm)),
            "tokens_per_fill": max(1, round(per_s * interval)),
            "fill_interval": f"{interval:.3f}s"}


def local_rate_limit_filter(cfg: GatewayConfig, backends: dict[str, Backend]
                            ) -> dict[str, Any] | None:
    """The listener filter holding every provider/backend bucket; None when no rpm is set."""
    providers, clusters = rpm_limits(cfg, backends)
    if not providers and not clusters:
        return None
    descriptors = [
        {"entries": [{"key": PROVIDER_DESCRIPTOR, "value": name}], "token_bucket": _bucket(rpm)}
        for name, rpm in sorted(providers.items())
    ] + [
        {"entries": [{"key": BACKEND_DESCRIPTOR, "value": name}], "token_bucket": _bucket(rpm)}
        for name, rpm in sorted(clusters.items())
    ]
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
              "runtime_key": "switchyard.quota_safety_net"}
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3."
                 "LocalRateLimit",
        "stat_prefix": "switchyard_quota",
        # Requests matching no descriptor (no quota configured) are never limited.
        "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000,
                         "fill_interval": "1s"},
        "filter_enabled": always,
        "filter_enforced": always,
        # One quota for the whole fleet: each bucket divided by the local cluster's members.
        "local_cluster_rate_limit": {},
        "descriptors": descriptors,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {
            "key": "retry-after", "value": "1"}}],
    }}


def _member_path(node_id: str) -> str:
    """A member's endpoint: a Unix socket path naming the node (unique per node id, never
    connected to: the cluster only counts), hashed when too long for a socket path."""
    if len(node_id) > 64:
        node_id = hashlib.sha256(node_id.encode()).hexdigest()[:32]
    return f"/switchyard/fleet/{node_id}"


def fleet_assignment(node_ids: Iterable[str]) -> endpoint_pb2.ClusterLoadAssignment:
    """The local cluster's endpoints: one per gateway node (by node id). Envoy's local rate
    limit with `local_cluster_rate_limit` takes 1 / their number of each bucket."""
    return json_format.ParseDict({"cluster_name": FLEET_CLUSTER, "endpoints": [{
        "lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": _member_path(n)}}}}
                         for n in sorted(set(node_ids))]}]},
        endpoint_pb2.ClusterLoadAssignment())


def route_rate_limits() -> list[dict[str, Any]]:
    """A model route's descriptors: its first candidate's provider and backend, from the
    route phase's dynamic metadata."""
    def action(descriptor: str, key: str) -> dict[str, Any]:
        return {"actions": [{"metadata": {
            "descriptor_key": descriptor, "source": "DYNAMIC",
            "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": key}]}}}]}

    return [action(PROVIDER_DESCRIPTOR, FIRST_PROVIDER_KEY),
            action(BACKEND_DESCRIPTOR, FIRST_BACKEND_KEY)]


def summary(cfg: GatewayConfig, backends: dict[str, Backend]) -> list[str]:
    """`switchyard validate` lines: what Envoy itself enforces per provider and backend."""
    providers, clusters = rpm_limits(cfg, backends)
    net = "(Envoy local rate limit, shared by the fleet's nodes)"
    lines = [f"quota provider {n}: {rpm:g} rpm {net}" for n, rpm in sorted(providers.items())]
    for c, b in sorted(backends.items()):
        parts = []
        if c in clusters:
            parts.append(f"{clusters[c]:g} rpm {net}")
        cap = max_concurrent(cfg.providers[b.provider], b)
        if cap != cfg.providers[b.provider].max_concurrent_requests or c in clusters:
            parts.append(f"max {cap} concurrent (circuit breaker)")
        if parts:
            lines.append(f"quota backend {c}: " + ", ".join(parts))
    return lines
