"""Anthropic Messages API simulator: `POST /v1/messages`, `GET /v1/models`."""

from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import INVALID_JSON, BodyHandler, Completion, Provider, content_text, count_words

_BLOCK_TYPES: Final = (
    "text",
    "image",
    "tool_use",
    "tool_result",
    "document",
    "thinking",
    "redacted_thinking",
)
_BLOCK_TYPES_TEXT: Final = ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
_MODELS: Final = ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5")
# Anthropic error `type` per status, as the real API sends them.
_STATUS_ERRORS: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class _Invalid(Exception):
    """A 400 invalid_request_error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _sse(event: bytes, data: Any) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _validate_content(where: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise _Invalid(
                f"{at}: Input should be a valid dictionary or object to extract fields from"
            )
        btype = block.get("type")
        if btype is None:
            raise _Invalid(f"{at}: Unable to extract tag using discriminator 'type'")
        if btype not in _BLOCK_TYPES:
            raise _Invalid(
                f"{at}: Input tag '{btype}' found using 'type' does not match any of the "
                f"expected tags: {_BLOCK_TYPES_TEXT}"
            )
        if btype == "text" and not isinstance(block.get("text"), str):
            raise _Invalid(f"{at}.text: Field required")


def _validate(body: Any) -> tuple[list[dict[str, Any]], int, bool]:
    """Check a request like the real API; returns (messages, max_tokens, stream)."""
    if not isinstance(body, dict):
        raise _Invalid("There was an error parsing the body of your request: invalid JSON")
    model = body.get("model")
    if model is None:
        raise _Invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise _Invalid("model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict):
            raise _Invalid(f"{where}: Input should be a valid dictionary")
        role = msg.get("role")
        if role == "system":
            raise _Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role is None:
            raise _Invalid(f"{where}.role: Field required")
        if role not in ("user", "assistant"):
            raise _Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _Invalid('messages: first message must use the "user" role')
        if "content" not in msg:
            raise _Invalid(f"{where}.content: Field required")
        content = msg["content"]
        _validate_content(f"{where}.content", content)
        if not content and not (i == last and role == "assistant"):
            raise _Invalid(
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise _Invalid(f"system.{j}.type: Input should be 'text'")
        elif not isinstance(system, str):
            raise _Invalid("system: Input should be a valid list")
    for key, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(f"{key}: Input should be a valid number")
        if value < 0:
            raise _Invalid(f"{key}: Input should be greater than or equal to 0")
        if value > high:
            raise _Invalid(f"{key}: Input should be less than or equal to {high:g}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _Invalid("stream: Input should be a valid boolean")
    return messages, max_tokens, stream


class AnthropicProvider(Provider):
    """Speaks the Anthropic Messages wire format, errors and SSE event sequence included."""

    kind = "anthropic"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [("POST", "/v1/messages", self.messages), ("GET", "/v1/models", self.models)]

    def error(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        etype = _STATUS_ERRORS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        body = orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return web.Response(body=body, status=status, headers=all_headers)

    async def not_found(self, request: web.Request, body: Any) -> web.StreamResponse:
        return self.error(404, "Not Found")

    def _check_headers(self, request: web.Request) -> web.Response | None:
        """Auth (x-api-key or Bearer, only when a key is required), then anthropic-version."""
        key = self.state.require_key
        if key is not None:
            given = request.headers.get("x-api-key")
            if given is None:
                auth = request.headers.get("Authorization", "")
                given = auth[7:].strip() if auth.startswith("Bearer ") else None
            if not given:
                return self.error(401, "x-api-key header is required")
            if given != key:
                return self.error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error(400, "anthropic-version: header is required")
        return None

    def response_headers(self) -> dict[str, str]:
        return {"request-id": "req_" + self.state.new_id()}

    async def models(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._check_headers(request)) is not None:
            return denied
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for m in _MODELS
        ]
        listing = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
        return web.Response(
            body=orjson.dumps(listing), headers={"Content-Type": "application/json"}
        )

    async def messages(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._check_headers(request)) is not None:
            return denied
        if (fault := await self.faults(request)) is not None:
            return fault
        if body is INVALID_JSON:
            body = None  # answered by _validate's parse error
        try:
            messages, max_tokens, stream = _validate(body)
        except _Invalid as exc:
            return self.error(400, exc.message)
        prompt_tokens = count_words(content_text(body.get("system")))
        last_user = ""
        for msg in messages:
            text = content_text(msg["content"])
            prompt_tokens += count_words(text)
            if msg["role"] == "user":
                last_user = text
        completion = self.completion(last_user, prompt_tokens, max_tokens)
        model: str = body["model"]
        mid = "msg_" + self.state.new_id()
        stop_reason = "max_tokens" if completion.truncated else "end_turn"
        if stream:
            return await self._stream(request, completion, model, mid, stop_reason)
        return await self.reply(
            request,
            {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": completion.text}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": _usage(completion.prompt_tokens, completion.completion_tokens),
            },
        )

    async def _stream(
        self, request: web.Request, completion: Completion, model: str, mid: str, stop_reason: str
    ) -> web.StreamResponse:
        start = {
            "type": "message_start",
            "message": {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(completion.prompt_tokens, 1),
            },
        }
        preamble = [
            _sse(b"message_start", start),
            _sse(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]

        def tokens() -> Iterator[bytes]:
            for delta in completion.deltas():
                yield _sse(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": delta},
                    },
                )

        epilogue = [
            _sse(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": completion.completion_tokens},
                },
            ),
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        ]
        return await self.stream(request, preamble, tokens(), epilogue)


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
