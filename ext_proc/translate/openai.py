"""OpenAI chat completions: the canonical schema, so this is the same-schema pass-through.

Requests only get the upstream model name and, when streaming, `include_usage` (the gateway
needs token counts). Streams are relayed byte for byte; the one frame the gateway added (the
usage-only chunk the client did not ask for) is dropped. What every schema's translator
shares lives in `canonical`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from switchyard.framing.sse import SSEEvent, SSEParser, parse_frame

from .canonical import Usage, usage_from

__all__ = [
    "StreamRelay",
    "request_to_backend",
    "rewrite_model",
    "usage_of",
]


def request_to_backend(req: dict[str, Any], upstream_model: str) -> bytes:
    """Forward the request with the upstream model name; streams always ask for usage."""
    out = dict(req)
    out["model"] = upstream_model
    if out.get("stream"):
        so = out.get("stream_options")
        so = dict(so) if isinstance(so, dict) else {}
        so["include_usage"] = True
        out["stream_options"] = so
    return orjson.dumps(out)


def usage_of(resp: dict[str, Any]) -> Usage | None:
    """Usage of a response or chunk (cached prompt and reasoning tokens from the `*_details`
    objects), None if it has no usage."""
    return usage_from(resp.get("usage"))


def rewrite_model(resp: dict[str, Any], alias: str) -> None:
    """Show the client the model name it asked for, not the upstream's."""
    if "model" in resp:
        resp["model"] = alias


class StreamRelay:
    """Relay an upstream OpenAI SSE stream, noting usage, [DONE] and in-stream errors.

    When the client asked for usage and no model is renamed, the bytes pass through untouched
    and at once; otherwise frames are held until complete, so the injected usage-only chunk
    can be dropped and each chunk's `model` shown as the client's alias (`rename`).
    """

    __slots__ = ("_parser", "_rename", "_wants_usage", "error", "saw_done", "usage")

    def __init__(self, client_wants_usage: bool,
                 rename: Callable[[bytes], bytes] | None = None) -> None:
        self._parser = SSEParser()
        self._wants_usage = client_wants_usage
        self._rename = rename
        self.usage: Usage | None = None
        self.saw_done = False
        self.error: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes to send downstream for this upstream chunk."""
        frames = self._parser.feed_frames(chunk)
        if self._wants_usage and self._rename is None:
            for _, ev in frames:
                if ev is not None:
                    self._inspect(ev)
            return chunk
        out: list[bytes] = []
        dropped = False
        for raw, ev in frames:
            if ev is not None and self._inspect(ev):
                dropped = True
            else:
                out.append(raw)
        data = out[0] if not dropped and len(out) == 1 else b"".join(out)
        return self._rename(data) if self._rename is not None else data

    def finish(self) -> bytes:
        """Flush an unterminated last frame (inspected leniently, as if it had ended)."""
        rest = self._parser.take_pending()
        if not rest:
            return b""
        ev = parse_frame(rest)
        drop = ev is not None and self._inspect(ev)
        if self._rename is None and self._wants_usage:
            return b""  # already passed on as it arrived
        if drop:
            return b""
        return self._rename(rest) if self._rename is not None else rest

    def _inspect(self, ev: SSEEvent) -> bool:
        """Record what the event tells us; True if it is a usage-only chunk to drop."""
        data = ev.data
        if data == b"[DONE]":
            self.saw_done = True
            return False
        # Cheap substring tests first: most chunks are content deltas we need not parse.
        # Inside a JSON string a quote is escaped, so b'"usage"' only matches a key.
        has_usage = b'"usage"' in data
        if not has_usage and b'"error"' not in data:
            return False
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        err = obj.get("error")
        if isinstance(err, dict):
            self.error = err
        if has_usage:
            u = usage_of(obj)
            if u is not None:
                self.usage = u
                return not self._wants_usage and obj.get("choices") == []
        return False
