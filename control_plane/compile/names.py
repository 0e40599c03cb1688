"""Names and small builders every compile module shares: resource type URLs, the names of the
fixed resources, cluster naming, and the ext_proc filter both phases use."""

from __future__ import annotations

import re
from typing import Any

import orjson

from control_plane.config import Backend, Failover, GatewayConfig
from switchyard.contract import HEDGE_PREFIX

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: Order in which a new snapshot is pushed: clusters land before anything that names them.
PUSH_ORDER = (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

LISTENER_NAME = "switchyard_http"
ROUTE_CONFIG_NAME = "switchyard_routes"
EXT_PROC_CLUSTER = "switchyard_ext_proc"
XDS_CLUSTER = "switchyard_xds"
#: The bootstrap's local cluster: one endpoint per gateway node connected to the control plane
#: (EDS over ADS), so Envoy's quota safety net divides its buckets by the fleet's size.
FLEET_CLUSTER = "switchyard_fleet"
#: Name prefix of the per-model routes (`chat:<alias>`, whatever the ingress API).
MODEL_ROUTE_PREFIX = "chat:"

_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def _safe(name: str) -> str:
    """A cluster name Envoy stats print unambiguously."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def cluster_name(backend: Backend) -> str:
    """One Envoy cluster per (provider, upstream model): stats and health are per backend."""
    return _safe(f"{backend.provider}.{backend.model}")


def hedge_cluster_name(alias: str) -> str:
    return HEDGE_PREFIX + _safe(alias)


def max_retries(failover: Failover, backends: int) -> int:
    return failover.max_retries if failover.max_retries is not None else backends - 1


def seconds(ms: float) -> str:
    """Milliseconds as an Envoy duration string."""
    return f"{ms / 1000:.3f}s"


def error_json(status_message: str, type_: str, code: str, param: str | None = None) -> str:
    return orjson.dumps(
        {"error": {"message": status_message, "type": type_, "param": param, "code": code}}
    ).decode()


def ext_proc_filter(cfg: GatewayConfig, **settings: Any) -> dict[str, Any]:
    """An ext_proc filter talking to our ext_proc server; fails closed (no Python, no route)."""
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _EXT_PROC,
            "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
            "failure_mode_allow": False,
            "message_timeout": seconds(cfg.ext_proc.message_timeout_ms),
            **settings,
        },
    }
