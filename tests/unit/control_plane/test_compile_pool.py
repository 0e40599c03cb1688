"""GPU pools compile to one cluster with every endpoint and override_host load balancing
(checked by the real envoy binary), and carry the picker's settings in the RoutingTable."""

from __future__ import annotations

import json
from pathlib import Path

from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2

from control_plane.compile import (
    CLUSTER_TYPE,
    compile_config,
)
from control_plane.config import parse_config
from switchyard.contract import DESTINATION_ENDPOINT_HEADER
from tests.unit.control_plane.envoy_check import assert_envoy_accepts

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
    assert_envoy_accepts(snap, tmp_path)
