"""The route configuration: `GET /v1/models` and `GET /v1/models/{alias}` answered by Envoy,
one route per model (matched on the model header the route phase sets) with its retry/hedge
policy and the priority_group cluster specifier, and the catch-alls."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401  (Any registry)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.retry.priority.previous_priorities.v3 import (  # noqa: F401
    previous_priorities_config_pb2,
)
from google.protobuf import any_pb2, json_format, wrappers_pb2

from control_plane.compile.clusters import backend_clusters
from control_plane.compile.names import (
    MODEL_ROUTE_PREFIX,
    ROUTE_CONFIG_NAME,
    cluster_name,
    error_json,
    hedge_cluster_name,
    max_retries,
)
from control_plane.compile.quotas import route_rate_limits, rpm_limits
from control_plane.config import Failover, GatewayConfig, Model
from protos import envoy_vendor_pb2
from switchyard.contract import (
    ATTEMPTS_HEADER,
    FEEDBACK_PATH,
    INGRESS_PATHS_REGEX,
    METADATA_NAMESPACE,
    MODEL_HEADER,
)

PRIORITY_GROUP_TYPE = ("type.googleapis.com/envoy.extensions.router.cluster_specifiers."
                       "priority_group.v3.PriorityGroupClusterSpecifier")
MODELS_PATH = "/v1/models"
#: Name prefix of the `GET /v1/models/{alias}` routes (not model routes: they do not linger).
MODEL_INFO_PREFIX = "model:"

_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute")


def route_configuration(cfg: GatewayConfig, created: Mapping[str, int] | None = None
                        ) -> route_pb2.RouteConfiguration:
    """`created`: alias -> Unix time for `/v1/models` (a model's own `created` wins; 0 if
    neither names it, as in an offline `switchyard validate`)."""
    config = json_format.ParseDict(_routes(cfg, created or {}), route_pb2.RouteConfiguration())
    _finish_routes(cfg, config)
    return config


def _ext_proc_disabled() -> dict[str, Any]:
    return {"envoy.filters.http.ext_proc": {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}}


#: Characters a client may send unescaped in a path segment; any other character of an alias
#: may arrive percent-encoded (the openai SDK sends `/` as `%2F`). Envoy's `normalize_path`
#: already decodes escaped unreserved characters.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def model_path_regex(alias: str) -> str:
    """`/v1/models/<alias>`, each reserved character of the alias raw or percent-encoded."""
    parts = []
    for ch in alias:
        if ch in _UNRESERVED:
            parts.append(re.escape(ch))
        else:
            code = f"{ord(ch):02X}"
            hi, lo = code[0], code[1]
            parts.append(f"(?:{re.escape(ch)}|%{hi}[{lo}{lo.lower()}])" if lo.isalpha()
                         else f"(?:{re.escape(ch)}|%{hi}{lo})")
    return re.escape(MODELS_PATH + "/") + "".join(parts)


def _model_objects(cfg: GatewayConfig, created: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """OpenAI model objects by alias, sorted by alias."""
    return {alias: {"id": alias, "object": "model",
                    "created": m.created if m.created is not None else created.get(alias, 0),
                    "owned_by": cfg.providers[m.backends[0].provider].kind}
            for alias, m in sorted(cfg.models.items())}


def _routes(cfg: GatewayConfig, created: Mapping[str, int]) -> dict[str, Any]:
    objects = _model_objects(cfg, created)
    models_body = orjson.dumps({"object": "list", "data": list(objects.values())}).decode()
    json_headers = [{"header": {"key": "content-type", "value": "application/json"}}]
    post = {"name": ":method", "string_match": {"exact": "POST"}}
    get = {"name": ":method", "string_match": {"exact": "GET"}}
    return {
        "name": ROUTE_CONFIG_NAME,
        "max_direct_response_body_size_bytes": max(4096, len(models_body) + 1),
        "virtual_hosts": [{
            "name": "switchyard",
            "domains": ["*"],
            # `x-envoy-attempt-count` on each attempt: the translate phase runs from attempt 2.
            "include_request_attempt_count": True,
            "routes": [
                {"name": "models", "match": {"path": MODELS_PATH, "headers": [get]},
                 "direct_response": {"status": 200, "body": {"inline_string": models_body}},
                 "response_headers_to_add": json_headers,
                 "typed_per_filter_config": _ext_proc_disabled()},
                # `GET /v1/models/{id}`: one direct response per model, then 404 for the rest.
                *({"name": f"{MODEL_INFO_PREFIX}{alias}",
                   "match": {"safe_regex": {"regex": model_path_regex(alias)}, "headers": [get]},
                   "direct_response": {"status": 200, "body": {
                       "inline_string": orjson.dumps(obj).decode()}},
                   "response_headers_to_add": json_headers,
                   "typed_per_filter_config": _ext_proc_disabled()}
                  for alias, obj in objects.items()),
                {"name": "model_not_found", "match": {"prefix": MODELS_PATH + "/",
                                                      "headers": [get]},
                 "direct_response": {"status": 404, "body": {"inline_string": error_json(
                     "The model does not exist or is not served by this gateway",
                     "invalid_request_error", "model_not_found", "model")}},
                 "response_headers_to_add": json_headers,
                 "typed_per_filter_config": _ext_proc_disabled()},
                # After the route phase named the model: its own route, retry and hedge policy.
                *(_model_route(cfg, alias, model) for alias, model in sorted(cfg.models.items())),
                # Before the body is seen (route phase still running) the request sits here.
                {"name": "pending", "match": {"safe_regex": {"regex": INGRESS_PATHS_REGEX},
                                              "headers": [post]},
                 "direct_response": {"status": 503, "body": {"inline_string": error_json(
                     "The gateway could not route this request", "api_error", "no_route")}},
                 "response_headers_to_add": json_headers},
                # Quality feedback: the route phase answers it (ext_proc stays enabled here);
                # this reply is only seen when ext_proc did not answer.
                {"name": "feedback", "match": {"path": FEEDBACK_PATH, "headers": [post]},
                 "direct_response": {"status": 503, "body": {"inline_string": error_json(
                     "The gateway could not take this feedback", "api_error", "no_route")}},
                 "response_headers_to_add": json_headers},
                # An API path with another method than POST: 405 naming the allowed one.
                {"name": "method_not_allowed",
                 "match": {"safe_regex": {"regex": INGRESS_PATHS_REGEX}},
                 "direct_response": {"status": 405, "body": {"inline_string": error_json(
                     "Method not allowed: this endpoint takes POST", "invalid_request_error",
                     "method_not_allowed")}},
                 "response_headers_to_add": [*json_headers, {
                     "header": {"key": "allow", "value": "POST"},
                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                 "typed_per_filter_config": _ext_proc_disabled()},
                {"name": "not_found", "match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": error_json(
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


def _model_route(cfg: GatewayConfig, alias: str, model: Model) -> dict[str, Any]:
    """Per-model chat route; its cluster specifier and retry refresh are added in `_finish`."""
    route: dict[str, Any] = {
        "timeout": f"{cfg.limits.request_timeout_s:.0f}s",
        "retry_policy": _retry_policy(model.failover, len(model.backends)),
    }
    if any(rpm_limits(cfg, backend_clusters(cfg))):
        route["rate_limits"] = route_rate_limits()
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
        "name": f"{MODEL_ROUTE_PREFIX}{alias}",
        # Envoy's own attempt count (connect failures included); ext_proc reads it for
        # logs, metrics and health, and passes it on to the client.
        "response_headers_to_add": [{
            "header": {"key": ATTEMPTS_HEADER,
                       "value": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        # The model header alone (the route phase sets it for an API request it accepted,
        # and strips a client's own copy): the route phase may already have rewritten :path
        # for the first attempt's provider.
        "match": {"prefix": "/", "headers": [
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
        if not route.name.startswith(MODEL_ROUTE_PREFIX) or route.route.cluster:
            continue
        model = cfg.models[route.name[len(MODEL_ROUTE_PREFIX):]]
        plugin = route.route.inline_cluster_specifier_plugin.extension
        plugin.name = "envoy.router.cluster_specifier_plugin.priority_group"
        plugin.typed_config.CopyFrom(_priority_groups(model))
        route.route.retry_policy.MergeFromString(_REFRESH_CLUSTER_ON_RETRY)
