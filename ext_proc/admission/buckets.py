"""Token buckets with smooth refill (never fixed windows) and a concurrency counter.

A bucket of `limit` per minute holds at most `capacity` = limit x scale units and refills
continuously at capacity / 60 per second. `scale` is this replica's part of the limit (1.0
in-process; its fleet share with Redis) times the backend's backpressure factor.

Reserve-then-reconcile: `wait(n)` says how long until `n` fit (0.0: now), `take(n)` takes them,
`adjust(delta)` replaces a reservation by the true usage afterwards: a refund (delta < 0) or a
further charge (delta > 0) that may push the bucket into debt, so nobody overshoots by more
than its own estimate and the debt delays later requests instead.

A request larger than the bucket can ever hold is admitted when the bucket is full (then runs
into debt) rather than refused forever.

Class shares: `wait(n, floor)` keeps `floor` x capacity untouched (floor = 1 - quota_share),
so lower classes are refused while the top of the bucket stays free for higher ones.

Times are `time.monotonic()` seconds passed in by the caller (tests use a fake clock).
"""

from __future__ import annotations

import math

PERIOD_S = 60.0


class _Scaled:
    """`capacity` = limit x share x factor, kept as a plain attribute (read on every request,
    written only when a limit, a fleet share or a backpressure factor changes)."""

    __slots__ = ("_factor", "_limit", "_share", "capacity")

    def __init__(self, limit: float) -> None:
        self._limit = limit
        #: This replica's part of the fleet-wide limit (RedisStore sets it).
        self._share = 1.0
        #: Backpressure multiplier from the provider (1.0 = no backpressure).
        self._factor = 1.0
        self.capacity = limit

    def _rescale(self) -> None:
        self.capacity = self._limit * self._share * self._factor

    @property
    def limit(self) -> float:
        return self._limit

    @limit.setter
    def limit(self, value: float) -> None:
        self._limit = value
        self._rescale()

    @property
    def share(self) -> float:
        return self._share

    @share.setter
    def share(self, value: float) -> None:
        self._share = value
        self._rescale()

    @property
    def factor(self) -> float:
        return self._factor

    @factor.setter
    def factor(self, value: float) -> None:
        if value != self._factor:
            self._factor = value
            self._rescale()


class TokenBucket(_Scaled):
    """Requests or tokens per minute (`limit`), refilled continuously."""

    __slots__ = ("asked", "refilled", "stamp", "tokens")

    def __init__(self, limit: float, now: float) -> None:
        super().__init__(float(limit))
        self.tokens = self.capacity
        self.stamp = now
        #: Units this bucket refilled by itself since the last fleet sync (RedisStore reads
        #: and resets it: in a fleet, local refill is drawn from the fleet's pool).
        self.refilled = 0.0
        #: Units asked for (admitted or not) since the last fleet sync: this replica's demand.
        self.asked = 0.0

    def __repr__(self) -> str:
        return (f"TokenBucket(limit={self.limit:g}, tokens={self.tokens:.1f}, "
                f"share={self.share:.3f}, factor={self.factor:.3f})")

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.capacity / PERIOD_S

    def level(self, now: float) -> float:
        """Units available now (negative while in debt)."""
        dt = now - self.stamp
        if dt > 0:
            self.stamp = now
            cap = self.capacity
            if self.tokens < cap:
                t = self.tokens + dt * cap / PERIOD_S
                if t > cap:
                    t = cap
                self.refilled += t - self.tokens
                self.tokens = t
        return self.tokens

    def wait(self, n: float, now: float, floor: float = 0.0) -> float:
        """Seconds until `n` can be taken leaving `floor` x capacity; 0.0 means now."""
        self.asked += n
        cap = self.capacity
        need = n + floor * cap if floor else n
        if need > cap:
            need = cap
        have = self.level(now)
        if have >= need:
            return 0.0
        return math.inf if cap <= 0 else (need - have) * PERIOD_S / cap

    def take(self, n: float) -> None:
        """Take `n` (call `level`/`wait` with the current time first)."""
        self.tokens -= n

    def adjust(self, delta: float, now: float) -> None:
        """Reconcile: + charges more (debt allowed), - refunds (up to capacity)."""
        t = self.level(now) - delta
        self.tokens = t if t < self.capacity else self.capacity

    def remaining(self, now: float) -> int:
        """Remaining of the whole limit (this replica's view scaled back up), for headers."""
        scale = self._share * self._factor
        have = self.level(now)
        return max(0, int(have / scale)) if scale > 0 else 0

    def reset_s(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        cap = self.capacity
        missing = cap - self.level(now)
        return 0.0 if missing <= 0 or cap <= 0 else missing * PERIOD_S / cap


class Concurrency(_Scaled):
    """In-flight requests against `limit` (max_concurrent)."""

    __slots__ = ("asked", "inflight")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.inflight = 0
        self.asked = 0.0

    def __repr__(self) -> str:
        return f"Concurrency(limit={self.limit}, inflight={self.inflight}, share={self.share:.3f})"

    def free(self, floor: float = 0.0) -> bool:
        """One more may start, keeping `floor` x capacity for higher classes."""
        self.asked += 1
        return self.inflight < self.capacity * (1.0 - floor)

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        if self.inflight > 0:
            self.inflight -= 1


def go_duration(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` format: `20ms`, `1.5s`, `6m0s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:.0f}s"
