"""Anthropic Messages API upstream for clients that speak OpenAI chat completions.

Requests go OpenAI -> Messages; responses, SSE streams and errors come back Messages -> OpenAI,
so the official openai SDK works unchanged against a Claude backend.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from .openai import DONE_FRAME, TranslationError, error_body, error_object
from .sse import SSEEvent, SSEParser, parse_frame

__all__ = [
    "API_VERSION",
    "PATH",
    "StreamToOpenAI",
    "error_to_openai",
    "finish_reason",
    "request_from_openai",
    "response_to_openai",
    "usage_of",
]

PATH = "/v1/messages"
API_VERSION = "2023-06-01"  # the `anthropic-version` request header

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
    400: ("invalid_request_error", None),
    401: ("authentication_error", None),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    529: ("api_error", "overloaded"),
}

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Tool calling arrives in a later issue; until then these are rejected, not silently dropped.
_TOOL_PARAMS = ("tools", "tool_choice", "functions", "function_call")
_NO_TOOLS = "tools are not supported for this backend yet"


def finish_reason(stop_reason: str | None) -> str:
    """Map an Anthropic stop_reason to an OpenAI finish_reason."""
    if stop_reason is None:
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


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str):
        raise TranslationError("image_url.url must be a string", param=f"{param}.image_url")
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise TranslationError(
                "image data URLs must be base64 encoded", param=f"{param}.image_url"
            )
        if media_type not in _IMAGE_TYPES:
            raise TranslationError(
                f"unsupported image type {media_type!r}; use jpeg, png, gif or webp",
                param=f"{param}.image_url",
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": payload},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(
        "image_url must be an http(s) URL or a base64 data URL", param=f"{param}.image_url"
    )


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Anthropic content blocks for a user/assistant message's content."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", param=param)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise TranslationError("content parts must be objects", param=p)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError("text parts need a string `text`", param=p)
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, p))
        elif kind == "refusal":  # an earlier assistant refusal, replayed as text
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal:
                blocks.append({"type": "text", "text": refusal})
        else:
            raise TranslationError(
                f"content part type {kind!r} is not supported for this backend", param=p
            )
    return blocks


def _messages(msgs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Split OpenAI messages into system texts and role-alternating Anthropic messages."""
    if not isinstance(msgs, list) or not msgs:
        raise TranslationError("messages must be a non-empty array", param="messages")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TranslationError("messages must be objects", param=param)
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.append(_text_of(content, f"{param}.content"))
            continue
        if role == "user" or role == "assistant":
            if m.get("tool_calls") or m.get("function_call"):
                raise TranslationError(_NO_TOOLS, param="tools")
            if content is None and role == "user":
                raise TranslationError("user messages need content", param=f"{param}.content")
        elif role in ("tool", "function"):
            raise TranslationError(_NO_TOOLS, param="tools")
        else:
            raise TranslationError(f"unsupported role {role!r}", param=f"{param}.role")
        value = content if isinstance(content, str) else _blocks(content, f"{param}.content")
        if role == "assistant" and not value:
            continue  # an empty assistant turn carries nothing and Anthropic rejects it
        if out and out[-1]["role"] == role:
            # Merge consecutive same-role turns: the Messages API wants them alternating.
            prev = out[-1]
            blocks = prev["content"]
            if isinstance(blocks, str):
                blocks = prev["content"] = [{"type": "text", "text": blocks}] if blocks else []
            if isinstance(value, str):
                if value:
                    blocks.append({"type": "text", "text": value})
            else:
                blocks.extend(value)
        else:
            out.append({"role": role, "content": value})
    if not out:
        raise TranslationError(
            "at least one user or assistant message is required", param="messages"
        )
    return system, out


