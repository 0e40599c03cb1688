"""Anthropic Messages <-> OpenAI chat completions: requests, responses, streams, errors."""

from __future__ import annotations

import itertools
import re
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.translate.anthropic import (
    API_VERSION,
    PATH,
    StreamToOpenAI,
    error_to_openai,
    json_tool_name,
    request_from_openai,
    response_to_openai,
    usage_of,
)
from ext_proc.translate.canonical import TranslationError, Usage
from switchyard.framing.sse import SSEParser

# ---------------------------------------------------------------------------- requests


def translate(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(request_from_openai(req, "claude-sonnet-4-5", **kw))
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_calls(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool_msg(id_: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": id_, "content": content}


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
}


def test_constants() -> None:
    assert PATH == "/v1/messages"
    assert API_VERSION == "2023-06-01"


def test_minimal_request_gets_default_max_tokens() -> None:
    assert translate({"model": "alias", "messages": [user("hi")]}) == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,
    }
    assert translate({"messages": [user("hi")]}, default_max_tokens=99)["max_tokens"] == 99


def test_system_and_developer_lifted() -> None:
    out = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                user("hi"),
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "assistant", "content": "Hello."},
                user("bye"),
            ]
        }
    )
    assert out["system"] == "Be brief.\n\nNo emoji."
    assert out["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "bye"},
    ]


def test_consecutive_same_role_merged() -> None:
    out = translate(
        {
            "messages": [
                user("a"),
                {"role": "system", "content": "sys"},  # lifted: the two user turns touch
                user([{"type": "text", "text": "b"}, {"type": "text", "text": ""}]),
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
                {"role": "assistant", "content": None},  # empty assistant turn dropped
                user("e"),
            ]
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}],
        },
        {"role": "user", "content": "e"},
    ]


def test_images() -> None:
    out = translate(
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR="}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x.test/cat.jpg", "detail": "high"},
                        },
                    ]
                )
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["data:image/bmp;base64,AAAA", "data:image/png,rawbytes", "ftp://x/y.png", "file:///etc"],
)
def test_bad_image_urls_name_the_part(url: str) -> None:
    req = {"messages": [user([{"type": "image_url", "image_url": {"url": url}}])]}
    with pytest.raises(TranslationError) as ei:
        request_from_openai(req, "m")
    assert ei.value.param == "messages[0].content[0].image_url"
    assert ei.value.status == 400


def test_max_tokens_stop_sampling_stream_user() -> None:
    out = translate(
        {
            "messages": [user("hi")],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "stop": "END",
            "temperature": 1.7,
            "top_p": 0.9,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 42,
            "frequency_penalty": 0.5,
            "user": "u-123",
        }
    )
    assert out == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "stop_sequences": ["END"],
        "temperature": 1.0,
        "top_p": 0.9,
        "stream": True,
        "metadata": {"user_id": "u-123"},
    }


def test_max_tokens_stop_list_temperature_low() -> None:
    out = translate(
        {"messages": [user("hi")], "max_tokens": 7, "stop": ["a", "b"], "temperature": -1}
    )
    assert out["max_tokens"] == 7
    assert out["stop_sequences"] == ["a", "b"]
    assert out["temperature"] == 0.0
    assert "stream" not in translate({"messages": [user("hi")], "stream": False})


