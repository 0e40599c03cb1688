"""Anthropic Messages API simulator: `POST /v1/messages`, `GET /v1/models`."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import (
    INVALID_JSON,
    BodyHandler,
    Completion,
    Provider,
    SimError,
    content_text,
    count_words,
)

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


_TOOL_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_CHOICES: Final = ("auto", "any", "tool", "none")
_JSON_PIECE: Final = 12  # characters of tool input per streamed input_json_delta
_SIGNATURE: Final = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="


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
        if btype == "tool_use":
            for key in ("id", "name"):
                if not isinstance(block.get(key), str):
                    raise _Invalid(f"{at}.tool_use.{key}: Field required")
            if not isinstance(block.get("input"), dict):
                raise _Invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
        if btype == "tool_result" and not isinstance(block.get("tool_use_id"), str):
            raise _Invalid(f"{at}.tool_result.tool_use_id: Field required")


def _ids(content: Any, btype: str, key: str) -> list[str]:
    if not isinstance(content, list):
        return []
    return [b[key] for b in content if isinstance(b, dict) and b.get("type") == btype]


def _validate_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Each tool_use needs its tool_result in the very next (user) message, and vice versa."""
    for i, msg in enumerate(messages):
        uses = _ids(msg["content"], "tool_use", "id") if msg["role"] == "assistant" else []
        following = messages[i + 1] if i + 1 < len(messages) else None
        if uses and following is not None:
            answered = set(_ids(following["content"], "tool_result", "tool_use_id"))
            missing = [u for u in uses if u not in answered]
            if missing:
                raise _Invalid(
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
        if msg["role"] == "user":
            results = _ids(msg["content"], "tool_result", "tool_use_id")
            previous = messages[i - 1] if i else None
            known = set(
                _ids(previous["content"], "tool_use", "id")
                if previous and previous["role"] == "assistant"
                else []
            )
            stray = [r for r in results if r not in known]
            if stray:
                raise _Invalid(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(stray)}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )


def _validate_tools(body: dict[str, Any]) -> None:
    """tools, tool_choice and thinking, checked the way the real API words its errors."""
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid("tools: Input should be a valid list")
        for j, tool in enumerate(tools):
            at = f"tools.{j}"
            if not isinstance(tool, dict):
                raise _Invalid(f"{at}: Input should be a valid dictionary")
            if tool.get("type") not in (None, "custom"):
                continue  # server tools (web search, bash, ...) are accepted, not simulated
            name = tool.get("name")
            if not isinstance(name, str):
                raise _Invalid(f"{at}.custom.name: Field required")
            if not _TOOL_NAME.match(name):
                raise _Invalid(
                    f"{at}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            schema = tool.get("input_schema")
            if schema is None:
                raise _Invalid(f"{at}.custom.input_schema: Field required")
            if not isinstance(schema, dict):
                raise _Invalid(f"{at}.custom.input_schema: Input should be a valid dictionary")
            if schema.get("type") != "object":
                raise _Invalid(f"{at}.custom.input_schema.type: Input should be 'object'")
            desc = tool.get("description")
            if desc is not None and not isinstance(desc, str):
                raise _Invalid(f"{at}.custom.description: Input should be a valid string")
            if name in names:
                raise _Invalid(f"tools: Tool names must be unique. Duplicate name: {name}")
            names.append(name)
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise _Invalid("tool_choice: Input should be a valid dictionary")
        ctype = choice.get("type")
        if ctype not in _TOOL_CHOICES:
            raise _Invalid(
                f"tool_choice: Input tag '{ctype}' found using 'type' does not match any of the "
                "expected tags: 'auto', 'any', 'tool', 'none'"
            )
        if ctype == "tool":
            if not isinstance(choice.get("name"), str):
                raise _Invalid("tool_choice.tool.name: Field required")
            if choice["name"] not in names:
                raise _Invalid(f"tool_choice.name: Tool '{choice['name']}' not found in tools")
        if ctype in ("any", "tool") and not tools:
            raise _Invalid("tool_choice: tool_choice may only be specified while providing tools")
        dp = choice.get("disable_parallel_tool_use")
        if dp is not None and (ctype == "none" or not isinstance(dp, bool)):
            raise _Invalid(
                f"tool_choice.{ctype}.disable_parallel_tool_use: Extra inputs are not permitted"
            )
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise _Invalid(
                "thinking: Input tag found using 'type' does not match 'enabled', 'disabled'"
            )
        if thinking["type"] == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool):
                raise _Invalid("thinking.enabled.budget_tokens: Field required")
            if budget < 1024:
                raise _Invalid(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if body["max_tokens"] <= budget:
                raise _Invalid(
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                    "our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                    "extended-thinking#max-tokens-and-context-window-size"
                )
            if choice is not None and choice.get("type") in ("any", "tool"):
                raise _Invalid("Thinking may not be enabled when tool_choice forces tool use.")
            temperature = body.get("temperature")
            if temperature is not None and temperature != 1:
                raise _Invalid(
                    "`temperature` may only be set to 1 when thinking is enabled. Please consult "
                    "our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                    "extended-thinking#feature-compatibility"
                )


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
    _validate_tools(body)
    _validate_tool_pairs(messages)
    return messages, max_tokens, stream


@dataclass(slots=True)
class _ToolCall:
    """A simulated tool_use: its block, and the input as the JSON text to stream."""

    id: str
    name: str
    input_json: str

    def block(self) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": self.id,
            "name": self.name,
            "input": orjson.loads(self.input_json),
        }


