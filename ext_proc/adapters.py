"""Binds each provider kind's translator to its HTTP surface: path, auth headers, responses.

The translators (ext_proc/translate/*) only turn bodies from one schema into another; this
module knows which path and credentials an attempt needs and which response handler reads
the answer back. Adding a provider kind = one translator module + one adapter here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic, openai

Headers = list[tuple[str, bytes]]


class ResponseHandler(Protocol):
    """Reads one response body (buffered or streamed) and returns what the client gets."""

    @property
    def streaming(self) -> bool:
        """True: body arrives chunk by chunk (SSE); False: buffered whole."""

    @property
    def rewrites(self) -> bool:
        """False: the body passes through untouched (we only read it)."""

    @property
    def content_type(self) -> bytes | None: ...

    @property
    def usage(self) -> tuple[int, int] | None: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes | None: ...


class _Buffered:
    """Whole-body handler: `convert` returns the new body (or None to keep it), sets usage."""

    streaming = False

    def __init__(
        self,
        convert: Callable[[bytes], tuple[bytes | None, tuple[int, int] | None]],
        rewrites: bool,
        content_type: bytes | None = b"application/json",
    ) -> None:
        self._convert = convert
        self.rewrites = rewrites
        self.content_type = content_type if rewrites else None
        self.usage: tuple[int, int] | None = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes | None:
        self._parts.append(chunk)
        return b"" if self.rewrites else None

    def finish(self) -> bytes | None:
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        out, self.usage = self._convert(body)
        return out


class _Stream:
    """SSE handler wrapping a translator object with feed/finish/usage."""

    streaming = True
    rewrites = True
    content_type = b"text/event-stream"

    def __init__(self, translator: Any) -> None:
        self._t = translator

    @property
    def usage(self) -> tuple[int, int] | None:
        u = self._t.usage
        return (u[0], u[1]) if u else None

    def feed(self, chunk: bytes) -> bytes:
        out: bytes = self._t.feed(chunk)
        return out

    def finish(self) -> bytes:
        out: bytes = self._t.finish()
        return out


def _json_usage(
    usage_of: Callable[[dict[str, Any]], tuple[int, int] | None],
) -> Callable[[bytes], tuple[bytes | None, tuple[int, int] | None]]:
    def convert(body: bytes) -> tuple[bytes | None, tuple[int, int] | None]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        return None, usage_of(data) if isinstance(data, dict) else None

    return convert


def _keep(body: bytes) -> tuple[bytes | None, tuple[int, int] | None]:
    return None, None


class OpenAIAdapter:
    """Any OpenAI-compatible server: same schema, so bodies pass through (model renamed)."""

    api_path = "/v1/chat/completions"

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers: Headers = [("content-type", b"application/json")]
        if p.api_key:
            headers.append(("authorization", b"Bearer " + p.api_key.encode()))
        path = (p.path_prefix + self.api_path).encode()
        return path, openai.request_to_backend(req, backend.model), headers

    def response(
        self, status: int, sse: bool, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        if status < 300 and sse:
            return _Stream(openai.StreamRelay(openai.client_wants_usage(req)))
        if status < 300:
            return _Buffered(_json_usage(openai.usage_of), rewrites=False)
        return _Buffered(_keep, rewrites=False)


class AnthropicAdapter:
    """Anthropic Messages API."""

    api_path = "/v1/messages"

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers: Headers = [
            ("content-type", b"application/json"),
            (
                "anthropic-version",
                p.options.get("anthropic_version", anthropic.API_VERSION).encode(),
            ),
        ]
        if p.api_key:
            headers.append(("x-api-key", p.api_key.encode()))
        path = (p.path_prefix + self.api_path).encode()
        return path, anthropic.request_from_openai(req, backend.model), headers

    def response(
        self, status: int, sse: bool, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        if status < 300 and sse:
            return _Stream(anthropic.StreamToOpenAI(backend.model, openai.client_wants_usage(req)))
        if status < 300:

            def convert(body: bytes) -> tuple[bytes | None, tuple[int, int] | None]:
                data = orjson.loads(body)
                return anthropic.response_to_openai(data, backend.model), anthropic.usage_of(data)

            return _Buffered(convert, rewrites=True)
        return _Buffered(
            lambda body: (anthropic.error_to_openai(status, body), None), rewrites=True
        )


ADAPTERS: dict[str, OpenAIAdapter | AnthropicAdapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
}
