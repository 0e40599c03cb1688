"""Fleet-wide buckets over Redis, with no Redis round trip on the request path.

Every replica admits against its own local buckets (`LocalStore`), exactly as in-process.
A background task syncs them with Redis every `interval_s` (default 100 ms) in ONE atomic Lua
script call per replica covering all of its active buckets (JSON in, JSON out):

- token buckets (RPM, TPM) are a fleet *pool* in Redis plus what each replica *holds*
  locally. A sync returns the replica's holding (its local tokens, negative when in debt) to
  the pool, takes back what its local bucket refilled by itself since the last sync (that
  refill came out of the fleet's), refills the pool from Redis `TIME` (smooth, no windows;
  capped so pool + the others' holdings never exceed the limit), and hands the replica a new
  holding: its *share* of the pool. Shares follow demand (units asked for, admitted or not,
  per second, with a small floor so an idle replica can start at once), so one busy replica
  gets nearly all of an otherwise idle fleet's limit. Between syncs a replica spends its
  holding and refills at share x rate. Pool + holdings is the fleet bucket: a replica can
  overshoot only by what shares that were computed at different moments add up to above 1
  for one interval, and reconcile debt flows back to the pool with the holding.
- concurrency: each replica reports its in-flight count; its local capacity is the limit
  minus the others' in-flight.
- heartbeat: the same call refreshes this replica in a `replicas` hash; entries older than
  `live_ttl_s` are dropped, and the live count is remembered.

Redis unreachable (or slow past `timeout_s`): every bucket falls back to limit / (live
replicas last seen), never unlimited, refilling locally; when Redis is back the holdings are
returned to the pool and shares re-converge within a few syncs. A restarted Redis (state
lost) starts from an empty pool plus what the replicas hold, not from a full minute: the
fleet does not get a second burst on top of what it admitted during the outage.

Waits use `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11 `wait_for` returns the
result, swallowing a cancellation, when what it waits for completes in the same loop
iteration, and a sync loop that missed its cancellation made `close()` wait forever. `close()`
also sets a flag the loop checks and waits for the loop boundedly.

All keys share the `{switchyard}` hash tag (one slot). The script names its keys from a
prefix rather than KEYS, so it targets a single Redis (or one slot of a cluster).
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

from ext_proc.admission.buckets import Concurrency, TokenBucket
from ext_proc.admission.store import Limits, LocalStore, Scope
from switchyard.processes import replica_id as default_replica_id

log = structlog.get_logger("switchyard.ext_proc.admission")

#: Fraction of the fleet's demand every replica that knows a bucket keeps as a floor.
IDLE_FLOOR = 0.05
#: Bucket state in Redis outlives its last use by this much (a full bucket needs no state).
STATE_TTL_MS = 180_000

SYNC_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
local state_ttl = tonumber(ARGV[3])
local prefix = ARGV[4]
local share_cap = tonumber(ARGV[5])
local floor = tonumber(ARGV[6])
local entries = cjson.decode(ARGV[7])
local rkey = prefix .. 'replicas'
redis.call('HSET', rkey, me, now)
redis.call('PEXPIRE', rkey, ttl * 20)
local live = 0
local reps = redis.call('HGETALL', rkey)
for i = 1, #reps, 2 do
  if now - tonumber(reps[i + 1]) <= ttl then live = live + 1
  else redis.call('HDEL', rkey, reps[i]) end
end
local out = {live}
for _, e in ipairs(entries) do
  local sk = prefix .. e[1]
  local dk = sk .. ':d'
  local kind, limit, held, refilled, demand, fresh = e[2], e[3], e[4], e[5], e[6], e[7]
  -- the others' demand and holdings (in-flight for concurrency), live ones only
  local total, others, count = 0, 0, 0
  local ds = redis.call('HGETALL', dk)
  for i = 1, #ds, 2 do
    if ds[i] ~= me then
      local d, h, seen = string.match(ds[i + 1], '^([^:]+):([^:]+):(%d+)$')
      if seen ~= nil and now - tonumber(seen) <= ttl then
        total = total + tonumber(d)
        others = others + tonumber(h)
        count = count + 1
      else
        redis.call('HDEL', dk, ds[i])
      end
    end
  end
  total = total + demand
  count = count + 1
  if kind == 't' then
    local st = redis.call('HMGET', sk, 'p', 'ts')
    local pool = tonumber(st[1])
    local ts = tonumber(st[2])
    -- no state: a bucket new to the fleet starts full (its cold-start holding was reported
    -- as refilled, so it comes out of this); a bucket the replicas already held (Redis
    -- restarted empty, or came up after they started in fallback) is what they hold: no
    -- second full minute on top of what the fleet admitted meanwhile
    if pool == nil or ts == nil then
      if fresh == 1 then pool = limit else pool = 0 end
      ts = now
    end
    if now > ts then pool = pool + (now - ts) * limit / 60000 end
    pool = pool - refilled + held
    local cap = limit - math.max(0, others)
    if pool > cap then pool = cap end
    local eps = math.max(total * floor / count, limit / 6000, 1e-9)
    local share = math.min(share_cap, (demand + eps) / (total + count * eps))
    local grant = share * pool
    pool = pool - grant
    redis.call('HSET', sk, 'p', string.format('%.17g', pool), 'ts', now)
    redis.call('PEXPIRE', sk, state_ttl)
    redis.call('HSET', dk, me, string.format('%.17g:%.17g:%d', demand, grant, now))
    table.insert(out, {grant, share})
  else
    redis.call('HSET', dk, me, string.format('%.17g:%.17g:%d', demand, held, now))
    table.insert(out, {others, 0})
  end
  redis.call('PEXPIRE', dk, ttl * 20)
end
return cjson.encode(out)
"""