def _tool_call(
    body: dict[str, Any], last_user: str, last_content: Any, new_id: Callable[[], str]
) -> _ToolCall | None:
    """The tool_use to answer with, if any.

    Forced tool_choice (any/tool) always calls; `auto` calls when the last user text asks to
    "use tool" and the last user message is not itself a tool result (that one gets text).
    """
    tools = [t for t in body.get("tools") or () if t.get("type") in (None, "custom")]
    if not tools:
        return None
    choice = body.get("tool_choice") or {"type": "auto"}
    ctype = choice["type"]
    if ctype == "none":
        return None
    if ctype == "auto" and (
        "use tool" not in last_user.lower() or _ids(last_content, "tool_result", "tool_use_id")
    ):
        return None
    name = choice["name"] if ctype == "tool" else tools[0]["name"]
    query = " ".join(last_user.split())
    return _ToolCall("toolu_" + new_id(), name, orjson.dumps({"query": query}).decode())


class AnthropicProvider(Provider):
    """Speaks the Anthropic Messages wire format, errors and SSE event sequence included."""

    kind = "anthropic"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [("POST", "/v1/messages", self.messages), ("GET", "/v1/models", self.models)]

    def error_body(self, err: SimError) -> bytes:
        etype = _STATUS_ERRORS.get(
            err.status, "api_error" if err.status >= 500 else "invalid_request_error"
        )
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": err.message}})

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
        last_content: Any = None
        for msg in messages:
            text = content_text(msg["content"])
            prompt_tokens += count_words(text)
            if msg["role"] == "user":
                last_user, last_content = text, msg["content"]
        model: str = body["model"]
        mid = "msg_" + self.state.new_id()
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        call = _tool_call(body, last_user, last_content, self.state.new_id)
        if call is not None:
            if stream:
                return await self._stream_tool(request, call, model, mid, prompt_tokens)
            tokens = max(1, count_words(call.input_json))
            message = _message(mid, model, [call.block()], "tool_use", prompt_tokens, tokens)
            return await self.reply(request, message)
        if _ids(last_content, "tool_result", "tool_use_id"):
            last_user = "tool result: " + last_user
        completion = self.completion(last_user, prompt_tokens, max_tokens)
        stop_reason = "max_tokens" if completion.truncated else "end_turn"
        if stream:
            return await self._stream(request, completion, model, mid, stop_reason, thinking)
        content: list[dict[str, Any]] = [{"type": "text", "text": completion.text}]
        if thinking:
            content.insert(0, {"type": "thinking", "thinking": _THOUGHT, "signature": _SIGNATURE})
        return await self.reply(
            request,
            _message(
                mid,
                model,
                content,
                stop_reason,
                completion.prompt_tokens,
                completion.completion_tokens,
            ),
        )

    async def _stream_tool(
        self, request: web.Request, call: _ToolCall, model: str, mid: str, prompt_tokens: int
    ) -> web.StreamResponse:
        """content_block_start(tool_use), then the input JSON in several input_json_delta."""
        block = {**call.block(), "input": {}}
        preamble = [
            _sse(b"message_start", _message_start(mid, model, prompt_tokens)),
            _sse(
                b"content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]
        text = call.input_json

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(text), _JSON_PIECE):
                delta = {"type": "input_json_delta", "partial_json": text[i : i + _JSON_PIECE]}
                yield _sse(
                    b"content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )

        epilogue = _epilogue(0, "tool_use", max(1, count_words(text)))
        return await self.stream(request, preamble, pieces(), epilogue)

    async def _stream(
        self,
        request: web.Request,
        completion: Completion,
        model: str,
        mid: str,
        stop_reason: str,
        thinking: bool = False,
    ) -> web.StreamResponse:
        preamble = [_sse(b"message_start", _message_start(mid, model, completion.prompt_tokens))]
        index = 0
        if thinking:  # one thinking block, signed, before the text (as the real API streams it)
            block = {"type": "thinking", "thinking": "", "signature": ""}
            preamble += [
                _sse(
                    b"content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                ),
                _sse(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "thinking_delta", "thinking": _THOUGHT},
                    },
                ),
                _sse(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "signature_delta", "signature": _SIGNATURE},
                    },
                ),
                _sse(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            index = 1
        preamble += [
            _sse(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
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
                        "index": index,
                        "delta": {"type": "text_delta", "text": delta},
                    },
                )

        epilogue = _epilogue(index, stop_reason, completion.completion_tokens)
        return await self.stream(request, preamble, tokens(), epilogue)


_THOUGHT: Final = "Simulated thinking."


def _message(
    mid: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(input_tokens, output_tokens),
    }


def _message_start(mid: str, model: str, input_tokens: int) -> dict[str, Any]:
    message = _message(mid, model, [], "", input_tokens, 1)
    message["stop_reason"] = None
    return {"type": "message_start", "message": message}


def _epilogue(index: int, stop_reason: str, output_tokens: int) -> list[bytes]:
    return [
        _sse(b"content_block_stop", {"type": "content_block_stop", "index": index}),
        _sse(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
