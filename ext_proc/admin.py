"""The ext_proc's own HTTP endpoint (loopback): `/metrics` and `/healthz`.

`/healthz` answers 200 once a routing table has arrived from the control plane (else 503),
with the backends the route phase currently orders last and why."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ext_proc.stats import BackendHealth
from ext_proc.table import RoutingClient


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
