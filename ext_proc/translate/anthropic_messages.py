"""Anthropic Messages API as an ingress schema (clients use the anthropic SDK on `/v1/messages`).

Requests are converted to the canonical OpenAI chat form so that any backend can serve them;
responses, SSE streams and errors come back OpenAI -> Messages. When the backend itself speaks
Messages the body passes through untouched (the Anthropic provider's `passthrough`, with
`rename_model` and `StreamUsageReader` from `translate.anthropic`).

Choices where the two APIs differ:

- `tool_result` blocks become `tool` messages placed before the rest of their user turn (OpenAI
  wants them right after the assistant's calls); `is_error` has no OpenAI form and is dropped,
  as are images inside a result (rejected: OpenAI tool messages carry text only).
- Thinking blocks in the history are dropped (OpenAI cannot take them back); `thinking`
  budgets become a `reasoning_effort` bucket (<=2048 low, <=8192 medium, else high),
  `output_config.effort` maps by name, `output_config.format` (or the structured-outputs
  beta's top-level `output_format`) becomes a `json_schema` response_format (not `strict`:
  OpenAI's strict dialect would reject many valid schemas).
- `max_tokens` becomes `max_completion_tokens` (reasoning models reject `max_tokens`); streams
  always ask for usage so `message_delta` can report tokens. `top_k` has no OpenAI form.
- Responses: `reasoning_content` becomes a thinking block with an empty signature (there is
  none to give); a stop sequence cannot be told apart from a natural stop, so both are
  `end_turn`; tool arguments that are not a JSON object are kept as `{"_raw_arguments": ...}`.
- Streams never end silently: an upstream that stops before its finish_reason yields an
  `event: error`, as the Messages API itself does.
"""

from __future__ import annotations

import os
from typing import Any, TypeGuard

import orjson

from switchyard.framing.sse import SSEEvent

from .canonical import (
    SSETranslator,
    TranslationError,
    Usage,
    json_error,
    upstream_error_message,
    usage_from,
)

__all__ = [
    "PATH",
    "StreamFromOpenAI",
    "error_body",
    "error_event",
    "error_from_openai",
    "error_type",
    "request_to_openai",
    "response_from_openai",
    "translation_error_body",
    "validate",
]

PATH = "/v1/messages"

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Only types the anthropic SDK's ErrorResponse knows (the API's 413 `request_too_large` is not
# among them, so it reads as invalid_request_error, which the SDK maps by status anyway).
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# OpenAI error type or code -> Anthropic error type (in-stream errors carry no status).
_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "request_too_large": "invalid_request_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
}
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


# ------------------------------------------------------------------------------ errors


def error_type(status: int) -> str:
    """The Anthropic error `type` for an HTTP status (what the SDK maps to its exceptions)."""
    if status in _STATUS_TYPES:
        return _STATUS_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, type_: str = "invalid_request_error") -> bytes:
    """Anthropic error JSON."""
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


def error_event(message: str, type_: str = "api_error") -> bytes:
    """An in-stream `event: error` frame: the anthropic SDK raises on it."""
    return b"event: error\ndata: " + error_body(message, type_) + b"\n\n"


def translation_error_body(exc: TranslationError) -> bytes:
    """A TranslationError as the Messages API words a 400: `param: message`."""
    msg = f"{exc.param}: {exc.message}" if exc.param else exc.message
    return error_body(msg, error_type(exc.status))


def error_from_openai(status: int, body: bytes) -> bytes:
    """OpenAI error response -> Anthropic error body (keep the upstream HTTP status)."""
    err = json_error(body)
    if err is not None:
        msg = err.get("message")
        message = msg if isinstance(msg, str) and msg else f"upstream error (HTTP {status})"
        return error_body(message, _error_type(status, err))
    return error_body(upstream_error_message(status, body), error_type(status))


def _error_type(status: int, err: dict[str, Any]) -> str:
    if status in _STATUS_TYPES and status != 500:
        return _STATUS_TYPES[status]
    for key in ("code", "type"):
        v = err.get(key)
        if isinstance(v, str) and v in _OPENAI_TYPES:
            return _OPENAI_TYPES[v]
    return error_type(status) if status else "api_error"


# ---------------------------------------------------------------------------- requests

_Problem = tuple[str | None, str]


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _blocks_problem(content: Any, where: str) -> _Problem | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return where, "Input should be a valid string or list of content blocks"
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{where}.{j}", "content blocks must be objects with a string `type`"
    return None


