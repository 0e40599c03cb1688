"""OpenAI Chat Completions simulator: `POST /v1/chat/completions`, `GET /v1/models`."""

import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import INVALID_JSON, BodyHandler, Completion, Provider, content_text, count_words

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLES_TEXT: Final = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"
_NEEDS_CONTENT: Final = frozenset({"system", "developer", "user", "tool"})
_MODELS: Final = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini")
# OpenAI error `type`/`code` per status, as the real API sends them.
_STATUS_ERRORS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


class _Invalid(Exception):
    """A 400 with OpenAI's `param`/`code`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(
            f"Invalid type for '{key}': expected an integer, but got {_type_name(value)} instead.",
            key,
            "invalid_type",
        )
    if value < 1:
        raise _Invalid(
            f"Invalid '{key}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            key,
            "integer_below_min_value",
        )
    return value


def _check_range(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Invalid(
            f"Invalid type for '{key}': expected a decimal, but got {_type_name(value)} instead.",
            key,
            "invalid_type",
        )
    if value < low:
        raise _Invalid(
            f"Invalid '{key}': decimal below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            key,
            "decimal_below_min_value",
        )
    if value > high:
        raise _Invalid(
            f"Invalid '{key}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            key,
            "decimal_above_max_value",
        )


def _validate(body: Any) -> tuple[list[dict[str, Any]], int | None, bool, bool]:
    """Check a request like the real API; returns (messages, max_tokens, stream, usage)."""
    if not isinstance(body, dict):
        raise _Invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
    model = body.get("model")
    if not model:
        raise _Invalid("you must provide a model parameter")
    if not isinstance(model, str):
        raise _Invalid(
            f"Invalid type for 'model': expected a string, but got {_type_name(model)} instead.",
            "model",
            "invalid_type",
        )
    messages = body.get("messages")
    if messages is None:
        raise _Invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise _Invalid(
            f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} "
            "instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise _Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _Invalid(
                f"Invalid type for '{where}': expected an object, but got {_type_name(msg)} "
                "instead.",
                where,
                "invalid_type",
            )
        role = msg.get("role")
        if role is None:
            raise _Invalid(
                f"Missing required parameter: '{where}.role'.",
                f"{where}.role",
                "missing_required_parameter",
            )
        if role not in _ROLES:
            raise _Invalid(
                f"Invalid value: '{role}'. Supported values are: {_ROLES_TEXT}.",
                f"{where}.role",
                "invalid_value",
            )
        content = msg.get("content")
        if content is None and role in _NEEDS_CONTENT:
            raise _Invalid(
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
                "missing_required_parameter",
            )
        if content is not None and not isinstance(content, str | list):
            raise _Invalid(
                f"Invalid type for '{where}.content': expected one of a string or array of "
                f"objects, but got {_type_name(content)} instead.",
                f"{where}.content",
                "invalid_type",
            )
    max_tokens = _optional_int(body, "max_completion_tokens") or _optional_int(body, "max_tokens")
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _Invalid(
            f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)} instead.",
            "stream",
            "invalid_type",
        )
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        raise _Invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return messages, max_tokens, stream, usage


class OpenAIProvider(Provider):
    """Speaks the OpenAI Chat Completions wire format, errors included."""

    kind = "openai"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("GET", "/v1/models", self.models),
        ]

    def error(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        etype, default_code = _STATUS_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        error = {"message": message, "type": etype, "param": param, "code": code or default_code}
        body = orjson.dumps({"error": error})
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return web.Response(body=body, status=status, headers=all_headers)

    def _auth(self, request: web.Request) -> web.Response | None:
        key = self.state.require_key
        if key is None:
            return None
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        if auth[7:].strip() != key:
            return self.error(401, "Incorrect API key provided (simulated).")
        return None

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": "req_" + self.state.new_id()}

    async def models(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": self.state.name}
            for m in _MODELS
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}),
            headers={"Content-Type": "application/json"},
        )

    async def chat_completions(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        if (fault := await self.faults(request)) is not None:
            return fault
        if body is INVALID_JSON:
            body = None  # answered by _validate's "could not parse" error
        try:
            messages, max_tokens, stream, include_usage = _validate(body)
        except _Invalid as exc:
            return self.error(400, exc.message, param=exc.param, code=exc.code)
        prompt_tokens = 0
        last_user = ""
        for msg in messages:
            text = content_text(msg.get("content"))
            prompt_tokens += count_words(text)
            if msg["role"] == "user":
                last_user = text
        completion = self.completion(last_user, prompt_tokens, max_tokens)
        model: str = body["model"]
        cid = "chatcmpl-" + self.state.new_id()
        created = int(time.time())
        if stream:
            return await self._stream(request, completion, model, cid, created, include_usage)
        return await self.reply(
            request,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": completion.text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "length" if completion.truncated else "stop",
                    }
                ],
                "usage": _usage(completion),
                "service_tier": "default",
                "system_fingerprint": "fp_sim",
            },
        )

    async def _stream(
        self,
        request: web.Request,
        completion: Completion,
        model: str,
        cid: str,
        created: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        # Every chunk shares this envelope; only `choices` (and `usage`) change.
        head = orjson.dumps(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_sim",
            }
        )[:-1]
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"

        def chunk(choice: dict[str, Any]) -> bytes:
            return b"data: " + head + b',"choices":[' + orjson.dumps(choice) + b"]" + tail

        def tokens() -> Iterator[bytes]:
            for delta in completion.deltas():
                yield chunk(
                    {
                        "index": 0,
                        "delta": {"content": delta},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )

        role = {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
        finish = {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "length" if completion.truncated else "stop",
        }
        epilogue = [chunk(finish)]
        if include_usage:
            usage = orjson.dumps(_usage(completion))
            epilogue.append(b"data: " + head + b',"choices":[],"usage":' + usage + b"}\n\n")
        epilogue.append(b"data: [DONE]\n\n")
        return await self.stream(request, [chunk(role)], tokens(), epilogue)


def _usage(completion: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
