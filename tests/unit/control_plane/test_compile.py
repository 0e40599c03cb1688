"""Compilation: config → Envoy resources (checked by the real envoy binary) + routing table."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import yaml
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from control_plane.compile import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    compile_config,
)
from control_plane.compile.names import FLEET_CLUSTER
from control_plane.compile.quotas import fleet_assignment
from control_plane.compile.routes import model_path_regex
from control_plane.config import parse_config
from protos import envoy_vendor_pb2
from switchyard.launcher import render_bootstrap
from tests.unit.control_plane.envoy_check import assert_envoy_accepts

CONFIG = """\
listen: {address: 127.0.0.1, port: 8080}
limits: {max_request_bytes: 2097152}
providers:
  sim: {kind: openai, base_url: "http://127.0.0.1:8101/v1", api_key: {value: "sk-abc"}}
  claude: {kind: anthropic, base_url: "https://api.anthropic.com", api_key: {value: "sk-ant"},
           headers: {anthropic-beta: "x"}}
models:
  fast:
    backends:
      - {provider: sim, model: gpt-4o-mini, price: {input: 0.15, output: 0.6}}
      - {provider: claude, model: claude-3-5-haiku-latest}
  smart:
    backends:
      - {provider: claude, model: claude-3-5-haiku-latest}
