"""One way to check compiled resources with the real Envoy binary, for every compile test."""

from __future__ import annotations

import subprocess
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from control_plane.compile import (
    CLUSTER_TYPE,
    EXT_PROC_CLUSTER,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Snapshot,
)
from control_plane.compile.names import FLEET_CLUSTER
from control_plane.compile.quotas import fleet_assignment
from switchyard.launcher import envoy_binary


def assert_envoy_accepts(snap: Snapshot, tmp_path: Path) -> None:
    """Feed the snapshot's listener (routes inlined instead of RDS) and clusters, as binary
    protobuf (vendored fields included), plus an ext_proc cluster and the fleet's local
    cluster (static here, with two members), to `envoy --mode validate`."""
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.cluster_manager.local_cluster_name = FLEET_CLUSTER
    fleet = bootstrap.static_resources.clusters.add(name=FLEET_CLUSTER, type="STATIC")
    fleet.connect_timeout.FromSeconds(1)
    fleet.load_assignment.CopyFrom(fleet_assignment(["node-1", "node-2"]))
    listener = bootstrap.static_resources.listeners.add()
    listener.CopyFrom(snap.resources[LISTENER_TYPE][0])
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.route_config.CopyFrom(snap.resources[ROUTE_TYPE][0])  # inline instead of RDS
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
    assert "OK" in result.stdout + result.stderr
