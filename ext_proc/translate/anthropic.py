"""Anthropic Messages API upstream for clients that speak OpenAI chat completions.

Requests go OpenAI -> Messages; responses, SSE streams and errors come back Messages -> OpenAI,
so the official openai SDK works unchanged against a Claude backend.

Choices where the two APIs differ (each chosen so a client never gets a silently wrong answer):

- Tools map one to one. `tool` messages become `tool_result` blocks of a user turn; consecutive
  ones, and a user message right after them, share one user turn (the API wants roles to
  alternate and the results of one assistant turn together). Tool ids outside Anthropic's
  `[A-Za-z0-9_-]` alphabet are rewritten the same way in `tool_use` and `tool_result`.
- JSON mode: Anthropic has no `response_format`. `json_object`/`json_schema` become one extra
  tool (named after the schema, or `json_response`) whose `input_schema` is the schema, forced
  with `tool_choice: {type: tool}` (with user tools too: `{type: any}`, so the model still
  picks between a real call and the answer). Its `tool_use` input comes back as
  `message.content` (a JSON string) with finish_reason `stop`, in streams as content deltas.
  The response side must be told the tool's name (`json_tool=json_tool_name(req)`): a user tool
  with the same name is otherwise indistinguishable.
- `reasoning_effort` becomes extended thinking with a fixed budget (low 1024, medium 4096, high
  16384, xhigh 32768; minimal/none: off). OpenAI counts reasoning inside the completion limit,
  Anthropic needs `max_tokens > budget_tokens`, so a smaller limit is raised by the budget.
  Thinking is left off where the API would refuse it: with a forced tool choice (JSON mode
  included), and when the current turn replays `tool_use` without its signed thinking blocks
  (OpenAI history cannot carry them). With thinking on, `temperature` and a `top_p` below 0.95
  are dropped (the API only accepts the defaults then).
- Thinking blocks come back as `message.reasoning_content` (a delta field in streams), the
  de-facto field of OpenAI-compatible servers; signatures and redacted thinking are dropped.
- Not expressible, so rejected with a 400 naming the parameter: `n > 1`, legacy
  `functions`/`function_call`, non-function tools, audio parts.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeGuard

import orjson

from switchyard.framing.sse import SSEEvent, SSEParser, parse_frame

from .canonical import (
    DONE_FRAME,
    STATUS_ERRORS,
    STREAM_TRUNCATED,
    TRUNCATED_MESSAGE,
    ChunkWriter,
    SSETranslator,
    TranslationError,
    Usage,
    cache_usage,
    content_parts,
    context_overflow,
    error_body,
    json_error,
    max_tokens_of,
    messages_of,
    number,
    openai_usage,
    status_error,
    stop_of,
    unsupported_part,
    upstream_error_message,
)

__all__ = [
    "API_VERSION",
    "JSON_TOOL",
    "PATH",
    "THINKING_BUDGETS",
    "StreamToOpenAI",
    "StreamUsageReader",
    "error_to_openai",
    "finish_reason",
    "json_tool_name",
    "rename_model",
    "request_from_openai",
    "response_to_openai",
    "usage_of",
]

PATH = "/v1/messages"
API_VERSION = "2023-06-01"  # the `anthropic-version` request header
JSON_TOOL = "json_response"  # the emulated JSON mode's tool when the schema has no name

# reasoning_effort -> thinking budget_tokens (None: thinking off). 1024 is the API's minimum.
THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> (OpenAI type, OpenAI code).
_ERRORS: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", None),
    "permission_error": ("permission_error", None),
    "not_found_error": ("not_found_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("api_error", None),
    "overloaded_error": ("api_error", "overloaded"),
    "timeout_error": ("api_error", "timeout"),
}

# Fallback by HTTP status when the error type is missing or unknown.
_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    **STATUS_ERRORS,
    413: ("invalid_request_error", "request_too_large"),
    529: ("api_error", "overloaded"),
}

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_LEGACY = "functions/function_call are deprecated and not supported for this backend; use tools"
_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def finish_reason(stop_reason: Any) -> str:
    """Map an Anthropic stop_reason to an OpenAI finish_reason (not a known string: stop)."""
    if not isinstance(stop_reason, str):
        return "stop"
    return _FINISH.get(stop_reason, "stop")


# ---------------------------------------------------------------------------- requests


def _text_of(content: Any, param: str) -> str:
    """Text of a system/developer message (string or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError(
                    "system messages may only contain text parts", param=f"{param}[{j}]"
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise TranslationError("content must be a string or a list of parts", param=param)


def _data_url(url: str, param: str) -> tuple[str, str]:
    """(media type, base64 payload) of a base64 data URL."""
    header, sep, payload = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64":
        raise TranslationError("data URLs must be base64 encoded", param=param)
    return media_type, payload


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    p = f"{param}.image_url"
    if not isinstance(url, str):
        raise TranslationError("image_url.url must be a string", param=p)
    if url.startswith("data:"):
        media_type, payload = _data_url(url, p)
        if media_type not in _IMAGE_TYPES:
            raise TranslationError(
                f"unsupported image type {media_type!r}; use jpeg, png, gif or webp", param=p
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": payload},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image_url must be an http(s) URL or a base64 data URL", param=p)


def _file_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    """An inline PDF `file` part -> a base64 `document` block (file ids live at OpenAI only)."""
    f = part.get("file")
    data = f.get("file_data") if isinstance(f, dict) else None
    p = f"{param}.file"
    if not isinstance(data, str) or not data.startswith("data:"):
        raise TranslationError("only inline file_data (a base64 data URL) is supported", param=p)
    media_type, payload = _data_url(data, p)
    if media_type != "application/pdf":
        raise TranslationError(f"unsupported file type {media_type!r}; use PDF", param=p)
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": payload},
    }


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Anthropic content blocks for a user/assistant/tool message's content."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    blocks: list[dict[str, Any]] = []
    for kind, part, p in content_parts(content, param):
        if kind == "text":
            if text := part["text"]:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, p))
        elif kind == "file":
            blocks.append(_file_block(part, p))
        elif kind == "refusal":  # an earlier assistant refusal, replayed as text
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal:
                blocks.append({"type": "text", "text": refusal})
        else:
            raise unsupported_part(kind, p)
    return blocks


