"""The ext_proc's own HTTP endpoint (loopback): `/metrics`, `/healthz`, `/limits` (every
admission bucket's limit, remaining and reset, as JSON), `/routing` (live selection) and
`/pools` (each GPU pool's endpoints as the picker sees them, its demand and desired replicas).

`/healthz` answers 200 once a routing table has arrived from the control plane (else 503),
with the backends the route phase currently orders last and why."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ext_proc.admission.gate import Gate
from ext_proc.select import Selector
from ext_proc.stats import BackendHealth
from ext_proc.stats.pool_metrics import Pools
from ext_proc.table import RoutingClient


async def start_http(address: str, port: int, routing: RoutingClient,
                     health: BackendHealth | None = None, gate: Gate | None = None,
                     selector: Selector | None = None, pools: Pools | None = None
                     ) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if routing.ready.is_set():
            return web.json_response({
                "status": "ok", "routing_version": routing.routes.version,
                "unhealthy_backends": health.snapshot() if health else {}})
        return web.json_response({"status": "waiting for routing table"}, status=503)

    async def limits(_: web.Request) -> web.Response:
        return web.json_response(gate.snapshot() if gate else {})

    async def routing_table(_: web.Request) -> web.Response:
        """The live selection table per model: statistics, quality, share of first picks."""
        if selector is None or not routing.ready.is_set():
            return web.json_response({"models": {}})
        return web.json_response(selector.table(routing.routes))

    async def pool_view(_: web.Request) -> web.Response:
        """Per pool and endpoint: queue, running, KV use, prefix hit rate, saturation, picks,
        fail-open time, scrape age; the pool's live demand and desired replicas."""
        if pools is None or not routing.ready.is_set():
            return web.json_response({"pools": {}})
        pools.sync_routes(routing.routes)  # shown (and scraped) before the first request
        return web.json_response({"pools": pools.snapshot()})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/limits", limits)
    app.router.add_get("/routing", routing_table)
    app.router.add_get("/pools", pool_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
