"""Gemini/Vertex GenerateContent <-> OpenAI chat: requests, responses, streams, errors, embeddings.

Translated requests are checked against google-genai's own pydantic types (extra fields are
forbidden there, so a misspelt or misplaced key fails), translated responses and chunks
against the openai SDK's types.
"""

from __future__ import annotations

import base64
import itertools
import struct
from typing import Any

import orjson
import pytest
from google.genai import types as gt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.translate.canonical import TranslationError, Usage
from ext_proc.translate.gemini import (
    SKIP_SIGNATURE,
    StreamToOpenAI,
    embeddings_request,
    embeddings_response,
    embeddings_usage_of,
    error_to_openai,
    finish_reason,
    gemini_path,
    request_from_openai,
    response_to_openai,
    usage_of,
    vertex_path,
)

# ------------------------------------------------------------------ google-side checks

# Values under these keys are user data (JSON Schema, call args), not Google field names.
_OPAQUE = frozenset({"args", "response", "parametersJsonSchema", "responseJsonSchema"})
_TOP = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig"}


def _assert_camel(obj: Any, where: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert "_" not in k, f"snake_case key {where}.{k}"
            if k not in _OPAQUE:
                _assert_camel(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assert_camel(v, f"{where}[{i}]")


def _check(model: type[Any], value: Any) -> None:
    model.model_validate_json(orjson.dumps(value), by_alias=True, by_name=False)


def validate_google(body: dict[str, Any]) -> None:
    """Raise unless `body` is a GenerateContentRequest google-genai's types accept."""
    assert set(body) <= _TOP, set(body) - _TOP
    _assert_camel(body)
    assert body["contents"], "contents must not be empty"
    for c in body["contents"]:
        assert c["role"] in ("user", "model")
        assert c["parts"], "parts must not be empty"
        _check(gt.Content, c)
    if "systemInstruction" in body:
        _check(gt.Content, body["systemInstruction"])
    if "generationConfig" in body:
        _check(gt.GenerationConfig, body["generationConfig"])
    for tool in body.get("tools", ()):
        _check(gt.Tool, tool)
    if "toolConfig" in body:
        _check(gt.ToolConfig, body["toolConfig"])
        fcc = body["toolConfig"]["functionCallingConfig"]
        assert "allowedFunctionNames" not in fcc or fcc["mode"] == "ANY"


def translate(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(request_from_openai(req))
    validate_google(out)
    return out


# ---------------------------------------------------------------------------- requests


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(id_: str, name: str, arguments: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
        **extra,
    }


def assistant_calls(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool_msg(id_: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": id_, "content": content}


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "plain",
        {"model": "m", "messages": [user("hi")]},
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    ),
    (
        "system and developer -> systemInstruction",
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
                user("hi"),
            ]
        },
        {
            "systemInstruction": {"parts": [{"text": "be brief\n\nbe kind"}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        },
    ),
    (
        "assistant -> model, same roles merged, empty turns dropped",
        {
            "messages": [
                user("a"),
                user([{"type": "text", "text": "b"}]),
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
                user("e"),
            ]
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]},
                {"role": "user", "parts": [{"text": "e"}]},
            ]
        },
    ),
    (
        "images: data URL -> inlineData, URLs -> fileData with guessed type",
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x.test/a/cat.WEBP?s=1"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/photo"}},
                        {"type": "image_url", "image_url": "gs://bucket/doc.pdf"},
                    ]
                )
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "what is this"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                        {
                            "fileData": {
                                "mimeType": "image/webp",
                                "fileUri": "https://x.test/a/cat.WEBP?s=1",
                            }
                        },
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/photo"}},
                        {
                            "fileData": {
                                "mimeType": "application/pdf",
                                "fileUri": "gs://bucket/doc.pdf",
                            }
                        },
                    ],
                }
            ]
        },
    ),
    (
        "audio and file parts",
        {
            "messages": [
                user(
                    [
                        {"type": "input_audio", "input_audio": {"data": PNG, "format": "mp3"}},
                        {
                            "type": "file",
                            "file": {"file_data": f"data:application/pdf;base64,{PNG}"},
                        },
                    ]
                )
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"inlineData": {"mimeType": "audio/mp3", "data": PNG}},
                        {"inlineData": {"mimeType": "application/pdf", "data": PNG}},
                    ],
                }
            ]
        },
    ),
    (
        "generation config",
        {
            "messages": [user("hi")],
            "max_completion_tokens": 100,
            "max_tokens": 5,
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": "END",
            "seed": 7,
            "n": 2,
            "presence_penalty": 0,
            "frequency_penalty": 0.5,
            "logprobs": True,
            "user": "u1",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {
                "maxOutputTokens": 100,
                "temperature": 1.5,
                "topP": 0.9,
                "frequencyPenalty": 0.5,
                "stopSequences": ["END"],
                "seed": 7,
                "candidateCount": 2,
            },
        },
    ),
    (
        "max_tokens, stop list, n=1 omitted",
        {"messages": [user("hi")], "max_tokens": 5, "stop": ["a", "b"], "n": 1},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 5, "stopSequences": ["a", "b"]},
        },
    ),
    (
        "json_object",
        {"messages": [user("hi")], "response_format": {"type": "json_object"}},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json"},
        },
    ),
    (
        "json_schema -> responseJsonSchema",
        {
            "messages": [user("hi")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": WEATHER_SCHEMA, "strict": True},
            },
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": WEATHER_SCHEMA,
            },
        },
    ),
    (
        "response_format text is a no-op",
        {"messages": [user("hi")], "response_format": {"type": "text"}},
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    ),
    (
        "reasoning_effort -> thinkingConfig",
        {"messages": [user("hi")], "reasoning_effort": "medium"},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {
                "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True}
            },
        },
    ),
    (
        "reasoning_effort none turns thinking off",
        {"messages": [user("hi")], "reasoning_effort": "none"},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False}},
        },
    ),
    (
        "tools and tool_choice auto",
        {"messages": [user("hi")], "tools": [TOOL, TIME_TOOL], "tool_choice": "auto"},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Weather now",
                            "parametersJsonSchema": WEATHER_SCHEMA,
                        },
                        {"name": "get_time"},
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
    (
        "tool_choice none",
        {"messages": [user("hi")], "tools": [TOOL], "tool_choice": "none"},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Weather now",
                            "parametersJsonSchema": WEATHER_SCHEMA,
                        }
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
        },
    ),
    (
        "tool_choice required -> ANY",
        {"messages": [user("hi")], "tools": [TIME_TOOL], "tool_choice": "required"},
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_time"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        },
    ),
    (
        "named tool_choice -> ANY + allowedFunctionNames",
        {
            "messages": [user("hi")],
            "tools": [TIME_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_time"}]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
            },
        },
    ),
    (
        "allowed_tools auto sends only the allowed declarations",
        {
            "messages": [user("hi")],
            "tools": [TOOL, TIME_TOOL],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_time"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
    (
        "legacy functions + function_call",
        {
            "messages": [user("hi")],
            "functions": [{"name": "get_time", "description": "now"}],
            "function_call": {"name": "get_time"},
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_time", "description": "now"}]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
            },
        },
    ),
    (
        "parallel tool calls and their results",
        {
            "messages": [
                user("weather in Paris and the time?"),
                assistant_calls(
                    call(
                        "call_a",
                        "get_weather",
                        '{"city": "Paris"}',
                        extra_content={"google": {"thought_signature": "c2lnbmF0dXJl"}},
                    ),
                    call("call_b", "get_time", ""),
                    content="Checking.",
                ),
                tool_msg("call_a", '{"temp_c": 21}'),
                tool_msg("call_b", [{"type": "text", "text": "12:00"}]),
                user("thanks"),
            ],
            "tools": [TOOL, TIME_TOOL],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "weather in Paris and the time?"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2lnbmF0dXJl",
                        },
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "get_weather",
                                "response": {"content": {"temp_c": 21}},
                            }
                        },
                        {
                            "functionResponse": {
                                "name": "get_time",
                                "response": {"content": "12:00"},
                            }
                        },
                        {"text": "thanks"},
                    ],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Weather now",
                            "parametersJsonSchema": WEATHER_SCHEMA,
                        },
                        {"name": "get_time"},
                    ]
                }
            ],
        },
    ),
    (
        "unsigned replayed call gets the skip sentinel; our id format names the function",
        {
            "messages": [
                user("time?"),
                assistant_calls(call("call_0_get_time", "get_time", "{}")),
                tool_msg("call_0_get_time", "noon"),
            ],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "time?"}]},
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_time", "args": {}},
                            "thoughtSignature": SKIP_SIGNATURE,
                        }
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}}
                    ],
                },
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("req", "expected"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_request(req: dict[str, Any], expected: dict[str, Any]) -> None:
    assert translate(req) == expected


def test_tool_message_after_our_id_without_history() -> None:
    """A tool result whose call is no longer in history still finds its name from our id."""
    out = translate({"messages": [user("q"), tool_msg("call_3_lookup", "x")]})
    assert out["contents"][0]["parts"][1]["functionResponse"]["name"] == "lookup"


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
    ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
    ({"messages": [user([{"type": "video", "video": {}}])]}, "messages[0].content[0]"),
    (
        {"messages": [user([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])]},
        "messages[0].content[0]",
    ),
    (
        {"messages": [user([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])]},
        "messages[0].content[0]",
    ),
    ({"messages": [user([{"type": "file", "file": {"file_id": "f1"}}])]}, "messages[0].content[0]"),
    ({"messages": [user("q"), tool_msg("nope", "x")]}, "messages[1].tool_call_id"),
    (
        {"messages": [user("q"), assistant_calls(call("c1", "f", "not json"))]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        {"messages": [user("q"), assistant_calls(call("c1", "f", "[1, 2]"))]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"messages": [user("q")], "max_tokens": 0}, "max_tokens"),
    ({"messages": [user("q")], "temperature": "hot"}, "temperature"),
    ({"messages": [user("q")], "stop": [1]}, "stop"),
    ({"messages": [user("q")], "seed": 1.5}, "seed"),
    ({"messages": [user("q")], "n": 0}, "n"),
    ({"messages": [user("q")], "reasoning_effort": "max"}, "reasoning_effort"),
    ({"messages": [user("q")], "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [user("q")], "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"messages": [user("q")], "tool_choice": "required"}, "tool_choice"),
    (
        {
            "messages": [user("q")],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        },
        "tool_choice",
    ),
]


@pytest.mark.parametrize(("req", "param"), BAD_REQUESTS)
def test_request_rejected(req: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        request_from_openai(req)
    assert err.value.param == param
    assert err.value.status == 400
    assert orjson.loads(err.value.body())["error"]["param"] == param


def test_paths() -> None:
    assert gemini_path("gemini-2.5-flash") == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert (
        gemini_path("gemini-2.5-flash", stream=True)
        == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert gemini_path("tunedModels/t1") == "/v1beta/tunedModels/t1:generateContent"
    assert (
        vertex_path("p1", "us-central1", "gemini-2.5-pro")
        == "/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-pro"
        ":generateContent"
    )
    assert (
        vertex_path("p1", "global", "gemini-2.5-pro", stream=True)
        == "/v1/projects/p1/locations/global/publishers/google/models/gemini-2.5-pro"
        ":streamGenerateContent?alt=sse"
    )
    assert vertex_path("p", "l", "projects/x/locations/y/endpoints/9") == (
        "/v1/projects/x/locations/y/endpoints/9:generateContent"
    )


# --------------------------------------------------------- property: any valid request

_text = st.text(min_size=1, max_size=20)
_names = st.sampled_from(["get_weather", "get_time", "lookup.v2", "_private", "a-b:c"])


@st.composite
def _content(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(st.text(max_size=20))
    parts: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["text", "data", "url"]))
        if kind == "text":
            parts.append({"type": "text", "text": draw(st.text(max_size=20))})
        elif kind == "data":
            data = base64.b64encode(draw(st.binary(max_size=24))).decode()
            mime = draw(st.sampled_from(["image/png", "image/jpeg", "image/webp"]))
            parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        else:
            ext = draw(st.sampled_from(["png", "jpg", "gif", "", "bin"]))
            parts.append({"type": "image_url", "image_url": {"url": f"https://x.test/i.{ext}"}})
    return parts


_schema = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={
        "properties": st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.fixed_dictionaries({"type": st.sampled_from(["string", "number", "boolean"])}),
            max_size=3,
        ),
        "additionalProperties": st.booleans(),
    },
)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Valid OpenAI chat requests: any mix of turns, tool round trips and parameters."""
    tool_names = draw(st.lists(_names, unique=True, max_size=3))
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": "s"})
    messages.append(user(draw(_text)))
    n_calls = 0
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(["user", "assistant", "tools"] if tool_names else ["user", "assistant"])
        )
        if kind == "user":
            messages.append(user(draw(_content())))
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(_content())})
        else:
            calls = []
            for name in draw(st.lists(st.sampled_from(tool_names), min_size=1, max_size=3)):
                args = draw(
                    st.dictionaries(
                        st.text(max_size=5), st.integers(-(2**53), 2**53) | st.text(), max_size=2
                    )
                )
                ident = draw(st.sampled_from([f"call_{n_calls}", f"call_{n_calls}_{name}"]))
                n_calls += 1
                calls.append(call(ident, name, orjson.dumps(args).decode()))
            messages.append(assistant_calls(*calls, content=draw(st.none() | _text)))
            for c in calls:
                result = draw(st.sampled_from(['{"ok": true}', "plain text", "[1, 2]", ""]))
                messages.append(tool_msg(c["id"], result))
    req: dict[str, Any] = {"model": "m", "messages": messages}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": st.integers(1, 10_000),
        "max_completion_tokens": st.integers(1, 10_000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.none()
        | st.text(min_size=1, max_size=5)
        | st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "seed": st.integers(-(2**31), 2**31 - 1),
        "n": st.integers(1, 4),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "stream": st.booleans(),
        "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])
        | _schema.map(lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            req[key] = draw(strategy)
    with_tools: bool = draw(st.booleans())
    if tool_names and with_tools:
        req["tools"] = [
            {"type": "function", "function": {"name": name, "parameters": draw(_schema)}}
            for name in tool_names
        ]
        choice = draw(st.sampled_from(["auto", "none", "required", "named", None]))
        if choice == "named":
            name = draw(st.sampled_from(tool_names))
            req["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif choice is not None:
            req["tool_choice"] = choice
    return req


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(openai_requests())
def test_any_valid_request_translates_to_a_valid_google_request(req: dict[str, Any]) -> None:
    try:
        body = orjson.loads(request_from_openai(req))
    except TranslationError as exc:  # only empty conversations may be refused
        assert exc.param == "messages", exc.message
        return
    validate_google(body)
    roles = [c["role"] for c in body["contents"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "roles must alternate"


# --------------------------------------------------------------------------- responses


def gresp(*parts: dict[str, Any], finish: str | None = "STOP", **extra: Any) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    out = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r1", **extra}
    gt.GenerateContentResponse.model_validate_json(orjson.dumps(out))  # fixtures are real
    return out


USAGE = {
    "promptTokenCount": 10,
    "candidatesTokenCount": 5,
    "thoughtsTokenCount": 3,
    "cachedContentTokenCount": 4,
    "totalTokenCount": 18,
}


def to_openai(resp: dict[str, Any], model: str = "gemini-2.5-flash") -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(response_to_openai(resp, model))
    ChatCompletion.model_validate(out)
    return out


def test_response_text_reasoning_and_usage() -> None:
    out = to_openai(
        gresp(
            {"text": "Let me think.", "thought": True},
            {"text": "Hello"},
            {"text": " world"},
            usageMetadata=USAGE,
        )
    )
    assert out["id"] == "chatcmpl-r1"
    assert out["object"] == "chat.completion"
    assert out["model"] == "gemini-2.5-flash"
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Hello world"
    assert choice["message"]["reasoning_content"] == "Let me think."
    assert "tool_calls" not in choice["message"]
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 8,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert usage_of(gresp(usageMetadata=USAGE)) == Usage(10, 8, cached=4, reasoning=3)
    assert usage_of(gresp()) is None


def test_response_parallel_function_calls() -> None:
    out = to_openai(
        gresp(
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "c2ln",
            },
            {"functionCall": {"name": "get_time", "args": {}}},
            {"functionCall": {"name": "lookup", "id": "fc-9", "args": {"q": [1]}}},
        )
    )
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_0_get_weather",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            "extra_content": {"google": {"thought_signature": "c2ln"}},
        },
        {
            "id": "call_1_get_time",
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
        {
            "id": "fc-9",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q":[1]}'},
        },
    ]


def test_response_round_trip_of_tool_calls() -> None:
    """The assistant message we return, replayed as history, translates back to the same calls."""
    resp = gresp(
        {"functionCall": {"name": "get_time", "args": {"tz": "UTC"}}, "thoughtSignature": "c2ln"}
    )
    msg = to_openai(resp)["choices"][0]["message"]
    tool_calls = msg["tool_calls"]
    body = translate({"messages": [user("t?"), msg, tool_msg(tool_calls[0]["id"], "12:00")]})
    assert body["contents"][1]["parts"] == resp["candidates"][0]["content"]["parts"]
    assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_time"


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("STOP", False, "stop"),
        (None, False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("SOMETHING_NEW", False, "stop"),
    ],
)
def test_finish_reason(reason: str | None, calls: bool, expected: str) -> None:
    assert finish_reason(reason, calls) == expected


def test_response_prompt_blocked() -> None:
    out = to_openai(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        }
    )
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == ""
    assert out["usage"]["prompt_tokens"] == 7


def test_response_safety_stop_without_content() -> None:
    resp = {"candidates": [{"finishReason": "SAFETY", "index": 0}], "responseId": "r"}
    out = to_openai(resp)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""


def test_response_multiple_candidates() -> None:
    resp = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "a"}]},
                "finishReason": "STOP",
                "index": 0,
            },
            {
                "content": {"role": "model", "parts": [{"text": "b"}]},
                "finishReason": "MAX_TOKENS",
                "index": 1,
            },
        ]
    }
    out = to_openai(resp)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]


# ------------------------------------------------------------------------------ errors


def gerr(code: int, status: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status, **extra}})


ERROR_CASES: list[tuple[int, bytes, str, str | None, str]] = [
    (
        400,
        gerr(400, "INVALID_ARGUMENT", "Invalid value at 'x'"),
        "invalid_request_error",
        None,
        "Invalid value at 'x'",
    ),
    (
        400,
        gerr(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1048577) exceeds the maximum number of tokens allowed "
            "(1048576).",
        ),
        "invalid_request_error",
        "context_length_exceeded",
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
    ),
    (
        400,
        gerr(400, "INVALID_ARGUMENT", "Request payload too long"),
        "invalid_request_error",
        "context_length_exceeded",
        "Request payload too long",
    ),
    (
        400,
        gerr(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        ),
        "authentication_error",
        "invalid_api_key",
        "API key not valid. Please pass a valid API key.",
    ),
    (
        429,
        gerr(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
        "rate_limit_error",
        "rate_limit_exceeded",
        "Quota exceeded",
    ),
    (403, gerr(403, "PERMISSION_DENIED", "denied"), "permission_error", None, "denied"),
    (401, gerr(401, "UNAUTHENTICATED", "no token"), "authentication_error", None, "no token"),
    (
        404,
        gerr(404, "NOT_FOUND", "models/x is not found"),
        "not_found_error",
        None,
        "models/x is not found",
    ),
    (500, gerr(500, "INTERNAL", "boom"), "api_error", None, "boom"),
    (
        503,
        gerr(503, "UNAVAILABLE", "The model is overloaded."),
        "api_error",
        "service_unavailable",
        "The model is overloaded.",
    ),
    (504, gerr(504, "DEADLINE_EXCEEDED", "late"), "api_error", "timeout", "late"),
    # streamGenerateContent without alt=sse answers errors as a one-element array
    (
        429,
        b"[" + gerr(429, "RESOURCE_EXHAUSTED", "slow down") + b"]",
        "rate_limit_error",
        "rate_limit_exceeded",
        "slow down",
    ),
    (
        502,
        b"<html>Bad Gateway</html>",
        "api_error",
        None,
        "upstream returned HTTP 502: <html>Bad Gateway</html>",
    ),
    (429, b"", "rate_limit_error", "rate_limit_exceeded", "upstream returned HTTP 429"),
]


@pytest.mark.parametrize(("status", "body", "type_", "code", "message"), ERROR_CASES)
def test_error_to_openai(
    status: int, body: bytes, type_: str, code: str | None, message: str
) -> None:
    err = orjson.loads(error_to_openai(status, body))["error"]
    assert err == {"message": message, "type": type_, "param": None, "code": code}


# ----------------------------------------------------------------------------- streams


def sse(*objs: dict[str, Any], sep: bytes = b"\r\n\r\n") -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + sep for o in objs)


def chunks_of(data: bytes) -> list[dict[str, Any] | str]:
    """Parsed OpenAI SSE frames ([DONE] as the string), each chunk checked by the openai SDK."""
    out: list[dict[str, Any] | str] = []
    for frame in data.split(b"\n\n"):
        if not frame:
            continue
        assert frame.startswith(b"data: "), frame
        payload = frame[6:]
        if payload == b"[DONE]":
            out.append("[DONE]")
            continue
        obj = orjson.loads(payload)
        if "error" not in obj:
            ChatCompletionChunk.model_validate(obj)
        obj.pop("created", None)
        out.append(obj)
    return out


def run_stream(
    data: bytes, include_usage: bool = True, cuts: list[int] | None = None
) -> tuple[StreamToOpenAI, bytes]:
    t = StreamToOpenAI("gemini-2.5-flash", include_usage)
    pieces: list[bytes] = []
    prev = 0
    for cut in sorted(cuts or []):
        pieces.append(t.feed(data[prev:cut]))
        prev = cut
    pieces.append(t.feed(data[prev:]))
    pieces.append(t.finish())
    return t, b"".join(pieces)


def deltas(out: bytes) -> list[tuple[int, dict[str, Any], str | None]]:
    return [
        (c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
        for c in chunks_of(out)
        if isinstance(c, dict) and c.get("choices")
    ]


def event(
    *parts: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": index}
    if finish:
        cand["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [cand], "responseId": "s1", "modelVersion": "g"}
    if usage:
        out["usageMetadata"] = usage
    gt.GenerateContentResponse.model_validate_json(orjson.dumps(out))
    return out


TEXT_STREAM = sse(
    event({"text": "thinking...", "thought": True}, usage={"promptTokenCount": 10}),
    event({"text": "Hel"}, usage={"promptTokenCount": 10, "candidatesTokenCount": 1}),
    event({"text": "lo \u00e9\u6f22"}),
    event({"text": "!"}, finish="STOP", usage=USAGE),
)
TOOL_STREAM = sse(
    event({"text": "Let me check."}),
    event(
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
            "thoughtSignature": "c2ln",
        },
        {"functionCall": {"name": "get_time", "args": {}}},
    ),
    event(finish="STOP", usage={"promptTokenCount": 3, "candidatesTokenCount": 4}),
    sep=b"\n\n",
)


def test_stream_text() -> None:
    t, out = run_stream(TEXT_STREAM)
    assert deltas(out) == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"reasoning_content": "thinking..."}, None),
        (0, {"content": "Hel"}, None),
        (0, {"content": "lo \u00e9\u6f22"}, None),
        (0, {"content": "!"}, None),
        (0, {}, "stop"),
    ]
    frames = chunks_of(out)
    assert frames[-1] == "[DONE]"
    usage_chunk = frames[-2]
    assert isinstance(usage_chunk, dict) and usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8
    assert usage_chunk["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert usage_chunk["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert all(isinstance(f, str) or f["id"] == "chatcmpl-s1" for f in frames)
    assert t.usage == Usage(10, 8, cached=4, reasoning=3)
    assert t.finish_reason == "stop"
    assert t.error is None
    assert t.first_token_at is not None


def test_stream_without_usage_has_no_usage_fields() -> None:
    _, out = run_stream(TEXT_STREAM, include_usage=False)
    frames = chunks_of(out)
    assert frames[-1] == "[DONE]"
    assert all(isinstance(f, str) or ("usage" not in f and f["choices"]) for f in frames)


def test_stream_function_calls() -> None:
    t, out = run_stream(TOOL_STREAM)
    assert deltas(out) == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "Let me check."}, None),
        (
            0,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_0_get_weather",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        "extra_content": {"google": {"thought_signature": "c2ln"}},
                    }
                ]
            },
            None,
        ),
        (
            0,
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_1_get_time",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            },
            None,
        ),
        (0, {}, "tool_calls"),
    ]
    assert t.usage == Usage(3, 4)


def test_stream_prompt_blocked() -> None:
    data = sse(
        {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 4},
        }
    )
    t, out = run_stream(data)
    assert deltas(out) == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {}, "content_filter"),
    ]
    assert chunks_of(out)[-1] == "[DONE]"
    assert t.usage == Usage(4, 0)


def test_stream_two_candidates() -> None:
    data = sse(
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "a"}]}, "index": 0},
                {"content": {"role": "model", "parts": [{"text": "b"}]}, "index": 1},
            ]
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "!"}]},
                    "index": 0,
                    "finishReason": "STOP",
                },
                {
                    "content": {"role": "model", "parts": [{"text": "?"}]},
                    "index": 1,
                    "finishReason": "MAX_TOKENS",
                },
            ]
        },
    )
    _, out = run_stream(data)
    assert deltas(out) == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"content": "b"}, None),
        (0, {"content": "!"}, None),
        (0, {}, "stop"),
        (1, {"content": "?"}, None),
        (1, {}, "length"),
    ]
    assert chunks_of(out)[-1] == "[DONE]"


def _error_frame(out: bytes) -> dict[str, Any]:
    frames = chunks_of(out)
    assert frames[-1] == "[DONE]"
    err = frames[-2]
    assert isinstance(err, dict)
    return dict(err["error"])


def test_stream_error_frame() -> None:
    data = sse(
        event({"text": "Hi"}),
        {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}},
    )
    t, out = run_stream(data)
    assert _error_frame(out) == {
        "message": "Resource exhausted",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert t.error is not None and t.done
    assert t.feed(sse(event({"text": "late"}))) == b""  # nothing after the error


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty body"),
        pytest.param(sse(event({"text": "Hel"})), id="no finishReason"),
        pytest.param(sse(event({"text": "Hel"})) + b'data: {"candid', id="cut mid-event"),
    ],
)
def test_stream_early_end_is_an_error(data: bytes) -> None:
    t, out = run_stream(data)
    err = _error_frame(out)
    assert err["type"] == "api_error"
    assert "finishReason" in err["message"]
    assert t.error is not None


def test_stream_malformed_event_is_an_error() -> None:
    _, out = run_stream(b"data: {not json}\n\n")
    assert _error_frame(out)["message"] == "malformed event from upstream stream"


def test_stream_last_frame_without_blank_line_still_counts() -> None:
    data = sse(event({"text": "Hi"}, finish="STOP"))[:-4]  # drop the trailing CRLFCRLF
    _, out = run_stream(data)
    assert deltas(out)[-1] == (0, {}, "stop")
    assert chunks_of(out)[-1] == "[DONE]"


@settings(max_examples=150)
@given(
    st.sampled_from([TEXT_STREAM, TOOL_STREAM]),
    st.lists(st.integers(0, 10_000), max_size=25),
)
def test_stream_rechunking_gives_identical_output(data: bytes, raw_cuts: list[int]) -> None:
    cuts = sorted({c % (len(data) + 1) for c in raw_cuts})
    _, whole = run_stream(data)
    _, pieces = run_stream(data, cuts=cuts)
    assert chunks_of(pieces) == chunks_of(whole)


# -------------------------------------------------------------------------- embeddings


def test_embeddings_request_gemini() -> None:
    path, body = embeddings_request(
        {"model": "e", "input": ["a", "b"], "dimensions": 8}, "gemini-embedding-001", vertex=False
    )
    assert path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert orjson.loads(body) == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "a"}]},
                "outputDimensionality": 8,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "b"}]},
                "outputDimensionality": 8,
            },
        ]
    }
    for r in orjson.loads(body)["requests"]:
        _check(gt.Content, r["content"])


def test_embeddings_request_vertex() -> None:
    path, body = embeddings_request(
        {"input": "hello"}, "text-embedding-005", vertex=True, project="p", location="l"
    )
    assert path == "/v1/projects/p/locations/l/publishers/google/models/text-embedding-005:predict"
    assert orjson.loads(body) == {"instances": [{"content": "hello"}]}
    with pytest.raises(ValueError):
        embeddings_request({"input": "x"}, "m", vertex=True)


@pytest.mark.parametrize("value", [[], [1, 2], [[1]], "", ["a", ""], None])
def test_embeddings_bad_input(value: Any) -> None:
    with pytest.raises(TranslationError) as err:
        embeddings_request({"input": value}, "m", vertex=False)
    assert err.value.param == "input"


def test_embeddings_response() -> None:
    g = orjson.dumps({"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]})
    out = orjson.loads(embeddings_response(g, "e", vertex=False))
    CreateEmbeddingResponse.model_validate(out)
    assert [d["embedding"] for d in out["data"]] == [[0.5, -0.25], [1.0, 0.0]]
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 0, "total_tokens": 0}

    v = orjson.dumps(
        {
            "predictions": [
                {
                    "embeddings": {
                        "values": [0.5],
                        "statistics": {"token_count": 3, "truncated": False},
                    }
                },
                {
                    "embeddings": {
                        "values": [0.25],
                        "statistics": {"token_count": 4.0, "truncated": False},
                    }
                },
            ]
        }
    )
    out = orjson.loads(embeddings_response(v, "e", vertex=True, encoding_format="base64"))
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    first = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<1f", first) == (0.5,)
    assert embeddings_usage_of(orjson.loads(v), vertex=True) == Usage(7, 0)
    assert embeddings_usage_of({"embeddings": []}, vertex=False) is None
