"""OpenAI-compatible simulator: chat completions (tools, JSON modes, multimodal parts),
embeddings and models. vLLM and TGI serve the same wire format under their own kinds.
"""

import base64
import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import (
    INVALID_JSON,
    SIM_BODY,
    SSE_HEADERS,
    BodyHandler,
    Completion,
    Provider,
    SimError,
    SimState,
    content_text,
    count_words,
    json_response,
)
from sim.vllm_engine import AsyncEngine, Seq

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLES_TEXT: Final = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"
_NEEDS_CONTENT: Final = frozenset({"system", "developer", "user", "tool"})
_MODELS: Final = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
# Content part types each role may send (images, audio and files only from the user).
_PART_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
_IMAGE_URL: Final = re.compile(r"https?://|data:image/[\w.+-]+;base64,", re.IGNORECASE)
_DETAILS: Final = ("auto", "low", "high")
_AUDIO_FORMATS: Final = ("wav", "mp3")
_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MAX_TOOLS: Final = 128
_TOOL_CHOICES: Final = ("none", "auto", "required")
_FORMATS: Final = ("text", "json_object", "json_schema")
_QUERY_WORDS: Final = 6  # words of the user's text a simulated tool call passes on
_JSON_PIECE: Final = 8  # at most this many characters of arguments per streamed delta
_SCHEMA_DEPTH: Final = 8
_ENCODINGS: Final = ("float", "base64")
_EMBED_DIMS: Final = 8
_MAX_EMBED_DIMS: Final = 3072
_MAX_EMBED_INPUTS: Final = 2048
_PARSE_ERROR: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON.)"
)
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


# --- validation of the newer request fields ------------------------------------------------


def _field(obj: dict[str, Any], key: str, at: str, typ: type, type_text: str) -> Any:
    """`obj[key]`, required and of type `typ`; errors name the full path like the real API."""
    where = f"{at}.{key}" if at else key
    value = obj.get(key)
    if value is None:
        raise _Invalid(
            f"Missing required parameter: '{where}'.", where, "missing_required_parameter"
        )
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise _Invalid(
            f"Invalid type for '{where}': expected {type_text}, but got {_type_name(value)} "
            "instead.",
            where,
            "invalid_type",
        )
    return value


def _optional_field(obj: dict[str, Any], key: str, at: str, typ: type, type_text: str) -> Any:
    return None if obj.get(key) is None else _field(obj, key, at, typ, type_text)


def _supported(values: tuple[str, ...]) -> str:
    """'a', 'b', and 'c' — the way the API lists allowed values."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _invalid_value(value: Any, where: str, allowed: tuple[str, ...]) -> _Invalid:
    return _Invalid(
        f"Invalid value: '{value}'. Supported values are: {_supported(allowed)}.",
        where,
        "invalid_value",
    )


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise _Invalid(
            f"Invalid '{where}': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]+$'.",
            where,
            "invalid_value",
        )


def _validate_parts(where: str, role: str, content: list[Any]) -> None:
    """Content parts: images, audio and files only in user messages, as the API insists."""
    allowed = _PART_TYPES.get(role, ("text",))
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _Invalid(
                f"Invalid type for '{at}': expected an object, but got {_type_name(part)} instead.",
                at,
                "invalid_type",
            )
        ptype = _field(part, "type", at, str, "a string")
        if ptype not in allowed:
            if ptype == "image_url" and ptype in _PART_TYPES["user"]:
                raise _Invalid(
                    "Image URLs are only allowed for messages with role 'user', but this "
                    f"message with role '{role}' contains an image URL.",
                    f"{where}.content",
                    "invalid_value",
                )
            raise _invalid_value(ptype, f"{at}.type", allowed)
        if ptype in ("text", "refusal"):
            _field(part, ptype, at, str, "a string")
        elif ptype == "image_url":
            image = _field(part, "image_url", at, dict, "an object")
            url = _field(image, "url", f"{at}.image_url", str, "a string")
            if not _IMAGE_URL.match(url):
                raise _Invalid(
                    f"Invalid '{at}.image_url.url'. Expected a valid URL or a base64-encoded "
                    "data URL with an image MIME type (e.g. 'data:image/png;base64,"
                    "aW1nIGJ5dGVzIGhlcmU=').",
                    f"{at}.image_url.url",
                    "invalid_value",
                )
            detail = image.get("detail")
            if detail is not None and detail not in _DETAILS:
                raise _invalid_value(detail, f"{at}.image_url.detail", _DETAILS)
        elif ptype == "input_audio":
            audio = _field(part, "input_audio", at, dict, "an object")
            _field(audio, "data", f"{at}.input_audio", str, "a string")
            fmt = _field(audio, "format", f"{at}.input_audio", str, "a string")
            if fmt not in _AUDIO_FORMATS:
                raise _invalid_value(fmt, f"{at}.input_audio.format", _AUDIO_FORMATS)
        elif ptype == "file":
            file = _field(part, "file", at, dict, "an object")
            if not isinstance(file.get("file_id"), str) and not isinstance(
                file.get("file_data"), str
            ):
                raise _Invalid(
                    f"Invalid '{at}.file': one of 'file_id' or 'file_data' must be provided.",
                    f"{at}.file",
                    "invalid_value",
                )


def _validate_tool_calls(where: str, calls: Any) -> list[str]:
    """An assistant message's `tool_calls`; returns their ids."""
    if not isinstance(calls, list):
        raise _Invalid(
            f"Invalid type for '{where}.tool_calls': expected an array, but got "
            f"{_type_name(calls)} instead.",
            f"{where}.tool_calls",
            "invalid_type",
        )
    ids: list[str] = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _Invalid(
                f"Invalid type for '{at}': expected an object, but got {_type_name(call)} instead.",
                at,
                "invalid_type",
            )
        ids.append(_field(call, "id", at, str, "a string"))
        ctype = _field(call, "type", at, str, "a string")
        if ctype != "function":
            raise _invalid_value(ctype, f"{at}.type", ("function",))
        function = _field(call, "function", at, dict, "an object")
        _field(function, "name", f"{at}.function", str, "a string")
        _field(function, "arguments", f"{at}.function", str, "a string")
    return ids


