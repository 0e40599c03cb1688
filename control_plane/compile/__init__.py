"""Config → one immutable, versioned snapshot: Envoy xDS resources + the ext_proc routing table.

This is the only place that knows how a model config becomes Envoy config, one module per
job: `clusters`, `listener`, `routes` (Envoy resources) and `table` (the RoutingTable for
ext_proc); `names` holds what they share. Resources are written as plain dicts in Envoy's own
YAML/JSON shape (easy to read against Envoy's docs) and parsed once into `xds-protos`
messages, so a field typo fails here, at compile time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from control_plane.cache import digest
from control_plane.compile.clusters import backend_clusters, clusters
from control_plane.compile.listener import listener
from control_plane.compile.names import (
    CLUSTER_TYPE,
    EXT_PROC_CLUSTER,
    LISTENER_NAME,
    LISTENER_TYPE,
    MODEL_ROUTE_PREFIX,
    PUSH_ORDER,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    XDS_CLUSTER,
    cluster_name,
    hedge_cluster_name,
    max_retries,
)
from control_plane.compile.quotas import summary as quota_summary
from control_plane.compile.routes import MODELS_PATH, PRIORITY_GROUP_TYPE, route_configuration
from control_plane.compile.table import routing_table
from control_plane.config import GatewayConfig
from protos import routing_pb2

__all__ = [
    "CLUSTER_TYPE",
    "EXT_PROC_CLUSTER",
    "LISTENER_NAME",
    "LISTENER_TYPE",
    "MODELS_PATH",
    "MODEL_ROUTE_PREFIX",
    "PRIORITY_GROUP_TYPE",
    "PUSH_ORDER",
    "ROUTE_CONFIG_NAME",
    "ROUTE_TYPE",
    "XDS_CLUSTER",
    "Snapshot",
    "cluster_name",
    "compile_config",
    "digest",
    "hedge_cluster_name",
    "max_retries",
]


@dataclass(frozen=True)
class Snapshot:
    """Everything one config compiles to. Immutable; `versions` hash each resource type."""

    version: str
    resources: dict[str, tuple[Message, ...]]
    versions: dict[str, str]
    routing: routing_pb2.RoutingTable
    #: Human-readable summary of the routes (for `switchyard validate`).
    summary: list[str] = field(default_factory=list)


def compile_config(cfg: GatewayConfig, created: Mapping[str, int] | None = None) -> Snapshot:
    """Compile a validated config into a snapshot. Pure: same config (and `created`: alias ->
    Unix time the control plane first loaded it, shown by `GET /v1/models`), same versions."""
    backends = backend_clusters(cfg)
    resources: dict[str, tuple[Message, ...]] = {
        CLUSTER_TYPE: clusters(cfg, backends),
        LISTENER_TYPE: (listener(cfg),),
        ROUTE_TYPE: (route_configuration(cfg, created),),
    }
    versions = {t: digest(r) for t, r in resources.items()}
    routing = routing_table(cfg, backends)
    h = hashlib.sha256("".join(versions[t] for t in PUSH_ORDER).encode())
    h.update(routing.SerializeToString(deterministic=True))
    version = h.hexdigest()[:16]
    routing.version = version
    summary = [
        f"{alias} -> " + " | ".join(
            f"{cluster_name(b)} ({cfg.providers[b.provider].kind} {cfg.providers[b.provider].host}"
            f":{cfg.providers[b.provider].port} model={b.model})" for b in model.backends)
        for alias, model in sorted(cfg.models.items())
    ] + quota_summary(cfg, backends)
    return Snapshot(version=version, resources=resources, versions=versions, routing=routing,
                    summary=summary)