@pytest.mark.parametrize(
    ("req", "param"),
    [
        ({"messages": [user("x")], "n": 2}, "n"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [user("x")], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user("x")], "max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"messages": [user("x")], "stop": [1]}, "stop"),
        ({"messages": [user("x")], "temperature": "hot"}, "temperature"),
        ({"messages": [user("x")], "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"messages": [user("x")], "tools": [{"type": "custom"}]}, "tools[0].type"),
        ({"messages": [user("x")], "tools": {"a": 1}}, "tools"),
        ({"messages": [user("x")], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [user("x")], "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "messages": [user("x")],
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        ({"messages": [user("x"), {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}, user("x")]},
            "messages[0].tool_calls[0].function",
        ),
        (
            {"messages": [user("x"), assistant_calls(call("c1", "f", "{oops"))]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [user("x"), assistant_calls(call("c1", "f", "[1, 2]"))]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    user("x"),
                    assistant_calls({"type": "function", "function": {"name": "f"}}),
                ]
            },
            "messages[1].tool_calls[0].id",
        ),
        ({"messages": [user("x")], "functions": [{"name": "f"}]}, "functions"),
        ({"messages": [user("x")], "function_call": "auto"}, "function_call"),
        (
            {"messages": [user("x"), {"role": "function", "name": "f", "content": "r"}]},
            "messages[1].role",
        ),
        ({"messages": [user("x")], "response_format": {"type": "yaml"}}, "response_format"),
        (
            {
                "messages": [user("x")],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "array"}},
                },
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "messages": [user("x")],
                "tools": [TOOL],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "get_weather", "schema": {}},
                },
            },
            "response_format",
        ),
        ({"messages": [user("x")], "reasoning_effort": "extreme"}, "reasoning_effort"),
        (
            {"messages": [user([{"type": "file", "file": {"file_id": "file-1"}}])]},
            "messages[0].content[0].file",
        ),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [user([{"type": "input_audio"}])]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}, user("x")]},
            "messages[0].content[0]",
        ),
    ],
)
def test_errors_name_the_param(req: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as ei:
        request_from_openai(req, "m")
    assert ei.value.param == param
    assert ei.value.message


def test_legacy_functions_error_message() -> None:
    with pytest.raises(TranslationError, match="deprecated"):
        request_from_openai({"messages": [user("x")], "functions": [{}]}, "m")


def test_n_one_is_fine() -> None:
    assert translate({"messages": [user("x")], "n": 1})["messages"]


# --------------------------------------------------------------------------- responses

MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Hello"},
        {"type": "text", "text": ", world!"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 100,
        "output_tokens": 7,
    },
}


def test_response_mapping() -> None:
    out = orjson.loads(response_to_openai(MESSAGE, "fast"))
    cc = ChatCompletion.model_validate(out)
    assert cc.id == "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"
    assert cc.object == "chat.completion"
    assert isinstance(out["created"], int)
    assert cc.model == "fast"
    assert len(cc.choices) == 1
    assert cc.choices[0].message.role == "assistant"
    assert cc.choices[0].message.content == "Hello, world!"
    assert cc.choices[0].finish_reason == "stop"
    assert cc.usage is not None
    assert cc.usage.prompt_tokens == 115
    assert cc.usage.completion_tokens == 7
    assert cc.usage.total_tokens == 122
    assert cc.usage.prompt_tokens_details is not None
    assert cc.usage.prompt_tokens_details.cached_tokens == 100
    assert usage_of(MESSAGE) == Usage(115, 7, cached=100)
    assert usage_of({}) is None


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_finish_reasons(stop: str, finish: str) -> None:
    out = orjson.loads(response_to_openai({**MESSAGE, "stop_reason": stop}, "a"))
    assert out["choices"][0]["finish_reason"] == finish
    ChatCompletion.model_validate(out)


def test_response_parsed_by_openai_sdk() -> None:
    body = response_to_openai(MESSAGE, "fast")
    client = _client(lambda _: httpx.Response(200, content=body))
    cc = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert cc.choices[0].message.content == "Hello, world!"


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "atype", "otype", "code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "authentication_error", None),
        (403, "permission_error", "permission_error", None),
        (404, "not_found_error", "not_found_error", None),
        (413, "request_too_large", "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", "api_error", None),
        (529, "overloaded_error", "api_error", "overloaded"),
        (418, "brand_new_error", "invalid_request_error", None),
        (503, "brand_new_error", "api_error", None),
    ],
)
def test_error_mapping(status: int, atype: str, otype: str, code: str | None) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": atype, "message": "msg here"}})
    assert orjson.loads(error_to_openai(status, body)) == {
        "error": {"message": "msg here", "type": otype, "param": None, "code": code}
    }


def test_error_non_json_truncated() -> None:
    out = orjson.loads(error_to_openai(502, b"<html>" + b"x" * 10_000))
    assert out["error"]["type"] == "api_error"
    assert "502" in out["error"]["message"]
    assert len(out["error"]["message"]) < 600
    assert orjson.loads(error_to_openai(503, b""))["error"]["message"] == (
        "upstream returned HTTP 503"
    )


def test_error_parsed_by_openai_sdk() -> None:
    body = orjson.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    )
    client = _client(lambda _: httpx.Response(429, content=error_to_openai(429, body)))
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ei.value.code == "rate_limit_exceeded"
    assert "slow down" in ei.value.message