def validate(req: Any) -> _Problem | None:
    """Cheap structural check of a Messages request: (param, message) of the first problem.

    Enough for a fast 400 before routing (also on the same-schema pass-through, where the
    body is not translated); `request_to_openai` checks the rest while it converts.
    """
    if not isinstance(req, dict):
        return None, "request body must be a JSON object"
    model = req.get("model")
    if model is None:
        return "model", "Field required"
    if not isinstance(model, str) or not model:
        return "model", "Input should be a non-empty string"
    mt = req.get("max_tokens")
    if mt is None:
        return "max_tokens", "Field required"
    if not _is_int(mt) or mt < 1:
        return "max_tokens", "Input should be an integer greater than or equal to 1"
    messages = req.get("messages")
    if messages is None:
        return "messages", "Field required"
    if not isinstance(messages, list) or not messages:
        return "messages", "Input should be a non-empty list"
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            return where, "Input should be a valid dictionary"
        if m.get("role") not in ("user", "assistant"):
            return f"{where}.role", "Input should be 'user' or 'assistant'"
        if "content" not in m:
            return f"{where}.content", "Field required"
        if (p := _blocks_problem(m["content"], f"{where}.content")) is not None:
            return p
    system = req.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, b in enumerate(system):
                if not isinstance(b, dict) or b.get("type") != "text":
                    return f"system.{j}.type", "Input should be 'text'"
                if not isinstance(b.get("text"), str):
                    return f"system.{j}.text", "Input should be a valid string"
        elif not isinstance(system, str):
            return "system", "Input should be a valid string or list of text blocks"
    for key in ("temperature", "top_p", "top_k"):
        if (v := req.get(key)) is not None and not _is_number(v):
            return key, "Input should be a valid number"
    if (stream := req.get("stream")) is not None and not isinstance(stream, bool):
        return "stream", "Input should be a valid boolean"
    stops = req.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences", "Input should be a list of strings"
    tools = req.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools", "Input should be a valid list"
        for j, t in enumerate(tools):
            if not isinstance(t, dict):
                return f"tools.{j}", "Input should be a valid dictionary"
    for key in ("tool_choice", "thinking", "metadata", "output_config", "output_format"):
        v = req.get(key)
        if v is not None and not isinstance(v, dict):
            return key, "Input should be a valid dictionary"
    tc = req.get("tool_choice")
    if tc is not None and tc.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'"
    return None


def _str(v: Any, param: str) -> str:
    if not isinstance(v, str):
        raise TranslationError("Input should be a valid string", param=param)
    return v


def _image_url(block: dict[str, Any], param: str) -> str:
    src = block.get("source")
    if not isinstance(src, dict):
        raise TranslationError("Input should be a valid dictionary", param=f"{param}.source")
    kind = src.get("type")
    if kind == "base64":
        media = _str(src.get("media_type"), f"{param}.source.media_type")
        data = _str(src.get("data"), f"{param}.source.data")
        return f"data:{media};base64,{data}"
    if kind == "url":
        return _str(src.get("url"), f"{param}.source.url")
    raise TranslationError(
        "only base64 and url image sources can be sent to this backend", param=f"{param}.source"
    )


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A PDF becomes an inline `file` part; a plain-text document becomes text."""
    src = block.get("source")
    if not isinstance(src, dict):
        raise TranslationError("Input should be a valid dictionary", param=f"{param}.source")
    kind = src.get("type")
    if kind == "base64" and src.get("media_type") == "application/pdf":
        data = _str(src.get("data"), f"{param}.source.data")
        title = block.get("title")
        return {
            "type": "file",
            "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{data}",
            },
        }
    if kind == "text":
        return {"type": "text", "text": _str(src.get("data"), f"{param}.source.data")}
    raise TranslationError(
        "only base64 PDF and plain-text documents can be sent to this backend",
        param=f"{param}.source",
    )


def _result_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """tool_result content -> an OpenAI tool message's content (text only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError("Input should be a valid string or list", param=param)
    parts: list[dict[str, Any]] = []
    for k, b in enumerate(content):
        p = f"{param}.{k}"
        if not isinstance(b, dict) or b.get("type") != "text":
            raise TranslationError(
                "tool results can only carry text for this backend", param=f"{p}.type"
            )
        parts.append({"type": "text", "text": _str(b.get("text"), f"{p}.text")})
    if len(parts) == 1:
        text: str = parts[0]["text"]
        return text
    return parts


