"""Envoy's own flood protections (issue 8 item 8), validated by the real envoy binary
(`envoy --mode validate`): the overload manager (active downstream connections, heap), the
listener's connection limit, and the ext_proc cluster's circuit breakers, all sized from the
config; with tenants and provider quotas, the compiled listener and clusters too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from google.protobuf import json_format

from control_plane.compile import CLUSTER_TYPE, LISTENER_TYPE, compile_config
from control_plane.compile.names import LISTENER_NAME
from control_plane.config import parse_config
from switchyard.launcher import envoy_binary, render_bootstrap

CONFIG = """
listen: {address: 127.0.0.1, port: 18080}
admin: {address: 127.0.0.1, port: 19901}
limits: {max_connections: 1234, max_heap_mb: 512}
ext_proc: {max_streams: 4321}
tenants:
  web: {api_keys: [{value: "k"}], limits: {rpm: 60, tpm: 1000, max_concurrent: 5}}
providers:
  p: {kind: openai, base_url: "http://127.0.0.1:1", limits: {rpm: 600, max_concurrent: 7}}
models:
  m: {backends: [{provider: p, model: x, limits: {rpm: 120}}]}
"""


def _validate(path: Path) -> None:
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bootstrap_protections_sized_from_config_validate(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    text = render_bootstrap(cfg, node_id="t")
    boot = yaml.safe_load(text)
    monitors = {m["name"]: m["typed_config"] for m in boot["overload_manager"]["resource_monitors"]}
    assert monitors["envoy.resource_monitors.global_downstream_max_connections"][
        "max_active_downstream_connections"] == 1234
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 512 << 20
    runtime = boot["layered_runtime"]["layers"][0]["static_layer"]
    assert runtime[f"envoy.resource_limits.listener.{LISTENER_NAME}.connection_limit"] == 1234
    actions = {a["name"] for a in boot["overload_manager"]["actions"]}
    assert {"envoy.overload_actions.shrink_heap",
            "envoy.overload_actions.stop_accepting_requests"} <= actions
    ext = next(c for c in boot["static_resources"]["clusters"] if "ext_proc" in c["name"])
    assert ext["circuit_breakers"]["thresholds"][0] == {
        "max_connections": 4321, "max_pending_requests": 4321, "max_requests": 4321}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    _validate(path)


def test_compiled_listener_and_clusters_validate_with_the_bootstrap(tmp_path: Path) -> None:
    """The bootstrap plus the compiled listener (local rate limit) and
    clusters (circuit breakers from max_concurrent) as static resources."""
    cfg = parse_config(CONFIG)
    snap = compile_config(cfg)
    boot = yaml.safe_load(render_bootstrap(cfg, node_id="t"))
    (listener,) = snap.resources[LISTENER_TYPE]
    ldict = json_format.MessageToDict(listener)
    boot["static_resources"]["listeners"] = [ldict]
    boot["static_resources"]["clusters"] += [json_format.MessageToDict(c)
                                             for c in snap.resources[CLUSTER_TYPE]]
    del boot["dynamic_resources"]["lds_config"], boot["dynamic_resources"]["cds_config"]
    path = tmp_path / "static.json"
    path.write_text(json.dumps(boot))
    _validate(path)
