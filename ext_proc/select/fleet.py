"""Live selection's state shared across the ext_proc fleet through Redis, off the request path.

Every replica selects from in-process state exactly as without Redis. A background task
(`FleetSync`, every `interval_s`, default 0.5 s) makes ONE Lua script call that:

- publishes this replica's own latency statistics (`LiveStats.snapshot`: each backend's
  decayed sketches and counters, weights as of now) in a hash field stamped with Redis `TIME`,
  and returns the other replicas' fields with their ages (fields older than `stale_s` are
  dropped: a replica that died). Forward-decayed sketches add exactly, so each replica's
  view of a backend becomes its own sketch plus the others' decayed by their age
  (`LiveStats.set_remote`): the fleet's traffic, known everywhere one sync later;
- adds this replica's new quality feedback (Beta counts per (backend, category), capped at
  `quality.MAX_OBSERVATIONS` like the local ones) to the fleet's totals and returns them;
  the local posteriors become the fleet's totals plus whatever arrived since the call left;
- stores the response ids this replica served (id -> model, backend cluster, category) with
  a TTL (`id_ttl_s`), so `POST /v1/feedback` works on whichever replica it reaches
  (`lookup`, an awaited GET on the feedback path, never on the chat path).

Redis unreachable or slow past `timeout_s`: every replica keeps learning from its own traffic
and feedback (as without Redis); what it did not push is pushed when Redis is back. All keys
share the `{switchyard}` hash tag, like admission's (`ext_proc.admission.redis_store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ext_proc.select.quality import MAX_OBSERVATIONS, QualityModel, Served, ServedBy, add_evidence
from ext_proc.stats.latency import LiveStats
from switchyard.processes import replica_id as default_replica_id

log = structlog.get_logger("switchyard.ext_proc.select")

#: Served ids kept for the next sync while Redis is unreachable (oldest dropped past it).
MAX_UNSENT_IDS = 200_000

SYNC_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
local me = ARGV[2]
local stale = tonumber(ARGV[3])
local id_ttl = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local stats = ARGV[6]
local deltas = cjson.decode(ARGV[7])
local ids = cjson.decode(ARGV[8])
local sk = prefix .. 'stats'
if stats ~= '' then
  redis.call('HSET', sk, me, now .. ' ' .. stats)
else
  redis.call('HDEL', sk, me)
end
redis.call('PEXPIRE', sk, stale * 2)
local others = {}
local all = redis.call('HGETALL', sk)
for i = 1, #all, 2 do
  if all[i] ~= me then
    local v = all[i + 1]
    local sp = string.find(v, ' ', 1, true)
    local ts = sp and tonumber(string.sub(v, 1, sp - 1))
    if ts == nil or now - ts > stale then
      redis.call('HDEL', sk, all[i])
    else
      table.insert(others, now - ts)
      table.insert(others, string.sub(v, sp + 1))
    end
  end
end
local qk = prefix .. 'quality'
for _, d in ipairs(deltas) do
  local a, b = d[2], d[3]
  local cur = redis.call('HGET', qk, d[1])
  if cur then
    local x, y = string.match(cur, '^(%S+) (%S+)$')
    a = a + tonumber(x)
    b = b + tonumber(y)
  end
  local total = a + b
  if total > cap then
    a = a * cap / total
    b = b * cap / total
  end
  redis.call('HSET', qk, d[1], string.format('%.17g %.17g', a, b))
end
for _, e in ipairs(ids) do
  redis.call('SET', prefix .. 'id:' .. e[1], e[2], 'PX', id_ttl)
end
return {now, others, redis.call('HGETALL', qk)}
"""


class FleetUnavailable(Exception):
    """Redis could not answer a lookup (the feedback path answers 503)."""


def merge_quality(fleet: dict[tuple[str, str], list[float]],
                  pending: dict[tuple[str, str], list[float]]
                  ) -> dict[tuple[str, str], list[float]]:
    """The counts a replica selects with: the fleet's totals plus its own feedback that has
    not reached them yet (each capped as the fleet caps it)."""
    out = {k: [v[0], v[1]] for k, v in fleet.items()}
    for (cluster, category), (good, bad) in pending.items():
        add_evidence(out, cluster, category, good, bad)
    return out


def _field(cluster: str, category: str) -> str:
    return f"{cluster}\t{category}"


