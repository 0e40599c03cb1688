"""The listener: HTTP connection manager with the route-phase ext_proc filter and the router;
routes come over RDS (ADS)."""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401  (Any registry)
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401  (Any registry)
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from control_plane.compile.clusters import backend_clusters
from control_plane.compile.names import (
    EXT_PROC_CLUSTER,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    error_json,
    ext_proc_filter,
    seconds,
)
from control_plane.compile.quotas import local_rate_limit_filter
from control_plane.config import GatewayConfig
from switchyard.contract import ATTEMPT_LOG_NAME, METADATA_NAMESPACE, REQUEST_ID_HEADER

#: Response headers of a failed attempt that health and admission read (cool-down and the
#: provider's own rate-limit state).
ATTEMPT_LOG_RESPONSE_HEADERS = (
    "retry-after", "retry-after-ms",
    *(f"x-ratelimit-{k}-{w}" for k in ("remaining", "limit", "reset")
      for w in ("requests", "tokens")),
    *(f"anthropic-ratelimit-{w}-{k}" for w in ("requests", "tokens", "input-tokens",
                                               "output-tokens")
      for k in ("remaining", "limit", "reset")))


def failed_attempt_log() -> dict[str, Any]:
    """Every failed upstream attempt (status >= 400, or no response) streamed to ext_proc
    over gRPC access logging (batched, off the request path). The route phase builds first
    attempts without a translate-phase stream, so this is how their failures (a 429 and its
    retry-after, a 5xx, a refused connection) reach health, statistics and admission."""
    def status(op: str, value: int) -> dict[str, Any]:
        return {"status_code_filter": {"comparison": {"op": op, "value": {
            "default_value": value, "runtime_key": f"switchyard.attempt_log_{op.lower()}"}}}}
    return {
        "name": "envoy.access_loggers.http_grpc",
        "filter": {"or_filter": {"filters": [status("GE", 400), status("EQ", 0)]}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
                     "HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": ATTEMPT_LOG_NAME,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
                "buffer_flush_interval": "0.02s",
            },
            "additional_request_headers_to_log": [REQUEST_ID_HEADER],
            "additional_response_headers_to_log": list(ATTEMPT_LOG_RESPONSE_HEADERS),
        },
    }


def listener(cfg: GatewayConfig) -> listener_pb2.Listener:
    return json_format.ParseDict(_listener(cfg), listener_pb2.Listener())


def _listener(cfg: GatewayConfig) -> dict[str, Any]:
    """Route phase: ext_proc sees headers + the buffered body, then the router picks a cluster."""
    route_phase = ext_proc_filter(
        cfg,
        max_message_timeout=seconds(max(cfg.ext_proc.message_timeout_ms, 30_000)),
        allow_mode_override=True,
        # The route phase hands the router each request's candidate order here.
        metadata_options={"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
        # The route phase sets each request's retry budget and per-try timeout (first-byte
        # timeout for streams, hedge delay for hedged models) as `x-envoy-max-retries` and
        # `x-envoy-upstream-rq-per-try-timeout-ms`: Envoy drops x-envoy-* mutations (and
        # counts them in `ext_proc.rejected_header_mutations`) unless allowed here. It also
        # builds the first attempt's request (:path, :authority, the provider's headers).
        mutation_rules={"allow_envoy": True, "allow_all_routing": True},
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
    too_large = error_json("Request body too large", "invalid_request_error", "request_too_large")
    unavailable = error_json("The gateway is briefly unavailable (a component is restarting); "
                             "retry shortly", "api_error", "unavailable")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                 "v3.HttpConnectionManager",
        "stat_prefix": "switchyard",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        # Receiving the request: headers, then headers + body (not the response).
        "request_headers_timeout": seconds(int(cfg.limits.request_headers_timeout_s * 1000)),
        "request_timeout": seconds(int(cfg.limits.request_receive_timeout_s * 1000)),
        "stream_idle_timeout": f"{cfg.limits.request_timeout_s:.0f}s",
        "rds": {"route_config_name": ROUTE_CONFIG_NAME,
                "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 413, "runtime_key": "sy.413"}}}},
            "body": {"inline_string": too_large},
            "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                                     "content_type": "application/json"},
        }, {
            # Envoy's own 500s (ext_proc unreachable while it restarts; ext_proc itself never
            # answers 500): a retryable 503 error object with retry-after, never an empty body.
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 500, "runtime_key": "sy.500"}}}},
            "status_code": 503,
            "headers_to_add": [{"header": {"key": "retry-after", "value": "1"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
            "body": {"inline_string": unavailable},
            "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                                     "content_type": "application/json"},
        }]},
        "http_filters": [
            route_phase,
            # Envoy's own quota safety net (provider/backend rpm), when any is configured.
            *filter(None, [local_rate_limit_filter(cfg, backend_clusters(cfg))]),
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "upstream_log": [failed_attempt_log()]}},
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