# ----------------------------------------------------------------------------- streams

# Shaped like a real Messages stream (event names, ping, spacing, cache usage, UTF-8).
EVENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 472,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 28,
                    "output_tokens": 2,
                    "service_tier": "standard",
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hé"}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": 'llo, "usage" 世界 🌍\n'},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def sse(events: list[tuple[str, dict[str, Any]]], nl: bytes = b"\n") -> bytes:
    return b"".join(
        b"event: " + name.encode() + nl + b"data: " + orjson.dumps(data) + nl + nl
        for name, data in events
    )


STREAM = sse(EVENTS)
TEXT = 'Héllo, "usage" 世界 🌍\n!'


def convert(
    stream: bytes, include_usage: bool, cuts: list[int] | None = None
) -> tuple[bytes, StreamToOpenAI]:
    conv = StreamToOpenAI("fast", include_usage)
    out = []
    prev = 0
    for cut in [*sorted(cuts or []), len(stream)]:
        out.append(conv.feed(stream[prev:cut]))
        prev = cut
    out.append(conv.finish())
    return b"".join(out), conv


def chunks(out: bytes) -> list[dict[str, Any]]:
    events = SSEParser().feed(out)
    assert events[-1].data == b"[DONE]"
    assert all(e.event is None for e in events)
    return [orjson.loads(e.data) for e in events[:-1]]


def no_created(b: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', b)


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_translation(include_usage: bool) -> None:
    out, conv = convert(STREAM, include_usage)
    objs = chunks(out)
    parsed = [ChatCompletionChunk.model_validate(o) for o in objs]
    assert {c.id for c in parsed} == {"chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert len({c.created for c in parsed}) == 1
    assert {c.model for c in parsed} == {"fast"}
    assert {c.object for c in parsed} == {"chat.completion.chunk"}

    first = parsed[0].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == TEXT
    finals = [c for c in parsed if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].choices[0].finish_reason == "stop"

    if include_usage:
        last = parsed[-1]
        assert last.choices == []
        assert last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (500, 15)
        assert last.usage.total_tokens == 515
        assert last.usage.prompt_tokens_details is not None
        assert last.usage.prompt_tokens_details.cached_tokens == 28
        assert all("usage" in o and o["usage"] is None for o in objs[:-1])
    else:
        assert all("usage" not in o for o in objs)
        assert all(c.choices for c in parsed)

    assert conv.usage == Usage(500, 15, cached=28)
    assert conv.done
    assert conv.error is None
    assert conv.finish_reason == "stop"
    assert conv.first_token_at is not None


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40),
    st.booleans(),
    st.booleans(),
)
def test_stream_any_split_matches_whole(cuts: list[int], include_usage: bool, crlf: bool) -> None:
    stream = sse(EVENTS, b"\r\n") if crlf else STREAM
    cuts = [c % (len(stream) + 1) for c in cuts]
    whole, _ = convert(stream, include_usage)
    split, conv = convert(stream, include_usage, cuts)
    assert no_created(split) == no_created(whole)
    assert conv.usage == Usage(500, 15, cached=28)


def test_stream_byte_at_a_time() -> None:
    whole, _ = convert(STREAM, True)
    split, _ = convert(STREAM, True, list(range(len(STREAM))))
    assert no_created(split) == no_created(whole)


def test_stream_through_openai_sdk() -> None:
    out, _ = convert(STREAM, True)
    client = _client(
        lambda _: httpx.Response(200, content=out, headers={"content-type": "text/event-stream"})
    )
    stream = client.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    got = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == TEXT
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == 15


@pytest.mark.parametrize("stop", ["max_tokens", "stop_sequence", "refusal"])
def test_stream_finish_reason(stop: str) -> None:
    events = [*EVENTS]
    events[7] = ("message_delta", {**EVENTS[7][1], "delta": {"stop_reason": stop}})
    out, conv = convert(sse(events), False)
    want = {"max_tokens": "length", "stop_sequence": "stop", "refusal": "content_filter"}[stop]
    assert chunks(out)[-1]["choices"][0]["finish_reason"] == want
    assert conv.finish_reason == want