def _validate_tool_turns(messages: list[dict[str, Any]]) -> None:
    """Tool messages answer the tool_calls of the assistant message just before them, and
    every call gets its answer before the conversation goes on."""
    ids: list[str] = []
    pending: list[str] = []
    asked_at = -1
    for i, msg in enumerate(messages):
        if msg["role"] == "tool":
            if not ids:
                raise _Invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            call_id = msg["tool_call_id"]
            if call_id not in ids:
                raise _Invalid(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{i}].tool_call_id",
                )
            if call_id in pending:
                pending.remove(call_id)
            continue
        if pending:
            break
        calls = msg.get("tool_calls") if msg["role"] == "assistant" else None
        ids = [c["id"] for c in calls] if calls else []
        pending = list(ids)
        asked_at = i
    if pending:
        raise _Invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            f"messages.[{asked_at}].role",
        )


def _validate_tools(body: dict[str, Any]) -> None:
    """`tools`, `tool_choice` and `parallel_tool_calls`, with the real API's wording."""
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid(
                f"Invalid type for 'tools': expected an array, but got {_type_name(tools)} "
                "instead.",
                "tools",
                "invalid_type",
            )
        if not tools:
            raise _Invalid(
                "Invalid 'tools': empty array. Expected an array with minimum length 1, but got "
                "an empty array instead.",
                "tools",
                "empty_array",
            )
        if len(tools) > _MAX_TOOLS:
            raise _Invalid(
                f"Invalid 'tools': array too long. Expected an array with maximum length "
                f"{_MAX_TOOLS}, but got an array with length {len(tools)} instead.",
                "tools",
                "array_above_max_length",
            )
        for j, tool in enumerate(tools):
            at = f"tools[{j}]"
            if not isinstance(tool, dict):
                raise _Invalid(
                    f"Invalid type for '{at}': expected an object, but got {_type_name(tool)} "
                    "instead.",
                    at,
                    "invalid_type",
                )
            ttype = _field(tool, "type", at, str, "a string")
            if ttype != "function":
                raise _invalid_value(ttype, f"{at}.type", ("function",))
            function = _field(tool, "function", at, dict, "an object")
            fat = f"{at}.function"
            name = _field(function, "name", fat, str, "a string")
            _check_name(name, f"{fat}.name")
            _optional_field(function, "description", fat, str, "a string")
            _optional_field(function, "parameters", fat, dict, "an object")
            _optional_field(function, "strict", fat, bool, "a boolean")
            names.append(name)
    choice = body.get("tool_choice")
    if choice is not None:
        if not names:
            raise _Invalid(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                "are specified.",
                "tool_choice",
            )
        if isinstance(choice, str):
            if choice not in _TOOL_CHOICES:
                raise _invalid_value(choice, "tool_choice", _TOOL_CHOICES)
        elif isinstance(choice, dict):
            ctype = _field(choice, "type", "tool_choice", str, "a string")
            if ctype != "function":
                raise _invalid_value(ctype, "tool_choice.type", ("function",))
            function = _field(choice, "function", "tool_choice", dict, "an object")
            name = _field(function, "name", "tool_choice.function", str, "a string")
            if name not in names:
                raise _Invalid(
                    f"Invalid value for 'tool_choice': function '{name}' is not one of the "
                    "functions in 'tools'.",
                    "tool_choice",
                    "invalid_value",
                )
        else:
            raise _Invalid(
                "Invalid type for 'tool_choice': expected one of a string or an object, but "
                f"got {_type_name(choice)} instead.",
                "tool_choice",
                "invalid_type",
            )
    parallel = _optional_field(body, "parallel_tool_calls", "", bool, "a boolean")
    if parallel is not None and not names:
        raise _Invalid(
            "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed "
            "when 'tools' are specified.",
            "parallel_tool_calls",
        )


