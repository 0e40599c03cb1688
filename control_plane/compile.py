"""Config → one immutable, versioned snapshot: Envoy xDS resources + the ext_proc routing table.

This is the only place that knows how a model config becomes Envoy config. Resources are
written as plain dicts in Envoy's own YAML/JSON shape (easy to read against Envoy's docs) and
parsed once into `xds-protos` messages, so a field typo fails here, at compile time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401  (Any registry)
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.retry.priority.previous_priorities.v3 import (  # noqa: F401
    previous_priorities_config_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import any_pb2, json_format, wrappers_pb2
from google.protobuf.message import Message

from control_plane.config import Backend, Failover, GatewayConfig, Model, Provider
from protos import envoy_vendor_pb2, routing_pb2
from switchyard.contract import (
    ATTEMPTS_HEADER,
    HEDGE_PREFIX,
    INGRESS_PATHS_REGEX,
    METADATA_NAMESPACE,
    MODEL_HEADER,
)

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: Order in which a new snapshot is pushed: clusters land before anything that names them.
PUSH_ORDER = (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

LISTENER_NAME = "switchyard_http"
ROUTE_CONFIG_NAME = "switchyard_routes"
EXT_PROC_CLUSTER = "switchyard_ext_proc"
XDS_CLUSTER = "switchyard_xds"

PRIORITY_GROUP_TYPE = ("type.googleapis.com/envoy.extensions.router.cluster_specifiers."
                       "priority_group.v3.PriorityGroupClusterSpecifier")

MODELS_PATH = "/v1/models"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute")


@dataclass(frozen=True)
class Snapshot:
    """Everything one config compiles to. Immutable; `versions` hash each resource type."""

    version: str
    resources: dict[str, tuple[Message, ...]]
    versions: dict[str, str]
    routing: routing_pb2.RoutingTable
    #: Human-readable summary of the routes (for `switchyard validate`).
    summary: list[str] = field(default_factory=list)


def _safe(name: str) -> str:
    """A cluster name Envoy stats print unambiguously."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def cluster_name(backend: Backend) -> str:
    """One Envoy cluster per (provider, upstream model): stats and health are per backend."""
    return _safe(f"{backend.provider}.{backend.model}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ms(ms: float) -> str:
    return f"{ms / 1000:.3f}s"


def _error_json(status_message: str, type_: str, code: str) -> str:
    return orjson.dumps(
        {"error": {"message": status_message, "type": type_, "param": None, "code": code}}
    ).decode()


def _ext_proc_disabled() -> dict[str, Any]:
    return {"envoy.filters.http.ext_proc": {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}}


def _ext_proc_filter(cfg: GatewayConfig, **settings: Any) -> dict[str, Any]:
    """An ext_proc filter talking to our ext_proc server; fails closed (no Python, no route)."""
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _EXT_PROC,
            "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
            "failure_mode_allow": False,
            "message_timeout": _ms(cfg.ext_proc.message_timeout_ms),
            **settings,
        },
    }


def _upstream_ext_proc(cfg: GatewayConfig, host_metadata: bool = False) -> dict[str, Any]:
    """Translate phase: runs once per attempt inside the cluster, headers only.

    The body is replaced from the route phase's in-memory copy (CONTINUE_AND_REPLACE), so
    Envoy never streams the request body to Python a second time.
    """
    return _ext_proc_filter(
        cfg,
        processing_mode={
            "request_header_mode": "SEND",
            "request_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            # Per-attempt status (429 retry-after, failures) feeds backend health.
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
            "response_trailer_mode": "SKIP",
        },
        request_attributes=["xds.cluster_name"]
        + (["xds.upstream_host_metadata"] if host_metadata else []),
        mutation_rules={"allow_all_routing": True},
    )