class FleetSync:
    """Keeps one replica's `LiveStats`, `QualityModel` and `Served` in step with the fleet's
    (see module doc). Without a successful sync everything stays local."""

    def __init__(self, url: str, stats: LiveStats, quality: QualityModel, served: Served,
                 replica_id: str | None = None, interval_s: float = 0.5,
                 timeout_s: float = 0.5, stale_s: float = 30.0, id_ttl_s: float = 3600.0,
                 prefix: str = "{switchyard}:sel:",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.stats = stats
        self.quality = quality
        self.served = served
        self.replica_id = replica_id or default_replica_id()
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_s = stale_s
        self.id_ttl_s = id_ttl_s
        self.prefix = prefix
        self.clock = clock
        self.connected = False
        self.syncs = 0
        self.failures = 0
        #: Other replicas that published statistics at the last sync.
        self.others = 0
        # What this replica learnt before the fleet knew it goes to the fleet at the first
        # sync; from then on only what is new.
        if quality.pending is None:
            quality.pending = {k: [v[0], v[1]] for k, v in quality.observed.items()}
        if served.fresh is None:
            served.fresh = []
        self._task: asyncio.Task[None] | None = None
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            retry_on_timeout=False, health_check_interval=0,
            # no client-side retries: the next sync is the retry (and never applies twice)
            retry=Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(SYNC_LUA)

    def __repr__(self) -> str:
        return (f"FleetSync(replica={self.replica_id!r}, connected={self.connected}, "
                f"others={self.others})")

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """First sync (bounded by timeout_s; a failure starts local-only), then the loop."""
        await self.sync()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="select-fleet-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(
                self._redis.hdel(self.prefix + "stats", self.replica_id), self.timeout_s)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), self.timeout_s)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sync()

    # -- one sync -----------------------------------------------------------------------------
    async def sync(self) -> bool:
        stats = self.stats.snapshot(self.clock())
        q = self.quality
        sent_q, q.pending = q.pending or {}, {}
        sent_ids, self.served.fresh = self.served.fresh or [], []
        args = (self.prefix, self.replica_id, int(self.stale_s * 1000),
                int(self.id_ttl_s * 1000), MAX_OBSERVATIONS,
                orjson.dumps(stats) if stats else b"",
                orjson.dumps([(_field(c, cat), v[0], v[1]) for (c, cat), v in sent_q.items()]),
                orjson.dumps([(rid, f"{s.model}\t{s.cluster}\t{s.category}")
                              for rid, s in sent_ids]))
        try:
            raw = await asyncio.wait_for(self._script(keys=(), args=args), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            # a timeout may have been applied: then resending would count feedback twice
            if not (self.connected and isinstance(exc, TimeoutError | RedisTimeoutError)):
                self._unsent(sent_q, sent_ids)
            self._down(exc)
            return False
        now = self.clock()
        _, others, qflat = raw
        remote = [(int(others[k]) / 1000.0, orjson.loads(others[k + 1]))
                  for k in range(0, len(others), 2)]
        self.stats.set_remote(remote, now)
        fleet: dict[tuple[str, str], list[float]] = {}
        for k in range(0, len(qflat), 2):
            cluster, _, category = qflat[k].decode().partition("\t")
            a, b = qflat[k + 1].split()
            fleet[(cluster, category)] = [float(a), float(b)]
        q.set_observed(merge_quality(fleet, q.pending or {}))
        if not self.connected:
            log.info("selection_fleet_connected", replica=self.replica_id, url=self._safe_url(),
                     others=len(remote))
        self.connected = True
        self.syncs += 1
        self.others = len(remote)
        return True

    def _unsent(self, sent_q: dict[tuple[str, str], list[float]],
                sent_ids: list[tuple[str, ServedBy]]) -> None:
        """Put back what never reached Redis, to go with the next sync."""
        pending = self.quality.pending
        assert pending is not None
        for (cluster, category), (good, bad) in sent_q.items():
            add_evidence(pending, cluster, category, good, bad)
        fresh = self.served.fresh
        assert fresh is not None
        fresh[:0] = sent_ids
        if len(fresh) > MAX_UNSENT_IDS:
            del fresh[:len(fresh) - MAX_UNSENT_IDS]

    def _down(self, exc: BaseException) -> None:
        self.failures += 1
        if self.connected or self.failures == 1:
            log.warning("selection_fleet_unreachable", replica=self.replica_id,
                        error=type(exc).__name__)
        self.connected = False

    # -- feedback -----------------------------------------------------------------------------
    async def lookup(self, response_id: str) -> ServedBy | None:
        """What served a response another replica answered; None when the fleet does not
        know it. A response served less than one sync ago may not be there yet: one retry
        after a sync interval. Raises FleetUnavailable when Redis does not answer."""
        for attempt in range(2):
            try:
                raw = await asyncio.wait_for(
                    self._redis.get(self.prefix + "id:" + response_id), self.timeout_s)
            except (RedisError, OSError, TimeoutError) as exc:
                raise FleetUnavailable(type(exc).__name__) from exc
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else raw
                model, cluster, category = text.split("\t")
                return ServedBy(model, cluster, category)
            if attempt == 0:
                await asyncio.sleep(self.interval_s + 0.05)
        return None

    def status(self) -> dict[str, object]:
        return {"connected": self.connected, "other_replicas": self.others,
                "syncs": self.syncs, "failures": self.failures}

    def _safe_url(self) -> str:
        """The URL without a password."""
        head, at, tail = self.url.rpartition("@")
        return f"{head.split('://', 1)[0]}://***@{tail}" if at else self.url
