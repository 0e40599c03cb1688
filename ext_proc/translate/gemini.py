"""Google Gemini (AI Studio) and Vertex AI `generateContent` for OpenAI chat clients.

Both products speak the same GenerateContent JSON; they differ only in path and credentials
(the adapter's job), so one translator serves both. The model lives in the URL, not the body.

Choices that are not obvious from the schemas:
* tool parameters go out as `parametersJsonSchema` and json_schema response formats as
  `responseJsonSchema`: both take plain JSON Schema, so OpenAI schemas (additionalProperties,
  $defs, ...) need no lossy rewrite into Google's OpenAPI subset;
* Gemini gives function calls no id (or one only sometimes), so a missing id becomes
  `call_<index>_<name>`: deterministic, and the tool message's id leads back to the name;
* Gemini 3 rejects replayed function calls without their `thoughtSignature`. Responses carry
  it as `tool_calls[].extra_content.google.thought_signature` (Google's own OpenAI-compatible
  convention); requests send it back, or Google's documented skip sentinel when a client
  dropped it, so history from plain OpenAI clients still works.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import struct
import time
from typing import Any

import orjson

from switchyard.framing.sse import SSEEvent

from .canonical import (
    DONE_FRAME,
    STATUS_ERRORS,
    STREAM_TRUNCATED,
    ChunkWriter,
    SSETranslator,
    TranslationError,
    Usage,
    content_parts,
    context_overflow,
    count,
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
    "StreamToOpenAI",
    "embeddings_request",
    "embeddings_response",
    "embeddings_usage_of",
    "error_to_openai",
    "finish_reason",
    "gemini_path",
    "request_from_openai",
    "response_to_openai",
    "usage_of",
    "vertex_path",
]

_UNARY = ":generateContent"
_STREAM = ":streamGenerateContent?alt=sse"
#: Google's documented placeholder for function calls replayed without their signature.
SKIP_SIGNATURE = "skip_thought_signature_validator"

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}

# google.rpc status -> (OpenAI type, OpenAI code).
_ERRORS: dict[str, tuple[str, str | None]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", None),
    "FAILED_PRECONDITION": ("invalid_request_error", None),
    "OUT_OF_RANGE": ("invalid_request_error", None),
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded"),
    "PERMISSION_DENIED": ("permission_error", None),
    "UNAUTHENTICATED": ("authentication_error", None),
    "NOT_FOUND": ("not_found_error", None),
    "UNAVAILABLE": ("api_error", "service_unavailable"),
    "DEADLINE_EXCEEDED": ("api_error", "timeout"),
}
_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    **STATUS_ERRORS,
    503: ("api_error", "service_unavailable"),
    504: ("api_error", "timeout"),
}
# reasoning_effort -> thinking budget, as Google's own OpenAI-compatible endpoint maps it.
_THINKING_BUDGET = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_MIME_BY_EXT = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "pdf": "application/pdf",
    "mp3": "audio/mp3",
    "wav": "audio/wav",
    "mp4": "video/mp4",
}
_TOOL_CALL_ID = re.compile(r"call_\d+_(.+)")


def finish_reason(reason: Any, has_tool_calls: bool = False) -> str:
    """Map a Gemini finishReason to an OpenAI finish_reason (anything but a known string:
    a plain stop)."""
    if reason is None or reason == "STOP":
        return "tool_calls" if has_tool_calls else "stop"
    return _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"


# ------------------------------------------------------------------------------- paths


def _gemini_resource(model: str) -> str:
    return model if "/" in model else "models/" + model  # tunedModels/... pass as given


def gemini_path(model: str, stream: bool = False) -> str:
    """AI Studio path (query included) for generateContent or its SSE stream."""
    return f"/v1beta/{_gemini_resource(model)}{_STREAM if stream else _UNARY}"


def _vertex_resource(project: str, location: str, model: str) -> str:
    if model.startswith("projects/"):  # a full resource name: tuned endpoint, other region
        return model
    base = f"projects/{project}/locations/{location}/"
    return base + (model if "/" in model else "publishers/google/models/" + model)


def vertex_path(project: str, location: str, model: str, stream: bool = False) -> str:
    """Vertex AI path (query included) for generateContent or its SSE stream."""
    return f"/v1/{_vertex_resource(project, location, model)}{_STREAM if stream else _UNARY}"


# ---------------------------------------------------------------------------- requests


def _text_of(content: Any, param: str) -> str:
    """Text of a system/developer/tool message (string or text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError(
                    "this message may only contain text parts", param=f"{param}[{j}]"
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None:
        return ""
    raise TranslationError("content must be a string or a list of parts", param=param)


def _data_url(url: str, param: str) -> dict[str, Any]:
    header, sep, payload = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not mime:
        raise TranslationError("data URLs must be base64 encoded with a media type", param=param)
    return {"inlineData": {"mimeType": mime, "data": payload}}


def _url_part(url: Any, param: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise TranslationError("url must be a string", param=param)
    if url.startswith("data:"):
        return _data_url(url, param)
    if url.startswith(("https://", "http://", "gs://")):
        path = url.split("?", 1)[0].split("#", 1)[0]
        ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
        return {"fileData": {"mimeType": _MIME_BY_EXT.get(ext, "image/jpeg"), "fileUri": url}}
    raise TranslationError("url must be an http(s) or gs:// URL or a base64 data URL", param=param)


def _parts(content: Any, param: str) -> list[dict[str, Any]]:
    """Gemini parts for a user/assistant message's content (empty text is left out)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if content is None:
        return []
    parts: list[dict[str, Any]] = []
    for kind, part, p in content_parts(content, param):
        if kind == "text":
            if text := part["text"]:
                parts.append({"text": text})
        elif kind == "image_url":
            iu = part.get("image_url")
            parts.append(_url_part(iu.get("url") if isinstance(iu, dict) else iu, p))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise TranslationError("input_audio needs base64 `data`", param=p)
            fmt = audio.get("format") or "wav"
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}})
        elif kind == "file":
            f = part.get("file")
            data = f.get("file_data") if isinstance(f, dict) else None
            if not isinstance(data, str):
                raise TranslationError(
                    "file parts need `file_data` (file_id is not supported for this backend)",
                    param=p,
                )
            parts.append(_url_part(data, p))
        elif kind == "refusal":  # an earlier assistant refusal, replayed as text
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal:
                parts.append({"text": refusal})
        else:
            raise unsupported_part(kind, p)
    return parts


def _call_parts(tool_calls: Any, param: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """functionCall parts for an assistant message's tool_calls; records id -> name."""
    if not isinstance(tool_calls, list):
        raise TranslationError("tool_calls must be an array", param=param)
    parts: list[dict[str, Any]] = []
    for k, tc in enumerate(tool_calls):
        p = f"{param}[{k}]"
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TranslationError("tool calls need function.name", param=p)
        name: str = fn["name"]
        args: Any = fn.get("arguments")
        if args is None or args == "":
            args = {}
        elif isinstance(args, str):
            try:
                args = orjson.loads(args)
            except orjson.JSONDecodeError:
                raise TranslationError(
                    "function.arguments must be a JSON object", param=f"{p}.function.arguments"
                ) from None
        if not isinstance(args, dict):
            raise TranslationError(
                "function.arguments must be a JSON object", param=f"{p}.function.arguments"
            )
        tc_id = tc.get("id")
        if isinstance(tc_id, str):
            names[tc_id] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        extra = tc.get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        sig = google.get("thought_signature") if isinstance(google, dict) else None
        if isinstance(sig, str) and sig:
            part["thoughtSignature"] = sig
        elif k == 0:  # Gemini 3 validates the first call of each step; others may omit it
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _response_part(name: str, content: Any, param: str) -> dict[str, Any]:
    text = _text_of(content, param)
    value: Any = text
    if text[:1] in ("{", "["):
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(text)
    return {"functionResponse": {"name": name, "response": {"content": value}}}


def _contents(msgs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Split OpenAI messages into system texts and Gemini contents (same roles merged)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name
    for m, param in messages_of(msgs):
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, f"{param}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            g_role = "user"
            parts = _parts(content, f"{param}.content")
        elif role == "assistant":
            g_role = "model"
            parts = _parts(content, f"{param}.content")
            if m.get("tool_calls"):
                parts += _call_parts(m["tool_calls"], f"{param}.tool_calls", names)
            elif isinstance(fc := m.get("function_call"), dict):  # legacy functions API
                parts += _call_parts([{"function": fc}], f"{param}.function_call", names)
        elif role == "tool":
            g_role = "user"
            tc_id = m.get("tool_call_id")
            name = names.get(tc_id) if isinstance(tc_id, str) else None
            if name is None and isinstance(tc_id, str):
                match = _TOOL_CALL_ID.fullmatch(tc_id)  # our own id format carries the name
                name = match.group(1) if match else None
            if name is None:
                raise TranslationError(
                    "tool_call_id does not match any earlier assistant tool call",
                    param=f"{param}.tool_call_id",
                )
            parts = [_response_part(name, content, f"{param}.content")]
        elif role == "function":
            name = m.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError("function messages need a name", param=f"{param}.name")
            g_role = "user"
            parts = [_response_part(name, content, f"{param}.content")]
        else:
            raise TranslationError(f"unsupported role {role!r}", param=f"{param}.role")
        if not parts:
            continue  # Gemini rejects empty turns and empty text parts
        if out and out[-1]["role"] == g_role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": g_role, "parts": parts})
    if not out:
        raise TranslationError(
            "at least one user or assistant message with content is required", param="messages"
        )
    return system, out


def _function_decl(fn: Any, param: str) -> dict[str, Any]:
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise TranslationError("functions need a name", param=param)
    decl: dict[str, Any] = {"name": fn["name"]}
    desc = fn.get("description")
    if isinstance(desc, str) and desc:
        decl["description"] = desc
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise TranslationError("parameters must be a JSON Schema object", param=param)
        decl["parametersJsonSchema"] = params
    return decl


def _declarations(req: dict[str, Any]) -> list[dict[str, Any]]:
    tools = req.get("tools")
    decls: list[dict[str, Any]] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise TranslationError("tools must be an array", param="tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise TranslationError(
                    f"tool type {kind!r} is not supported for this backend",
                    param=f"tools[{i}].type",
                )
            decls.append(_function_decl(tool.get("function"), f"tools[{i}].function"))
    functions = req.get("functions")  # legacy functions API
    if isinstance(functions, list):
        decls += [_function_decl(fn, f"functions[{i}]") for i, fn in enumerate(functions)]
    return decls


def _calling_config(
    req: dict[str, Any], decls: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(functionCallingConfig or None, declarations to send) from tool_choice/function_call."""
    choice = req.get("tool_choice")
    param = "tool_choice"
    if choice is None:
        choice = req.get("function_call")
        param = "function_call"
        if isinstance(choice, dict) and "name" in choice:  # legacy {"name": ...}
            choice = {"type": "function", "function": {"name": choice["name"]}}
    if choice is None:
        return None, decls
    declared = {d["name"] for d in decls}
    if choice == "auto":
        return ({"mode": "AUTO"} if decls else None), decls
    if choice == "none":
        return ({"mode": "NONE"} if decls else None), decls
    if choice == "required":
        if not decls:
            raise TranslationError("tool_choice 'required' needs tools", param=param)
        return {"mode": "ANY"}, decls
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or name not in declared:
            raise TranslationError(f"{param} names a function that is not in tools", param=param)
        return {"mode": "ANY", "allowedFunctionNames": [name]}, decls
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        allowed = allowed if isinstance(allowed, dict) else {}
        names = [
            t["function"]["name"]
            for t in allowed.get("tools") or ()
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and t["function"].get("name") in declared
        ]
        if not names:
            raise TranslationError("allowed_tools names no declared function", param=param)
        if allowed.get("mode") == "required":
            return {"mode": "ANY", "allowedFunctionNames": names}, decls
        # Gemini allows a name list only with ANY: for "auto", send just the allowed ones.
        return {"mode": "AUTO"}, [d for d in decls if d["name"] in names]
    raise TranslationError(f"unsupported {param} value", param=param)


def _response_format(rf: Any, gc: dict[str, Any]) -> None:
    if rf is None:
        return
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        gc["responseMimeType"] = "application/json"
        return
    if kind == "json_schema":
        gc["responseMimeType"] = "application/json"
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if schema is not None:
            if not isinstance(schema, dict):
                raise TranslationError(
                    "json_schema.schema must be an object", param="response_format"
                )
            gc["responseJsonSchema"] = schema
        return
    raise TranslationError(f"unsupported response_format type {kind!r}", param="response_format")


def _generation_config(req: dict[str, Any]) -> dict[str, Any]:
    gc: dict[str, Any] = {}
    if (max_tokens := max_tokens_of(req)) is not None:
        gc["maxOutputTokens"] = max_tokens
    for key, g_key in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")):
        v = req.get(key)
        if v is not None:
            gc[g_key] = number(v, key)
    for key, g_key in (
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        v = req.get(key)
        if v is not None and number(v, key) != 0:  # many SDKs send 0: not worth a 400
            gc[g_key] = v
    if stop := stop_of(req):
        gc["stopSequences"] = stop
    seed = req.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TranslationError("seed must be an integer", param="seed")
        gc["seed"] = seed
    n = req.get("n")
    if n is not None and positive_int(n, "n") != 1:
        gc["candidateCount"] = n
    _response_format(req.get("response_format"), gc)
    effort = req.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _THINKING_BUDGET:
            raise TranslationError(
                "reasoning_effort must be none, minimal, low, medium or high",
                param="reasoning_effort",
            )
        budget = _THINKING_BUDGET[effort]
        # Asking for reasoning also asks to see it: thought summaries -> reasoning_content.
        gc["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return gc


def request_from_openai(req: dict[str, Any]) -> bytes:
    """OpenAI chat request -> GenerateContentRequest body (the model goes in the path).

    OpenAI params with no Gemini counterpart (logprobs, logit_bias, user, store, ...) are
    dropped; unsupported content or tool types are a 400, never silently lost.
    """
    system, contents = _contents(req.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    decls = _declarations(req)
    config, decls = _calling_config(req, decls)
    if decls:
        out["tools"] = [{"functionDeclarations": decls}]
    if config is not None:
        out["toolConfig"] = {"functionCallingConfig": config}
    gc = _generation_config(req)
    if gc:
        out["generationConfig"] = gc
    return orjson.dumps(out)


# --------------------------------------------------------------------------- responses


def _usage(um: Any) -> Usage:
    """Usage of a usageMetadata object: completion includes thoughts (`thoughtsTokenCount`,
    also the reasoning count), cached is `cachedContentTokenCount` (inside the prompt)."""
    if not isinstance(um, dict):
        return Usage(0, 0)
    thoughts = count(um.get("thoughtsTokenCount"))
    prompt = count(um.get("promptTokenCount")) + count(um.get("toolUsePromptTokenCount"))
    completion = count(um.get("candidatesTokenCount")) + thoughts
    return Usage(prompt, completion, count(um.get("cachedContentTokenCount")), thoughts)


def usage_of(resp: dict[str, Any]) -> Usage | None:
    """Usage of a response (completion includes thinking), None without usageMetadata."""
    um = resp.get("usageMetadata")
    return _usage(um) if isinstance(um, dict) else None


def _tool_call(
    fc: dict[str, Any], part: dict[str, Any], k: int, streamed: bool = False
) -> dict[str, Any]:
    """OpenAI tool call for a functionCall part, the k-th call of its candidate.

    Streamed, the call comes whole in one delta (Gemini does not split arguments), with its
    `index` as OpenAI stream deltas carry it.
    """
    name = fc.get("name")
    name = name if isinstance(name, str) else ""
    fc_id = fc.get("id")
    args = fc.get("args")
    call: dict[str, Any] = {"index": k} if streamed else {}
    call["id"] = fc_id if isinstance(fc_id, str) and fc_id else f"call_{k}_{name}"
    call["type"] = "function"
    call["function"] = {"name": name, "arguments": orjson.dumps(args or {}).decode()}
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        call["extra_content"] = {"google": {"thought_signature": sig}}
    return call


def _choice(cand: dict[str, Any], index: int) -> dict[str, Any]:
    content = cand.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        fc = part.get("functionCall")
        if isinstance(fc, dict):
            calls.append(_tool_call(fc, part, len(calls)))
            continue
        text = part.get("text")
        if isinstance(text, str):
            (thoughts if part.get("thought") else texts).append(text)
    text = "".join(texts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(cand.get("finishReason"), bool(calls)),
    }


def _chat_id(resp: dict[str, Any]) -> str:
    rid = resp.get("responseId")
    return f"chatcmpl-{rid if isinstance(rid, str) and rid else os.urandom(12).hex()}"


def response_to_openai(resp: dict[str, Any], model: str) -> bytes:
    """GenerateContentResponse -> OpenAI `chat.completion` body (one choice per candidate)."""
    cands = resp.get("candidates")
    if isinstance(cands, list) and cands:
        choices = [
            _choice(c, idx if isinstance(idx := c.get("index"), int) and 0 <= idx < 2**31 else i)
            for i, c in enumerate(cands)
            if isinstance(c, dict)
        ]
    else:  # the prompt itself was blocked (promptFeedback.blockReason), or nothing came back
        pf = resp.get("promptFeedback")
        blocked = isinstance(pf, dict) and bool(pf.get("blockReason"))
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter" if blocked else "stop",
            }
        ]
    out = {
        "id": _chat_id(resp),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": openai_usage(*_usage(resp.get("usageMetadata"))),
    }
    return orjson.dumps(out)


def _map_error(status: int, err: dict[str, Any]) -> tuple[str, str | None]:
    gstatus = err.get("status")
    for d in err.get("details") or ():
        if isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID":
            return "authentication_error", "invalid_api_key"
    if isinstance(gstatus, str) and gstatus in _ERRORS:
        type_, code = _ERRORS[gstatus]
    elif status in _STATUS_ERRORS:
        type_, code = _STATUS_ERRORS[status]
    else:
        type_, code = status_error(status)
    if type_ == "invalid_request_error" and code is None:
        msg = err.get("message")
        if isinstance(msg, str) and context_overflow(msg):
            code = "context_length_exceeded"
    return type_, code


def _error_fields(status: int, body: bytes) -> tuple[str, str, str | None]:
    """(message, OpenAI type, code) for a Google error body."""
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj:  # streamGenerateContent without alt=sse wraps it
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        type_, ocode = _map_error(code if isinstance(code, int) and not status else status, err)
        msg = err.get("message")
        return (msg if isinstance(msg, str) else f"upstream error (HTTP {status})"), type_, ocode
    type_, ocode = _map_error(status, {})
    return upstream_error_message(status, body), type_, ocode


def error_to_openai(status: int, body: bytes) -> bytes:
    """Google error response -> OpenAI error body (the caller keeps the HTTP status)."""
    msg, type_, code = _error_fields(status, body)
    return error_body(msg, type_, code)


# ----------------------------------------------------------------------------- streams


class StreamToOpenAI(SSETranslator):
    """Translate a Gemini `alt=sse` stream into OpenAI `chat.completion.chunk` SSE.

    Gemini has no end-of-stream event: the body just ends. So [DONE] (after the usage chunk)
    is sent by `finish()`, and only if every candidate reported a finishReason; otherwise the
    client gets an error chunk, never a clean-looking but truncated answer.
    """

    __slots__ = ("_include_usage", "_open", "_tool_calls", "_w")

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._w = ChunkWriter(model, include_usage)  # started by the first event
        self._open: dict[int, bool] = {}  # candidate index -> finished?
        self._tool_calls: dict[int, int] = {}  # candidate index -> tool calls so far

    # -- internals

    def _end(self, out: list[bytes]) -> None:
        """Gemini's normal end: [DONE] if every candidate finished, else an error chunk."""
        if self._open and all(self._open.values()):
            if self._include_usage:
                out.append(self._w.usage(openai_usage(*(self.usage or Usage(0, 0)))))
            out.append(DONE_FRAME)
            self.done = True
        else:
            out.append(self._fail("upstream stream ended before finishReason", "api_error",
                                  STREAM_TRUNCATED))

    def _text(self, index: int, text: str, thought: bool) -> bytes:
        if self.first_token_at is None:  # inline: the hot path
            self.first_token_at = time.monotonic()
        if index == 0:
            return self._w.reasoning(text) if thought else self._w.content(text)
        return self._w.delta({"reasoning_content" if thought else "content": text}, None, index)

    def _event(self, ev: SSEEvent, out: list[bytes], lenient: bool = False) -> None:
        obj = self._json(ev.data, out, lenient)
        if obj is None:
            return
        err = obj.get("error")
        if isinstance(err, dict):
            status = err.get("code")
            type_, code = _map_error(status if isinstance(status, int) else 0, err)
            msg = err.get("message")
            out.append(self._fail(msg if isinstance(msg, str) else "upstream error", type_, code))
            return
        if self._w.id is None:
            self._w.start(_chat_id(obj))
        um = obj.get("usageMetadata")
        if isinstance(um, dict):
            self.usage = _usage(um)
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not cands:
            pf = obj.get("promptFeedback")
            if isinstance(pf, dict) and pf.get("blockReason"):
                self._open_choice(0, out)
                self._close_choice(0, "content_filter", out)
            return
        for i, cand in enumerate(cands):
            if isinstance(cand, dict):
                idx = cand.get("index", i)
                self._candidate(idx if isinstance(idx, int) else i, cand, out)

    def _open_choice(self, index: int, out: list[bytes]) -> None:
        if index not in self._open:
            self._open[index] = False
            out.append(self._w.role(index))

    def _close_choice(self, index: int, reason: str, out: list[bytes]) -> None:
        if not self._open.get(index):
            self._open[index] = True
            if index == 0:
                self.finish_reason = reason
            out.append(self._w.finish(reason, index))

    def _candidate(self, index: int, cand: dict[str, Any], out: list[bytes]) -> None:
        self._open_choice(index, out)
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts or ():
            if not isinstance(part, dict):
                continue
            fc = part.get("functionCall")
            if isinstance(fc, dict):
                k = self._tool_calls.get(index, 0)
                self._tool_calls[index] = k + 1
                self._token()
                call = _tool_call(fc, part, k, streamed=True)
                out.append(self._w.delta({"tool_calls": [call]}, None, index))
                continue
            text = part.get("text")
            if isinstance(text, str) and text:
                out.append(self._text(index, text, bool(part.get("thought"))))
        reason = cand.get("finishReason")
        if isinstance(reason, str) and reason:
            self._close_choice(index, finish_reason(reason, index in self._tool_calls), out)


# -------------------------------------------------------------------------- embeddings


def _embedding_inputs(req: dict[str, Any]) -> list[str]:
    value = req.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TranslationError("input must be a string or a non-empty array", param="input")
    if not all(isinstance(v, str) for v in value):
        raise TranslationError(
            "token-array input is not supported for this backend; send text", param="input"
        )
    if not all(value):
        raise TranslationError("input must not contain empty strings", param="input")
    return value


def embeddings_request(
    req: dict[str, Any], model: str, vertex: bool, *, project: str = "", location: str = ""
) -> tuple[str, bytes]:
    """OpenAI embeddings request -> (path, body): batchEmbedContents, or Vertex `:predict`."""
    texts = _embedding_inputs(req)
    dims = req.get("dimensions")
    if dims is not None:
        dims = positive_int(dims, "dimensions")
    if vertex:
        if not project or not location:
            raise ValueError("vertex embeddings need project and location")
        body: dict[str, Any] = {"instances": [{"content": t} for t in texts]}
        if dims is not None:
            body["parameters"] = {"outputDimensionality": dims}
        path = f"/v1/{_vertex_resource(project, location, model)}:predict"
        return path, orjson.dumps(body)
    resource = _gemini_resource(model)
    reqs: list[dict[str, Any]] = []
    for t in texts:
        one: dict[str, Any] = {"model": resource, "content": {"parts": [{"text": t}]}}
        if dims is not None:
            one["outputDimensionality"] = dims
        reqs.append(one)
    return f"/v1beta/{resource}:batchEmbedContents", orjson.dumps({"requests": reqs})


def embeddings_usage_of(resp: dict[str, Any], vertex: bool) -> Usage | None:
    """Usage(prompt_tokens, 0): Vertex counts tokens per instance; AI Studio reports none."""
    if vertex:
        total = 0
        seen = False
        for p in _list(resp.get("predictions")):
            stats = p.get("embeddings", {}).get("statistics") if isinstance(p, dict) else None
            if isinstance(stats, dict) and isinstance(stats.get("token_count"), int | float):
                total += int(stats["token_count"])
                seen = True
        return Usage(total, 0) if seen else None
    um = resp.get("usageMetadata")
    if isinstance(um, dict) and isinstance(um.get("promptTokenCount"), int):
        return Usage(count(um["promptTokenCount"]), 0)
    return None


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _values(embedding: Any) -> list[float]:
    """One embedding's numbers; a ValueError (the answer is malformed: a 502) otherwise."""
    values = embedding.get("values") if isinstance(embedding, dict) else None
    if values is None:
        return []
    if not isinstance(values, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values):
        raise ValueError("embedding values are not a list of numbers")
    return values


def _vector(values: list[float], encoding_format: str) -> Any:
    if encoding_format == "base64":  # what the openai SDK asks for: float32 little-endian
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings_response(
    body: bytes, model: str, vertex: bool, *, encoding_format: str = "float"
) -> bytes:
    """Gemini/Vertex embeddings response -> OpenAI `list` of `embedding` objects."""
    resp = orjson.loads(body)
    if not isinstance(resp, dict):
        raise ValueError("embeddings response is not an object")
    if vertex:
        items = [p.get("embeddings") for p in _list(resp.get("predictions"))
                 if isinstance(p, dict)]
    else:
        items = _list(resp.get("embeddings"))
    vectors = [_values(e) for e in items]
    prompt = (embeddings_usage_of(resp, vertex) or Usage(0, 0)).prompt
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return orjson.dumps(out)
