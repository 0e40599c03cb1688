"""Anthropic Messages API (kind `anthropic`).

Canonical requests are translated; a request that is already in the Messages schema (the
Anthropic Messages ingress) passes through with only the model renamed (`passthrough`,
`passthrough_response`), so the ingress never needs to know Anthropic's HTTP surface.
"""

from __future__ import annotations

from typing import Any

from ext_proc.providers.base import (
    COMMON_UNSUPPORTED,
    Buffered,
    Headers,
    ResponseHandler,
    Stream,
    is_sse,
    json_usage,
    keep,
    translated,
    translated_error,
    unsupported_of,
)
from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic
from ext_proc.translate.canonical import Usage, client_wants_usage


class AnthropicProvider:
    api_path = "/v1/messages"
    UNSUPPORTED = COMMON_UNSUPPORTED | {"seed", "presence_penalty", "frequency_penalty", "n"}

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        return unsupported_of(self.UNSUPPORTED, body)

    def _surface(self, backend: BackendInfo) -> tuple[bytes, Headers]:
        p = backend.provider
        headers: Headers = [
            ("content-type", b"application/json"),
            ("anthropic-version", anthropic.API_VERSION.encode()),
        ]
        if p.api_key:
            headers.append(("x-api-key", p.api_key.encode()))
        return (p.path_prefix + self.api_path).encode(), headers

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        path, headers = self._surface(backend)
        return path, anthropic.request_from_openai(req, backend.model), headers

    def passthrough(self, raw: dict[str, Any], backend: BackendInfo
                    ) -> tuple[bytes, bytes, Headers]:
        """A request already in the Messages schema (Anthropic ingress): model renamed only."""
        path, headers = self._surface(backend)
        return path, anthropic.rename_model(raw, backend.model), headers

    def passthrough_response(self, status: int, content_type: str) -> ResponseHandler:
        """The Messages answer to a `passthrough` request, untouched; usage is read from it."""
        if status < 300 and is_sse(content_type):
            return Passthrough(anthropic.StreamUsageReader(), streaming=True)
        if status < 300:
            return Buffered(json_usage(anthropic.usage_of), rewrites=False)
        return Buffered(keep, rewrites=False)

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        if status < 300 and is_sse(content_type):
            return Stream(anthropic.StreamToOpenAI(backend.model, client_wants_usage(req),
                                                   json_tool=anthropic.json_tool_name(req)))
        if status < 300:
            return translated(
                lambda data: anthropic.response_to_openai(
                    data, backend.model, json_tool=anthropic.json_tool_name(req)),
                anthropic.usage_of)
        return translated_error(anthropic.error_to_openai, status)


class Passthrough:
    """Body untouched; a reader object (feed/usage) only watches it, for usage."""

    rewrites = False
    content_type = None

    def __init__(self, reader: Any, streaming: bool) -> None:
        self._reader = reader
        self.streaming = streaming

    @property
    def usage(self) -> Usage | None:
        u: Usage | None = self._reader.usage
        return u

    def feed(self, chunk: bytes) -> bytes | None:
        self._reader.feed(chunk)
        return None

    def finish(self) -> bytes | None:
        return None