def _user(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    """One user turn -> tool messages (its tool_results) then a user message (the rest)."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        p = f"{where}.{j}"
        kind = b.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _str(b.get("text"), f"{p}.text")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(b, p)}})
        elif kind == "document":
            parts.append(_document_part(b, p))
        elif kind == "tool_result":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": _str(b.get("tool_use_id"), f"{p}.tool_use_id"),
                    "content": _result_content(b.get("content"), f"{p}.content"),
                }
            )
        else:
            raise TranslationError(
                f"content block type {kind!r} is not supported in user messages", param=f"{p}.type"
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})


def _assistant(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        if content:
            out.append({"role": "assistant", "content": content})
        return
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        p = f"{where}.{j}"
        kind = b.get("type")
        if kind == "text":
            texts.append(_str(b.get("text"), f"{p}.text"))
        elif kind == "tool_use":
            args = b.get("input")
            if not isinstance(args, dict):
                raise TranslationError("Input should be a valid dictionary", param=f"{p}.input")
            calls.append(
                {
                    "id": _str(b.get("id"), f"{p}.id"),
                    "type": "function",
                    "function": {
                        "name": _str(b.get("name"), f"{p}.name"),
                        "arguments": orjson.dumps(args).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed for Anthropic only; OpenAI history has no place for it
        else:
            raise TranslationError(
                f"content block type {kind!r} is not supported in assistant messages",
                param=f"{p}.type",
            )
    text = "".join(texts)
    if calls:
        out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
    elif text:
        out.append({"role": "assistant", "content": text})


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, t in enumerate(tools):
        p = f"tools.{j}"
        kind = t.get("type")
        if kind not in (None, "custom"):
            raise TranslationError(
                f"tool type {kind!r} is only available on Anthropic backends", param=f"{p}.type"
            )
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise TranslationError("Input should be a valid dictionary", param=f"{p}.input_schema")
        fn: dict[str, Any] = {"name": _str(t.get("name"), f"{p}.name")}
        desc = t.get("description")
        if isinstance(desc, str) and desc:
            fn["description"] = desc
        fn["parameters"] = schema
        if t.get("strict") is True:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: dict[str, Any]) -> Any:
    kind = tc.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    return {"type": "function", "function": {"name": _str(tc.get("name"), "tool_choice.name")}}


def _effort(req: dict[str, Any]) -> str | None:
    """`reasoning_effort` from output_config.effort, else from the thinking budget."""
    oc = req.get("output_config")
    effort = oc.get("effort") if isinstance(oc, dict) else None
    if effort is not None:
        if not isinstance(effort, str) or effort not in _EFFORTS:
            raise TranslationError(
                "Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
                param="output_config.effort",
            )
        return _EFFORTS[effort]
    thinking = req.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget) or budget < 1:
            raise TranslationError(
                "Input should be a positive integer", param="thinking.budget_tokens"
            )
        return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"
    if kind in ("disabled", "adaptive", "between_tools"):
        return None  # adaptive: let the backend pick its default effort
    raise TranslationError("Input should be 'enabled', 'disabled' or 'adaptive'", "thinking.type")


def _output_format(req: dict[str, Any]) -> tuple[Any, str] | None:
    """The structured-output format and the param that set it: `output_config.format`, or
    the top-level `output_format` (the structured-outputs beta's form); not both."""
    oc = req.get("output_config")
    nested = oc.get("format") if isinstance(oc, dict) else None
    top = req.get("output_format")
    if top is not None and nested is not None:
        raise TranslationError(
            "Set either output_format or output_config.format, not both", param="output_format")
    if top is not None:
        return top, "output_format"
    if nested is not None:
        return nested, "output_config.format"
    return None


def request_to_openai(req: dict[str, Any]) -> dict[str, Any]:
    """Anthropic Messages request -> canonical OpenAI chat request (a new dict).

    Raises TranslationError naming the field (Anthropic's dotted path) for invalid input.
    """
    if (problem := validate(req)) is not None:
        raise TranslationError(problem[1], param=problem[0])
    messages: list[dict[str, Any]] = []
    system = req.get("system")
    if isinstance(system, str):
        if system:
            messages.append({"role": "system", "content": system})
    elif system:
        if len(system) == 1:
            messages.append({"role": "system", "content": system[0]["text"]})
        else:
            parts = [{"type": "text", "text": b["text"]} for b in system]
            messages.append({"role": "system", "content": parts})
    for i, m in enumerate(req["messages"]):
        where = f"messages.{i}.content"
        if m["role"] == "user":
            _user(m["content"], where, messages)
        else:
            _assistant(m["content"], where, messages)

    out: dict[str, Any] = {
        "model": req["model"],
        "messages": messages,
        "max_completion_tokens": req["max_tokens"],
    }
    if tools := req.get("tools"):
        out["tools"] = _tools(tools)
        tc = req.get("tool_choice")
        if tc is not None:
            out["tool_choice"] = _tool_choice(tc)
            if tc.get("disable_parallel_tool_use") is True and tc.get("type") != "none":
                out["parallel_tool_calls"] = False
    if stops := req.get("stop_sequences"):
        out["stop"] = stops
    for key in ("temperature", "top_p"):
        if (v := req.get(key)) is not None:
            out[key] = v
    if req.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    meta = req.get("metadata")
    if isinstance(meta, dict) and isinstance(user := meta.get("user_id"), str) and user:
        out["user"] = user
    if (effort := _effort(req)) is not None:
        out["reasoning_effort"] = effort
    if (fmt_param := _output_format(req)) is not None:
        fmt, param = fmt_param
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        if (
            not isinstance(fmt, dict)
            or fmt.get("type") != "json_schema"
            or not isinstance(schema, dict)
        ):
            raise TranslationError(
                "Input should be {type: 'json_schema', schema: {...}}", param=param)
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
    return out


# --------------------------------------------------------------------------- responses


def _msg_id(oid: Any) -> str:
    if not isinstance(oid, str) or not oid:
        return "msg_" + os.urandom(12).hex()
    if oid.startswith("msg_"):
        return oid
    return "msg_" + oid.removeprefix("chatcmpl-")


def _tool_input(args: Any) -> dict[str, Any]:
    if isinstance(args, dict):
        return args
    if args is None or args == "":
        return {}
    try:
        value = orjson.loads(args)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": args}


def _usage_fields(u: Any) -> tuple[int, int, int] | None:
    """(input excl. cache reads, output, cache reads) from an OpenAI usage object."""
    if not isinstance(u, dict):
        return None
    p = u.get("prompt_tokens")
    c = u.get("completion_tokens")
    if not _is_int(p) and not _is_int(c):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if _is_int(cached) else 0
    prompt = p if _is_int(p) else 0
    return max(prompt - cached, 0), (c if _is_int(c) else 0), cached


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _reasoning(obj: dict[str, Any]) -> Any:
    """Reasoning text: `reasoning_content` (DeepSeek, vLLM, ours) or `reasoning` (newer vLLM)."""
    r = obj.get("reasoning_content")
    return r if r is not None else obj.get("reasoning")


def response_from_openai(resp: dict[str, Any], model: str) -> bytes:
    """OpenAI `chat.completion` -> Anthropic `message` JSON, reporting the client's model.
    Anything but a JSON object is a ValueError: the malformed answer's 502."""
    if not isinstance(resp, dict):
        raise ValueError("upstream answer is not a JSON object")
    choices = resp.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    msg = choice.get("message")
    msg = msg if isinstance(msg, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(msg)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text(msg.get("content"))
    refusal = msg.get("refusal")
    if not text and isinstance(refusal, str):
        text = refusal
    if text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + os.urandom(12).hex(),
                "name": fn.get("name") or "",
                "input": _tool_input(fn.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop = _STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if stop == "end_turn" and any(b["type"] == "tool_use" for b in content):
        stop = "tool_use"
    inp, outp, cached = _usage_fields(resp.get("usage")) or (0, 0, 0)
    out = {
        "id": _msg_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": inp,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": outp,
        },
    }
    return orjson.dumps(out)


# ----------------------------------------------------------------------------- streams

_TEXT, _THINKING, _TOOL = 1, 2, 3


def _event(name: bytes, obj: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class StreamFromOpenAI(SSETranslator):
    """Translate OpenAI `chat.completion.chunk` SSE into the Messages API event sequence.

    message_start, then per block content_block_start/delta.../stop (text, thinking, tool_use
    with input_json_delta), then message_delta (stop_reason, usage) and message_stop once the
    upstream's `[DONE]` (or end of body) follows a finish_reason. Usage arrives last in OpenAI
    streams, so message_start reports 0 input tokens and message_delta the real counts.
    """

    __slots__ = (
        "_block",
        "_id",
        "_kind",
        "_model",
        "_next",
        "_text_prefix",
        "_tools",
        "stop_reason",
    )

    def __init__(self, model: str) -> None:
        super().__init__()  # usage: as OpenAI counts it (prompt includes cache reads)
        self._model = model
        self._id: str | None = None  # set once message_start went out
        self._next = 0  # index of the next content block
        self._block = -1  # index of the open block, -1 for none
        self._kind = 0  # _TEXT / _THINKING / _TOOL of the open block
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index -> block index
        self._text_prefix = b""
        self.stop_reason: str | None = None

    # -- internals

    def _start(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._id = _msg_id(obj.get("id"))
        inp, _, cached = _usage_fields(obj.get("usage")) or (0, 0, 0)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": inp,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "output_tokens": 0,
            },
        }
        out.append(_event(b"message_start", {"type": "message_start", "message": message}))

    def _fail(self, message: str, type_: str, code: str | None = None) -> bytes:
        """An Anthropic `event: error` (there is no code in its errors)."""
        self.done = True
        self.error = {"type": type_, "message": message}
        return error_event(message, type_)

    def _close(self, out: list[bytes]) -> None:
        if self._block >= 0:
            stop = {"type": "content_block_stop", "index": self._block}
            out.append(_event(b"content_block_stop", stop))
            self._block = -1
            self._kind = 0

    def _open(self, kind: int, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self._block = self._next
        self._next += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(_event(b"content_block_start", start))
        if kind == _TEXT:
            self._text_prefix = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                + str(index).encode()
                + b',"delta":{"type":"text_delta","text":'
            )
        return index

    def _event(self, ev: SSEEvent, out: list[bytes], lenient: bool = False) -> None:
        data = ev.data
        if data == b"[DONE]":
            self._end(out)
            return
        obj = self._json(data, out, lenient)
        if obj is None:
            return
        err = obj.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            message = msg if isinstance(msg, str) and msg else "upstream error"
            out.append(self._fail(message, _error_type(0, err)))
            return
        if self._id is None:
            self._start(obj, out)
        u = obj.get("usage")
        if isinstance(u, dict) and (fields := _usage_fields(u)) is not None:
            inp, completion, cached = fields
            reasoning = (usage_from(u) or Usage(0, 0)).reasoning
            self.usage = Usage(inp + cached, completion, cached, reasoning)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        for ch in choices:
            if isinstance(ch, dict) and ch.get("index", 0) == 0:
                self._choice(ch, out)

    def _choice(self, ch: dict[str, Any], out: list[bytes]) -> None:
        delta = ch.get("delta")
        if isinstance(delta, dict):
            reasoning = _reasoning(delta)
            if isinstance(reasoning, str) and reasoning:
                self._token()
                if self._kind != _THINKING:
                    self._open(
                        _THINKING, {"type": "thinking", "thinking": "", "signature": ""}, out
                    )
                d = {"type": "thinking_delta", "thinking": reasoning}
                out.append(_delta_event(self._block, d))
            text = delta.get("content")
            if not (isinstance(text, str) and text):
                text = delta.get("refusal")
            if isinstance(text, str) and text:
                self._token()
                if self._kind != _TEXT:
                    self._open(_TEXT, {"type": "text", "text": ""}, out)
                out.append(self._text_prefix + orjson.dumps(text) + b"}}\n\n")
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool_delta(call, out)
        finish = ch.get("finish_reason")
        if isinstance(finish, str) and finish:
            self.finish_reason = finish
            self.stop_reason = _STOP.get(finish, "end_turn")

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        slot = call.get("index", 0)
        slot = slot if _is_int(slot) else 0
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        self._token()
        index = self._tools.get(slot)
        if index is None:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + os.urandom(12).hex(),
                "name": fn.get("name") or "",
                "input": {},
            }
            index = self._tools[slot] = self._open(_TOOL, block, out)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            # A call's arguments may arrive after a later call opened (interleaved backends):
            # deltas carry their block index, which the SDK resolves.
            out.append(_delta_event(index, {"type": "input_json_delta", "partial_json": args}))

    def _end(self, out: list[bytes]) -> None:
        if self.finish_reason is None:
            message = "upstream stream ended before the response was complete"
            out.append(self._fail(message, "api_error"))
            return
        if self._id is None:
            self._start({}, out)
        self._close(out)
        stop = self.stop_reason or "end_turn"
        if stop == "end_turn" and self._tools:
            stop = "tool_use"
        self.stop_reason = stop
        u = self.usage
        usage: dict[str, int] = {"output_tokens": u.completion if u else 0}
        if u is not None:
            usage["input_tokens"] = u.prompt - u.cached
            usage["cache_read_input_tokens"] = u.cached
        md = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": usage,
        }
        out.append(_event(b"message_delta", md))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        self.done = True


def _delta_event(index: int, delta: dict[str, Any]) -> bytes:
    return _event(
        b"content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )
