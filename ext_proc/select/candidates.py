"""Candidate selection: the ordered list of backends one request may be sent to.

Today: the model's configured fallback order, minus backends whose context window is too
small for the request, with unhealthy backends (ejected, breaker open, cooling down after a
429) moved to the end. Later issues score by cost, latency and quality; the route phase
already hands Envoy a per-request order, so only this module changes.
"""

from __future__ import annotations

import time
from typing import Any

from ext_proc.stats.health import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo

#: Rough characters per token for the admission-time estimate (no tokenizer on the hot path).
CHARS_PER_TOKEN = 4


class ContextTooLong(Exception):
    def __init__(self, estimate: int, largest: int) -> None:
        super().__init__(
            f"This request needs about {estimate} tokens (prompt + max_tokens), more than the "
            f"largest context window of this model's backends ({largest})")
        self.estimate = estimate


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt characters / 4 plus the requested output tokens: cheap and a little generous."""
    chars = 0
    messages = body.get("messages")  # not validated on every API (embeddings)
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return chars // CHARS_PER_TOKEN + (out if isinstance(out, int) else 0)


def candidates(model: ModelInfo, body: dict[str, Any], health: BackendHealth
               ) -> tuple[BackendInfo, ...]:
    """Backends in the order this request should try them (never empty)."""
    backends = model.backends
    if any(b.context_window for b in backends):
        need = estimate_tokens(body)
        fitting = tuple(b for b in backends if not b.context_window or b.context_window >= need)
        if not fitting:
            raise ContextTooLong(need, max(b.context_window for b in backends))
        backends = fitting
    if len(backends) > 1:
        now = time.monotonic()
        bad = [health.unhealthy(b.cluster, now) for b in backends]
        if any(bad):
            backends = tuple(b for b, x in zip(backends, bad, strict=True) if not x) + tuple(
                b for b, x in zip(backends, bad, strict=True) if x)
    return backends
