"""GPU pools at run time: scrape every endpoint's vLLM `/metrics` off the request path (one
background task per pool, every `metrics_interval_ms`), keep the pickers of
`ext_proc.select.pool` in step with the routing table, and export per pool and endpoint
Prometheus metrics (queue, running, KV use, saturated, picks, fail-open time, desired
replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from prometheus_client import Counter, Gauge

from ext_proc.select.pool import Pick, PoolPicker, PoolSettings, parse_prometheus

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
                "Replicas that would run the pool at 70% utilisation now", ["pool"])
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
        #: Request id -> (pool, endpoint) of its pick, until the request ends.
        self._picked: dict[str, tuple[str, str]] = {}

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

    def _stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self.pickers.pop(name, None)
        self._json.pop(name, None)

    def pick(self, rid: str, pool: str, key: int | None, klass: str) -> Pick | None:
        picker = self.pickers.get(pool)
        if picker is None:
            return None
        p = picker.pick(key, klass, time.monotonic())
        self._picked[rid] = (pool, p.endpoints[0])
        PICKS.labels(pool, p.endpoints[0], p.reason).inc()
        INFLIGHT.labels(pool, p.endpoints[0]).inc()
        return p

    def saturated(self, pool: str, klass: str) -> bool:
        picker = self.pickers.get(pool)
        if picker is None or not picker.saturated(klass, time.monotonic()):
            return False
        SPILLS.labels(pool, klass).inc()
        return True

    def release(self, rid: str) -> None:
        got = self._picked.pop(rid, None)
        if got is None:
            return
        picker = self.pickers.get(got[0])
        if picker is not None:
            picker.release(got[1])
            INFLIGHT.labels(*got).dec()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {}
        for name, p in self.pickers.items():
            s = p.settings
            out[name] = {
                "saturated_for_low_classes": all(e.saturated(now, s) for e in p.endpoints),
                "all_stale": p.all_stale(now),
                "desired_replicas": p.desired_replicas(now),
                "endpoints": [{
                    "address": e.address, "waiting": e.waiting, "running": e.running,
                    "kv_usage": e.kv_usage, "inflight": e.inflight, "picks": e.picks,
                    "fresh": e.fresh(now, s.stale_after_s),
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
                    FAIL_OPEN.labels(picker.name).inc(time.monotonic() - t0)

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
        DESIRED.labels(name).set(picker.desired_replicas(now))