def _positive_int(v: Any, param: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TranslationError(f"{param} must be a positive integer", param=param)
    return v


def _number(v: Any, param: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TranslationError(f"{param} must be a number", param=param)
    return v


def request_from_openai(
    req: dict[str, Any], upstream_model: str, default_max_tokens: int = 4096
) -> bytes:
    """OpenAI chat request -> Anthropic Messages request body.

    Unknown or unmapped OpenAI params (stream_options, seed, penalties, ...) are dropped.
    """
    for key in _TOOL_PARAMS:
        if req.get(key):
            raise TranslationError(_NO_TOOLS, param=key)
    n = req.get("n")
    if n is not None and n != 1:
        raise TranslationError("n > 1 is not supported for this backend", param="n")

    system, messages = _messages(req.get("messages"))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)

    mct = req.get("max_completion_tokens")
    if mct is not None:
        out["max_tokens"] = _positive_int(mct, "max_completion_tokens")
    elif (mt := req.get("max_tokens")) is not None:
        out["max_tokens"] = _positive_int(mt, "max_tokens")
    else:
        out["max_tokens"] = default_max_tokens

    stop = req.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list):
        if not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop must be a string or a list of strings", param="stop")
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise TranslationError("stop must be a string or a list of strings", param="stop")

    t = req.get("temperature")
    if t is not None:  # OpenAI allows 0..2, Anthropic 0..1
        out["temperature"] = min(max(_number(t, "temperature"), 0.0), 1.0)
    top_p = req.get("top_p")
    if top_p is not None:
        out["top_p"] = _number(top_p, "top_p")
    if req.get("stream"):
        out["stream"] = True
    user = req.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return orjson.dumps(out)


# --------------------------------------------------------------------------- responses


def _usage(u: Any) -> tuple[int, int, int]:
    """(prompt incl. cache, completion, cache_read) from an Anthropic usage object."""
    if not isinstance(u, dict):
        return 0, 0, 0
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cached + (u.get("cache_creation_input_tokens") or 0)
    return prompt, u.get("output_tokens") or 0, cached


def _openai_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def usage_of(resp: dict[str, Any]) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of an Anthropic message; prompt includes cache."""
    u = resp.get("usage")
    if not isinstance(u, dict):
        return None
    prompt, completion, _ = _usage(u)
    return prompt, completion


def response_to_openai(resp: dict[str, Any], alias: str) -> bytes:
    """Anthropic message -> OpenAI `chat.completion` body, reporting the client's model alias."""
    text = "".join(
        b.get("text", "")
        for b in resp.get("content") or ()
        if isinstance(b, dict) and b.get("type") == "text"
    )
    # tool_use blocks map to message.tool_calls once tools are supported.
    out = {
        "id": f"chatcmpl-{resp.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(resp.get("stop_reason")),
            }
        ],
        "usage": _openai_usage(*_usage(resp.get("usage"))),
    }
    return orjson.dumps(out)


def _map_error(status: int, etype: Any) -> tuple[str, str | None]:
    if isinstance(etype, str) and etype in _ERRORS:
        return _ERRORS[etype]
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    return ("api_error", None) if status >= 500 or status == 0 else ("invalid_request_error", None)