def test_stream_error_event() -> None:
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    stream = sse([*EVENTS[:4], ("error", err), *EVENTS[4:]])
    out, conv = convert(stream, True)
    objs = chunks(out)
    assert objs[-1] == {
        "error": {"message": "Overloaded", "type": "api_error", "param": None, "code": "overloaded"}
    }
    assert [ChatCompletionChunk.model_validate(o).choices[0].delta.content for o in objs[:-1]] == [
        "",
        "Hé",
    ]
    assert conv.done
    assert conv.error is not None and conv.error["code"] == "overloaded"
    assert out.count(b"[DONE]") == 1


def test_stream_error_raises_in_openai_sdk() -> None:
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out, _ = convert(sse([*EVENTS[:4], ("error", err)]), False)
    client = _client(
        lambda _: httpx.Response(200, content=out, headers={"content-type": "text/event-stream"})
    )
    stream = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream)


@pytest.mark.parametrize("upto", [0, 1, 4, 8])
def test_stream_early_end_yields_error(upto: int) -> None:
    stream = sse(EVENTS[:upto]) + b'event: content_block_delta\ndata: {"type":'  # cut mid-frame
    out, conv = convert(stream, True)
    objs = chunks(out)
    assert objs[-1]["error"]["type"] == "api_error"
    assert "ended" in objs[-1]["error"]["message"]
    for o in objs[:-1]:
        ChatCompletionChunk.model_validate(o)
    assert conv.done
    assert out.endswith(b"data: [DONE]\n\n")


def test_stream_last_frame_without_blank_line_still_completes() -> None:
    stream = STREAM[:-2]  # message_stop frame missing its terminating blank line
    out, conv = convert(stream, False)
    assert conv.error is None
    assert chunks(out)[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_malformed_event_is_an_error() -> None:
    out, conv = convert(sse(EVENTS[:2]) + b"data: {not json\n\n" + sse(EVENTS[2:]), False)
    assert chunks(out)[-1]["error"]["message"] == "malformed event from upstream stream"
    assert conv.done


def test_stream_feed_after_done_is_ignored() -> None:
    conv = StreamToOpenAI("fast", False)
    assert conv.feed(STREAM).endswith(b"data: [DONE]\n\n")
    assert conv.feed(STREAM) == b""
    assert conv.finish() == b""


def _client(handler: Any) -> openai.OpenAI:
    """An SDK client whose HTTP layer is a local handler (no network)."""
    # Typed Any: newer openai releases annotate http_client as httpx2.Client but accept httpx.
    http_client: Any = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(
        api_key="k", base_url="http://gw/v1", max_retries=0, http_client=http_client
    )


# ------------------------------------------------------------------------------- tools


def test_tools_and_choices() -> None:
    out = translate(
        {
            "messages": [user("weather?")],
            "tools": [
                TOOL,
                {"type": "function", "function": {"name": "noargs", "strict": True}},
            ],
        }
    )
    assert out["tools"] == [
        {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA},
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "want"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),  # the API takes no flag on `none`
        (None, True, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, want: Any) -> None:
    req: dict[str, Any] = {"messages": [user("x")], "tools": [TOOL]}
    if choice is not None:
        req["tool_choice"] = choice
    if parallel is not None:
        req["parallel_tool_calls"] = parallel
    assert translate(req).get("tool_choice") == want


def test_tool_choice_without_tools_dropped_when_harmless() -> None:
    for choice in ("auto", "none"):
        out = translate({"messages": [user("x")], "tool_choice": choice, "tools": []})
        assert "tool_choice" not in out and "tools" not in out


def test_tool_calls_and_results() -> None:
    out = translate(
        {
            "messages": [
                user("weather in Paris and Oslo?"),
                assistant_calls(
                    call("call_1", "get_weather", '{"city": "Paris"}'),
                    call("call.2:x", "get_weather", '{"city": "Oslo"}'),
                    call("call_3", "noargs", ""),
                    content="Checking.",
                ),
                tool_msg("call_1", "sunny"),
                tool_msg("call.2:x", [{"type": "text", "text": "rain"}]),
                tool_msg("call_3", ""),
                user("and tomorrow?"),
                {"role": "assistant", "content": "Unknown."},
            ],
            "tools": [TOOL],
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": "weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2_x",  # outside [A-Za-z0-9_-]: rewritten on both sides
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
                {"type": "tool_use", "id": "call_3", "name": "noargs", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2_x",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"type": "tool_result", "tool_use_id": "call_3"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
        {"role": "assistant", "content": "Unknown."},
    ]


def test_assistant_tool_calls_without_text() -> None:
    out = translate(
        {
            "messages": [
                user("x"),
                assistant_calls(call("c1", "f", '{"a": [1, {"b": null}]}'), content=""),
                tool_msg("c1", "ok"),
            ]
        }
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": [1, {"b": None}]}}
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}],
    }


def test_pdf_file_part_becomes_document() -> None:
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBER"},
    }
    out = translate({"messages": [user([part])]})
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
        }
    ]