def _tool_id(v: Any, param: str) -> str:
    if not isinstance(v, str) or not v:
        raise TranslationError("tool call ids must be non-empty strings", param=param)
    return _TOOL_ID_BAD.sub("_", v) if _TOOL_ID_BAD.search(v) else v


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    """An assistant `tool_calls` entry -> a `tool_use` block (arguments parsed to an object)."""
    if not isinstance(call, dict):
        raise TranslationError("tool calls must be objects", param=param)
    if call.get("type", "function") != "function":
        raise TranslationError("only function tool calls are supported", param=f"{param}.type")
    fn = call.get("function")
    if not isinstance(fn, dict):
        raise TranslationError("tool calls need a `function` object", param=f"{param}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError("function.name must be a string", param=f"{param}.function.name")
    args = fn.get("arguments")
    p = f"{param}.function.arguments"
    if args is None or args == "":
        value: Any = {}  # some models emit "" for a call without arguments
    elif isinstance(args, str):
        try:
            value = orjson.loads(args)
        except orjson.JSONDecodeError:
            raise TranslationError("function.arguments is not valid JSON", param=p) from None
    else:
        value = args
    if not isinstance(value, dict):
        raise TranslationError("function.arguments must encode a JSON object", param=p)
    return {
        "type": "tool_use",
        "id": _tool_id(call.get("id"), f"{param}.id"),
        "name": name,
        "input": value,
    }


def _merge(out: list[dict[str, Any]], role: str, value: str | list[dict[str, Any]]) -> None:
    """Append a turn, merging into the previous one of the same role (roles must alternate)."""
    if not out or out[-1]["role"] != role:
        out.append({"role": role, "content": value})
        return
    prev = out[-1]
    blocks = prev["content"]
    if isinstance(blocks, str):
        blocks = prev["content"] = [{"type": "text", "text": blocks}] if blocks else []
    if isinstance(value, str):
        if value:
            blocks.append({"type": "text", "text": value})
    else:
        blocks.extend(value)


def _messages(msgs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Split OpenAI messages into system texts and role-alternating Anthropic messages."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m, param in messages_of(msgs):
        role = m.get("role")
        content = m.get("content")
        value: str | list[dict[str, Any]]
        if role in ("system", "developer"):
            system.append(_text_of(content, f"{param}.content"))
            continue
        if role == "user":
            if content is None:
                raise TranslationError("user messages need content", param=f"{param}.content")
            value = content if isinstance(content, str) else _blocks(content, f"{param}.content")
        elif role == "assistant":
            if m.get("function_call"):
                raise TranslationError(_LEGACY, param=f"{param}.function_call")
            calls = m.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise TranslationError(
                        "tool_calls must be an array", param=f"{param}.tool_calls"
                    )
                value = _blocks(content, f"{param}.content")
                value.extend(_tool_use(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(calls))
            elif isinstance(content, str):
                value = content
            else:
                value = _blocks(content, f"{param}.content")
            if not value:
                continue  # an empty assistant turn carries nothing and Anthropic rejects it
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": _tool_id(m.get("tool_call_id"), f"{param}.tool_call_id"),
            }
            if isinstance(content, str):
                if content:
                    result["content"] = content
            elif blocks := _blocks(content, f"{param}.content"):
                result["content"] = blocks
            role, value = "user", [result]
        elif role == "function":
            raise TranslationError(_LEGACY, param=f"{param}.role")
        else:
            raise TranslationError(f"unsupported role {role!r}", param=f"{param}.role")
        _merge(out, role, value)
    if not out:
        raise TranslationError(
            "at least one user or assistant message is required", param="messages"
        )
    return system, out


def _tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools -> Anthropic tools (`strict` dropped: not every model takes it)."""
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array", param="tools")
    out: list[dict[str, Any]] = []
    for j, t in enumerate(tools):
        p = f"tools[{j}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            raise TranslationError("only function tools are supported", param=f"{p}.type")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise TranslationError("tools need a `function` object", param=f"{p}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("function.name must be a string", param=f"{p}.function.name")
        schema = fn.get("parameters")
        if schema is None:
            schema = _EMPTY_SCHEMA
        elif not isinstance(schema, dict):
            raise TranslationError(
                "function.parameters must be a JSON schema object", param=f"{p}.function.parameters"
            )
        tool: dict[str, Any] = {"name": name}
        desc = fn.get("description")
        if isinstance(desc, str) and desc:
            tool["description"] = desc
        tool["input_schema"] = schema
        out.append(tool)
    return out


def _tool_choice(tc: Any, names: set[str]) -> dict[str, Any] | None:
    if tc is None:
        return None
    if tc == "auto":
        return {"type": "auto"}
    if tc == "required":
        return {"type": "any"}
    if tc == "none":
        return {"type": "none"}
    if isinstance(tc, dict) and tc.get("type") == "function":
        fn = tc.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in names:
            raise TranslationError(
                "tool_choice names a function that is not in tools", param="tool_choice"
            )
        return {"type": "tool", "name": name}
    raise TranslationError(
        "tool_choice must be 'auto', 'required', 'none' or a function choice",
        param="tool_choice",
    )


def _json_tool(rf: Any) -> dict[str, Any] | None:
    """The forced tool that emulates `response_format` JSON modes (None for plain text)."""
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {
            "name": JSON_TOOL,
            "description": "Respond with the final answer as a JSON object by calling this tool.",
            "input_schema": {"type": "object"},
        }
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise TranslationError(
                "json_schema must be an object", param="response_format.json_schema"
            )
        name = js.get("name") or JSON_TOOL
        schema = js.get("schema")
        if schema is None:
            schema = {"type": "object"}
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise TranslationError(
                "json_schema needs a string name and an object schema",
                param="response_format.json_schema",
            )
        if schema.get("type", "object") != "object":
            raise TranslationError(
                "this backend only supports JSON schemas whose root is an object",
                param="response_format.json_schema.schema",
            )
        desc = js.get("description")
        return {
            "name": name,
            "description": desc
            if isinstance(desc, str) and desc
            else "Respond with the final answer by calling this tool; its input is the answer.",
            "input_schema": schema,
        }
    raise TranslationError(
        "response_format.type must be 'text', 'json_object' or 'json_schema'",
        param="response_format",
    )


def json_tool_name(req: dict[str, Any]) -> str | None:
    """Name of the tool that emulates the request's JSON mode; pass it to the response side."""
    rf = req.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") not in ("json_object", "json_schema"):
        return None
    js = rf.get("json_schema")
    name = js.get("name") if isinstance(js, dict) else None
    return name if isinstance(name, str) and name else JSON_TOOL


def _replays_unsigned_tool_use(messages: list[dict[str, Any]]) -> bool:
    """Whether the current turn (after the last real user input) has assistant tool_use.

    With thinking on, the API wants such turns to start with their signed thinking block,
    which OpenAI-shaped history cannot carry.
    """
    for m in reversed(messages):
        content = m["content"]
        if isinstance(content, str):
            if m["role"] == "user":
                return False
            continue
        kinds = {b.get("type") for b in content}
        if m["role"] == "assistant" and "tool_use" in kinds:
            return True
        if m["role"] == "user" and kinds - {"tool_result"}:
            return False
    return False


def request_from_openai(
    req: dict[str, Any], upstream_model: str, default_max_tokens: int = 4096
) -> bytes:
    """OpenAI chat request -> Anthropic Messages request body.

    Unknown or unmapped OpenAI params (stream_options, seed, penalties, ...) are dropped.
    """
    for key in ("functions", "function_call"):
        if req.get(key):
            raise TranslationError(_LEGACY, param=key)
    n = req.get("n")
    if n is not None and n != 1:
        raise TranslationError("n > 1 is not supported for this backend", param="n")

    system, messages = _messages(req.get("messages"))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)

    max_tokens = max_tokens_of(req)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if stop := stop_of(req):
        out["stop_sequences"] = stop

    # Tools, tool_choice and the JSON-mode tool.
    tools = _tools(req["tools"]) if req.get("tools") else []
    names = {t["name"] for t in tools}
    choice = _tool_choice(req.get("tool_choice"), names)
    if not tools and choice is not None:
        if choice["type"] not in ("auto", "none"):
            raise TranslationError("tool_choice requires tools", param="tool_choice")
        choice = None
    if req.get("parallel_tool_calls") is False and tools and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    jtool = _json_tool(req.get("response_format"))
    if jtool is not None:
        if jtool["name"] in names:
            raise TranslationError(
                f"the JSON mode tool name {jtool['name']!r} clashes with a tool",
                param="response_format",
            )
        ctype = choice["type"] if choice else "auto"
        if not tools or ctype == "none":
            choice = {"type": "tool", "name": jtool["name"], "disable_parallel_tool_use": True}
        elif ctype == "auto":
            choice = {**(choice or {}), "type": "any"}
        tools.append(jtool)
    if tools:
        out["tools"] = tools
    if choice is not None:
        out["tool_choice"] = choice

    # Extended thinking.
    effort = req.get("reasoning_effort")
    budget = None
    if effort is not None:
        if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
            raise TranslationError(
                "reasoning_effort must be one of " + ", ".join(THINKING_BUDGETS),
                param="reasoning_effort",
            )
        budget = THINKING_BUDGETS[effort]
        forced = choice is not None and choice["type"] in ("any", "tool")
        if forced or _replays_unsigned_tool_use(messages):
            budget = None
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            max_tokens += budget
    out["max_tokens"] = max_tokens

    t = req.get("temperature")
    if t is not None:  # OpenAI allows 0..2, Anthropic 0..1
        t = min(max(number(t, "temperature"), 0.0), 1.0)
        if budget is None:
            out["temperature"] = t
    top_p = req.get("top_p")
    if top_p is not None:
        top_p = number(top_p, "top_p")
        if budget is None or top_p >= 0.95:
            out["top_p"] = top_p
    if req.get("stream"):
        out["stream"] = True
    user = req.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return orjson.dumps(out)


# --------------------------------------------------------------------------- responses


def _usage(u: Any) -> Usage:
    """Usage of an Anthropic usage object: prompt = input + cache reads + cache writes,
    cached = cache reads; reasoning 0 (Anthropic bills thinking inside output_tokens and does
    not count it apart)."""
    return cache_usage(u, *_USAGE_KEYS)


def usage_of(resp: dict[str, Any]) -> Usage | None:
    """Usage of an Anthropic message (prompt includes the prompt cache), None without one."""
    u = resp.get("usage")
    return _usage(u) if isinstance(u, dict) else None


def _openai_usage(u: Usage) -> dict[str, Any]:
    """The canonical usage object (no completion_tokens_details: no reasoning count)."""
    return openai_usage(u.prompt, u.completion, u.cached)


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {
            "name": block.get("name", ""),
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def response_to_openai(resp: dict[str, Any], alias: str, json_tool: str | None = None) -> bytes:
    """Anthropic message -> OpenAI `chat.completion` body, reporting the client's model alias.

    `json_tool` names the tool that emulates JSON mode: its input becomes the content.
    """
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    json_text: str | None = None
    blocks = resp.get("content")
    for b in blocks if isinstance(blocks, list) else ():
        if not isinstance(b, dict):
            continue
        kind = b.get("type")
        if kind == "text":
            if isinstance(text := b.get("text"), str):
                texts.append(text)
        elif kind == "tool_use":
            if json_tool is not None and json_text is None and b.get("name") == json_tool:
                json_text = orjson.dumps(b.get("input") or {}).decode()
            else:
                calls.append(_tool_call(b))
        elif kind == "thinking" and isinstance(thought := b.get("thinking"), str):
            thinking.append(thought)
        # redacted_thinking and server-tool blocks have no OpenAI form.
    finish = finish_reason(resp.get("stop_reason"))
    content: str | None
    if json_text is not None:
        content = json_text  # a preamble before the JSON would break the client's parse
        if finish == "tool_calls" and not calls:
            finish = "stop"
    else:
        content = "".join(texts)
        if not content and calls:
            content = None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
        if finish == "stop":
            finish = "tool_calls"
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    out = {
        "id": f"chatcmpl-{resp.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(_usage(resp.get("usage"))),
    }
    return orjson.dumps(out)


def _map_error(status: int, etype: Any) -> tuple[str, str | None]:
    if isinstance(etype, str) and etype in _ERRORS:
        return _ERRORS[etype]
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    return status_error(status)


def _error_fields(status: int, body: bytes) -> tuple[str, str, str | None]:
    """(message, OpenAI type, code) for an Anthropic error body."""
    err = json_error(body)
    if err is not None:
        type_, code = _map_error(status, err.get("type"))
        msg = err.get("message")
        if not isinstance(msg, str):
            return f"upstream error (HTTP {status})", type_, code
        if type_ == "invalid_request_error" and code is None and context_overflow(msg):
            code = "context_length_exceeded"  # "prompt is too long: 201234 tokens > 200000"
        return msg, type_, code
    type_, code = _map_error(status, None)
    return upstream_error_message(status, body), type_, code


def error_to_openai(status: int, body: bytes) -> bytes:
    """Anthropic error response -> OpenAI error body (keep the upstream HTTP status)."""
    msg, type_, code = _error_fields(status, body)
    return error_body(msg, type_, code)


# ----------------------------------------------------------------------------- streams

# What an Anthropic content block index stands for in the OpenAI stream.
_TEXT, _THINKING, _JSON, _IGNORED = -1, -2, -3, -4  # >= 0: the OpenAI tool_calls index


class StreamToOpenAI(SSETranslator):
    """Translate an Anthropic Messages SSE stream into OpenAI `chat.completion.chunk` SSE.

    Every stream ends in `[DONE]` after either message_stop or an error chunk: an upstream that
    stops early yields an error, never a clean-looking but truncated answer.
    """

    __slots__ = (
        "_blocks",
        "_include_usage",
        "_json_tool",
        "_n_tools",
        "_raw_usage",
        "_saw_json",
        "_w",
    )

    def __init__(self, alias: str, include_usage: bool, json_tool: str | None = None) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._json_tool = json_tool
        self._w = ChunkWriter(alias, include_usage)  # started by message_start
        self._raw_usage: dict[str, int] = {}
        self._blocks: dict[int, int] = {}  # Anthropic block index -> _TEXT/... or tool index
        self._n_tools = 0
        self._saw_json = False

    # -- internals

    def _end(self, out: list[bytes]) -> None:
        out.append(self._fail(TRUNCATED_MESSAGE, "api_error", STREAM_TRUNCATED))

    def _start(self, msg_id: str | None) -> bytes:
        """Fix the chunk id and open the choice."""
        return self._w.start(f"chatcmpl-{msg_id or os.urandom(12).hex()}")

    def _content(self, text: str) -> bytes:
        if self.first_token_at is None:  # inline: the hot path
            self.first_token_at = time.monotonic()
        return self._w.content(text)

    def _event(self, ev: SSEEvent, out: list[bytes], lenient: bool = False) -> None:
        obj = self._json(ev.data, out, lenient)
        if obj is None:
            return
        kind = obj.get("type") or ev.event
        w = self._w
        if w.id is None and kind in ("content_block_start", "content_block_delta"):
            out.append(self._start(None))  # no message_start seen: still open properly
        if kind == "content_block_delta":
            delta = obj.get("delta")
            index = obj.get("index")
            if isinstance(delta, dict):
                slot = self._blocks.get(index, _TEXT) if isinstance(index, int) else _TEXT
                self._block_delta(slot, delta, out)
        elif kind == "message_start":
            msg = obj.get("message")
            msg = msg if isinstance(msg, dict) else {}
            self._merge_usage(msg.get("usage"))
            if w.id is None:
                out.append(self._start(msg.get("id")))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            index = obj.get("index")
            if isinstance(block, dict) and isinstance(index, int):
                self._block_start(index, block, out)
        elif kind == "message_delta":
            self._message_delta(obj, out)
        elif kind == "message_stop":
            if w.id is None:
                out.append(self._start(None))
            if self.finish_reason is None:  # message_delta missing: still close the choice
                self.finish_reason = "stop"
                out.append(w.finish("stop"))
            if self._include_usage:
                out.append(w.usage(_openai_usage(self.usage or Usage(0, 0))))
            out.append(DONE_FRAME)
            self.done = True
        elif kind == "error":
            err = obj.get("error")
            err = err if isinstance(err, dict) else {}
            type_, code = _map_error(0, err.get("type"))
            msg = err.get("message")
            out.append(self._fail(msg if isinstance(msg, str) else "upstream error", type_, code))
        # ping, content_block_stop and unknown future events: nothing to send.

    def _block_start(self, index: int, block: dict[str, Any], out: list[bytes]) -> None:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _TEXT
            text = block.get("text")
            if isinstance(text, str) and text:
                out.append(self._content(text))
        elif kind == "thinking":
            self._blocks[index] = _THINKING
            text = block.get("thinking")
            if isinstance(text, str) and text:
                self._token()
                out.append(self._w.reasoning(text))
        elif kind == "tool_use":
            name = block.get("name")
            if self._json_tool is not None and not self._saw_json and name == self._json_tool:
                self._blocks[index] = _JSON
                self._saw_json = True
                return
            slot = self._blocks[index] = self._n_tools
            self._n_tools += 1
            self._token()
            out.append(self._w.tool_call(slot, block.get("id", ""), name or ""))
        else:  # redacted_thinking, server tools: no OpenAI form
            self._blocks[index] = _IGNORED

    def _block_delta(self, slot: int, delta: dict[str, Any], out: list[bytes]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text and slot == _TEXT:
                out.append(self._content(text))
        elif kind == "input_json_delta":
            part = delta.get("partial_json")
            if not isinstance(part, str) or not part:
                return
            if slot == _JSON:
                out.append(self._content(part))
            elif slot >= 0:
                self._token()
                out.append(self._w.tool_arguments(slot, part))
        elif kind == "thinking_delta":
            text = delta.get("thinking")
            if isinstance(text, str) and text:
                self._token()
                out.append(self._w.reasoning(text))
        # signature_delta, citations_delta and unknown deltas: nothing to send.

    def _merge_usage(self, u: Any) -> None:
        """message_start has the input side, message_delta the (cumulative) output side."""
        if not isinstance(u, dict):
            return
        raw = self._raw_usage
        for key in _USAGE_KEYS:
            v = u.get(key)
            if isinstance(v, int):
                raw[key] = v
        self.usage = _usage(raw)

    def _message_delta(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._merge_usage(obj.get("usage"))
        delta = obj.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop is None and self.finish_reason is not None:
            return
        if self._w.id is None:
            out.append(self._start(None))
        finish = finish_reason(stop)
        if finish == "tool_calls" and not self._n_tools:
            finish = "stop"  # only the JSON-mode tool was called
        elif finish == "stop" and self._n_tools:
            finish = "tool_calls"
        self.finish_reason = finish
        out.append(self._w.finish(finish))


# ------------------------------------------------ same schema (Messages ingress -> Anthropic)


def rename_model(body: bytes | dict[str, Any], upstream_model: str) -> bytes:
    """Same-schema pass-through: the request body with only `model` replaced."""
    if isinstance(body, dict):
        obj: Any = dict(body)
    else:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise TranslationError("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise TranslationError("request body must be a JSON object")
    obj["model"] = upstream_model
    return orjson.dumps(obj)


class StreamUsageReader:
    """Pass an Anthropic SSE stream through while reading its usage.

    Only whole frames go out (a client cannot act on a partial one anyway), so an upstream
    that stops early can still be closed with a clean `event: error` instead of a torn frame.
    Only message_start/message_delta/error frames are parsed; deltas are not. `rename`
    shows the client its own model name in message_start (the only event naming the model).
    """

    __slots__ = (
        "_parser",
        "_raw",
        "_rename",
        "done",
        "error",
        "first_token_at",
        "stop_reason",
        "usage",
    )

    def __init__(self, rename: Callable[[bytes], bytes] | None = None) -> None:
        self._parser = SSEParser()
        self._rename = rename
        self._raw: dict[str, int] = {}
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.first_token_at: float | None = None
        self.done = False  # message_stop or an error event seen
        self.error: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send downstream: the complete frames of what arrived so far."""
        held = self._parser.pending
        frames = self._parser.feed_frames(chunk)
        renamed = False
        for i, (raw, ev) in enumerate(frames):
            if ev is not None:
                self._inspect(ev)
                if self._rename is not None and ev.event == "message_start":
                    frames[i] = (self._rename(raw), ev)
                    renamed = True
        if not held and not self._parser.pending and not renamed:
            return chunk  # the usual case: whole frames in, the same bytes out (no copy)
        return b"".join(raw for raw, _ in frames)

    def finish(self) -> bytes:
        """End of upstream body: flush a last frame missing its blank line, or fail cleanly."""
        rest = self._parser.take_pending()
        if self.done:  # trailing bytes after the end: pass them on, terminated if need be
            return rest + b"\n\n" if rest.strip() else rest
        ev = parse_frame(rest) if rest.strip() else None
        if ev is not None:
            self._inspect(ev)
            if self.done:
                return rest + b"\n\n"
        # A frame cut short is dropped: the client gets whole frames, then the error.
        self.done = True
        self.error = {"type": "api_error", "message": TRUNCATED_MESSAGE}
        return _error_event(self.error["message"])

    def _inspect(self, ev: SSEEvent) -> None:
        name = ev.event
        if name == "content_block_delta" or name == "ping" or name == "content_block_stop":
            if name == "content_block_delta" and self.first_token_at is None:
                self.first_token_at = time.monotonic()
            return
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or name
        if kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self._merge(msg.get("usage"))
        elif kind == "message_delta":
            self._merge(obj.get("usage"))
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = obj.get("error")
            self.error = err if isinstance(err, dict) else {"type": "api_error", "message": ""}
            self.done = True
        elif kind == "content_block_delta" and self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def _merge(self, u: Any) -> None:
        if not isinstance(u, dict):
            return
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
            if _is_int(v := u.get(key)):
                self._raw[key] = v
        if _is_int(v := u.get("cache_creation_input_tokens")):
            self._raw["cache_creation_input_tokens"] = v
        self.usage = _usage(self._raw)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _error_event(message: str, type_: str = "api_error") -> bytes:
    """An in-stream Messages API `event: error` frame: the anthropic SDK raises on it."""
    body = orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})
    return b"event: error\ndata: " + body + b"\n\n"
