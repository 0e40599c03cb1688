"""The fleet at a glance: a JSON API and a small live web page served by the control plane.

`GET /api/fleet` (JSON) and `GET /` (the page, which polls that JSON every second). Loopback by
default (`control_plane.status_address`/`status_port`; `switchyard control-plane
--status-address/--status-port`). What it shows:

- every node: its Envoy's delivery state per xDS type (version sent, ACKed, NACKed and
  Envoy's error) from the ADS cache, its ext_proc's routing-table version from the
  RoutingTable stream, whether both are on the current config, and the node's own traffic;
- every model and backend of the current config with prices, health (a backend any node orders
  last, and why), requests, errors, mean latency and TTFT, tokens and cost, summed over the
  fleet;
- limits in use (each node's ext_proc `GET /limits`) and GPU pool gauges where present.

Node traffic comes from polling each node's ext_proc HTTP endpoint (`/metrics`, `/healthz`,
`/limits`), whose URL the node's Envoy announces in its bootstrap metadata (`status_url`: one
URL per ext_proc worker, space-separated; a node's traffic is the sum over its workers). The
poll runs in the background every `POLL_S`, never on anyone's request path.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from importlib import resources
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from control_plane.server import ControlPlane

log = structlog.get_logger("switchyard.status")

POLL_S = 1.0
#: Nodes are polled only while the status was read this recently.
WATCHED_S = 30.0
_SHORT = {"Cluster": "clusters", "Listener": "listeners", "RouteConfiguration": "routes",
          "RoutingTable": "routing_table", "ClusterLoadAssignment": "fleet_members"}


def _short(type_url: str) -> str:
    name = type_url.rsplit(".", 1)[-1]
    return _SHORT.get(name, name)


def parse_metrics(text: str) -> dict[str, Any]:
    """The parts of a node's /metrics the page shows, summed per model and per backend."""
    per_model: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    per_backend: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pools: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            lb, v = s.labels, s.value
            if s.name == "switchyard_requests_total":
                per_model[lb["model"]]["requests"] += v
                per_backend[lb["backend"]]["requests"] += v
                if not lb["status"].startswith("2"):
                    per_model[lb["model"]]["errors"] += v
                    per_backend[lb["backend"]]["errors"] += v
            elif s.name in ("switchyard_request_seconds_sum", "switchyard_request_seconds_count",
                            "switchyard_ttft_seconds_sum", "switchyard_ttft_seconds_count"):
                key = s.name.removeprefix("switchyard_")
                per_model[lb["model"]][key] += v
                per_backend[lb["backend"]][key] += v
            elif s.name == "switchyard_cost_usd_total":
                per_model[lb["model"]]["cost_usd"] += v
                per_backend[lb["backend"]]["cost_usd"] += v
            elif s.name == "switchyard_tokens_total" and lb["kind"] in ("prompt", "completion"):
                per_model[lb["model"]]["tokens"] += v
                per_backend[lb["backend"]]["tokens"] += v
            elif s.name.startswith("switchyard_pool") and family.type == "gauge":
                label = ",".join(f"{k}={x}" for k, x in sorted(lb.items()))
                pools[f"{s.name}{{{label}}}"] = v
    return {"models": {k: dict(v) for k, v in per_model.items()},
            "backends": {k: dict(v) for k, v in per_backend.items()}, "pools": pools}


