"""GPU pools at run time: scrape every endpoint's vLLM `/metrics` off the request path (one
background task per pool, every `metrics_interval_ms`), keep the pickers of
`ext_proc.select.pool` in step with the routing table, and export per pool and endpoint
Prometheus metrics and the `/pools` JSON view (queue, running, KV use, saturated, picks,
fail-open time, live demand, desired replicas).

Desired replicas: the demand that wanted the pool (picks plus low-class requests kept off it
while saturated) in a decayed window, sized by `switchyard plan`'s own function
(`switchyard.capacity.sizing.replica_capacity`) from the pool's GPU profile and SLO."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from prometheus_client import Counter, Gauge

from ext_proc.select.pool import Pick, PoolPicker, PoolSettings, parse_prometheus

if TYPE_CHECKING:
    from ext_proc.state import RequestState
    from ext_proc.table import Routes

log = structlog.get_logger("switchyard.ext_proc.pool")

WAITING = Gauge("switchyard_pool_endpoint_waiting", "vllm:num_requests_waiting at last scrape",
                ["pool", "endpoint"])
RUNNING = Gauge("switchyard_pool_endpoint_running", "vllm:num_requests_running at last scrape",
                ["pool", "endpoint"])
KV = Gauge("switchyard_pool_endpoint_kv_usage", "vllm:kv_cache_usage_perc at last scrape",
           ["pool", "endpoint"])
INFLIGHT = Gauge("switchyard_pool_endpoint_inflight", "This gateway's requests in flight",
                 ["pool", "endpoint"])
STALE = Gauge("switchyard_pool_endpoint_stale", "1 when the endpoint's metrics are stale",
              ["pool", "endpoint"])
SATURATED = Gauge("switchyard_pool_endpoint_saturated",
                  "1 when over the pool's saturation thresholds", ["pool", "endpoint"])
PREFIX_HIT = Gauge("switchyard_pool_endpoint_prefix_hit_rate",
                   "vLLM prefix cache hits / queries (cumulative)", ["pool", "endpoint"])
PICKS = Counter("switchyard_pool_picks_total", "Endpoint picks by reason",
                ["pool", "endpoint", "reason"])
SPILLS = Counter("switchyard_pool_spills_total",
                 "Low-class requests kept off a saturated pool", ["pool", "klass"])
FAIL_OPEN = Counter("switchyard_pool_fail_open_seconds_total",
                    "Time every endpoint of the pool had stale metrics (picking by in-flight "
                    "counts)", ["pool"])
POOL_SATURATED = Gauge("switchyard_pool_saturated", "1 when every endpoint is saturated",
                       ["pool"])
DESIRED = Gauge("switchyard_pool_desired_replicas",
                "Replicas the live demand needs within the SLO (switchyard plan's sizing; "
                "absent until a request has finished)", ["pool"])
DEMAND_RPS = Gauge("switchyard_pool_demand_requests_per_second",
                   "Requests that wanted the pool (served or spilled), decayed window", ["pool"])
DEMAND_TPS = Gauge("switchyard_pool_demand_tokens_per_second",
                   "Tokens of the pool's finished requests, decayed window",
                   ["pool", "direction"])
SCRAPE_ERRORS = Counter("switchyard_pool_scrape_errors_total", "Failed /metrics scrapes",
                        ["pool", "endpoint"])

_WANTED = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
           "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_hits_total",
           "vllm:prefix_cache_queries_total")


class Pools:
    """Pool pickers by provider name, rebuilt when the routing table changes them, each with
    its scrape task."""

    def __init__(self) -> None:
        self.pickers: dict[str, PoolPicker] = {}
        self._json: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._version = ""
        #: Request id -> (pool, endpoint, request) of its pick, until the request ends.
        self._picked: dict[str, tuple[str, str, RequestState | None]] = {}

    def sync(self, version: str, pools: Mapping[str, str]) -> None:
        """Provider name -> pool_json of the current table (cheap when the version is seen)."""
        if version == self._version:
            return
        self._version = version
        for name in list(self.pickers):
            if pools.get(name) != self._json.get(name):
                self._stop(name)
        for name, text in pools.items():
            if not text or name in self.pickers:
                continue
            picker = PoolPicker(name, PoolSettings.from_json(text))
            self.pickers[name] = picker
            self._json[name] = text
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                continue
            self._tasks[name] = loop.create_task(self._scrape_loop(picker))
            log.info("pool configured", pool=name, endpoints=list(picker.settings.endpoints),
                     interval_ms=int(picker.settings.metrics_interval_s * 1000))

    def sync_routes(self, routes: Routes) -> None:
        """`sync` from a routing table (the admin view calls it so `/pools` shows the pools
        before the first request)."""
        self.sync(routes.version, {b.provider.name: b.provider.pool_json
                                   for b in routes.clusters.values()})

    def _stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self.pickers.pop(name, None)
        self._json.pop(name, None)

    def pick(self, rid: str, pool: str, key: int | None, klass: str,
             request: RequestState | None = None) -> Pick | None:
        """Pick an endpoint; `request` (kept until `release`) gives its usage to the demand
        window when it ends."""
        picker = self.pickers.get(pool)
        if picker is None:
            return None
        now = time.monotonic()
        p = picker.pick(key, klass, now)
        picker.demand.arrived(now)
        self._picked[rid] = (pool, p.endpoints[0], request)
        PICKS.labels(pool, p.endpoints[0], p.reason).inc()
        INFLIGHT.labels(pool, p.endpoints[0]).inc()
        return p

    def saturated(self, pool: str, klass: str) -> bool:
        picker = self.pickers.get(pool)
        now = time.monotonic()
        if picker is None or not picker.saturated(klass, now):
            return False
        SPILLS.labels(pool, klass).inc()
        picker.demand.arrived(now)  # demand the pool turned away still sizes it
        return True

    def release(self, rid: str) -> None:
        got = self._picked.pop(rid, None)
        if got is None:
            return
        pool, endpoint, request = got
        picker = self.pickers.get(pool)
        if picker is None:
            return
        picker.release(endpoint)
        INFLIGHT.labels(pool, endpoint).dec()
        if request is None or request.backend is None or request.handler is None \
                or request.backend.provider.name != pool:
            return
        usage = request.handler.usage
        if usage is not None and (usage.prompt or usage.completion):
            picker.demand.finished(usage.prompt, usage.completion, time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        """The `/pools` view: per pool its settings, demand and desired replicas, and per
        endpoint the last scrape, the gateway's own in-flight and picks."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for name, p in self.pickers.items():
            s = p.settings
            lengths = p.demand.mean_lengths(now)
            tin, tout = p.demand.tokens_per_s(now)
            cap = p.capacity_rps(now)
            out[name] = {
                "picker": s.picker,
                "scorers": {"queue": s.w_queue, "kv_cache": s.w_kv, "prefix": s.w_prefix},
                "saturated_for_low_classes": all(e.saturated(now, s) for e in p.endpoints),
                "all_stale": p.all_stale(now),
                "fail_open_s": round(p.fail_open_s, 3),
                "replicas": len(p.endpoints),
                "desired_replicas": p.desired_replicas(now),
                "demand": {
                    "window_s": s.demand_window_s,
                    "requests_per_s": round(p.demand.rps(now), 4),
                    "input_tokens_per_s": round(tin, 2),
                    "output_tokens_per_s": round(tout, 2),
                    "mean_input_tokens": round(lengths[0], 1) if lengths else None,
                    "mean_output_tokens": round(lengths[1], 1) if lengths else None},
                "sizing": {
                    "slo_ttft_ms": s.slo_ttft_s * 1000, "slo_tpot_ms": s.slo_tpot_s * 1000,
                    "replica_capacity_rps": round(cap, 4) if cap is not None else None,
                    "profile": None if s.profile is None else {
                        "prefill_tokens_per_s": s.profile.prefill_tokens_per_s,
                        "tpot_base_ms": s.profile.tpot_base_ms,
                        "tpot_per_seq_ms": s.profile.tpot_per_seq_ms,
                        "max_num_seqs": s.profile.max_num_seqs}},
                "endpoints": [{
                    "address": e.address, "waiting": e.waiting, "running": e.running,
                    "kv_usage": e.kv_usage,
                    "prefix_hit_rate": (e.prefix_hits / e.prefix_queries
                                        if e.prefix_queries else None),
                    "inflight": e.inflight, "load": e.load(now, s.stale_after_s),
                    "picks": e.picks, "picks_by_reason": dict(e.reasons),
                    "fresh": e.fresh(now, s.stale_after_s),
                    "scrape_age_s": (round(now - e.scraped_at, 3)
                                     if e.scraped_at is not None else None),
                    "saturated": e.saturated(now, s)} for e in p.endpoints]}
        return out

    async def _scrape_one(self, session: aiohttp.ClientSession, picker: PoolPicker,
                          idx: int, timeout: float) -> None:
        ep = picker.endpoints[idx]
        try:
            async with session.get(f"http://{ep.address}/metrics",
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError):
            SCRAPE_ERRORS.labels(picker.name, ep.address).inc()
            return
        ep.observe(parse_prometheus(text, _WANTED), time.monotonic())

    async def _scrape_loop(self, picker: PoolPicker) -> None:
        s = picker.settings
        interval = s.metrics_interval_s
        timeout = max(0.05, min(interval, 1.0))
        was_open = False
        async with aiohttp.ClientSession() as session:
            while True:
                t0 = time.monotonic()
                await asyncio.gather(*(self._scrape_one(session, picker, i, timeout)
                                       for i in range(len(picker.endpoints))))
                now = time.monotonic()
                stale_now = picker.all_stale(now)
                if stale_now != was_open:
                    if stale_now:
                        log.warning("pool metrics stale: picking by in-flight counts "
                                    "(fail open)", pool=picker.name)
                    else:
                        log.info("pool metrics fresh again", pool=picker.name)
                    was_open = stale_now
                self._export(picker, now)
                delay = interval - (time.monotonic() - t0)
                await asyncio.sleep(max(0.0, delay))
                if was_open:
                    spent = time.monotonic() - t0
                    FAIL_OPEN.labels(picker.name).inc(spent)
                    picker.fail_open_s += spent

    def _export(self, picker: PoolPicker, now: float) -> None:
        s = picker.settings
        name = picker.name
        for e in picker.endpoints:
            fresh = e.fresh(now, s.stale_after_s)
            WAITING.labels(name, e.address).set(e.waiting)
            RUNNING.labels(name, e.address).set(e.running)
            KV.labels(name, e.address).set(e.kv_usage)
            STALE.labels(name, e.address).set(0 if fresh else 1)
            SATURATED.labels(name, e.address).set(1 if e.saturated(now, s) else 0)
            if e.prefix_queries:
                PREFIX_HIT.labels(name, e.address).set(e.prefix_hits / e.prefix_queries)
        POOL_SATURATED.labels(name).set(
            1 if all(e.saturated(now, s) for e in picker.endpoints) else 0)
        desired = picker.desired_replicas(now)
        if desired is not None:  # absent until known (NaN would break JSON consumers)
            DESIRED.labels(name).set(desired)
        DEMAND_RPS.labels(name).set(picker.demand.rps(now))
        tin, tout = picker.demand.tokens_per_s(now)
        DEMAND_TPS.labels(name, "input").set(tin)
        DEMAND_TPS.labels(name, "output").set(tout)
