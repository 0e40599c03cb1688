"""Compilation: config → Envoy resources (checked by the real envoy binary) + routing table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
from google.protobuf import json_format

from control_plane.compile import (
    CHAT_PATH,
    CLUSTER_TYPE,
    EXT_PROC_CLUSTER,
    LISTENER_TYPE,
    ROUTE_TYPE,
    compile_config,
)
from control_plane.config import parse_config
from control_plane.launcher import envoy_binary

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
    assert by_name["chat"].match.path == CHAT_PATH
    assert by_name["chat"].route.cluster_header == "x-switchyard-cluster"


def test_version_changes_only_with_config() -> None:
    a = _snapshot()
    b = compile_config(parse_config(CONFIG.replace("output: 0.6", "output: 0.7"), "c.yaml"))
    assert a.version != b.version
    # price changes touch only the routing table, not Envoy resources
    assert a.versions == b.versions


def test_compiled_resources_pass_envoy_validate(tmp_path: Path) -> None:
    """Feed the compiled resources to the real Envoy 1.40 binary in --mode validate."""
    snap = _snapshot()

    def as_json(m):  # type: ignore[no-untyped-def]
        return json_format.MessageToDict(m, preserving_proto_field_name=True)

    listener = as_json(snap.resources[LISTENER_TYPE][0])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = as_json(snap.resources[ROUTE_TYPE][0])
    ext_proc = {"name": EXT_PROC_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": EXT_PROC_CLUSTER, "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": 18081}}}}]}]}}
    bootstrap = {"static_resources": {
        "listeners": [listener],
        "clusters": [as_json(c) for c in snap.resources[CLUSTER_TYPE]] + [ext_proc]}}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout + result.stderr