TOOL_MESSAGE = {
    **MESSAGE,
    "content": [
        {"type": "thinking", "thinking": "The user wants ", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xyz"},
        {"type": "thinking", "thinking": "weather.", "signature": "sig2"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
    ],
    "stop_reason": "tool_use",
}


def test_response_tool_use_and_thinking() -> None:
    out = orjson.loads(response_to_openai(TOOL_MESSAGE, "fast"))
    cc = ChatCompletion.model_validate(out)
    msg = cc.choices[0].message
    assert cc.choices[0].finish_reason == "tool_calls"
    assert msg.content == "Let me check."
    assert out["choices"][0]["message"]["reasoning_content"] == "The user wants weather."
    assert msg.tool_calls is not None
    calls = [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in msg.tool_calls]  # type: ignore[union-attr]
    assert calls == [("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {})]
    assert all(c.type == "function" for c in msg.tool_calls)


def test_response_tool_use_only_has_null_content() -> None:
    resp = {**TOOL_MESSAGE, "content": TOOL_MESSAGE["content"][4:5]}  # type: ignore[index]
    out = orjson.loads(response_to_openai(resp, "fast"))
    assert out["choices"][0]["message"]["content"] is None
    assert "reasoning_content" not in out["choices"][0]["message"]


# ---------------------------------------------------------------------------- JSON mode

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_json_object_mode_forces_a_tool() -> None:
    req = {"messages": [user("2+2?")], "response_format": {"type": "json_object"}}
    out = translate(req)
    [tool] = out["tools"]
    assert (tool["name"], tool["input_schema"]) == ("json_response", {"type": "object"})
    assert "JSON" in tool["description"]  # tells the model what the tool is for
    assert out["tool_choice"] == {
        "type": "tool",
        "name": "json_response",
        "disable_parallel_tool_use": True,
    }
    assert json_tool_name(req) == "json_response"
    assert json_tool_name({"messages": []}) is None
    assert json_tool_name({"response_format": {"type": "text"}}) is None
    assert "tools" not in translate({"messages": [user("x")], "response_format": {"type": "text"}})


def test_json_schema_mode_uses_schema_name() -> None:
    rf = {
        "type": "json_schema",
        "json_schema": {
            "name": "math",
            "description": "The result",
            "schema": SCHEMA,
            "strict": True,
        },
    }
    req = {"messages": [user("2+2?")], "response_format": rf}
    out = translate(req)
    assert out["tools"] == [{"name": "math", "description": "The result", "input_schema": SCHEMA}]
    assert out["tool_choice"]["name"] == "math"
    assert json_tool_name(req) == "math"


@pytest.mark.parametrize(
    ("choice", "want"),
    [
        (None, {"type": "any"}),
        ("auto", {"type": "any"}),
        ("required", {"type": "any"}),
        ("none", {"type": "tool", "name": "json_response", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_json_mode_with_user_tools(choice: Any, want: dict[str, Any]) -> None:
    req: dict[str, Any] = {
        "messages": [user("x")],
        "tools": [TOOL],
        "response_format": {"type": "json_object"},
    }
    if choice is not None:
        req["tool_choice"] = choice
    out = translate(req)
    assert [t["name"] for t in out["tools"]] == ["get_weather", "json_response"]
    assert out["tool_choice"] == want


def test_json_mode_response_becomes_content() -> None:
    resp = {
        **MESSAGE,
        "content": [
            {"type": "text", "text": "Here you go:"},
            {"type": "tool_use", "id": "toolu_9", "name": "math", "input": {"answer": 4}},
        ],
        "stop_reason": "tool_use",
    }
    out = orjson.loads(response_to_openai(resp, "fast", json_tool="math"))
    cc = ChatCompletion.model_validate(out)
    assert cc.choices[0].finish_reason == "stop"
    assert cc.choices[0].message.tool_calls is None
    assert orjson.loads(cc.choices[0].message.content or "") == {"answer": 4}
    # Without the name the same message is an ordinary tool call.
    plain = ChatCompletion.model_validate(orjson.loads(response_to_openai(resp, "fast")))
    assert plain.choices[0].finish_reason == "tool_calls"


def test_json_mode_with_a_real_tool_call() -> None:
    resp = {
        **MESSAGE,
        "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "X"}}],
        "stop_reason": "tool_use",
    }
    out = orjson.loads(response_to_openai(resp, "fast", json_tool="json_response"))
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["content"] is None


# ----------------------------------------------------------------------------- thinking


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("low", 1024), ("medium", 4096), ("high", 16384), ("minimal", None), ("none", None)],
)
def test_reasoning_effort_to_thinking(effort: str, budget: int | None) -> None:
    out = translate(
        {
            "messages": [user("x")],
            "reasoning_effort": effort,
            "max_completion_tokens": 20_000,
            "temperature": 0.3,
            "top_p": 0.5,
        }
    )
    if budget is None:
        assert "thinking" not in out
        assert out["temperature"] == 0.3 and out["top_p"] == 0.5
    else:
        assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert "temperature" not in out and "top_p" not in out  # the API refuses them
    assert out["max_tokens"] == 20_000


def test_thinking_raises_small_max_tokens_and_keeps_high_top_p() -> None:
    out = translate({"messages": [user("x")], "reasoning_effort": "high", "top_p": 0.97})
    assert out["thinking"]["budget_tokens"] == 16384
    assert out["max_tokens"] == 16384 + 4096
    assert out["max_tokens"] > out["thinking"]["budget_tokens"]
    assert out["top_p"] == 0.97
    out = translate({"messages": [user("x")], "reasoning_effort": "low", "max_tokens": 1024})
    assert out["max_tokens"] == 2048


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [TOOL], "tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_thinking_off_when_a_tool_is_forced(extra: dict[str, Any]) -> None:
    out = translate({"messages": [user("x")], "reasoning_effort": "medium", **extra})
    assert "thinking" not in out


def test_thinking_off_when_replaying_unsigned_tool_use() -> None:
    loop = [user("x"), assistant_calls(call("c1", "get_weather", "{}")), tool_msg("c1", "ok")]
    out = translate({"messages": loop, "tools": [TOOL], "reasoning_effort": "low"})
    assert "thinking" not in out
    # A new user question starts a new turn: the old tool use no longer matters.
    out = translate(
        {"messages": [*loop, user("thanks; next?")], "tools": [TOOL], "reasoning_effort": "low"}
    )
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# ------------------------------------------------------------------------ tool streams


def _block_events(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[Any]:
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *[
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def _tool_stream_events(stop: str = "tool_use") -> list[tuple[str, dict[str, Any]]]:
    return [
        EVENTS[0],
        *_block_events(
            0,
            {"type": "thinking", "thinking": "", "signature": ""},
            [
                {"type": "thinking_delta", "thinking": "Need the "},
                {"type": "thinking_delta", "thinking": "weather."},
                {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
            ],
        ),
        *_block_events(1, {"type": "redacted_thinking", "data": "abc"}, []),
        *_block_events(
            2, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "Checking."}]
        ),
        *_block_events(
            3,
            {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}},
            [
                {"type": "input_json_delta", "partial_json": ""},
                {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
                {"type": "input_json_delta", "partial_json": 'ris"}'},
            ],
        ),
        *_block_events(
            4,
            {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}},
            [{"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}],
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 42},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


TOOL_STREAM = sse(_tool_stream_events())


def _assemble(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """Accumulate chunks the way OpenAI clients do."""
    content, reasoning = "", ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for o in objs:
        for ch in o.get("choices") or ():
            d = ch["delta"]
            content += d.get("content") or ""
            reasoning += d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or ():
                slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = ch["finish_reason"] or finish
    return {"content": content, "reasoning": reasoning, "calls": calls, "finish": finish}


def test_stream_tool_calls_and_thinking() -> None:
    out, conv = convert(TOOL_STREAM, True)
    objs = chunks(out)
    for o in objs:
        ChatCompletionChunk.model_validate(o)
    got = _assemble(objs)
    assert got["content"] == "Checking."
    assert got["reasoning"] == "Need the weather."
    assert got["finish"] == "tool_calls"
    assert {
        i: (c["id"], c["name"], orjson.loads(c["arguments"])) for i, c in got["calls"].items()
    } == {
        0: ("toolu_A", "get_weather", {"city": "Paris"}),
        1: ("toolu_B", "get_weather", {"city": "Oslo"}),
    }
    starts = [
        tc
        for o in objs
        for ch in o.get("choices") or ()
        for tc in ch["delta"].get("tool_calls") or ()
        if "id" in tc
    ]
    assert starts[0] == {
        "index": 0,
        "id": "toolu_A",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert conv.finish_reason == "tool_calls"
    assert conv.usage == Usage(500, 42, cached=28)
    assert b"EqQBCgIYAhIM" not in out and b"abc" not in out  # signatures, redacted: dropped


def test_stream_tool_calls_through_openai_sdk() -> None:
    out, _ = convert(TOOL_STREAM, False)
    client = _client(
        lambda _: httpx.Response(200, content=out, headers={"content-type": "text/event-stream"})
    )
    with client.chat.completions.stream(
        model="fast", messages=[{"role": "user", "content": "x"}]
    ) as stream:
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Checking."
    assert msg.tool_calls is not None
    assert [orjson.loads(c.function.arguments) for c in msg.tool_calls] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert final.choices[0].finish_reason == "tool_calls"


@settings(max_examples=150)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=60))
def test_stream_tool_args_any_split(cuts: list[int]) -> None:
    whole, _ = convert(TOOL_STREAM, True)
    split, conv = convert(TOOL_STREAM, True, cuts)
    assert no_created(split) == no_created(whole)
    assert conv.finish_reason == "tool_calls"


@settings(max_examples=100)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
        max_size=4,
    ),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_stream_tool_args_rechunked_reassemble(args: dict[str, Any], pieces: list[int]) -> None:
    """Arbitrary tool input JSON, cut into arbitrary input_json_delta pieces, reassembles."""
    text = orjson.dumps(args).decode()
    bounds = sorted({p % (len(text) + 1) for p in pieces} | {0, len(text)})
    deltas = [
        {"type": "input_json_delta", "partial_json": text[a:b]}
        for a, b in itertools.pairwise(bounds)
    ]
    events = [
        EVENTS[0],
        *_block_events(0, {"type": "tool_use", "id": "t1", "name": "f", "input": {}}, deltas),
        EVENTS[-2],
        EVENTS[-1],
    ]
    out, _ = convert(sse(events), False)
    got = _assemble(chunks(out))
    assert orjson.loads(got["calls"][0]["arguments"]) == args
    assert got["finish"] == "tool_calls"  # the tool block decides, whatever end_turn said


def test_stream_json_mode_tool_becomes_content() -> None:
    events = [
        EVENTS[0],
        *_block_events(
            0,
            {"type": "tool_use", "id": "toolu_J", "name": "json_response", "input": {}},
            [
                {"type": "input_json_delta", "partial_json": '{"answer"'},
                {"type": "input_json_delta", "partial_json": ": 4}"},
            ],
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 5},
            },
        ),
        EVENTS[-1],
    ]
    conv = StreamToOpenAI("fast", False, json_tool="json_response")
    out = conv.feed(sse(events)) + conv.finish()
    objs = chunks(out)
    got = _assemble(objs)
    assert orjson.loads(got["content"]) == {"answer": 4}
    assert got["calls"] == {}
    assert got["finish"] == "stop" and conv.finish_reason == "stop"
    for o in objs:
        ChatCompletionChunk.model_validate(o)


def test_context_overflow_maps_to_context_length_exceeded() -> None:
    body = orjson.dumps({"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 201234 tokens > 200000 maximum"}})
    err = orjson.loads(error_to_openai(400, body))["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "context_length_exceeded"
    plain = orjson.dumps({"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages: field required"}})
    assert orjson.loads(error_to_openai(400, plain))["error"]["code"] is None