class FleetStatus:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        #: status_url -> last poll ({"metrics", "healthz", "limits", "at"} or {"error"}).
        self.polled: dict[str, dict[str, Any]] = {}
        #: When the page or the API was last read (monotonic; -inf: never).
        self.viewed_at = float("-inf")
        self._session: aiohttp.ClientSession | None = None

    # -- polling the nodes ---------------------------------------------------------------------
    def _status_urls(self) -> set[str]:
        return {u for n in self.cp.envoy_store.nodes.values()
                for u in n.metadata.get("status_url", "").split()}

    async def poll_forever(self) -> None:
        """Poll the nodes every POLL_S while someone looks (the page or the API was read in
        the last WATCHED_S): an unwatched fleet costs its nodes nothing."""
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            while True:
                if time.monotonic() - self.viewed_at < WATCHED_S:
                    await self.refresh()
                await asyncio.sleep(POLL_S)

    async def refresh(self) -> None:
        session = self._session
        if session is None:
            return
        urls = self._status_urls()
        await asyncio.gather(*(self._poll(session, u) for u in urls))
        for gone in set(self.polled) - urls:
            del self.polled[gone]

    async def viewed(self) -> None:
        """A reader arrived: after a quiet spell, fetch fresh data before answering."""
        idle = time.monotonic() - self.viewed_at >= WATCHED_S
        self.viewed_at = time.monotonic()
        if idle:
            await self.refresh()

    async def _poll(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url + "/metrics") as r:
                metrics = parse_metrics(await r.text())
            async with session.get(url + "/healthz") as r:
                healthz = await r.json()
            async with session.get(url + "/limits") as r:
                limits = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.polled[url] = {"error": str(exc) or type(exc).__name__, "at": time.time()}
            return
        self.polled[url] = {"metrics": metrics, "healthz": healthz, "limits": limits,
                            "at": time.time()}

    # -- the JSON ------------------------------------------------------------------------------
    def fleet(self) -> dict[str, Any]:
        snap = self.cp.envoy_store.snapshot
        table = self.cp.routing_store.table
        versions = {_short(t): v for t, v in (snap.versions.items() if snap else ())}
        # the local cluster (the fleet's nodes), served apart from the config's snapshots
        versions["fleet_members"] = self.cp.envoy_store.members_version
        if table is not None:
            versions["routing_table"] = table.version
        routing_nodes = {n.node_id: n for n in self.cp.routing_store.cache.nodes.values()}
        nodes = []
        for envoy in sorted(self.cp.envoy_store.nodes.values(), key=lambda n: n.node_id):
            types = {_short(t): {"sent": s.sent_version, "acked": s.acked_version,
                                 "nacked": s.nacked_version, "error": s.last_error,
                                 "pending": s.in_flight}
                     for t, s in envoy.types.items() if s.subscribed}
            rt = routing_nodes.get(envoy.node_id)
            rt_version = rt.types[next(iter(rt.types))].sent_version if rt and rt.types else ""
            urls = envoy.metadata.get("status_url", "").split()
            worker_polls = [self.polled.get(u, {}) for u in urls]
            # Worker 0 answers for the node's limits and pool gauges (every worker holds the
            # same); traffic is summed over the workers, and one unreachable worker shows.
            first: dict[str, Any] = worker_polls[0] if worker_polls else {}
            polled = next((p for p in worker_polls if "error" in p or not p), first)
            requests = sum(m.get("requests", 0) for p in worker_polls
                           for m in p.get("metrics", {}).get("models", {}).values())
            envoy_in_sync = all(types.get(k, {}).get("acked") == v
                                for k, v in versions.items() if k != "routing_table")
            nodes.append({
                "id": envoy.node_id,
                "listen": envoy.metadata.get("listen", ""),
                "status_url": urls[0] if urls else "",
                "ext_proc_workers": len(urls),
                "envoy": {"connected": True, "types": types, "in_sync": envoy_in_sync},
                "ext_proc": {"connected": rt is not None, "routing_version": rt_version,
                             "reachable": "error" not in polled and bool(polled),
                             "error": polled.get("error", "")},
                "config_version": snap.version if snap and envoy_in_sync else "",
                "in_sync": envoy_in_sync and rt_version == versions.get("routing_table"),
                "nacked": any(t["nacked"] and t["nacked"] != t["acked"] for t in types.values()),
                "requests": requests,
                "limits": first.get("limits", {}),
                "pools": first.get("metrics", {}).get("pools", {}),
            })
        # Fleet-wide sums per model and backend.
        by_model: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        by_backend: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        unhealthy: dict[str, list[str]] = defaultdict(list)
        for p in self.polled.values():
            for name, vals in p.get("metrics", {}).get("models", {}).items():
                for k, v in vals.items():
                    by_model[name][k] += v
            for name, vals in p.get("metrics", {}).get("backends", {}).items():
                for k, v in vals.items():
                    by_backend[name][k] += v
            for cluster, why in (p.get("healthz", {}).get("unhealthy_backends") or {}).items():
                if str(why) not in unhealthy[cluster]:  # workers of a node say the same
                    unhealthy[cluster].append(str(why))
        models = []
        if table is not None:
            backends = {b.cluster: b for b in table.backends}
            for m in table.models:
                rows = []
                for cluster in m.backends:
                    b = backends.get(cluster)
                    if b is None:
                        continue
                    label = f"{b.provider}/{b.model}"
                    rows.append({"label": label, "cluster": cluster,
                                 "price_input": b.price_input, "price_output": b.price_output,
                                 "healthy": cluster not in unhealthy,
                                 "unhealthy_reason": "; ".join(unhealthy.get(cluster, [])),
                                 **_traffic(by_backend.get(label, {}))})
                models.append({"name": m.name, "backends": rows,
                               **_traffic(by_model.get(m.name, {}))})
        return {"config": {"path": str(self.cp.config_path),
                           "version": snap.version if snap else ""},
                "fleet_members": list(self.cp.envoy_store.members),
                "versions": versions, "nodes": nodes, "models": models,
                "generated_at": time.time()}


def _traffic(v: dict[str, float]) -> dict[str, Any]:
    def mean_ms(key: str) -> float | None:
        n = v.get(f"{key}_count", 0)
        return round(v.get(f"{key}_sum", 0) / n * 1000, 1) if n else None

    return {"requests": int(v.get("requests", 0)), "errors": int(v.get("errors", 0)),
            "latency_ms": mean_ms("request_seconds"), "ttft_ms": mean_ms("ttft_seconds"),
            "tokens": int(v.get("tokens", 0)), "cost_usd": round(v.get("cost_usd", 0.0), 8)}


async def start_status(cp: ControlPlane, address: str, port: int) -> web.AppRunner | None:
    """Serve `/` and `/api/fleet`; None (logged) when the port is taken: the status page is
    not worth failing the control plane for."""
    status = FleetStatus(cp)
    page = resources.files("control_plane").joinpath("status.html").read_bytes()

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    async def fleet(_: web.Request) -> web.Response:
        await status.viewed()
        return web.json_response(status.fleet())

    tasks: list[asyncio.Task[None]] = []

    async def stop_polling(_: web.Application) -> None:
        for task in tasks:
            task.cancel()

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/fleet", fleet)
    app.on_cleanup.append(stop_polling)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port).start()
    except OSError as exc:
        log.warning("status page not served", address=address, port=port, error=str(exc))
        await runner.cleanup()
        return None
    tasks.append(asyncio.create_task(status.poll_forever()))
    log.info("status page", url=f"http://{address}:{port}/")
    return runner
