"""Anthropic Messages <-> OpenAI chat completions: requests, responses, streams, errors."""

from __future__ import annotations

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
    request_from_openai,
    response_to_openai,
    usage_of,
)
from ext_proc.translate.openai import TranslationError
from ext_proc.translate.sse import SSEParser

# ---------------------------------------------------------------------------- requests


def translate(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(request_from_openai(req, "claude-sonnet-4-5", **kw))
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


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
        ({"messages": [user("x")], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [user("x")], "tool_choice": "auto"}, "tool_choice"),
        ({"messages": [user("x"), {"role": "tool", "content": "r"}]}, "tools"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}, user("x")]},
            "tools",
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


def test_tools_error_message() -> None:
    with pytest.raises(TranslationError, match="tools are not supported for this backend yet"):
        request_from_openai({"messages": [user("x")], "tools": [{}]}, "m")


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
    assert usage_of(MESSAGE) == (115, 7)
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

    assert conv.usage == (500, 15)
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
    assert conv.usage == (500, 15)


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
