"""Backpressure from providers: their rate-limit headers and 429s shrink what we send them.

Per backend (Envoy cluster) this keeps:
- the provider's own remaining budget from its last response (OpenAI / Azure
  `x-ratelimit-remaining-requests/-tokens` + `x-ratelimit-reset-*`; Anthropic
  `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}`),
  decremented locally by every request admitted since, so the gateway stops sending *before*
  the provider refuses; it lapses at the provider's reset time. When the provider also names
  its limit (`x-ratelimit-limit-*`, `anthropic-ratelimit-*-limit`), the budget refills
  smoothly in between at (limit - remaining) / reset per second (reset = time until full, as
  OpenAI and Anthropic define it), so an exhausted provider gets its refill rate rather than
  nothing until the whole window resets; without the limit, wait for the reset;
- a block until `retry-after` (or `retry-after-ms`) after a 429 (1 s when none is given);
- an AIMD factor on the backend's configured limits: x`decrease` on a 429 (at most once per
  `cooldown_s`, so one burst of 429s is one decrease), then +`recover_per_s` per second without
  429s, back up to 1.0.

Everything is plain data and O(1) per call; `observe` runs on the attempt's response headers.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """`6m0s`, `1.5s`, `20ms`, or plain seconds -> seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos else None


def parse_retry_after(headers: Mapping[str, str], wall: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if wall is None else wall))


def _rfc3339_in(text: str, wall: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - wall)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _refill_rate(limit: int | None, remaining: int, reset: float) -> float:
    """Per-second refill of a provider budget that is full again after `reset` seconds
    (0.0: unknown, wait for the reset)."""
    if not limit or limit <= 0:
        return 0.0
    if remaining < limit and reset > 0:
        return (limit - remaining) / reset
    return limit / 60.0  # full now: the per-minute limit's own rate


class Budget:
    """A provider's remaining requests or tokens as of its last answer, refilling at `rate`
    per second up to `limit` (when the provider names them), lapsing at `until`."""

    __slots__ = ("at", "limit", "rate", "remaining", "until")

    def __init__(self, remaining: float, limit: int | None, rate: float, at: float,
                 until: float) -> None:
        self.remaining = remaining
        self.limit = limit
        self.rate = rate
        self.at = at
        self.until = until

    def __repr__(self) -> str:
        return f"Budget(remaining={self.remaining:g}, limit={self.limit}, rate={self.rate:g})"

    def wait(self, n: float, now: float) -> float:
        """Seconds until `n` fit (0.0: now, or the snapshot has lapsed)."""
        if now >= self.until:
            return 0.0
        level = self.remaining + (now - self.at) * self.rate
        if self.limit:
            n = min(n, self.limit)
            level = min(level, self.limit)
        if level >= n:
            return 0.0
        lapse = self.until - now
        return min(lapse, (n - level) / self.rate) if self.rate > 0 else lapse


class BackendPressure:
    __slots__ = ("blocked_until", "factor", "last_429", "requests", "stamp", "tokens")

    def __init__(self, now: float) -> None:
        self.factor = 1.0
        self.stamp = now
        self.last_429 = -math.inf
        self.blocked_until = -math.inf
        self.requests: Budget | None = None
        self.tokens: Budget | None = None

    def __repr__(self) -> str:
        return (f"BackendPressure(factor={self.factor:.3f}, requests={self.requests}, "
                f"tokens={self.tokens})")


