"""AWS Bedrock Converse / ConverseStream upstream for clients that speak OpenAI chat completions.

Requests go OpenAI -> Converse JSON (ext_proc.auth.sigv4 signs the final body); responses come
back Converse JSON -> OpenAI, and ConverseStream's binary event-stream -> OpenAI SSE chunks.
Embeddings translate to InvokeModel bodies for the Titan and Cohere embedding families.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import orjson

from switchyard.framing.eventstream import EventStreamDecoder, EventStreamError, Message

from .canonical import (
    DONE_FRAME,
    STREAM_TRUNCATED,
    ChunkWriter,
    StreamTranslator,
    TranslationError,
    Usage,
    cache_usage,
    content_parts,
    context_overflow,
    error_body,
    max_tokens_of,
    messages_of,
    number,
    openai_usage,
    positive_int,
    status_error,
    stop_of,
    unsupported_part,
    upstream_error_message,
)

__all__ = [
    "EVENTSTREAM",
    "StreamToOpenAI",
    "embeddings_request",
    "embeddings_response",
    "error_to_openai",
    "finish_reason",
    "path",
    "request_from_openai",
    "response_to_openai",
    "usage_of",
]

EVENTSTREAM = "application/vnd.amazon.eventstream"

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Bedrock error type (x-amzn-errortype / `__type` / event-stream `:exception-type`, compared
# lower-cased) -> (OpenAI type, OpenAI code).
_ERRORS: dict[str, tuple[str, str | None]] = {
    "validationexception": ("invalid_request_error", None),
    "throttlingexception": ("rate_limit_error", "rate_limit_exceeded"),
    "servicequotaexceededexception": ("rate_limit_error", "insufficient_quota"),
    "accessdeniedexception": ("permission_error", None),
    "unrecognizedclientexception": ("authentication_error", None),
    "invalidsignatureexception": ("authentication_error", None),
    "expiredtokenexception": ("authentication_error", None),
    "resourcenotfoundexception": ("not_found_error", None),
    "modeltimeoutexception": ("api_error", "timeout"),
    "modelnotreadyexception": ("api_error", "model_not_ready"),
    "modelerrorexception": ("api_error", None),
    "modelstreamerrorexception": ("api_error", None),
    "serviceunavailableexception": ("api_error", "overloaded"),
    "internalserverexception": ("api_error", None),
}

# Fallback by HTTP status: bedrock-runtime's own status for each exception type.
_STATUS_TYPES: dict[int, str] = {
    400: "validationexception",
    403: "accessdeniedexception",
    404: "resourcenotfoundexception",
    408: "modeltimeoutexception",
    424: "modelerrorexception",
    429: "throttlingexception",
    500: "internalserverexception",
    503: "serviceunavailableexception",
}

# What ValidationExceptions about an over-long prompt say, across the model families.
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_TOOL_ID_OK = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_.:-]")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def path(model_id: str, stream: bool) -> str:
    """The Converse (or ConverseStream) path; ids with `:` or ARNs with `/` are encoded."""
    return f"/model/{quote(model_id, safe='')}/{'converse-stream' if stream else 'converse'}"


def finish_reason(stop_reason: Any) -> str:
    """Map a Bedrock stopReason to an OpenAI finish_reason."""
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


# ---------------------------------------------------------------------------- requests


def _text_of(content: Any, param: str) -> str:
    """Text of a system/developer or tool message (string or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError("only text parts are allowed here", param=f"{param}[{j}]")
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError("text parts need a string `text`", param=f"{param}[{j}]")
            texts.append(text)
        return "".join(texts)
    if content is None:
        return ""
    raise TranslationError("content must be a string or a list of parts", param=param)


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    p = f"{param}.image_url"
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str):
        raise TranslationError("image_url.url must be a string", param=p)
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not payload:
            raise TranslationError("image data URLs must be base64 encoded", param=p)
        fmt = _IMAGE_FORMATS.get(media_type.lower())
        if fmt is None:
            raise TranslationError(
                f"unsupported image type {media_type!r}; use png, jpeg, gif or webp", param=p
            )
        return {"image": {"format": fmt, "source": {"bytes": payload}}}
    if url.startswith(("https://", "http://")):
        raise TranslationError(
            "this backend needs image bytes: send the image as a base64 data URL", param=p
        )
    raise TranslationError("image_url must be a base64 data URL", param=p)


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Converse content blocks of a user/assistant message's content (blank text dropped)."""
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if content is None:
        return []
    blocks: list[dict[str, Any]] = []
    for kind, part, p in content_parts(content, param):
        if kind == "text":
            if (text := part["text"]).strip():  # Bedrock rejects blank text blocks
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, p))
        elif kind == "refusal":  # an earlier assistant refusal, replayed as text
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal.strip():
                blocks.append({"text": refusal})
        else:
            raise unsupported_part(kind, p)
    return blocks


