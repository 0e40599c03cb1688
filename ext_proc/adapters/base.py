"""Shared pieces of provider adapters: the handler protocol and reusable response handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ext_proc.table import BackendInfo

Headers = list[tuple[str, bytes]]
Usage = tuple[int, int] | None


class ResponseHandler(Protocol):
    """Reads one response body (buffered or streamed) and returns what the client gets."""

    @property
    def streaming(self) -> bool:
        """True: body arrives chunk by chunk (SSE, event-stream); False: buffered whole."""

    @property
    def rewrites(self) -> bool:
        """False: the body passes through untouched (we only read it)."""

    @property
    def content_type(self) -> bytes | None: ...

    @property
    def usage(self) -> Usage: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes | None: ...


class Adapter(Protocol):
    """One provider kind's HTTP surface for canonical (OpenAI chat) requests."""

    def request(self, req: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        """(path with query, body, headers to set) for one attempt at `backend`."""

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        """The handler that turns this attempt's response into OpenAI chat format."""


class EmbeddingsAdapter(Protocol):
    """A provider kind that also serves `POST /v1/embeddings` (canonical: OpenAI embeddings)."""

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        """(path with query, body, headers) of the ONE upstream call for this request; raise
        TranslationError when the request would need several calls (no fan-out in Envoy)."""

    def embeddings_response(self, status: int, content_type: str, req: dict[str, Any],
                            backend: BackendInfo) -> ResponseHandler:
        """Handler turning the provider's answer into an OpenAI embeddings list (or error)."""


class Buffered:
    """Whole-body handler: `convert` returns (new body or None to keep it, usage)."""

    streaming = False

    def __init__(self, convert: Callable[[bytes], tuple[bytes | None, Usage]],
                 rewrites: bool, content_type: bytes | None = b"application/json") -> None:
        self._convert = convert
        self.rewrites = rewrites
        self.content_type = content_type if rewrites else None
        self.usage: Usage = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes | None:
        self._parts.append(chunk)
        return b"" if self.rewrites else None

    def finish(self) -> bytes | None:
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        out, self.usage = self._convert(body)
        return out


class Stream:
    """Streaming handler wrapping a translator object with feed/finish/usage."""

    streaming = True
    rewrites = True
    content_type = b"text/event-stream"

    def __init__(self, translator: Any) -> None:
        self._t = translator

    @property
    def usage(self) -> Usage:
        u = self._t.usage
        return (u[0], u[1]) if u else None

    def feed(self, chunk: bytes) -> bytes:
        out: bytes = self._t.feed(chunk)
        return out

    def finish(self) -> bytes:
        out: bytes = self._t.finish()
        return out


def translated(to_openai: Callable[[dict[str, Any]], bytes],
               usage_of: Callable[[dict[str, Any]], Usage]) -> Buffered:
    """Whole-body handler for a successful JSON answer in another schema: the OpenAI body
    `to_openai` makes of it, and its usage."""

    def convert(body: bytes) -> tuple[bytes | None, Usage]:
        data = orjson.loads(body)
        return to_openai(data), usage_of(data)

    return Buffered(convert, rewrites=True)


def translated_error(to_openai: Callable[[int, bytes], bytes], status: int) -> Buffered:
    """Whole-body handler turning an error answer into the OpenAI error body (no usage)."""
    return Buffered(lambda body: (to_openai(status, body), None), rewrites=True)


def json_usage(usage_of: Callable[[dict[str, Any]], Usage]
               ) -> Callable[[bytes], tuple[bytes | None, Usage]]:
    """A converter that keeps the body and only reads its usage."""

    def convert(body: bytes) -> tuple[bytes | None, Usage]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        return None, usage_of(data) if isinstance(data, dict) else None

    return convert


def keep(body: bytes) -> tuple[bytes | None, Usage]:
    return None, None


def is_sse(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")