class Backpressure:
    """Per-backend provider backpressure; `factor`/`wait` are read by admission."""

    def __init__(self, decrease: float = 0.5, recover_per_s: float = 0.05,
                 min_factor: float = 0.05, cooldown_s: float = 1.0,
                 default_block_s: float = 1.0) -> None:
        self.decrease = decrease
        self.recover_per_s = recover_per_s
        self.min_factor = min_factor
        self.cooldown_s = cooldown_s
        self.default_block_s = default_block_s
        self.backends: dict[str, BackendPressure] = {}

    def _get(self, cluster: str, now: float) -> BackendPressure:
        bp = self.backends.get(cluster)
        if bp is None:
            bp = self.backends[cluster] = BackendPressure(now)
        return bp

    def observe(self, cluster: str, status: int, headers: Mapping[str, str],
                now: float | None = None, wall: float | None = None) -> None:
        """One attempt's response status and (lower-case) headers."""
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        bp = self._get(cluster, now)
        self._recover(bp, now)
        # OpenAI / Azure
        rr = _int(headers.get("x-ratelimit-remaining-requests"))
        rt = _int(headers.get("x-ratelimit-remaining-tokens"))
        lr = _int(headers.get("x-ratelimit-limit-requests"))
        lt = _int(headers.get("x-ratelimit-limit-tokens"))
        reset_r = parse_duration(headers.get("x-ratelimit-reset-requests", ""))
        reset_t = parse_duration(headers.get("x-ratelimit-reset-tokens", ""))
        # Anthropic (tokens: the tighter of the combined and input-token budgets)
        if rr is None:
            rr = _int(headers.get("anthropic-ratelimit-requests-remaining"))
            lr = _int(headers.get("anthropic-ratelimit-requests-limit"))
            r = headers.get("anthropic-ratelimit-requests-reset")
            reset_r = _rfc3339_in(r, wall) if r else None
        if rt is None:
            best: tuple[int, float | None, int | None] | None = None
            for kind in ("tokens", "input-tokens"):
                v = _int(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
                if v is not None and (best is None or v < best[0]):
                    r = headers.get(f"anthropic-ratelimit-{kind}-reset")
                    best = (v, _rfc3339_in(r, wall) if r else None,
                            _int(headers.get(f"anthropic-ratelimit-{kind}-limit")))
            if best is not None:
                rt, reset_t, lt = best
        if rr is not None:
            reset = reset_r if reset_r is not None else 60.0
            bp.requests = Budget(float(rr), lr, _refill_rate(lr, rr, reset), now, now + reset)
        if rt is not None:
            reset = reset_t if reset_t is not None else 60.0
            bp.tokens = Budget(float(rt), lt, _refill_rate(lt, rt, reset), now, now + reset)
        if status == 429:
            ra = parse_retry_after(headers, wall)
            block = ra if ra is not None else self.default_block_s
            bp.blocked_until = max(bp.blocked_until, now + block)
            if now - bp.last_429 >= self.cooldown_s:
                bp.factor = max(self.min_factor, bp.factor * self.decrease)
                bp.last_429 = now

    def _recover(self, bp: BackendPressure, now: float) -> None:
        if bp.factor < 1.0:
            since = now - max(bp.stamp, bp.last_429 + self.cooldown_s)
            if since > 0:
                bp.factor = min(1.0, bp.factor + since * self.recover_per_s)
        bp.stamp = max(bp.stamp, now)

    def factor(self, cluster: str, now: float) -> float:
        bp = self.backends.get(cluster)
        if bp is None:
            return 1.0
        self._recover(bp, now)
        return bp.factor

    def wait(self, cluster: str, tokens: float, now: float) -> float:
        """Seconds until the provider can take one more request of `tokens`; 0.0 now."""
        bp = self.backends.get(cluster)
        if bp is None:
            return 0.0
        w = bp.blocked_until - now
        if bp.requests is not None:
            w = max(w, bp.requests.wait(1, now))
        if bp.tokens is not None:
            w = max(w, bp.tokens.wait(tokens, now))
        return max(0.0, w)

    def sent(self, cluster: str, tokens: float) -> None:
        """A request of `tokens` was admitted to `cluster`: spend the provider's snapshot."""
        bp = self.backends.get(cluster)
        if bp is None:
            return
        if bp.requests is not None:
            bp.requests.remaining -= 1
        if bp.tokens is not None:
            bp.tokens.remaining -= tokens