def _tool_id(value: Any, param: str) -> str:
    """A toolUseId Bedrock accepts ([a-zA-Z0-9_.:-]{1,64}); other ids get a stable rewrite."""
    if not isinstance(value, str) or not value:
        raise TranslationError("tool call ids must be non-empty strings", param=param)
    if _TOOL_ID_OK.fullmatch(value):
        return value
    digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return _TOOL_ID_BAD_CHARS.sub("_", value)[:47] + "_" + digest


def _tool_uses(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise TranslationError("tool_calls must be an array", param=param)
    out = []
    for k, call in enumerate(calls):
        p = f"{param}[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise TranslationError("only function tool calls are supported", param=p)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("tool calls need a function name", param=f"{p}.function.name")
        args = fn.get("arguments")
        try:
            parsed = orjson.loads(args) if isinstance(args, str) and args.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise TranslationError(
                "tool call arguments must be a JSON object", param=f"{p}.function.arguments"
            )
        out.append({"toolUse": {"toolUseId": _tool_id(call.get("id"), f"{p}.id"),
                                "name": name, "input": parsed}})
    return out


def _messages(msgs: Any) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Split OpenAI messages into system blocks and role-alternating Converse messages."""
    system: list[dict[str, str]] = []
    out: list[dict[str, Any]] = []
    for m, param in messages_of(msgs):
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, f"{param}.content")
            if text.strip():
                system.append({"text": text})
            continue
        if role == "user":
            blocks = _blocks(content, f"{param}.content")
            if not blocks:
                raise TranslationError("user messages need non-blank content",
                                       param=f"{param}.content")
        elif role == "assistant":
            blocks = _blocks(content, f"{param}.content")
            if m.get("tool_calls"):
                blocks.extend(_tool_uses(m["tool_calls"], f"{param}.tool_calls"))
            elif m.get("function_call"):
                raise TranslationError("legacy function_call is not supported; use tool_calls",
                                       param=f"{param}.function_call")
            if not blocks:
                continue  # an empty assistant turn carries nothing and Bedrock rejects it
        elif role == "tool":
            result = {"toolUseId": _tool_id(m.get("tool_call_id"), f"{param}.tool_call_id"),
                      "content": [{"text": _text_of(content, f"{param}.content")}]}
            role, blocks = "user", [{"toolResult": result}]
        else:
            raise TranslationError(f"unsupported role {role!r}", param=f"{param}.role")
        if out and out[-1]["role"] == role:
            # Converse wants strictly alternating turns; this also groups parallel tool results.
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise TranslationError("at least one user or assistant message is required",
                               param="messages")
    return system, out


def _unit(v: Any, param: str) -> float:
    """A number clamped into [0, 1] (OpenAI allows temperature up to 2, Bedrock 1)."""
    return min(max(float(number(v, param)), 0.0), 1.0)


def _inference_config(req: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if (max_tokens := max_tokens_of(req)) is not None:
        cfg["maxTokens"] = max_tokens
    if (t := req.get("temperature")) is not None:
        cfg["temperature"] = _unit(t, "temperature")
    if (top_p := req.get("top_p")) is not None:
        cfg["topP"] = _unit(top_p, "top_p")
    if (stop := stop_of(req)) and (stops := [s for s in stop if s]):
        cfg["stopSequences"] = stops
    return cfg


def _tool_config(req: dict[str, Any]) -> dict[str, Any] | None:
    """Converse toolConfig; None when there are no tools or tool_choice is "none"."""
    for legacy in ("functions", "function_call"):
        if req.get(legacy):
            raise TranslationError(f"legacy `{legacy}` is not supported; use `tools`",
                                   param=legacy)
    tools = req.get("tools")
    choice = req.get("tool_choice")
    if not tools or choice == "none":
        if choice not in (None, "none", "auto"):
            raise TranslationError("tool_choice requires tools", param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array", param="tools")
    specs = []
    names = set()
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise TranslationError("only function tools are supported for this backend", param=p)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("tools need a function name", param=f"{p}.function.name")
        params = fn.get("parameters")
        if params is None:
            params = _EMPTY_SCHEMA
        elif not isinstance(params, dict):
            raise TranslationError("parameters must be a JSON schema object",
                                   param=f"{p}.function.parameters")
        spec: dict[str, Any] = {"name": name}
        desc = fn.get("description")
        if isinstance(desc, str) and desc:
            spec["description"] = desc
        spec["inputSchema"] = {"json": params}
        # `strict` is dropped: only some Bedrock models accept it, and SDKs set it by default.
        specs.append({"toolSpec": spec})
        names.add(name)
    cfg: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        cfg["toolChoice"] = {"auto": {}}
    elif choice == "required":
        cfg["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str) or name not in names:
            raise TranslationError("tool_choice must name one of the given function tools",
                                   param="tool_choice")
        cfg["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise TranslationError(f"unsupported tool_choice {choice!r}", param="tool_choice")
    return cfg


def request_from_openai(req: dict[str, Any], model_id: str) -> bytes:
    """OpenAI chat request -> Converse request body (the model id goes in the path).

    Unmapped OpenAI params (seed, user, stream_options, penalties, logprobs, ...) are dropped.
    """
    n = req.get("n")
    if n is not None and n != 1:
        raise TranslationError("n > 1 is not supported for this backend", param="n")
    rf = req.get("response_format")
    if isinstance(rf, dict) and rf.get("type") not in (None, "text"):
        raise TranslationError(
            f"response_format {rf.get('type')!r} is not supported for this backend",
            param="response_format",
        )
    system, messages = _messages(req.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    if cfg := _inference_config(req):
        out["inferenceConfig"] = cfg
    if (tc := _tool_config(req)) is not None:
        out["toolConfig"] = tc
    return orjson.dumps(out)


# --------------------------------------------------------------------------- responses


def _usage(u: Any) -> Usage:
    """Usage of a Bedrock TokenUsage object: prompt includes cache reads and writes, cached is
    `cacheReadInputTokens`; reasoning 0 (Converse does not count it apart)."""
    return cache_usage(
        u, "inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"
    )


def usage_of(resp: dict[str, Any]) -> Usage | None:
    """Usage of a Converse response (prompt includes the prompt cache), None without one."""
    u = resp.get("usage")
    return _usage(u) if isinstance(u, dict) else None


def _openai_usage(u: Usage) -> dict[str, Any]:
    """The canonical usage object (no completion_tokens_details: no reasoning count)."""
    return openai_usage(u.prompt, u.completion, u.cached)


def _new_id() -> str:
    """Converse bodies carry no id (it is in x-amzn-requestid), so mint an OpenAI-style one."""
    return "chatcmpl-" + os.urandom(12).hex()


def response_to_openai(resp: dict[str, Any], model: str) -> bytes:
    """Converse response -> OpenAI `chat.completion` body reporting `model`."""
    output = resp.get("output")
    msg = output.get("message") if isinstance(output, dict) else None
    blocks = msg.get("content") if isinstance(msg, dict) else None
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in blocks if isinstance(blocks, list) else ():
        if not isinstance(b, dict):
            continue
        if isinstance(text := b.get("text"), str):
            texts.append(text)
        elif isinstance(tu := b.get("toolUse"), dict):
            calls.append({
                "id": tu.get("toolUseId"),
                "type": "function",
                "function": {"name": tu.get("name"),
                             "arguments": orjson.dumps(tu.get("input", {})).decode()},
            })
        elif isinstance(rc := b.get("reasoningContent"), dict):
            rt = rc.get("reasoningText")
            if isinstance(rt, dict) and isinstance(rt.get("text"), str):
                reasoning.append(rt["text"])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return orjson.dumps({
        "id": _new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(resp.get("stopReason"))}],
        "usage": _openai_usage(_usage(resp.get("usage"))),
    })


def _map_error(status: int, etype: str | None, message: str) -> tuple[str, str | None]:
    """(OpenAI type, code) for a Bedrock error type, falling back on the HTTP status."""
    key = etype.lower() if etype else _STATUS_TYPES.get(status)
    mapped = _ERRORS.get(key) if key else None
    if mapped is None:
        mapped = status_error(status)
    if mapped[0] == "invalid_request_error" and context_overflow(message):
        return "invalid_request_error", "context_length_exceeded"
    return mapped


def _clean_type(raw: Any) -> str | None:
    """`ValidationException:http://...` or `com.amazon.coral#ValidationException` -> the name."""
    if not isinstance(raw, str) or not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1] or None


def error_to_openai(status: int, body: bytes, error_type: str | None = None) -> bytes:
    """Bedrock error response -> OpenAI error body (keep the upstream HTTP status).

    `error_type` is the `x-amzn-errortype` header when the caller has it; otherwise the
    body's `__type`/`code`, then the status, decide.
    """
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    msg: Any = None
    etype = _clean_type(error_type)
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("Message")
        etype = etype or _clean_type(obj.get("__type")) or _clean_type(obj.get("code"))
    if not isinstance(msg, str) or not msg:  # a JSON body's text is no better a message
        msg = upstream_error_message(status, body if obj is None else b"")
    type_, code = _map_error(status, etype, msg)
    return error_body(msg, type_, code)


# ----------------------------------------------------------------------------- streams


class StreamToOpenAI(StreamTranslator[Message]):
    """Translate a ConverseStream event-stream body into OpenAI `chat.completion.chunk` SSE.

    Bedrock sends messageStop (the stop reason) and then metadata (usage); the OpenAI stream
    ends in `[DONE]` after the metadata, or after an error chunk. A body that ends before
    messageStop, or a corrupt frame, becomes an error chunk: never a clean-looking truncation.
    """

    __slots__ = ("_decoder", "_id", "_include_usage", "_tools", "_w")

    def __init__(self, model: str, include_usage: bool, response_id: str | None = None) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._decoder = EventStreamDecoder()
        self._w = ChunkWriter(model, include_usage)  # started by the first event
        self._id = response_id or _new_id()
        self._tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool_calls index

    # -- internals

    def _events(self, chunk: bytes, out: list[bytes]) -> Iterable[Message]:
        try:
            return self._decoder.feed(chunk)
        except EventStreamError as exc:
            out.append(self._fail(f"corrupt event stream from upstream: {exc}", "api_error", None))
            return ()

    def _end(self, out: list[bytes]) -> None:
        if self.finish_reason is not None and not self._decoder.pending:
            # messageStop arrived but no metadata: the answer is whole, only usage is missing.
            self.done = True
            out.append(DONE_FRAME)
            return
        out.append(self._fail("upstream stream ended before messageStop", "api_error",
                              STREAM_TRUNCATED))

    def _event(self, m: Message, out: list[bytes], lenient: bool = False) -> None:
        h = m.headers
        mtype = h.get(":message-type")
        if mtype == "exception":
            raw_type = h.get(":exception-type")
            etype = raw_type if isinstance(raw_type, str) else None
            try:
                obj = orjson.loads(m.payload)
            except orjson.JSONDecodeError:
                obj = None
            msg = obj.get("message") if isinstance(obj, dict) else None
            msg = msg if isinstance(msg, str) and msg else f"upstream stream error ({etype})"
            type_, code = _map_error(0, etype, msg)
            out.append(self._fail(msg, type_, code))
            return
        if mtype == "error":  # protocol-level error: `:error-code` / `:error-message` headers
            what = h.get(":error-message") or h.get(":error-code") or "upstream stream error"
            out.append(self._fail(str(what), "api_error", None))
            return
        if mtype != "event":
            return
        ev = self._json(m.payload, out)
        if ev is None:
            return
        kind = h.get(":event-type")
        w = self._w
        if w.id is None and kind != "metadata":
            out.append(w.start(self._id))  # also opens a stream whose messageStart went missing
        if kind == "contentBlockDelta":
            delta = ev.get("delta")
            if not isinstance(delta, dict):
                return
            if isinstance(text := delta.get("text"), str):
                if text:
                    self._token()
                    out.append(w.content(text))
            elif isinstance(tu := delta.get("toolUse"), dict):
                args = tu.get("input")
                if isinstance(args, str) and args:
                    idx = self._tool_index(ev.get("contentBlockIndex"))
                    out.append(w.tool_arguments(idx, args))
            elif isinstance(rc := delta.get("reasoningContent"), dict):
                rtext = rc.get("text")
                if isinstance(rtext, str) and rtext:
                    self._token()
                    out.append(w.reasoning(rtext))
            # citation / image / toolResult deltas and reasoning signatures: nothing to relay.
        elif kind == "contentBlockStart":
            start = ev.get("start")
            tu = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tu, dict):
                self._token()
                idx = self._tool_index(ev.get("contentBlockIndex"))
                out.append(w.tool_call(idx, tu.get("toolUseId"), tu.get("name")))
        elif kind == "messageStop":
            if self.finish_reason is None:
                self.finish_reason = finish_reason(ev.get("stopReason"))
                out.append(w.finish(self.finish_reason))
        elif kind == "metadata":
            self.usage = usage = _usage(ev.get("usage"))
            if self.finish_reason is None:  # metadata is the last event; no stop was seen
                out.append(self._fail("upstream stream ended before messageStop",
                                      "api_error", STREAM_TRUNCATED))
                return
            if self._include_usage:
                out.append(w.usage(_openai_usage(usage)))
            out.append(DONE_FRAME)
            self.done = True
        # messageStart (opened above), contentBlockStop and future events: nothing to send.

    def _tool_index(self, block: Any) -> int:
        """OpenAI numbers tool calls 0, 1, ...; Bedrock numbers all content blocks."""
        key = block if isinstance(block, int) else -1
        idx = self._tools.get(key)
        if idx is None:
            idx = self._tools[key] = len(self._tools)
        return idx


# --------------------------------------------------------------------------- embeddings

_COHERE_BATCH = 96  # Cohere on Bedrock embeds at most 96 texts per call


def _embedding_inputs(req: dict[str, Any]) -> list[str]:
    inp = req.get("input")
    if isinstance(inp, str):
        inp = [inp]
    if not isinstance(inp, list) or not inp or not all(isinstance(s, str) for s in inp):
        raise TranslationError(
            "input must be a string or a non-empty array of strings for this backend "
            "(token arrays are not supported)",
            param="input",
        )
    if not all(s for s in inp):
        raise TranslationError("input strings must not be empty", param="input")
    return inp


def embeddings_request(req: dict[str, Any], model_id: str) -> list[tuple[str, bytes]]:
    """OpenAI embeddings request -> the InvokeModel calls (path, body) it takes, in order."""
    texts = _embedding_inputs(req)
    invoke = f"/model/{quote(model_id, safe='')}/invoke"
    dims = req.get("dimensions")
    if dims is not None:
        dims = positive_int(dims, "dimensions")
    if "titan-embed" in model_id:
        extra = {"dimensions": dims} if dims is not None else {}
        return [(invoke, orjson.dumps({"inputText": t, **extra})) for t in texts]
    if "cohere.embed" in model_id:
        base: dict[str, Any] = {"input_type": "search_document"}
        if dims is not None:
            if "embed-v4" not in model_id:
                raise TranslationError("dimensions is not supported by this model",
                                       param="dimensions")
            base["output_dimension"] = dims
        return [
            (invoke, orjson.dumps({"texts": texts[i : i + _COHERE_BATCH], **base}))
            for i in range(0, len(texts), _COHERE_BATCH)
        ]
    raise TranslationError(f"model {model_id!r} is not a supported Bedrock embedding model",
                           param="model")


def _vectors(body: bytes) -> tuple[list[Any], int]:
    """(vectors, input tokens) of one Titan or Cohere InvokeModel response body."""
    obj = orjson.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("embedding response is not an object")
    if "embedding" in obj:  # Titan: one input per call
        tokens = obj.get("inputTextTokenCount")
        return [obj["embedding"]], tokens if isinstance(tokens, int) else 0
    emb = obj.get("embeddings")
    if isinstance(emb, dict):  # Cohere with embedding_types
        emb = emb.get("float")
    if not isinstance(emb, list):
        raise ValueError("embedding response has no embeddings")
    return emb, 0  # Cohere's count is only in the X-Amzn-Bedrock-Input-Token-Count header


def embeddings_response(bodies: list[bytes], model: str, encoding_format: str = "float",
                        prompt_tokens: int | None = None) -> bytes:
    """InvokeModel embedding bodies (in request order) -> OpenAI embeddings list.

    `encoding_format="base64"` (what the openai SDK asks for by default) packs each vector as
    little-endian float32; `prompt_tokens` overrides the count when the caller read it from
    the response headers.
    """
    data: list[dict[str, Any]] = []
    tokens = 0
    for body in bodies:
        vectors, n = _vectors(body)
        tokens += n
        for vec in vectors:
            value: Any = vec
            if encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": len(data), "embedding": value})
    if prompt_tokens is not None:
        tokens = prompt_tokens
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