"""


def _snapshot():  # type: ignore[no-untyped-def]
    return compile_config(parse_config(CONFIG, "c.yaml"))


def test_one_cluster_per_backend_shared_across_models() -> None:
    snap = _snapshot()
    names = [c.name for c in snap.resources[CLUSTER_TYPE]]
    assert names == ["claude.claude-3-5-haiku-latest", "sim.gpt-4o-mini"]
    claude = snap.resources[CLUSTER_TYPE][0]
    assert claude.type == claude.LOGICAL_DNS and claude.transport_socket.name
    sim = snap.resources[CLUSTER_TYPE][1]
    assert sim.type == sim.STATIC
    assert sim.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address \
        .port_value == 8101


def test_routing_table_names_clusters_in_fallback_order() -> None:
    table = _snapshot().routing
    models = {m.name: list(m.backends) for m in table.models}
    assert models == {"fast": ["sim.gpt-4o-mini", "claude.claude-3-5-haiku-latest"],
                      "smart": ["claude.claude-3-5-haiku-latest"]}
    providers = {p.name: p for p in table.providers}
    assert providers["sim"].path_prefix == ""  # trailing /v1 folds into the API path
    assert providers["sim"].host == "127.0.0.1:8101"
    assert providers["claude"].host == "api.anthropic.com" and providers["claude"].tls
    assert providers["claude"].headers == {"anthropic-beta": "x"}
    assert table.version == _snapshot().version  # deterministic


def test_models_route_is_a_direct_response() -> None:
    routes = _snapshot().resources[ROUTE_TYPE][0]
    by_name = {r.name: r for r in routes.virtual_hosts[0].routes}
    body = orjson.loads(by_name["models"].direct_response.body.inline_string)
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [
        ("fast", "openai"), ("smart", "anthropic")]
    fast = by_name["chat:fast"]
    # Matched on the model header (the route phase may have rewritten :path already).
    assert fast.match.prefix == "/"
    assert fast.match.headers[1].name == "x-switchyard-model"
    assert fast.match.headers[1].string_match.exact == "fast"


def test_model_info_routes_answer_each_alias_and_404_the_rest() -> None:
    """`GET /v1/models/{id}`: one direct response per alias (an OpenAI model object whose
    `created` is the control plane's first-load time, or the model's own `created`), then a
    404 in OpenAI's error schema; `/v1/models` lists the same objects."""
    cfg = CONFIG.replace("  smart:\n", "  smart:\n    created: 1700000000\n")
    snap = compile_config(parse_config(cfg, "c.yaml"), created={"fast": 1760000000,
                                                                "smart": 1})
    routes = snap.resources[ROUTE_TYPE][0].virtual_hosts[0].routes
    by_name = {r.name: r for r in routes}
    listed = orjson.loads(by_name["models"].direct_response.body.inline_string)["data"]
    fast = orjson.loads(by_name["model:fast"].direct_response.body.inline_string)
    smart = orjson.loads(by_name["model:smart"].direct_response.body.inline_string)
    assert fast == {"id": "fast", "object": "model", "created": 1760000000, "owned_by": "openai"}
    assert smart["created"] == 1700000000  # configured wins
    assert listed == [fast, smart]
    assert by_name["model:fast"].match.headers[0].string_match.exact == "GET"
    missing = by_name["model_not_found"]
    assert missing.match.prefix == "/v1/models/" and missing.direct_response.status == 404
    assert orjson.loads(missing.direct_response.body.inline_string) == {"error": {
        "message": "The model does not exist or is not served by this gateway",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    names = [r.name for r in routes]
    assert names.index("models") < names.index("model:fast") < names.index("model_not_found") \
        < names.index("not_found")


def test_model_path_regex_accepts_escaped_reserved_characters() -> None:
    regex = model_path_regex("org/m:v1.2")
    assert re.fullmatch(regex, "/v1/models/org/m:v1.2")
    assert re.fullmatch(regex, "/v1/models/org%2Fm:v1.2")  # the openai SDK escapes `/`
    assert re.fullmatch(regex, "/v1/models/org%2fm%3Av1.2")
    assert not re.fullmatch(regex, "/v1/models/org/m:v1x2")
    assert not re.fullmatch(regex, "/v1/models/org/m:v1.2/extra")


def test_model_route_uses_priority_groups_and_refreshes_cluster_on_retry() -> None:
    routes = _snapshot().resources[ROUTE_TYPE][0]
    fast = next(r for r in routes.virtual_hosts[0].routes if r.name == "chat:fast")
    plugin = fast.route.inline_cluster_specifier_plugin.extension
    assert plugin.name == "envoy.router.cluster_specifier_plugin.priority_group"
    spec = envoy_vendor_pb2.PriorityGroupClusterSpecifier.FromString(plugin.typed_config.value)
    assert [g.name for g in spec.priority_groups] == [
        "sim.gpt-4o-mini", "claude.claude-3-5-haiku-latest"]
    assert spec.override_metadata_namespace == "switchyard"
    retry = fast.route.retry_policy
    assert retry.num_retries.value == 1
    assert "retriable-status-codes" in retry.retry_on and list(retry.retriable_status_codes) == [429]
    ext = envoy_vendor_pb2.RetryPolicyExtension.FromString(retry.SerializeToString())
    assert ext.refresh_cluster_on_retry  # field 14, unknown to xds-protos, survives serialising


def test_hedged_model_gets_a_priority_cluster() -> None:
    cfg = CONFIG.replace("      - {provider: claude, model: claude-3-5-haiku-latest}\n  smart:",
                         "      - {provider: claude, model: claude-3-5-haiku-latest}\n"
                         "    failover: {hedge_after_s: 0.5}\n  smart:")
    snap = compile_config(parse_config(cfg, "c.yaml"))
    hedge = next(c for c in snap.resources[CLUSTER_TYPE] if c.name == "hedge.fast")
    assert [e.priority for e in hedge.load_assignment.endpoints] == [0, 1]
    assert hedge.type == hedge.STRICT_DNS and len(hedge.transport_socket_matches) == 1
    route = next(r for r in snap.resources[ROUTE_TYPE][0].virtual_hosts[0].routes
                 if r.name == "chat:fast")
    assert route.route.cluster == "hedge.fast" and route.route.hedge_policy.hedge_on_per_try_timeout
    assert route.route.retry_policy.retry_priority.name.endswith("previous_priorities")


def test_route_phase_may_set_envoy_retry_headers() -> None:
    """The route phase sets x-envoy-max-retries / x-envoy-upstream-rq-per-try-timeout-ms per
    request; Envoy drops x-envoy-* mutations unless the filter's mutation_rules allow them."""
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2

    listener = _snapshot().resources[LISTENER_TYPE][0]
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    route_phase = ext_proc_pb2.ExternalProcessor()
    hcm.http_filters[0].typed_config.Unpack(route_phase)
    assert route_phase.mutation_rules.allow_envoy.value


def test_translate_phase_runs_from_the_second_attempt_and_failures_are_logged() -> None:
    """Backend clusters wrap the translate phase in a composite filter matched on
    `x-envoy-attempt-count` (the route phase builds attempt 1), strip internal headers in
    Envoy, and the router streams failed attempts to ext_proc's access-log service."""
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2
    from envoy.extensions.common.matching.v3 import extension_matcher_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    snap = _snapshot()
    sim = next(c for c in snap.resources[CLUSTER_TYPE] if c.name == "sim.gpt-4o-mini")
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    sim.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    assert [f.name for f in opts.http_filters] == [
        "switchyard.translate_on_retry", "envoy.filters.http.header_mutation",
        "envoy.filters.http.upstream_codec"]
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    opts.http_filters[0].typed_config.Unpack(wrapped)
    only = wrapped.xds_matcher.matcher_list.matchers[0]
    single = only.predicate.not_matcher.single_predicate
    assert single.value_match.exact == "1"
    assert "x-envoy-attempt-count" in str(single.input.typed_config.value)
    assert "ExecuteFilterAction" in only.on_match.action.typed_config.type_url
    routes = snap.resources[ROUTE_TYPE][0]
    assert routes.virtual_hosts[0].include_request_attempt_count
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    snap.resources[LISTENER_TYPE][0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    router = router_pb2.Router()
    hcm.http_filters[-1].typed_config.Unpack(router)
    als = als_pb2.HttpGrpcAccessLogConfig()
    router.upstream_log[0].typed_config.Unpack(als)
    assert als.common_config.grpc_service.envoy_grpc.cluster_name == "switchyard_ext_proc"
    assert "retry-after" in als.additional_response_headers_to_log
    assert "x-switchyard-rid" in als.additional_request_headers_to_log


def test_version_changes_only_with_config() -> None:
    a = _snapshot()
    b = compile_config(parse_config(CONFIG.replace("output: 0.6", "output: 0.7"), "c.yaml"))
    assert a.version != b.version
    # price changes touch only the routing table, not Envoy resources
    assert a.versions == b.versions


def test_compiled_resources_pass_envoy_validate(tmp_path: Path) -> None:
    """Feed the compiled resources, as binary protobuf (the vendored fields included), to the
    real Envoy 1.40 binary in --mode validate."""
    cfg = CONFIG.replace("      - {provider: claude, model: claude-3-5-haiku-latest}\n  smart:",
                         "      - {provider: claude, model: claude-3-5-haiku-latest}\n"
                         "    failover: {hedge_after_s: 0.5}\n  smart:")
    # An alias with reserved characters: its `/v1/models/{id}` regex must compile in RE2.
    cfg += "  org/m:v1.2:\n    backends:\n      - {provider: sim, model: gpt-4o-mini}\n"
    cfg = _with_quotas(cfg)  # the quota safety net (local rate limit + descriptors) too
    snap = compile_config(parse_config(cfg, "c.yaml"), created={"fast": 1760000000})
    assert_envoy_accepts(snap, tmp_path)


def _with_quotas(cfg: str) -> str:
    return cfg.replace(
        'api_key: {value: "sk-abc"}}',
        'api_key: {value: "sk-abc"}, limits: {rpm: 600, tpm: 100000, max_concurrent: 20}}'
    ).replace("- {provider: claude, model: claude-3-5-haiku-latest}\n  smart:",
              "- {provider: claude, model: claude-3-5-haiku-latest, limits: {rpm: 30}}\n  smart:")


def _hcm_filters(snap) -> list[str]:  # type: ignore[no-untyped-def]
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    snap.resources[LISTENER_TYPE][0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def test_quotas_compile_into_envoy_local_rate_limit_and_circuit_breakers() -> None:
    plain = _snapshot()
    assert "envoy.filters.http.local_ratelimit" not in _hcm_filters(plain)
    snap = compile_config(parse_config(_with_quotas(CONFIG), "c.yaml"))
    assert _hcm_filters(snap) == ["envoy.filters.http.ext_proc",
                                  "envoy.filters.http.local_ratelimit",
                                  "envoy.filters.http.router"]
    model_routes = [r for r in snap.resources[ROUTE_TYPE][0].virtual_hosts[0].routes
                    if r.name.startswith("chat:")]
    assert model_routes and all(len(r.route.rate_limits) == 2 for r in model_routes)
    breakers = {c.name: c.circuit_breakers.thresholds[0].max_requests.value
                for c in snap.resources[CLUSTER_TYPE]}
    assert [v for k, v in breakers.items() if k.startswith("sim")] == [20]
    lines = "\n".join(snap.summary)
    net = "(Envoy local rate limit, shared by the fleet's nodes)"
    assert f"quota provider sim: 600 rpm {net}" in lines
    assert f"30 rpm {net}" in lines
    # The routing table carries the same limits to ext_proc's admission control.
    doc = orjson.loads(snap.routing.admission_json)
    assert doc["providers"]["sim"] == {"rpm": 600, "tpm": 100000, "max_concurrent": 20}
    assert doc["tenants"] is None and plain.routing.admission_json == ""


def test_quota_safety_net_is_one_bucket_for_the_whole_fleet() -> None:
    """The listener's buckets are divided by the local cluster's members
    (`local_cluster_rate_limit`), whose endpoints are the fleet's nodes, one per node id."""
    snap = compile_config(parse_config(_with_quotas(CONFIG), "c.yaml"))
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    snap.resources[LISTENER_TYPE][0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    (rl,) = [f for f in hcm.http_filters if f.name == "envoy.filters.http.local_ratelimit"]
    conf = local_rate_limit_pb2.LocalRateLimit()
    rl.typed_config.Unpack(conf)
    assert conf.HasField("local_cluster_rate_limit")
    assert not conf.local_rate_limit_per_downstream_connection  # Envoy refuses both
    buckets = {d.entries[0].value: d.token_bucket.max_tokens for d in conf.descriptors}
    assert buckets["sim"] == 600  # the fleet's quota: each Envoy charges N tokens per request

    cla = fleet_assignment(["node-b", "node-a", "node-b"])
    assert cla.cluster_name == FLEET_CLUSTER
    paths = [e.endpoint.address.pipe.path for e in cla.endpoints[0].lb_endpoints]
    assert paths == ["/switchyard/fleet/node-a", "/switchyard/fleet/node-b"]
    long_id = fleet_assignment(["n" * 200]).endpoints[0].lb_endpoints[0]
    assert len(long_id.endpoint.address.pipe.path) < 100  # fits a Unix socket path
    assert len(fleet_assignment([]).endpoints[0].lb_endpoints) == 0


def test_bootstrap_names_the_fleet_as_local_cluster_over_ads() -> None:
    cfg = parse_config(CONFIG, "c.yaml")
    boot = yaml.safe_load(render_bootstrap(cfg, node_id="n"))
    assert boot["cluster_manager"]["local_cluster_name"] == FLEET_CLUSTER
    (fleet,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == FLEET_CLUSTER]
    assert fleet["type"] == "EDS"
    assert fleet["eds_cluster_config"]["eds_config"] == {"ads": {}, "resource_api_version": "V3"}
