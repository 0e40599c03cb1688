"""Live backend health as the route phase needs it: ejected, breaker-open or cooling down.

Two sources, both off the request path:
* Envoy's own view (outlier ejections, open circuit breakers), polled from the local Envoy's
  admin API every `POLL_INTERVAL_S`: Envoy does the detecting, we only read the result.
* Per-attempt answers seen by the translate phase: a 429's `retry-after` puts a backend in
  cool-down, so new requests go elsewhere first instead of hammering it.
The route phase orders unhealthy backends last rather than dropping them, so a request still
has somewhere to go when every backend is unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time

import aiohttp
import orjson
import structlog

from ext_proc.usage import metrics

log = structlog.get_logger("switchyard.ext_proc.stats")

POLL_INTERVAL_S = 0.5
MAX_COOLDOWN_S = 300.0
#: Consecutive 5xx seen locally before a backend is demoted for FAST_DEMOTE_S.
FAST_DEMOTE_AFTER = 3
FAST_DEMOTE_S = 2.0


class BackendHealth:
    def __init__(self) -> None:
        self.ejected: frozenset[str] = frozenset()
        self.breaker_open: frozenset[str] = frozenset()
        #: cluster -> monotonic time until which it should not get new first attempts.
        self.cooling: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def snapshot(self) -> dict[str, str]:
        """cluster -> why it is ordered last right now (for /healthz)."""
        now = time.monotonic()
        out = {c: "cooling_down" for c, until in self.cooling.items() if until > now}
        out.update({c: "circuit_breaker_open" for c in self.breaker_open})
        out.update({c: "ejected" for c in self.ejected})
        return out

    def record(self, cluster: str, failed: bool) -> None:
        """Seen by the translate phase: demote a backend at once after a few 5xx in a row,
        before Envoy's ejection shows up in the next admin poll."""
        if not failed:
            self._failures.pop(cluster, None)
            return
        n = self._failures.get(cluster, 0) + 1
        self._failures[cluster] = n
        if n >= FAST_DEMOTE_AFTER:
            self.cooling[cluster] = max(self.cooling.get(cluster, 0.0),
                                        time.monotonic() + FAST_DEMOTE_S)

    def unhealthy(self, cluster: str, now: float) -> bool:
        if cluster in self.ejected or cluster in self.breaker_open:
            return True
        until = self.cooling.get(cluster)
        if until is None:
            return False
        if until <= now:
            del self.cooling[cluster]
            return False
        return True

    def cool_down(self, cluster: str, retry_after: str | None, default_s: float = 1.0) -> None:
        """Honour a 429's retry-after (seconds or HTTP date; capped)."""
        seconds = default_s
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    when = email.utils.parsedate_to_datetime(retry_after)
                    seconds = when.timestamp() - time.time()
        self.cooling[cluster] = time.monotonic() + min(max(seconds, 0.0), MAX_COOLDOWN_S)

    def apply_envoy(self, clusters_json: bytes, stats_json: bytes) -> None:
        ejected = set()
        for cluster in orjson.loads(clusters_json).get("cluster_statuses", []):
            hosts = cluster.get("host_statuses", [])
            if hosts and all(h.get("health_status", {}).get("failed_outlier_check")
                             for h in hosts):
                ejected.add(cluster.get("name", ""))
        open_ = set()
        for stat in orjson.loads(stats_json).get("stats", []):
            name = stat.get("name", "")
            if stat.get("value") and name.endswith(".circuit_breakers.default.rq_open"):
                open_.add(name[len("cluster."):-len(".circuit_breakers.default.rq_open")])
        if ejected != self.ejected:
            log.info("outlier ejections changed", ejected=sorted(ejected))
            for cluster in ejected - self.ejected:
                metrics.EJECTIONS.labels(cluster).inc()
        self.ejected = frozenset(ejected)
        self.breaker_open = frozenset(open_)

    async def poll_envoy(self, admin_url: str) -> None:
        """Read Envoy's outlier and circuit-breaker state forever (tolerates Envoy restarts)."""
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(f"{admin_url}/clusters?format=json") as r1:
                        clusters = await r1.read()
                    async with session.get(
                            f"{admin_url}/stats?format=json&filter=rq_open$") as r2:
                        stats = await r2.read()
                    self.apply_envoy(clusters, stats)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                await asyncio.sleep(POLL_INTERVAL_S)
