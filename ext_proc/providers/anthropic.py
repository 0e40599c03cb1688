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
    alias_of,
    is_sse,
    keep,
    same_schema,
    translated,
    translated_error,
    unsupported_of,
)
from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic
from ext_proc.translate.canonical import Usage, client_wants_usage, model_renamer


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

    def passthrough_response(self, status: int, content_type: str, alias: str,
                             backend: BackendInfo) -> ResponseHandler:
        """The Messages answer to a `passthrough` request: usage is read from it, the model is
        shown as the client's `alias`, and a stream the upstream cuts short ends with an
        `event: error` (the reader's own frame); nothing else changes."""
        if status < 300 and is_sse(content_type):
            return PassthroughStream(
                anthropic.StreamUsageReader(model_renamer(backend.model, alias)))
        if status < 300:
            return same_schema(anthropic.usage_of, alias, backend)
        return Buffered(keep, rewrites=False)

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        alias = alias_of(req, backend)
        if status < 300 and is_sse(content_type):
            return Stream(anthropic.StreamToOpenAI(alias, client_wants_usage(req),
                                                   json_tool=anthropic.json_tool_name(req)))
        if status < 300:
            return translated(
                lambda data: anthropic.response_to_openai(
                    data, alias, json_tool=anthropic.json_tool_name(req)),
                anthropic.usage_of)
        return translated_error(anthropic.error_to_openai, status)


class PassthroughStream:
    """A same-schema Messages stream relayed through its `StreamUsageReader`: whole frames
    go out as they complete (message_start renamed), usage is read on the way, and what the
    reader adds at the end (a last frame's missing blank line, or the `event: error` of a
    stream cut short) reaches the client too: never a stream that just stops."""

    streaming = True
    rewrites = True  # frames may be held or renamed, and an error event appended
    content_type = None  # keep the upstream's text/event-stream

    def __init__(self, reader: anthropic.StreamUsageReader) -> None:
        self._reader = reader

    @property
    def usage(self) -> Usage | None:
        return self._reader.usage

    def feed(self, chunk: bytes) -> bytes:
        return self._reader.feed(chunk)

    def finish(self) -> bytes:
        return self._reader.finish()