def _validate_response_format(body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    fmt = _optional_field(body, "response_format", "", dict, "an object")
    if fmt is None:
        return
    ftype = _field(fmt, "type", "response_format", str, "a string")
    if ftype not in _FORMATS:
        raise _invalid_value(ftype, "response_format.type", _FORMATS)
    if ftype == "json_schema":
        spec = _field(fmt, "json_schema", "response_format", dict, "an object")
        at = "response_format.json_schema"
        _check_name(_field(spec, "name", at, str, "a string"), f"{at}.name")
        _optional_field(spec, "schema", at, dict, "an object")
        _optional_field(spec, "strict", at, bool, "a boolean")
    elif ftype == "json_object" and not any(
        "json" in content_text(m.get("content")).lower() for m in messages
    ):
        raise _Invalid(
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            "messages",
        )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not model:
        raise _Invalid("you must provide a model parameter")
    if not isinstance(model, str):
        raise _Invalid(
            f"Invalid type for 'model': expected a string, but got {_type_name(model)} instead.",
            "model",
            "invalid_type",
        )
    return model


def _validate(body: Any) -> tuple[list[dict[str, Any]], int | None, bool, bool]:
    """Check a request like the real API; returns (messages, max_tokens, stream, usage)."""
    if not isinstance(body, dict):
        raise _Invalid(_PARSE_ERROR)
    _model(body)
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
        if isinstance(content, list):
            _validate_parts(where, role, content)
        if role == "tool":
            _field(msg, "tool_call_id", where, str, "a string")
        elif role == "assistant" and msg.get("tool_calls") is not None:
            _validate_tool_calls(where, msg["tool_calls"])
    _validate_tool_turns(messages)
    _validate_tools(body)
    _validate_response_format(body, messages)
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


# --- what the simulated model answers ------------------------------------------------------


@dataclass(slots=True)
class _ToolCall:
    id: str
    name: str
    arguments: str

    def message_part(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _tool_calls(
    body: dict[str, Any], last_user: str, after_tool: bool, new_id: Callable[[], str]
) -> list[_ToolCall]:
    """The calls to answer with: none unless tools are given and either the choice forces a
    call or the user asks to "use tool(s)" (and this turn is not already a tool's result)."""
    tools: list[dict[str, Any]] = body.get("tools") or []
    choice = body.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return []
    text = last_user.lower()
    forced = choice == "required" or isinstance(choice, dict)
    if not forced and (after_tool or "use tool" not in text):
        return []
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict):
        names = [choice["function"]["name"]]
    elif body.get("parallel_tool_calls") is not False and len(names) >= 2 and "use tools" in text:
        names = names[:2]
    else:
        names = names[:1]
    query = " ".join(last_user.split()[:_QUERY_WORDS]) or "(no text)"
    arguments = json.dumps({"query": query}, ensure_ascii=False)
    return [_ToolCall("call_" + new_id(), name, arguments) for name in names]


def _pieces(text: str) -> list[str]:
    """`text` in at least two pieces (when it has two characters), as argument deltas come."""
    size = max(1, min(_JSON_PIECE, len(text) // 2))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tool_deltas(calls: list[_ToolCall]) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """(first delta, the rest): each call opens with id/name and empty arguments, then its
    arguments JSON follows in pieces; the SDK's stream helpers reassemble by `index`."""

    def opening(index: int, call: _ToolCall) -> dict[str, Any]:
        return {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }

    first = {
        "role": "assistant",
        "content": None,
        "tool_calls": [opening(0, calls[0])],
        "refusal": None,
    }

    def rest() -> Iterator[dict[str, Any]]:
        for index, call in enumerate(calls):
            if index:
                yield {"tool_calls": [opening(index, call)]}
            for piece in _pieces(call.arguments):
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}

    return first, rest()


def _resolve(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    for key in ref.removeprefix("#/").split("/"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _fill(schema: Any, root: dict[str, Any], text: str, depth: int = 0) -> Any:
    """A value matching `schema` (required properties only, first enum/anyOf choice)."""
    if not isinstance(schema, dict) or depth > _SCHEMA_DEPTH:
        return text
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _fill(_resolve(root, ref), root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _fill((typed or options)[0], root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        keys = required if isinstance(required, list) else list(props)
        return {k: _fill(props.get(k), root, text, depth + 1) for k in keys if isinstance(k, str)}
    if kind == "array":
        low = schema.get("minItems")
        count = min(max(low, 1), 8) if isinstance(low, int) else 1
        return [_fill(schema.get("items"), root, text, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        value = max(42, low) if isinstance(low, int | float) else 42
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _formatted(completion: Completion, fmt: Any) -> Completion:
    """The reply as JSON when `response_format` asks for it (same length semantics)."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return completion
    text = completion.text
    if fmt["type"] == "json_schema":
        schema = fmt["json_schema"].get("schema")
        value = _fill(schema, schema, text) if isinstance(schema, dict) else {"answer": text}
    else:
        value = {"answer": text}
    out = orjson.dumps(value).decode()
    return Completion(out.split(" "), completion.truncated, completion.prompt_tokens)


# --- embeddings ----------------------------------------------------------------------------


def _bad_input() -> _Invalid:
    return _Invalid(
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        "input",
    )


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    """str | list[str] | list[int] | list[list[int]] -> one item per vector to return."""

    def tokens(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
        )

    if isinstance(value, str):
        items: list[Any] = [value]
    elif tokens(value):
        items = [value]
    elif isinstance(value, list) and value and len(value) <= _MAX_EMBED_INPUTS:
        items = value
        if not all(isinstance(v, str) for v in items) and not all(tokens(v) for v in items):
            raise _bad_input()
    else:
        raise _bad_input()
    if any(isinstance(v, str) and not v for v in items):
        raise _bad_input()
    return items


def _validate_embeddings(body: Any) -> tuple[str, list[str | list[int]], str, int]:
    """(model, inputs, encoding_format, dimensions) of a valid embeddings request."""
    if not isinstance(body, dict):
        raise _Invalid(_PARSE_ERROR)
    model = _model(body)
    if body.get("input") is None:
        raise _Invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    inputs = _embedding_inputs(body["input"])
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in _ENCODINGS:
        raise _invalid_value(encoding, "encoding_format", _ENCODINGS)
    dims = _optional_int(body, "dimensions")
    if dims is not None:
        if "ada-002" in model:
            raise _Invalid("This model does not support specifying dimensions.", "dimensions")
        if dims > _MAX_EMBED_DIMS:
            raise _Invalid(
                f"Invalid 'dimensions': integer above maximum value. Expected a value <= "
                f"{_MAX_EMBED_DIMS}, but got {dims} instead.",
                "dimensions",
                "integer_above_max_value",
            )
    _optional_field(body, "user", "", str, "a string")
    return model, inputs, encoding, dims or _EMBED_DIMS


def embedding_vector(item: str | list[int], dims: int) -> list[float]:
    """A deterministic unit vector for one input (float32-exact, so base64 round-trips)."""
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = b"".join(
        hashlib.sha256(i.to_bytes(4, "little") + key).digest() for i in range((dims * 4 + 31) // 32)
    )
    values = [u / 2**31 - 1.0 for u in struct.unpack(f"<{dims}I", raw[: dims * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dims}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dims}f", packed))


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


# --- the providers -------------------------------------------------------------------------


class OpenAIProvider(Provider):
    """Speaks the OpenAI Chat Completions and Embeddings wire formats, errors included."""

    kind = "openai"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("POST", "/v1/embeddings", self.embeddings),
            ("GET", "/v1/models", self.models),
        ]

    def error_body(self, err: SimError) -> bytes:
        etype, default_code = _STATUS_ERRORS.get(
            err.status, ("server_error" if err.status >= 500 else "invalid_request_error", None)
        )
        error = {
            "message": err.message,
            "type": etype,
            "param": err.param,
            "code": err.code or default_code,
        }
        return orjson.dumps({"error": error})

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

    def decorate(self, response: dict[str, Any]) -> None:
        """Hook for provider-specific fields of a non-streamed completion (Azure's filters)."""

    def stream_prelude(self) -> list[bytes]:
        """Hook: SSE events a provider sends before the first chunk (Azure's filters)."""
        return []

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
        return await self.chat(request, body)

    async def embeddings(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        return await self.embed(request, body)

    async def chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        """A chat completion for an authenticated request (shared by the OpenAI-like kinds)."""
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
            for call in msg.get("tool_calls") or ():
                prompt_tokens += count_words(call["function"]["arguments"])
            if msg["role"] == "user":
                last_user = text
        last = messages[-1]
        after_tool = last["role"] == "tool"
        model: str = body["model"]
        cid = "chatcmpl-" + self.state.new_id()
        created = int(time.time())
        calls = _tool_calls(body, last_user, after_tool, self.state.new_id)
        if calls:
            tokens = max(1, sum(count_words(c.arguments) for c in calls))
            usage = _usage(prompt_tokens, tokens)
            if stream:
                first, rest = _tool_deltas(calls)
                return await self._stream(
                    request, model, cid, created, include_usage, first, rest, "tool_calls", usage
                )
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [c.message_part() for c in calls],
                "refusal": None,
                "annotations": [],
            }
            return await self._reply(request, model, cid, created, message, "tool_calls", usage)
        prompt = last_user
        if after_tool:  # answer about the tool's output, so a round trip is visible
            prompt = "tool result: " + content_text(last.get("content"))
        completion = _formatted(
            self.completion(prompt, prompt_tokens, max_tokens), body.get("response_format")
        )
        finish_reason = "length" if completion.truncated else "stop"
        usage = _usage(completion.prompt_tokens, completion.completion_tokens)
        opts = self.state.options
        usage["prompt_tokens_details"]["cached_tokens"] = min(opts.cached_tokens,
                                                              completion.prompt_tokens)
        usage["completion_tokens_details"]["reasoning_tokens"] = min(
            opts.reasoning_tokens, completion.completion_tokens)
        if stream:
            first = {"role": "assistant", "content": "", "refusal": None}
            deltas = ({"content": d} for d in completion.deltas())
            return await self._stream(
                request, model, cid, created, include_usage, first, deltas, finish_reason, usage
            )
        message = {
            "role": "assistant",
            "content": completion.text,
            "refusal": None,
            "annotations": [],
        }
        return await self._reply(request, model, cid, created, message, finish_reason, usage)

    async def _reply(
        self,
        request: web.Request,
        model: str,
        cid: str,
        created: int,
        message: dict[str, Any],
        finish_reason: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        response = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        }
        self.decorate(response)
        return await self.reply(request, response)

    async def _stream(
        self,
        request: web.Request,
        model: str,
        cid: str,
        created: int,
        include_usage: bool,
        first: dict[str, Any],
        deltas: Iterable[dict[str, Any]],
        finish_reason: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        """`first` goes out after TTFT, the other deltas at tokens_per_s, then the finish
        chunk, the usage chunk when asked for, and [DONE]."""
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

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + head + b',"choices":[' + orjson.dumps(choice) + b"]" + tail

        epilogue = [chunk({}, finish_reason)]
        if include_usage:
            epilogue.append(
                b"data: " + head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
            )
        epilogue.append(b"data: [DONE]\n\n")
        preamble = [*self.stream_prelude(), chunk(first)]
        return await self.stream(request, preamble, (chunk(d) for d in deltas), epilogue)

    async def embed(self, request: web.Request, body: Any) -> web.StreamResponse:
        """An embeddings list for an authenticated request (shared by the OpenAI-like kinds)."""
        if (fault := await self.faults(request)) is not None:
            return fault
        try:
            model, inputs, encoding, dims = _validate_embeddings(
                None if body is INVALID_JSON else body
            )
        except _Invalid as exc:
            return self.error(400, exc.message, param=exc.param, code=exc.code)
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            tokens += count_words(item) if isinstance(item, str) else len(item)
            vector = _encode(embedding_vector(item, dims), encoding)
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return await self.reply(
            request,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


class TGIProvider(OpenAIProvider):
    """Hugging Face TGI's OpenAI-compatible Messages API (`/v1/chat/completions`)."""

    kind = "tgi"


class VLLMProvider(OpenAIProvider):
    """vLLM's OpenAI-compatible server, plus the `/metrics` a scheduler scrapes to see how loaded
    the GPU pool is. Without an engine config the gauges come from the requests in flight and
    timing is the fixed ttft_ms / tokens_per_s; with one (`simulate.engine`), every generation
    goes through `sim.vllm_engine` (continuous batching, KV blocks, prefix cache) and
    `/metrics` carries vLLM's own names, counters and histograms."""

    kind = "vllm"
    #: Requests that fill the simulated KV cache completely.
    cache_slots: Final = 64

    def __init__(self, state: SimState) -> None:
        super().__init__(state)
        self.in_flight = 0
        self.engine: AsyncEngine | None = (
            AsyncEngine(state.engine_cfg) if state.engine_cfg is not None else None)

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [*super().routes(), ("GET", "/metrics", self.metrics),
                ("GET", "/_sim/engine", self.engine_served)]

    async def chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await super().chat(request, body)
        finally:
            self.in_flight -= 1

    async def embed(self, request: web.Request, body: Any) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await super().embed(request, body)
        finally:
            self.in_flight -= 1

    @staticmethod
    def _prompt_words(request: web.Request) -> list[str]:
        """The prompt as the engine's tokens (words of every message, in order)."""
        body = request.get(SIM_BODY)
        words: list[str] = []
        if isinstance(body, dict):
            for msg in body.get("messages") or ():
                if isinstance(msg, dict):
                    words.append(f"<{msg.get('role')}>")
                    words.extend(content_text(msg.get("content")).split())
        return words

    async def reply(self, request: web.Request, obj: Any) -> web.StreamResponse:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if self.engine is None or not isinstance(usage, dict) or "completion_tokens" not in usage:
            return await super().reply(request, obj)
        seq = await self.engine.generate(self._prompt_words(request),
                                         int(usage["completion_tokens"]))
        usage["prompt_tokens_details"]["cached_tokens"] = seq.cached_tokens
        return json_response(obj, headers={**self.response_headers(), **self.quota_headers()})

    async def stream(self, request: web.Request, preamble: Iterable[bytes],
                     tokens: Iterable[bytes], epilogue: Iterable[bytes]) -> web.StreamResponse:
        if self.engine is None:
            return await super().stream(request, preamble, tokens, epilogue)
        chunks = list(tokens)
        resp = web.StreamResponse(headers={**SSE_HEADERS, **self.response_headers(),
                                           **self.quota_headers()})
        sent = -1  # -1: nothing sent yet; then the number of token chunks sent

        async def on_token(seq: Seq) -> None:
            nonlocal sent
            if sent < 0:
                await resp.prepare(request)
                for c in preamble:
                    await resp.write(c)
                sent = 0
            while sent < min(seq.generated - 1, len(chunks)):
                await resp.write(chunks[sent])
                sent += 1

        try:
            await self.engine.generate(self._prompt_words(request), len(chunks) + 1, on_token)
            for c in epilogue:
                await resp.write(c)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def engine_served(self, request: web.Request, body: Any) -> web.StreamResponse:
        """The engine's own timing of its latest finished requests (tests: TTFT as the
        engine saw it); an empty list without `simulate.engine`."""
        return json_response(self.engine.served() if self.engine is not None else [])

    async def metrics(self, request: web.Request, body: Any) -> web.StreamResponse:
        if self.state.options.metrics_down:
            return web.Response(status=503, text="metrics unavailable (simulated)\n")
        if self.engine is not None:
            return web.Response(text=self.engine.engine.prometheus(self.state.name),
                                content_type="text/plain", charset="utf-8")
        waiting = self.state.hanging  # accepted, never scheduled
        running = max(0, self.in_flight - waiting)
        label = '{model_name="' + self.state.name.replace('"', "") + '"}'
        gauges = (
            ("num_requests_running", "Number of requests currently running on GPU.", running),
            ("num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            (
                "gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                min(1.0, running / self.cache_slots),
            ),
        )
        lines: list[str] = []
        for name, help_text, value in gauges:
            lines += [
                f"# HELP vllm:{name} {help_text}",
                f"# TYPE vllm:{name} gauge",
                f"vllm:{name}{label} {float(value)}",
            ]
        return web.Response(
            text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8"
        )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