def _cluster(cfg: GatewayConfig, name: str, provider_name: str, provider: Provider,
             backend: Backend) -> dict[str, Any]:
    protocol: dict[str, Any] = (
        {"auto_config": {"http2_protocol_options": {}, "http_protocol_options": {}}}
        if provider.tls
        else {"explicit_http_config": {"http_protocol_options": {}}}
    )
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(provider.host) else "LOGICAL_DNS",
        "connect_timeout": f"{provider.connect_timeout_s:.3f}s",
        "lb_policy": "ROUND_ROBIN",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": provider.host, "port_value": provider.port}}}}]}],
        },
        "circuit_breakers": {"thresholds": [{
            "max_connections": provider.max_concurrent_requests,
            "max_pending_requests": provider.max_concurrent_requests,
            "max_requests": provider.max_concurrent_requests,
            "retry_budget": {
                "budget_percent": {"value": provider.health.retry_budget_percent},
                "min_retry_concurrency": provider.health.min_retry_concurrency,
            },
        }]},
        # One host per cluster: ejecting it must be allowed (max_ejection_percent 100). The
        # route phase orders ejected backends last; Envoy's panic mode still lets a request
        # through if every candidate is ejected.
        "outlier_detection": {
            "consecutive_5xx": provider.health.consecutive_failures,
            "consecutive_gateway_failure": provider.health.consecutive_failures,
            "consecutive_local_origin_failure": provider.health.consecutive_failures,
            "split_external_local_origin_errors": True,
            "enforcing_consecutive_5xx": 100,
            "enforcing_consecutive_gateway_failure": 100,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "1s",
            "base_ejection_time": f"{provider.health.ejection_s:.3f}s",
            "max_ejection_time": f"{max(provider.health.ejection_s, 300.0):.3f}s",
            "max_ejection_percent": 100,
        },
        "metadata": {"filter_metadata": {METADATA_NAMESPACE: {
            "provider": provider_name, "kind": provider.kind, "model": backend.model}}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                **protocol,
                "http_filters": [
                    _upstream_ext_proc(cfg),
                    {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                 "upstream_codec.v3.UpstreamCodec"}},
                ],
            }
        },
    }
    if provider.tls:
        cluster["transport_socket"] = _tls_socket(provider.host)
    return cluster


def hedge_cluster_name(alias: str) -> str:
    return HEDGE_PREFIX + _safe(alias)


def _hedge_cluster(cfg: GatewayConfig, alias: str, model: Model) -> dict[str, Any]:
    """One cluster holding every backend of a hedged model, backend i at priority i.

    Envoy does not re-run the cluster specifier for a hedged attempt, so hedging moves between
    hosts of one cluster instead: `previous_priorities` sends attempt k to priority k. Each
    endpoint's metadata names its backend cluster, which the translate phase reads (via
    `xds.upstream_host_metadata`) to translate the attempt for that backend."""
    name = hedge_cluster_name(alias)
    first = model.backends[0]
    cluster = _cluster(cfg, name, first.provider, cfg.providers[first.provider], first)
    providers = [cfg.providers[b.provider] for b in model.backends]
    endpoints = []
    for priority, (b, p) in enumerate(zip(model.backends, providers, strict=True)):
        meta: dict[str, Any] = {METADATA_NAMESPACE: {"cluster": cluster_name(b)}}
        if p.tls:
            meta["envoy.transport_socket_match"] = {"tls_host": p.host}
        endpoints.append({"priority": priority, "lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": p.host,
                                                        "port_value": p.port}}},
            "metadata": {"filter_metadata": meta}}]})
    cluster["load_assignment"] = {"cluster_name": name, "endpoints": endpoints}
    cluster["type"] = "STATIC" if all(_is_ip(p.host) for p in providers) else "STRICT_DNS"
    cluster["metadata"] = {"filter_metadata": {METADATA_NAMESPACE: {"hedge_for": alias}}}
    cluster.pop("transport_socket", None)
    tls_hosts = sorted({p.host for p in providers if p.tls})
    if tls_hosts:
        cluster["transport_socket_matches"] = [
            {"name": f"tls-{host}", "match": {"tls_host": host},
             "transport_socket": _tls_socket(host, alpn=("http/1.1",))}
            for host in tls_hosts]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    options["http_filters"][0] = _upstream_ext_proc(cfg, host_metadata=True)
    # Endpoints may mix TLS and plaintext: ALPN-based protocol selection needs TLS on every
    # endpoint, so a hedge cluster speaks HTTP/1.1 everywhere.
    options.pop("auto_config", None)
    options["explicit_http_config"] = {"http_protocol_options": {}}
    return cluster


def _tls_socket(host: str, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                     "UpstreamTlsContext",
            "sni": host,
            "common_tls_context": {
                "alpn_protocols": list(alpn),
                "validation_context": {"trusted_ca": {"filename": CA_BUNDLE}},
            },
        },
    }


def _listener(cfg: GatewayConfig) -> dict[str, Any]:
    """Route phase: ext_proc sees headers + the buffered body, then the router picks a cluster."""
    route_phase = _ext_proc_filter(
        cfg,
        max_message_timeout=_ms(max(cfg.ext_proc.message_timeout_ms, 30_000)),
        allow_mode_override=True,
        # The route phase hands the router each request's candidate order here.
        metadata_options={"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
        processing_mode={
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            # Overridden per response at response-headers time: BUFFERED for JSON.
            "response_body_mode": "STREAMED",
            "response_trailer_mode": "SKIP",
        },
    )
    too_large = _error_json("Request body too large", "invalid_request_error", "request_too_large")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                 "v3.HttpConnectionManager",
        "stat_prefix": "switchyard",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "request_timeout": "0s",
        "stream_idle_timeout": f"{cfg.limits.request_timeout_s:.0f}s",
        "rds": {"route_config_name": ROUTE_CONFIG_NAME,
                "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 413, "runtime_key": "sy.413"}}}},
            "body": {"inline_string": too_large},
            "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                                     "content_type": "application/json"},
        }]},
        "http_filters": [
            route_phase,
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": cfg.listen.address,
                                       "port_value": cfg.listen.port}},
        # Bodies are buffered for the route phase and for retries: allow the configured max.
        "per_connection_buffer_limit_bytes": cfg.limits.max_request_bytes,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }


