"""Prometheus metrics and the health endpoint of the ext_proc server.

Served over aiohttp on a loopback port: `/metrics` (Prometheus text format) and `/healthz`
(200 once a routing table has arrived from the control plane, else 503).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

if TYPE_CHECKING:
    from ext_proc.stats import BackendHealth
    from ext_proc.table import RoutingClient

REQUESTS = Counter("switchyard_requests_total", "Requests answered", ["model", "backend", "status"])
REJECTED = Counter("switchyard_rejected_total", "Requests rejected before routing", ["reason"])
ATTEMPTS = Counter("switchyard_attempts_total", "Upstream attempts by backend and status",
                   ["backend", "status"])
FAILOVERS = Counter("switchyard_failovers_total", "Attempts after the first (retries, hedges)",
                    ["model", "backend"])
EJECTIONS = Counter("switchyard_backend_ejections_total",
                    "Outlier ejections seen in Envoy, per backend cluster", ["cluster"])
TOKENS = Counter("switchyard_tokens_total", "Tokens", ["model", "backend", "kind"])
COST = Counter("switchyard_cost_usd_total", "Estimated provider cost (USD)", ["model", "backend"])
LATENCY = Histogram("switchyard_request_seconds", "Gateway request latency", ["model", "backend"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TTFT = Histogram("switchyard_ttft_seconds", "Time to first response byte", ["model", "backend"],
                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def observe(model: str, backend: str, status: int, latency: float, ttft: float | None,
            prompt: int, completion: int, cost: float) -> None:
    REQUESTS.labels(model, backend, str(status)).inc()
    LATENCY.labels(model, backend).observe(latency)
    if ttft is not None:
        TTFT.labels(model, backend).observe(ttft)
    if prompt:
        TOKENS.labels(model, backend, "prompt").inc(prompt)
    if completion:
        TOKENS.labels(model, backend, "completion").inc(completion)
    if cost:
        COST.labels(model, backend).inc(cost)


async def start_http(address: str, port: int, routing: RoutingClient,
                     health: BackendHealth | None = None) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if routing.ready.is_set():
            return web.json_response({
                "status": "ok", "routing_version": routing.routes.version,
                "unhealthy_backends": health.snapshot() if health else {}})
        return web.json_response({"status": "waiting for routing table"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
