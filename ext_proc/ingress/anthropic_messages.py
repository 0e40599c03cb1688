"""Anthropic Messages (`POST /v1/messages`): converted to canonical on the way in and back to
Anthropic events on the way out, so a Claude-native client can reach any backend; when the
backend is Anthropic too, the body passes through untouched (model renamed only, by the
Anthropic provider's `passthrough`)."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.ingress.base import IngressError
from ext_proc.providers import PROVIDERS
from ext_proc.providers.anthropic import AnthropicProvider
from ext_proc.providers.base import Headers, ResponseHandler, alias_of
from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic_messages as messages
from ext_proc.translate.canonical import TranslationError, Usage

_TYPES = {"invalid_request_error": "invalid_request_error",
          "rate_limit_error": "rate_limit_error", "api_error": "api_error",
          "authentication_error": "authentication_error",
          "permission_error": "permission_error", "not_found_error": "not_found_error"}


class AnthropicMessages:
    name = "anthropic_messages"

    def error(self, message: str, type_: str, code: str | None, param: str | None) -> bytes:
        """The Messages error object has no `param` member, so the field goes in front of the
        message as the Messages API itself writes it (`messages.0.content: Field required`):
        without it a client could not tell which field was wrong."""
        if param and not message.startswith(param):
            message = f"{param}: {message}"
        return messages.error_body(message, _TYPES.get(type_, type_))

    def stream_error(self, message: str, type_: str, code: str | None) -> bytes:
        """`event: error` with the Messages error object (it has no code): the anthropic SDK
        raises on it."""
        return messages.error_event(message, _TYPES.get(type_, type_))

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        problem = messages.validate(body)
        if problem is not None:
            raise IngressError(400, problem[1], param=problem[0])
        try:
            canonical = messages.request_to_openai(body)
        except TranslationError as exc:
            raise IngressError(exc.status, exc.message, code=exc.code, param=exc.param) from None
        return canonical, body["model"], body.get("stream") is True

    def serves(self, backend: BackendInfo) -> bool:
        return True

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        provider = PROVIDERS[backend.provider.kind]
        if isinstance(provider, AnthropicProvider):  # same schema: pass through
            return provider.passthrough(raw, backend)
        return provider.request(body, backend)

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        provider = PROVIDERS[backend.provider.kind]
        alias = alias_of(body, backend)
        if isinstance(provider, AnthropicProvider):
            return provider.passthrough_response(status, content_type, alias, backend)
        inner = provider.response(status, content_type, body, backend)
        return ToAnthropic(inner, status, alias)

    def local_error(self, status: int, text: str) -> bytes:
        type_ = "overloaded_error" if status == 503 else "api_error"
        return self.error(f"Gateway error: {text}", type_, None, None)


class ToAnthropic:
    """Wraps a handler that produces OpenAI chat bytes and emits Anthropic Messages format."""

    rewrites = True

    def __init__(self, inner: ResponseHandler, status: int, model: str) -> None:
        self._inner = inner
        self._status = status
        self._model = model
        self.streaming = inner.streaming
        self.content_type = b"text/event-stream" if inner.streaming else b"application/json"
        self._conv = (messages.StreamFromOpenAI(model)
                      if inner.streaming and status < 300 else None)
        self._parts: list[bytes] = []

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        if out is None:
            out = chunk
        if self._conv is not None:
            return self._conv.feed(out)
        if not self._inner.rewrites:
            self._parts.append(out)
        return b""

    def finish(self) -> bytes:
        tail = self._inner.finish()
        if self._conv is not None:
            return self._conv.feed(tail or b"") + self._conv.finish()
        body = tail if tail is not None else b"".join(self._parts)
        if self._status < 300:
            return messages.response_from_openai(orjson.loads(body), self._model)
        return messages.error_from_openai(self._status, body)