def _routes(cfg: GatewayConfig) -> dict[str, Any]:
    models_body = orjson.dumps({
        "object": "list",
        "data": [{"id": alias, "object": "model", "created": 0,
                  "owned_by": cfg.providers[m.backends[0].provider].kind}
                 for alias, m in sorted(cfg.models.items())],
    }).decode()
    json_headers = [{"header": {"key": "content-type", "value": "application/json"}}]
    post = {"name": ":method", "string_match": {"exact": "POST"}}
    get = {"name": ":method", "string_match": {"exact": "GET"}}
    return {
        "name": ROUTE_CONFIG_NAME,
        "max_direct_response_body_size_bytes": max(4096, len(models_body) + 1),
        "virtual_hosts": [{
            "name": "switchyard",
            "domains": ["*"],
            "routes": [
                {"name": "models", "match": {"path": MODELS_PATH, "headers": [get]},
                 "direct_response": {"status": 200, "body": {"inline_string": models_body}},
                 "response_headers_to_add": json_headers,
                 "typed_per_filter_config": _ext_proc_disabled()},
                # After the route phase named the model: its own route, retry and hedge policy.
                *(_model_route(cfg, alias, model) for alias, model in sorted(cfg.models.items())),
                # Before the body is seen (route phase still running) the request sits here.
                {"name": "pending", "match": {"safe_regex": {"regex": INGRESS_PATHS_REGEX},
                                              "headers": [post]},
                 "direct_response": {"status": 503, "body": {"inline_string": _error_json(
                     "The gateway could not route this request", "api_error", "no_route")}},
                 "response_headers_to_add": json_headers},
                {"name": "not_found", "match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": _error_json(
                     "Unknown path or method", "invalid_request_error", "not_found")}},
                 "response_headers_to_add": json_headers,
                 "typed_per_filter_config": _ext_proc_disabled()},
            ],
        }],
    }


_RETRY_ON = {"connect-failure": "connect-failure", "reset": "reset", "5xx": "5xx",
             "429": "retriable-status-codes", "timeout": "gateway-error"}


def _retry_policy(failover: Failover, backends: int) -> dict[str, Any]:
    retry_on = sorted({_RETRY_ON[r] for r in failover.retry_on} | {"refused-stream"})
    policy: dict[str, Any] = {
        "retry_on": ",".join(retry_on),
        "num_retries": max_retries(failover, backends),
        "per_try_timeout": f"{failover.per_try_timeout_s:.3f}s",
        # Moving to another backend needs no back-off; keep it short.
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.050s"},
    }
    if "429" in failover.retry_on:
        policy["retriable_status_codes"] = [429]
    return policy


def max_retries(failover: Failover, backends: int) -> int:
    return failover.max_retries if failover.max_retries is not None else backends - 1


