"""GPU pools: one cluster per pool with every endpoint, and Envoy's `override_host` load
balancing reading the endpoint the route phase picked (and its ordered fallbacks) from the
`x-gateway-destination-endpoint` request header or dynamic metadata (the Gateway API Inference
Extension's convention). Envoy's retries, outlier detection and connection pools then work per
endpoint; with no pick (or only unusable ones) the fallback policy balances by least request.

Also the pool's settings for ext_proc's endpoint picker (`pool_json` in the RoutingTable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envoy.extensions.load_balancing_policies.least_request.v3 import (  # noqa: F401 (Any)
    least_request_pb2,
)
from envoy.extensions.load_balancing_policies.override_host.v3 import (  # noqa: F401 (Any)
    override_host_pb2,
)

from control_plane.config import Pool, Provider
from switchyard.capacity.sizing import pool_profile
from switchyard.contract import DESTINATION_ENDPOINT_HEADER, DESTINATION_ENDPOINT_NAMESPACE

OVERRIDE_HOST = "envoy.load_balancing_policies.override_host"
_LB = "type.googleapis.com/envoy.extensions.load_balancing_policies."


def pool_endpoints(provider: Provider) -> list[str]:
    """`IP:PORT` of every endpoint, in config order (the names ext_proc and Envoy share)."""
    return [f"{h}:{p}" for h, p in provider.endpoint_addresses]


def apply_pool(cluster: dict[str, Any], provider: Provider) -> None:
    """Turn a backend's cluster into a pool cluster (in place)."""
    name = cluster["name"]
    cluster["type"] = "STATIC"
    cluster["load_assignment"] = {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
        for h, p in provider.endpoint_addresses]}]}
    cluster.pop("lb_policy", None)
    cluster["load_balancing_policy"] = {"policies": [{"typed_extension_config": {
        "name": OVERRIDE_HOST,
        "typed_config": {
            "@type": _LB + "override_host.v3.OverrideHost",
            "override_host_sources": [
                {"header": DESTINATION_ENDPOINT_HEADER},
                {"metadata": {"key": DESTINATION_ENDPOINT_NAMESPACE,
                              "path": [{"key": DESTINATION_ENDPOINT_HEADER}]}},
            ],
            "fallback_policy": {"policies": [{"typed_extension_config": {
                "name": "envoy.load_balancing_policies.least_request",
                "typed_config": {"@type": _LB + "least_request.v3.LeastRequest"}}}]},
        }}}]}
    # A pool has several hosts: ejecting all of them would leave nothing but panic mode.
    cluster["outlier_detection"]["max_ejection_percent"] = 50


def _sizing(provider: Provider, pool: Pool) -> dict[str, Any]:
    """The desired-replicas gauge's inputs: the GPU profile exactly as `switchyard plan`
    reads it (`pool_profile`), the SLO and the demand window."""
    sz = pool.sizing
    prof = pool_profile(provider, Path(sz.profile) if sz.profile else None)
    return {"profile": {"prefill_tokens_per_s": prof.prefill_tokens_per_s,
                        "tpot_base_ms": prof.tpot_base_ms,
                        "tpot_per_seq_ms": prof.tpot_per_seq_ms,
                        "max_num_seqs": prof.max_num_seqs},
            "slo_ttft_ms": sz.slo_ttft_ms, "slo_tpot_ms": sz.slo_tpot_ms,
            "window_s": sz.window_s}


def pool_json(provider: Provider) -> str:
    """The endpoint picker's settings for one pool provider ("" when it is not a pool)."""
    if not provider.endpoints:
        return ""
    pool = provider.pool or Pool()
    doc = {
        "endpoints": pool_endpoints(provider),
        "scorers": pool.scorers.model_dump(),
        "metrics_interval_ms": pool.metrics_interval_ms,
        "stale_after_ms": pool.stale_after_ms or max(1000, 3 * pool.metrics_interval_ms),
        "saturation": pool.saturation.model_dump(),
        "load_factor": pool.load_factor,
        "prefix_chars": pool.prefix_chars,
        "picker": pool.picker,
        "path_prefix": provider.path_prefix,
        "sizing": _sizing(provider, pool),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
