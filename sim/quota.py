"""A simulated provider's own account quota: RPM and TPM with smooth refill, like the real
ones, answering 429 with that provider's rate-limit headers and reporting the remaining quota
on every answer (OpenAI/Azure `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`).

Tokens are charged at request time as the providers do: prompt characters / 4 plus the
requested output (`max_tokens`, or `DEFAULT_OUTPUT` when absent).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

DEFAULT_OUTPUT = 256


class _Bucket:
    """Token bucket holding up to `limit` units, refilled at `limit` per minute."""

    __slots__ = ("level", "limit", "t")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.level = limit
        self.t = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.t) * self.limit / 60.0)
        self.t = now

    def wait(self, n: float) -> float:
        """Seconds until `n` units are available (0: now)."""
        short = min(n, self.limit) - self.level
        return 0.0 if short <= 0 else short * 60.0 / self.limit

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self.level) * 60.0 / self.limit


def cost_of(body: Any) -> int:
    """Tokens a request is charged up front: prompt chars / 4 + requested output."""
    if not isinstance(body, dict):
        return 1
    chars = 0
    for m in body.get("messages") or ():
        if isinstance(m, dict):
            c = m.get("content")
            if isinstance(c, str):
                chars += len(c)
            elif isinstance(c, list):
                chars += sum(len(p.get("text", "")) for p in c if isinstance(p, dict)
                             and isinstance(p.get("text"), str))
    out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_OUTPUT
    return chars // 4 + (out if isinstance(out, int) and out > 0 else DEFAULT_OUTPUT)


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class Quota:
    """One simulated account's RPM/TPM; counts the requests it had to refuse."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.requests = _Bucket(rpm) if rpm else None
        self.tokens = _Bucket(tpm) if tpm else None
        self.refused = 0
        self.admitted = 0

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def take(self, tokens: int) -> float:
        """Charge one request of `tokens`; 0 when admitted, else seconds to wait (refused)."""
        now = time.monotonic()
        wait = 0.0
        for bucket, n in ((self.requests, 1), (self.tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait(n))
        if wait > 0:
            self.refused += 1
            return wait
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= min(tokens, self.tokens.limit)
        self.admitted += 1
        return 0.0

    def headers(self, kind: str) -> dict[str, str]:
        """The remaining-quota headers this provider kind sends on every answer."""
        out: dict[str, str] = {}
        now = time.monotonic()
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            bucket.refill(now)
            remaining = str(max(0, int(bucket.level)))
            if kind == "anthropic":
                reset = datetime.fromtimestamp(time.time() + bucket.reset_s(), UTC)
                out[f"anthropic-ratelimit-{name}-limit"] = str(int(bucket.limit))
                out[f"anthropic-ratelimit-{name}-remaining"] = remaining
                out[f"anthropic-ratelimit-{name}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                out[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
                out[f"x-ratelimit-remaining-{name}"] = remaining
                out[f"x-ratelimit-reset-{name}"] = _go_duration(bucket.reset_s())
        return out