def _model_route(cfg: GatewayConfig, alias: str, model: Model) -> dict[str, Any]:
    """Per-model chat route; its cluster specifier and retry refresh are added in `_finish`."""
    route: dict[str, Any] = {
        "timeout": f"{cfg.limits.request_timeout_s:.0f}s",
        "retry_policy": _retry_policy(model.failover, len(model.backends)),
    }
    if model.failover.hedge_after_s is not None:
        route["hedge_policy"] = {"hedge_on_per_try_timeout": True}
        route["cluster"] = hedge_cluster_name(alias)
        route["retry_policy"]["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority."
                         "previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1}}
        route["retry_policy"]["retry_host_predicate"] = [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                      "previous_hosts.v3.PreviousHostsPredicate"}}]
        route["retry_policy"]["host_selection_retry_max_attempts"] = 5
    return {
        "name": f"chat:{alias}",
        # Envoy's own attempt count (connect failures included); ext_proc reads it for
        # logs, metrics and health, and passes it on to the client.
        "response_headers_to_add": [{
            "header": {"key": ATTEMPTS_HEADER,
                       "value": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        "match": {"safe_regex": {"regex": INGRESS_PATHS_REGEX}, "headers": [
            {"name": ":method", "string_match": {"exact": "POST"}},
            {"name": MODEL_HEADER, "string_match": {"exact": alias}}]},
        "route": route,
    }


def _priority_groups(model: Model) -> any_pb2.Any:
    """priority_group specifier: attempt k goes to group k; the route phase's per-request order
    (dynamic metadata) overrides the configured order."""
    spec = envoy_vendor_pb2.PriorityGroupClusterSpecifier(
        override_metadata_namespace=METADATA_NAMESPACE)
    seen: set[str] = set()
    for b in model.backends:
        name = cluster_name(b)
        if name in seen:
            continue
        seen.add(name)
        spec.priority_groups.add(name=name, clusters=[envoy_vendor_pb2.ClusterWeight(
            cluster_name=name, weight=wrappers_pb2.UInt32Value(value=1))])
    return any_pb2.Any(type_url=PRIORITY_GROUP_TYPE,
                       value=spec.SerializeToString(deterministic=True))


_REFRESH_CLUSTER_ON_RETRY = envoy_vendor_pb2.RetryPolicyExtension(
    refresh_cluster_on_retry=True).SerializeToString()


def _finish_routes(cfg: GatewayConfig, routes: route_pb2.RouteConfiguration) -> None:
    """Add what xds-protos cannot express: the priority_group specifier and
    `refresh_cluster_on_retry` (merged as field 14 of RetryPolicy, unknown to the wheel)."""
    for route in routes.virtual_hosts[0].routes:
        if not route.name.startswith("chat:") or route.route.cluster:
            continue
        model = cfg.models[route.name[len("chat:"):]]
        plugin = route.route.inline_cluster_specifier_plugin.extension
        plugin.name = "envoy.router.cluster_specifier_plugin.priority_group"
        plugin.typed_config.CopyFrom(_priority_groups(model))
        route.route.retry_policy.MergeFromString(_REFRESH_CLUSTER_ON_RETRY)


def _routing_table(cfg: GatewayConfig, backends: dict[str, tuple[str, Backend]]
                   ) -> routing_pb2.RoutingTable:
    table = routing_pb2.RoutingTable()
    for name, provider in sorted(cfg.providers.items()):
        table.providers.add(
            name=name, kind=provider.kind, host=_authority(provider),
            path_prefix=provider.path_prefix, tls=provider.tls,
            api_key=(provider.api_key.resolve() or "") if provider.api_key else "",
            headers=provider.headers, options=provider.options(),
        )
    for cname, (_, backend) in sorted(backends.items()):
        table.backends.add(
            cluster=cname, provider=backend.provider, model=backend.model,
            price_input=backend.price.input if backend.price else 0.0,
            price_output=backend.price.output if backend.price else 0.0,
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


def digest(messages: Iterable[Message]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(m.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def compile_config(cfg: GatewayConfig) -> Snapshot:
    """Compile a validated config into a snapshot. Pure: same config, same versions."""
    backends: dict[str, tuple[str, Backend]] = {}
    for alias, model in cfg.models.items():
        for b in model.backends:
            backends.setdefault(cluster_name(b), (alias, b))
    cluster_dicts = [_cluster(cfg, cname, b.provider, cfg.providers[b.provider], b)
                     for cname, (_, b) in sorted(backends.items())]
    cluster_dicts += [_hedge_cluster(cfg, alias, m) for alias, m in sorted(cfg.models.items())
                      if m.failover.hedge_after_s is not None]
    clusters = tuple(json_format.ParseDict(c, cluster_pb2.Cluster()) for c in cluster_dicts)
    listeners = (json_format.ParseDict(_listener(cfg), listener_pb2.Listener()),)
    route_config = json_format.ParseDict(_routes(cfg), route_pb2.RouteConfiguration())
    _finish_routes(cfg, route_config)
    routes = (route_config,)
    resources: dict[str, tuple[Message, ...]] = {
        CLUSTER_TYPE: clusters, LISTENER_TYPE: listeners, ROUTE_TYPE: routes}
    versions = {t: digest(r) for t, r in resources.items()}
    routing = _routing_table(cfg, backends)
    h = hashlib.sha256("".join(versions[t] for t in PUSH_ORDER).encode())
    h.update(routing.SerializeToString(deterministic=True))
    version = h.hexdigest()[:16]
    routing.version = version
    summary = [
        f"{alias} -> " + " | ".join(
            f"{cluster_name(b)} ({cfg.providers[b.provider].kind} {cfg.providers[b.provider].host}"
            f":{cfg.providers[b.provider].port} model={b.model})" for b in model.backends)
        for alias, model in sorted(cfg.models.items())
    ]
    return Snapshot(version=version, resources=resources, versions=versions, routing=routing,
                    summary=summary)


