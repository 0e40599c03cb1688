"""Ingress APIs: what clients speak to the gateway, each mapped to the canonical form.

* `OpenAIChat` (`POST /v1/chat/completions`): already canonical.
* `AnthropicMessages` (`POST /v1/messages`): converted to canonical on the way in and back to
  Anthropic events on the way out, so a Claude-native client can reach any backend; when the
  backend is Anthropic too, the body passes through untouched (model renamed only).
* `Embeddings` (`POST /v1/embeddings`): OpenAI embeddings, for backends that embed.

Each ingress knows its own error format, so every rejection (400/404/429, Envoy's own
replies) reaches the client in the schema its SDK parses.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ext_proc.adapters import ADAPTERS, ANTHROPIC
from ext_proc.adapters.base import Buffered, Headers, ResponseHandler, Usage, json_usage, keep
from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic_ingress, openai
from ext_proc.translate.openai import TranslationError
from switchyard.contract import CHAT_PATH, EMBEDDINGS_PATH, MESSAGES_PATH


class IngressError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param


class Ingress(Protocol):
    """One client-facing API: parse into the canonical form, answer in its own schema."""

    name: str

    def error(self, message: str, type_: str, code: str | None, param: str | None
              ) -> bytes: ...

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]: ...

    def serves(self, backend: BackendInfo) -> bool: ...

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]: ...

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler: ...

    def local_error(self, status: int, text: str) -> bytes: ...


class OpenAIChat:
    name = "openai_chat"

    def error(self, message: str, type_: str, code: str | None, param: str | None) -> bytes:
        return openai.error_body(message, type_, code, param)

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        """(canonical request, model alias, stream) or IngressError."""
        problem = _check_chat(body)
        if problem is not None:
            raise IngressError(400, problem[1], code="invalid_request", param=problem[0])
        return body, body["model"], body.get("stream") is True

    def serves(self, backend: BackendInfo) -> bool:
        return True

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        return ADAPTERS[backend.provider.kind].request(body, backend)

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        return ADAPTERS[backend.provider.kind].response(status, content_type, body, backend)

    def local_error(self, status: int, text: str) -> bytes:
        return openai.error_body(f"Gateway error: {text}", "api_error", _LOCAL_CODES.get(
            status, "gateway_error"))


class Embeddings(OpenAIChat):
    name = "embeddings"

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        if not isinstance(body, dict):
            raise IngressError(400, "Request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise IngressError(400, "Missing required parameter: 'model'", param="model")
        inp = body.get("input")
        if not isinstance(inp, str | list) or not inp:
            raise IngressError(400, "'input' must be a non-empty string or array",
                               param="input")
        return body, model, False

    def serves(self, backend: BackendInfo) -> bool:
        return hasattr(ADAPTERS[backend.provider.kind], "embeddings_request")

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        adapter: Any = ADAPTERS[backend.provider.kind]
        result: tuple[bytes, bytes, Headers] = adapter.embeddings_request(body, backend)
        return result

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        adapter: Any = ADAPTERS[backend.provider.kind]
        handler: ResponseHandler = adapter.embeddings_response(status, content_type, body,
                                                               backend)
        return handler


class AnthropicMessages:
    name = "anthropic_messages"

    def error(self, message: str, type_: str, code: str | None, param: str | None) -> bytes:
        return orjson.dumps({"type": "error", "error": {
            "type": _ANTHROPIC_TYPES.get(type_, type_), "message": message}})

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        problem = anthropic_ingress.validate(body)
        if problem is not None:
            raise IngressError(400, problem[1], param=problem[0])
        try:
            canonical = anthropic_ingress.request_to_openai(body)
        except TranslationError as exc:
            raise IngressError(exc.status, exc.message, code=exc.code, param=exc.param) from None
        return canonical, body["model"], body.get("stream") is True

    def serves(self, backend: BackendInfo) -> bool:
        return True

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        if backend.provider.kind == "anthropic":  # same schema: pass through
            return ANTHROPIC.passthrough(raw, backend)
        return ADAPTERS[backend.provider.kind].request(body, backend)

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        sse = content_type.startswith("text/event-stream")
        if backend.provider.kind == "anthropic":
            if status < 300 and sse:
                return _Passthrough(anthropic_ingress.StreamUsageReader(), streaming=True)
            if status < 300:
                return Buffered(json_usage(anthropic_ingress.usage_of_message), rewrites=False)
            return Buffered(keep, rewrites=False)
        inner = ADAPTERS[backend.provider.kind].response(status, content_type, body, backend)
        return ToAnthropic(inner, status, backend.model)

    def local_error(self, status: int, text: str) -> bytes:
        type_ = "overloaded_error" if status == 503 else "api_error"
        return self.error(f"Gateway error: {text}", type_, None, None)


class _Passthrough:
    """Body untouched; a reader object only watches it (for usage)."""

    rewrites = False
    content_type = None

    def __init__(self, reader: Any, streaming: bool) -> None:
        self._reader = reader
        self.streaming = streaming

    @property
    def usage(self) -> Usage:
        u = self._reader.usage
        return (u[0], u[1]) if u else None

    def feed(self, chunk: bytes) -> bytes | None:
        self._reader.feed(chunk)
        return None

    def finish(self) -> bytes | None:
        return None


class ToAnthropic:
    """Wraps a handler that produces OpenAI chat bytes and emits Anthropic Messages format."""

    rewrites = True

    def __init__(self, inner: ResponseHandler, status: int, model: str) -> None:
        self._inner = inner
        self._status = status
        self._model = model
        self.streaming = inner.streaming
        self.content_type = b"text/event-stream" if inner.streaming else b"application/json"
        self._conv = (anthropic_ingress.StreamFromOpenAI(model)
                      if inner.streaming and status < 300 else None)
        self._parts: list[bytes] = []

    @property
    def usage(self) -> Usage:
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
            return anthropic_ingress.response_from_openai(orjson.loads(body), self._model)
        return anthropic_ingress.error_from_openai(self._status, body)


_LOCAL_CODES = {502: "upstream_error", 503: "upstream_unavailable", 504: "upstream_timeout"}
_ANTHROPIC_TYPES = {"invalid_request_error": "invalid_request_error",
                    "rate_limit_error": "rate_limit_error", "api_error": "api_error",
                    "authentication_error": "authentication_error",
                    "permission_error": "permission_error", "not_found_error": "not_found_error"}

INGRESS: dict[str, Ingress] = {
    CHAT_PATH: OpenAIChat(),
    MESSAGES_PATH: AnthropicMessages(),
    EMBEDDINGS_PATH: Embeddings(),
}


def _check_chat(body: Any) -> tuple[str | None, str] | None:
    """Cheap structural checks of an OpenAI chat request: (param, message) or None if fine."""
    if not isinstance(body, dict):
        return None, "Request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "Missing required parameter: 'model'"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}]", f"messages[{i}] must be an object with a 'role'"
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream", "'stream' must be a boolean"
    return None
