"""Clusters: one per backend (provider x upstream model), plus one priority cluster per hedged
model. Each carries the translate phase (upstream ext_proc filter; in a backend cluster only for
retries, the route phase prepares first attempts), circuit breakers, outlier detection and TLS
to its provider."""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2  # noqa: F401
from envoy.extensions.filters.http.composite.v3 import composite_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401  (Any registry)
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401
from google.protobuf import json_format

from control_plane.compile.endpoints import apply_pool
from control_plane.compile.names import cluster_name, ext_proc_filter, hedge_cluster_name
from control_plane.compile.quotas import max_concurrent
from control_plane.config import Backend, GatewayConfig, Model, Provider
from switchyard.contract import DESTINATION_ENDPOINT_HEADER, METADATA_NAMESPACE, MODEL_HEADER

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def backend_clusters(cfg: GatewayConfig) -> dict[str, Backend]:
    """Cluster name -> the backend it serves (first occurrence), across every model."""
    backends: dict[str, Backend] = {}
    for model in cfg.models.values():
        for b in model.backends:
            backends.setdefault(cluster_name(b), b)
    return backends


def clusters(cfg: GatewayConfig, backends: dict[str, Backend]) -> tuple[cluster_pb2.Cluster, ...]:
    """Every cluster of the config: backends sorted by name, then hedge clusters by alias."""
    dicts = [_cluster(cfg, cname, b.provider, cfg.providers[b.provider], b)
             for cname, b in sorted(backends.items())]
    dicts += [_hedge_cluster(cfg, alias, m) for alias, m in sorted(cfg.models.items())
              if m.failover.hedge_after_s is not None]
    return tuple(json_format.ParseDict(c, cluster_pb2.Cluster()) for c in dicts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _upstream_ext_proc(cfg: GatewayConfig, host_metadata: bool = False) -> dict[str, Any]:
    """Translate phase: runs once per attempt inside the cluster, headers only.

    The body is replaced from the route phase's in-memory copy (CONTINUE_AND_REPLACE), so
    Envoy never streams the request body to Python a second time.
    """
    return ext_proc_filter(
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
        # The attempt rewrites :authority and removes every header not on its allow-list,
        # Envoy's own x-envoy-* included.
        mutation_rules={"allow_all_routing": True, "allow_envoy": True},
    )


#: Headers the route phase and Envoy's router put on the request for Envoy itself (route and
#: endpoint choice, the attempt counter the translate-phase matcher reads, the router's
#: timeout hint, the scheme the route match needs): removed before any attempt reaches a
#: provider.
INTERNAL_UPSTREAM_HEADERS = (MODEL_HEADER, DESTINATION_ENDPOINT_HEADER, "x-envoy-attempt-count",
                             "x-envoy-expected-rq-timeout-ms", "x-envoy-is-timeout-retry",
                             "x-forwarded-proto")


def _translate_on_retry(ext_proc: dict[str, Any]) -> dict[str, Any]:
    """The translate phase for attempts after the first only.

    The route phase already built the first attempt's request (for the first candidate), so
    on the common path no per-attempt gRPC stream is opened at all; a retry (Envoy's
    `x-envoy-attempt-count` is not 1, or absent) runs ext_proc, which rebuilds the request
    for its backend. Envoy's composite filter, matched on the attempt count, does the skip.
    """
    attempt_is_one = {"single_predicate": {
        "input": {"name": "attempt_count", "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
            "header_name": "x-envoy-attempt-count"}},
        "value_match": {"exact": "1"}}}
    return {
        "name": "switchyard.translate_on_retry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3."
                     "ExtensionWithMatcher",
            "xds_matcher": {"matcher_list": {"matchers": [{
                "predicate": {"not_matcher": attempt_is_one},
                "on_match": {"action": {"name": "translate", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.composite."
                             "v3.ExecuteFilterAction",
                    "typed_config": {"name": ext_proc["name"],
                                     "typed_config": ext_proc["typed_config"]}}}}}]}},
            "extension_config": {"name": "envoy.filters.http.composite", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.composite.v3."
                         "Composite"}},
        },
    }


def _strip_internal_headers() -> dict[str, Any]:
    """Envoy removes the internal headers of every attempt (the first one never meets a
    translate phase that could)."""
    return {"name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3."
                 "HeaderMutation",
        "mutations": {"request_mutations": [{"remove": h} for h in INTERNAL_UPSTREAM_HEADERS]}}}


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
            "max_pending_requests": max_concurrent(provider, backend),
            "max_requests": max_concurrent(provider, backend),
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
                    _translate_on_retry(_upstream_ext_proc(cfg)),
                    _strip_internal_headers(),
                    {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http."
                                 "upstream_codec.v3.UpstreamCodec"}},
                ],
            }
        },
    }
    if provider.tls:
        cluster["transport_socket"] = _tls_socket(provider.host)
    if provider.endpoints:
        apply_pool(cluster, provider)
    return cluster


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
    # Every attempt of a hedged model is translated here (the endpoint, hence the backend, is
    # only known once Envoy picked it).
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