def _error_fields(status: int, body: bytes) -> tuple[str, str, str | None]:
    """(message, OpenAI type, code) for an Anthropic error body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        type_, code = _map_error(status, err.get("type"))
        msg = err.get("message")
        return (msg if isinstance(msg, str) else f"upstream error (HTTP {status})"), type_, code
    type_, code = _map_error(status, None)
    snippet = body[:2000].decode("utf-8", "replace").strip()[:500]
    msg = f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
    return msg, type_, code


def error_to_openai(status: int, body: bytes) -> bytes:
    """Anthropic error response -> OpenAI error body (keep the upstream HTTP status)."""
    msg, type_, code = _error_fields(status, body)
    return error_body(msg, type_, code)


# ----------------------------------------------------------------------------- streams


class StreamToOpenAI:
    """Translate an Anthropic Messages SSE stream into OpenAI `chat.completion.chunk` SSE.

    Every stream ends in `[DONE]` after either message_stop or an error chunk: an upstream that
    stops early yields an error, never a clean-looking but truncated answer.
    """

    __slots__ = (
        "_alias",
        "_created",
        "_id",
        "_include_usage",
        "_parser",
        "_prefix",
        "_raw_usage",
        "_suffix",
        "cached_tokens",
        "done",
        "error",
        "finish_reason",
        "first_token_at",
        "usage",
    )

    def __init__(self, alias: str, include_usage: bool) -> None:
        self._alias = alias
        self._include_usage = include_usage
        self._parser = SSEParser()
        self._created = int(time.time())
        self._id: str | None = None
        self._prefix = b""  # chunk bytes before a content delta's JSON string
        self._suffix = b""  # and after it
        self._raw_usage: dict[str, int] = {}
        self.usage: tuple[int, int] | None = None
        self.cached_tokens = 0
        self.done = False
        self.error: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Return the OpenAI SSE bytes produced by this upstream chunk."""
        if self.done:
            return b""
        out: list[bytes] = []
        for ev in self._parser.feed(chunk):
            self._event(ev, out)
            if self.done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """End of upstream body: flush, and turn an early end into an error chunk."""
        if self.done:
            return b""
        out: list[bytes] = []
        ev = parse_frame(self._parser.take_pending())
        if ev is not None:  # a last frame missing its blank line
            self._event(ev, out, lenient=True)
        if not self.done:
            out.append(self._fail("upstream stream ended before message_stop", "api_error", None))
        return b"".join(out)

    # -- internals

    def _start(self, msg_id: str | None) -> bytes:
        """Fix the chunk id and pre-render the bytes around content deltas (the hot path)."""
        self._id = f"chatcmpl-{msg_id or os.urandom(12).hex()}"
        head = orjson.dumps(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._alias,
            }
        )
        delta_open = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":{'
        self._prefix = delta_open + b'"content":'
        tail = b',"usage":null}' if self._include_usage else b"}"
        self._suffix = b'},"logprobs":null,"finish_reason":null}]' + tail + b"\n\n"
        return delta_open + b'"role":"assistant","content":""' + self._suffix

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        obj: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._alias,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _usage_chunk(self) -> bytes:
        prompt, completion = self.usage or (0, 0)
        obj: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._alias,
            "choices": [],
            "usage": _openai_usage(prompt, completion, self.cached_tokens),
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _fail(self, message: str, type_: str, code: str | None) -> bytes:
        self.done = True
        self.error = error_object(message, type_, code)
        return b"data: " + orjson.dumps({"error": self.error}) + b"\n\n" + DONE_FRAME

    def _event(self, ev: SSEEvent, out: list[bytes], lenient: bool = False) -> None:
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            if not lenient:
                out.append(self._fail("malformed event from upstream stream", "api_error", None))
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or ev.event
        if self._id is None and kind in ("content_block_start", "content_block_delta"):
            out.append(self._start(None))  # no message_start seen: still open properly
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    if self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                    out.append(self._prefix + orjson.dumps(text) + self._suffix)
            # input_json_delta (tools), thinking/signature/citations deltas: not relayed yet.
        elif kind == "message_start":
            msg = obj.get("message")
            msg = msg if isinstance(msg, dict) else {}
            self._merge_usage(msg.get("usage"))
            if self._id is None:
                out.append(self._start(msg.get("id")))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str) and text:
                    if self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                    out.append(self._prefix + orjson.dumps(text) + self._suffix)
        elif kind == "message_delta":
            self._message_delta(obj, out)
        elif kind == "message_stop":
            if self._id is None:
                out.append(self._start(None))
            if self.finish_reason is None:  # message_delta missing: still close the choice
                self.finish_reason = "stop"
                out.append(self._chunk({}, "stop"))
            if self._include_usage:
                out.append(self._usage_chunk())
            out.append(DONE_FRAME)
            self.done = True
        elif kind == "error":
            err = obj.get("error")
            err = err if isinstance(err, dict) else {}
            type_, code = _map_error(0, err.get("type"))
            msg = err.get("message")
            out.append(self._fail(msg if isinstance(msg, str) else "upstream error", type_, code))
        # ping, content_block_stop and unknown future events: nothing to send.

    def _merge_usage(self, u: Any) -> None:
        """message_start has the input side, message_delta the (cumulative) output side."""
        if not isinstance(u, dict):
            return
        raw = self._raw_usage
        for key in _USAGE_KEYS:
            v = u.get(key)
            if isinstance(v, int):
                raw[key] = v
        prompt, completion, self.cached_tokens = _usage(raw)
        self.usage = (prompt, completion)

    def _message_delta(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._merge_usage(obj.get("usage"))
        delta = obj.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop is None and self.finish_reason is not None:
            return
        if self._id is None:
            out.append(self._start(None))
        self.finish_reason = finish_reason(stop)
        out.append(self._chunk({}, self.finish_reason))