class RedisStore(LocalStore):
    """Local buckets kept in step with the fleet by a background sync (see module doc)."""

    def __init__(self, url: str, replica_id: str | None = None, interval_s: float = 0.1,
                 live_ttl_s: float = 3.0, timeout_s: float = 0.5, prefix: str = "{switchyard}:adm:",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.url = url
        self.replica_id = replica_id or default_replica_id()
        self.interval_s = interval_s
        self.live_ttl_s = live_ttl_s
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.clock = clock
        #: Live replicas at the last successful sync (the fallback divides limits by it).
        self.live = 1
        #: False while Redis is unreachable (buckets hold limit / live).
        self.connected = False
        self.syncs = 0
        self.failures = 0
        self._demand: dict[int, float] = {}
        self._synced: dict[int, float] = {}
        #: Buckets created while connected and not yet synced: new to the fleet (see SYNC_LUA).
        self._fresh: set[int] = set()
        #: Set to sync at once rather than at the next interval (a new bucket).
        self._wake = asyncio.Event()
        #: Set by close(): the loop ends even if a cancellation was lost (see module doc).
        self._closing = False
        self._last_sync = clock()
        self._task: asyncio.Task[None] | None = None
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            retry_on_timeout=False, health_check_interval=0,
            # no client-side retries: the next sync is the retry (and never applies twice)
            retry=Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(SYNC_LUA)

    def __repr__(self) -> str:
        return (f"RedisStore(replica={self.replica_id!r}, live={self.live}, "
                f"connected={self.connected}, scopes={len(self.scopes)})")

    def _new(self, key: str, limits: Limits, shared: bool, now: float) -> Scope:
        sc = Scope(key, limits, shared, now)
        share = 1.0 / max(1, self.live)
        for b in (sc.rpm, sc.tpm):
            if b is not None:
                if self.connected:
                    self._fresh.add(id(b))
                b.share = share
                # a cold start: limit / live replicas at once, drawn from the fleet's pool at
                # the next sync (reported as if this bucket had refilled it), which is now
                b.tokens = b.refilled = b.capacity
        if sc.conc is not None:
            sc.conc.share = share
        self._wake.set()
        return sc

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """First sync (bounded by timeout_s; a failure starts in fallback), then the loop."""
        await self.sync()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="admission-redis-sync")

    async def close(self) -> None:
        """Stop the loop (bounded: at most one sync in flight), leave the replicas hash."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait never cancels `task` itself, nor swallows our own cancellation
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s + 1.0)
            if not done:
                log.warning("admission_redis_sync_did_not_stop", replica=self.replica_id)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._redis.hdel(self.prefix + "replicas", self.replica_id)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._redis.aclose()

    async def _loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await self.sync()

    # -- one sync -----------------------------------------------------------------------------
    def _entries(self, dt: float, now: float
                 ) -> list[tuple[str, TokenBucket | Concurrency, float, float, float]]:
        """(key, bucket, holding or in-flight, self-refill, demand per second) for every
        bucket asked since the last sync, and for idle ones every live_ttl_s / 3 (so their
        holdings and demand stay visible to the others)."""
        out: list[tuple[str, TokenBucket | Concurrency, float, float, float]] = []
        idle_before = now - self.live_ttl_s / 3
        for key, sc in self.scopes.items():
            for name, b in (("rpm", sc.rpm), ("tpm", sc.tpm), ("conc", sc.conc)):
                if b is None:
                    continue
                ident = id(b)
                if not b.asked and self._synced.get(ident, -1e18) > idle_before:
                    continue
                self._synced[ident] = now
                rate = b.asked / dt
                b.asked = 0.0
                demand = 0.5 * self._demand.get(ident, rate) + 0.5 * rate
                self._demand[ident] = demand
                if isinstance(b, TokenBucket):
                    held = b.level(now)
                    refilled, b.refilled = b.refilled, 0.0
                    if not self.connected:
                        refilled = 0.0  # fallback refill was our own share, not the pool's
                else:
                    held, refilled = float(b.inflight), 0.0
                out.append((f"{key}:{name}", b, held, refilled, demand))
        return out

    async def sync(self) -> bool:
        now = self.clock()
        dt = max(1e-3, now - self._last_sync)
        self._last_sync = now
        entries = self._entries(dt, now)
        payload = orjson.dumps([
            (key, "t" if isinstance(b, TokenBucket) else "c", b.limit, held, refilled, demand,
             1 if id(b) in self._fresh else 0)
            for key, b, held, refilled, demand in entries])
        # Right after (re)connecting, the others may not have reported yet (a restarted Redis
        # has forgotten them): never take more than an equal share on that first sync.
        share_cap = 1.0 if self.connected else 1.0 / max(1, self.live)
        args = (self.replica_id, int(self.live_ttl_s * 1000), STATE_TTL_MS, self.prefix,
                share_cap, IDLE_FLOOR, payload)
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self._script(keys=(), args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            # a timeout after a good sync may have been applied; in fallback nothing was
            applied = self.connected and isinstance(exc, TimeoutError | RedisTimeoutError)
            for _, b, held, refilled, _ in entries:
                if not isinstance(b, TokenBucket):
                    continue
                if applied:
                    # maybe applied: the holding went back to the pool; keep only what
                    # changed locally since (conservative: never count the holding twice)
                    b.tokens = b.level(self.clock()) - held
                else:  # never reached Redis: report it next time
                    b.refilled += refilled
            self._synced.clear()
            self._fallback(exc)
            return False
        reply = orjson.loads(raw)
        if not self.connected:
            log.info("admission_redis_connected", replica=self.replica_id, url=self._safe_url())
        self.connected = True
        self.syncs += 1
        self.live = max(1, int(reply[0]))
        now2 = self.clock()
        for (_, b, held, _, _), (value, share) in zip(entries, reply[1:], strict=True):
            self._fresh.discard(id(b))
            if isinstance(b, TokenBucket):
                # what was spent or refilled locally while the call was in flight still counts
                moved = b.level(now2) - held
                b.share = share
                b.tokens = value + moved
            else:
                b.share = max(0.0, b.limit - value) / b.limit if b.limit else 0.0
        return True

    def _fallback(self, exc: BaseException) -> None:
        self.failures += 1
        if self.connected or self.failures == 1:
            log.warning("admission_redis_unreachable", replica=self.replica_id,
                        live_replicas=self.live, error=type(exc).__name__)
        self.connected = False
        share = 1.0 / max(1, self.live)
        now = self.clock()
        for sc in self.scopes.values():
            for b in (sc.rpm, sc.tpm):
                if b is not None and b.share != share:
                    b.level(now)
                    b.share = share
                    b.tokens = min(b.tokens, b.capacity)
            if sc.conc is not None:
                sc.conc.share = share

    def _safe_url(self) -> str:
        """The URL without a password."""
        head, at, tail = self.url.rpartition("@")
        return f"{head.split('://', 1)[0]}://***@{tail}" if at else self.url
