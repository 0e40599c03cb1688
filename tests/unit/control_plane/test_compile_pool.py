"""GPU pools compile to one cluster with every endpoint and override_host load balancing
(checked by the real envoy binary), and carry the picker's settings in the RoutingTable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from google.protobuf import json_format

from control_plane.compile import (
    CLUSTER_TYPE,
    EXT_PROC_CLUSTER,
    LISTENER_TYPE,
    ROUTE_TYPE,
    compile_config,
)
from control_plane.config import parse_config
from switchyard.contract import DESTINATION_ENDPOINT_HEADER
from switchyard.launcher import envoy_binary

CONFIG = """\
providers:
  pool:
    kind: vllm
    endpoints: ["http://127.0.0.1:8201", "http://127.0.0.1:8202", "http://127.0.0.1:8203"]
    pool: {metrics_interval_ms: 100, saturation: {max_waiting: 4}}
    cost: {gpu_hour_usd: 2.5}
  hosted: {kind: openai, base_url: "http://127.0.0.1:8101/v1", api_key: {value: "sk"}}
models:
  llama:
    backends:
      - {provider: pool, model: meta-llama/Llama-3.1-8B}
      - {provider: hosted, model: gpt-4o-mini}
"""


def test_pool_cluster_has_every_endpoint_and_override_host() -> None:
    snap = compile_config(parse_config(CONFIG, "c.yaml"))
    cluster = next(c for c in snap.resources[CLUSTER_TYPE] if c.name.startswith("pool."))
    hosts = [e.endpoint.address.socket_address.port_value
             for e in cluster.load_assignment.endpoints[0].lb_endpoints]
    assert hosts == [8201, 8202, 8203]
    policy = cluster.load_balancing_policy.policies[0].typed_extension_config
    assert policy.name == "envoy.load_balancing_policies.override_host"
    oh = override_host_pb2.OverrideHost()
    policy.typed_config.Unpack(oh)
    assert oh.override_host_sources[0].header == DESTINATION_ENDPOINT_HEADER
    assert oh.override_host_sources[1].metadata.key == "envoy.lb"
    provider = next(p for p in snap.routing.providers if p.name == "pool")
    pool = json.loads(provider.pool_json)
    assert pool["endpoints"] == ["127.0.0.1:8201", "127.0.0.1:8202", "127.0.0.1:8203"]
    assert pool["stale_after_ms"] == 1000 and pool["saturation"]["max_waiting"] == 4
    assert not next(p for p in snap.routing.providers if p.name == "hosted").pool_json


def test_pool_resources_pass_envoy_validate(tmp_path: Path) -> None:
    snap = compile_config(parse_config(CONFIG, "c.yaml"))
    bootstrap = bootstrap_pb2.Bootstrap()
    listener = bootstrap.static_resources.listeners.add()
    listener.CopyFrom(snap.resources[LISTENER_TYPE][0])
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.route_config.CopyFrom(snap.resources[ROUTE_TYPE][0])
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm)
    for c in snap.resources[CLUSTER_TYPE]:
        bootstrap.static_resources.clusters.add().CopyFrom(c)
    json_format.ParseDict(
        {"name": EXT_PROC_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
         "typed_extension_protocol_options": {
             "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                 "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                          "HttpProtocolOptions",
                 "explicit_http_config": {"http2_protocol_options": {}}}},
         "load_assignment": {"cluster_name": EXT_PROC_CLUSTER, "endpoints": [
             {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                 "address": "127.0.0.1", "port_value": 18081}}}}]}]}},
        bootstrap.static_resources.clusters.add())
    path = tmp_path / "envoy.pb"
    path.write_bytes(bootstrap.SerializeToString())
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
