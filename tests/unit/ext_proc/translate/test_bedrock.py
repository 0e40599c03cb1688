"""Bedrock Converse <-> OpenAI chat: requests (checked against botocore's service model),
responses, event streams, errors, SigV4, embeddings and the adapter."""

from __future__ import annotations

import base64
import datetime
import itertools
import re
import struct
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
import botocore.session
import httpx
import openai
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.validate import ParamValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.auth.sigv4 import sign
from ext_proc.providers import PROVIDERS
from ext_proc.providers.base import Buffered, Stream
from ext_proc.providers.bedrock import BedrockProvider
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.bedrock import (
    EVENTSTREAM,
    StreamToOpenAI,
    embeddings_request,
    embeddings_response,
    error_to_openai,
    path,
    request_from_openai,
    response_to_openai,
    usage_of,
)
from ext_proc.translate.canonical import TranslationError, Usage
from switchyard.framing.eventstream import encode
from switchyard.framing.sse import SSEParser

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
_SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
_SHAPES = [_SERVICE.operation_model(op).input_shape for op in ("Converse", "ConverseStream")]
_TOOL_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def translate(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(request_from_openai(req, MODEL))
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any = None, **kw: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **kw}


def call(cid: str, name: str, args: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def tool_msg(cid: str | None, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": cid, "content": content}


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "search", "strict": True}},
]


def assert_valid(body: bytes) -> None:
    """The body passes botocore's validator for Converse and ConverseStream (+ the patterns
    and alternation botocore does not check)."""
    params = orjson.loads(body)
    params["modelId"] = MODEL
    for m in params["messages"]:
        for b in m["content"]:
            if "image" in b:
                src = b["image"]["source"]
                src["bytes"] = base64.b64decode(src["bytes"], validate=True)
            if "toolUse" in b:
                assert _TOOL_ID.fullmatch(b["toolUse"]["toolUseId"])
                assert _TOOL_NAME.fullmatch(b["toolUse"]["name"])
            if "toolResult" in b:
                assert _TOOL_ID.fullmatch(b["toolResult"]["toolUseId"])
            if "text" in b:
                assert b["text"].strip()
    roles = [m["role"] for m in params["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    for spec in params.get("toolConfig", {}).get("tools", []):
        assert _TOOL_NAME.fullmatch(spec["toolSpec"]["name"])
    for shape in _SHAPES:
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()


# ---------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("model", "stream", "want"),
    [
        ("amazon.nova-pro-v1:0", False, "/model/amazon.nova-pro-v1%3A0/converse"),
        ("amazon.nova-pro-v1:0", True, "/model/amazon.nova-pro-v1%3A0/converse-stream"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x-v1:0", False,
         "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x-v1"
         "%3A0/converse"),
    ],
)
def test_path(model: str, stream: bool, want: str) -> None:
    assert path(model, stream) == want


def test_minimal_request() -> None:
    body = request_from_openai({"model": "alias", "messages": [user("hi")], "seed": 1,
                                "user": "u", "stream": True,
                                "stream_options": {"include_usage": True}}, MODEL)
    assert orjson.loads(body) == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert_valid(body)


def test_system_developer_and_merging() -> None:
    out = translate({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
        {"role": "system", "content": "  "},
        user("a"), user([{"type": "text", "text": "b"}, {"type": "text", "text": " "}]),
        assistant("c"), assistant([{"type": "refusal", "refusal": "no"}]), assistant(""),
        user("d"),
    ]})
    assert out["system"] == [{"text": "Be brief."}, {"text": "No emoji."}]
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
        {"role": "assistant", "content": [{"text": "c"}, {"text": "no"}]},
        {"role": "user", "content": [{"text": "d"}]},
    ]


@pytest.mark.parametrize(("media", "fmt"), [("image/png", "png"), ("image/jpeg", "jpeg"),
                                            ("image/jpg", "jpeg"), ("image/gif", "gif"),
                                            ("image/webp", "webp")])
def test_images(media: str, fmt: str) -> None:
    body = request_from_openai({"messages": [user([
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:{media};base64,{PNG}"}},
    ])]}, MODEL)
    assert orjson.loads(body)["messages"][0]["content"][1] == {
        "image": {"format": fmt, "source": {"bytes": PNG}}}
    assert_valid(body)


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://x/y.jpg",
                                 "data:image/png,abc", "data:image/tiff;base64,AAAA",
                                 "ftp://x", "data:image/png;base64,"])
def test_bad_images_name_the_part(url: str) -> None:
    with pytest.raises(TranslationError) as ei:
        translate({"messages": [user("x"), assistant("y"), user([
            {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}])]})
    assert ei.value.param == "messages[2].content[1].image_url"
    assert ei.value.status == 400


def test_inference_config() -> None:
    out = translate({"messages": [user("x")], "max_tokens": 10, "max_completion_tokens": 20,
                     "temperature": 1.7, "top_p": 0.5, "stop": ["END", "", "STOP"]})
    assert out["inferenceConfig"] == {"maxTokens": 20, "temperature": 1.0, "topP": 0.5,
                                      "stopSequences": ["END", "STOP"]}
    out = translate({"messages": [user("x")], "max_tokens": 7, "temperature": 0, "stop": "X"})
    assert out["inferenceConfig"] == {"maxTokens": 7, "temperature": 0.0, "stopSequences": ["X"]}
    assert "inferenceConfig" not in translate({"messages": [user("x")], "stop": []})


def test_tools_and_choices() -> None:
    out = translate({"messages": [user("x")], "tools": TOOLS})
    assert out["toolConfig"] == {"tools": [
        {"toolSpec": {"name": "get_weather", "description": "Weather", "inputSchema": {
            "json": {"type": "object", "properties": {"city": {"type": "string"}}}}}},
        {"toolSpec": {"name": "search", "inputSchema": {
            "json": {"type": "object", "properties": {}}}}},
    ]}
    for choice, want in [("auto", {"auto": {}}), ("required", {"any": {}}),
                         ({"type": "function", "function": {"name": "search"}},
                          {"tool": {"name": "search"}})]:
        body = request_from_openai({"messages": [user("x")], "tools": TOOLS,
                                    "tool_choice": choice}, MODEL)
        assert orjson.loads(body)["toolConfig"]["toolChoice"] == want
        assert_valid(body)
    assert "toolConfig" not in translate({"messages": [user("x")], "tools": TOOLS,
                                          "tool_choice": "none"})
    assert "toolConfig" not in translate({"messages": [user("x")], "tools": []})


def test_tool_history_parallel_calls_and_results() -> None:
    body = request_from_openai({"tools": TOOLS, "messages": [
        user("weather in Paris and Rome?"),
        assistant("Let me check.", tool_calls=[
            call("call_1", "get_weather", '{"city": "Paris"}'),
            call("call_2", "get_weather", '{"city":"Rome"}'),
            call("call_3", "search", ""),
        ]),
        tool_msg("call_1", "sunny"),
        tool_msg("call_2", [{"type": "text", "text": "rain"}]),
        tool_msg("call_3", ""),
        user("thanks; and tomorrow?"),
    ]}, MODEL)
    out = orjson.loads(body)
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {"city": "Rome"}}},
        {"toolUse": {"toolUseId": "call_3", "name": "search", "input": {}}},
    ]}
    assert out["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},
        {"toolResult": {"toolUseId": "call_2", "content": [{"text": "rain"}]}},
        {"toolResult": {"toolUseId": "call_3", "content": [{"text": ""}]}},
        {"text": "thanks; and tomorrow?"},
    ]}
    assert len(out["messages"]) == 3
    assert_valid(body)


def test_tool_ids_bedrock_rejects_are_rewritten_consistently() -> None:
    bad = "call/with spaces+" + "x" * 80
    out = translate({"messages": [user("x"), assistant(tool_calls=[call(bad, "f", "{}")]),
                                  tool_msg(bad, "ok")]})
    use_id = out["messages"][1]["content"][0]["toolUse"]["toolUseId"]
    assert _TOOL_ID.fullmatch(use_id)
    assert out["messages"][2]["content"][0]["toolResult"]["toolUseId"] == use_id
    other = translate({"messages": [user("x"), assistant(tool_calls=[
        call(bad[:-1] + "y", "f", "{}")])]})
    assert other["messages"][1]["content"][0]["toolUse"]["toolUseId"] != use_id


@pytest.mark.parametrize(
    ("req", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
        ({"messages": [user("")]}, "messages[0].content"),
        ({"messages": [user(None)]}, "messages[0].content"),
        ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [user([{"type": "input_audio"}])]}, "messages[0].content[0]"),
        ({"messages": [user([{"type": "text"}])]}, "messages[0].content[0]"),
        ({"messages": [user("x"), assistant(tool_calls=[call("c", "f", "[1]")])]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [user("x"), assistant(tool_calls=[call("c", "f", "{bad")])]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [user("x"), assistant(tool_calls=[call("", "f", "{}")])]},
         "messages[1].tool_calls[0].id"),
        ({"messages": [user("x"), assistant(function_call={"name": "f"})]},
         "messages[1].function_call"),
        ({"messages": [user("x"), tool_msg(None, "r")]}, "messages[1].tool_call_id"),
        ({"messages": [user("x")], "n": 2}, "n"),
        ({"messages": [user("x")], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user("x")], "max_completion_tokens": True}, "max_completion_tokens"),
        ({"messages": [user("x")], "temperature": "hot"}, "temperature"),
        ({"messages": [user("x")], "top_p": None, "stop": 5}, "stop"),
        ({"messages": [user("x")], "stop": ["a", 1]}, "stop"),
        ({"messages": [user("x")], "response_format": {"type": "json_object"}},
         "response_format"),
        ({"messages": [user("x")], "response_format": {"type": "json_schema"}},
         "response_format"),
        ({"messages": [user("x")], "functions": [{"name": "f"}]}, "functions"),
        ({"messages": [user("x")], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [user("x")], "tools": TOOLS, "tool_choice": {
            "type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"messages": [user("x")], "tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [user("x")], "tools": [{"type": "custom", "custom": {}}]}, "tools[0]"),
        ({"messages": [user("x")], "tools": [{"type": "function", "function": {}}]},
         "tools[0].function.name"),
        ({"messages": [user("x")], "tools": [{"type": "function", "function": {
            "name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ],
)
def test_errors_name_the_param(req: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as ei:
        request_from_openai(req, MODEL)
    assert ei.value.param == param
    assert ei.value.status == 400


def test_text_response_format_and_n_one_are_fine() -> None:
    assert translate({"messages": [user("x")], "n": 1, "response_format": {"type": "text"}})


# --------------------------------------------------- property: always valid for botocore

_text = st.text(min_size=1, max_size=24).filter(lambda s: bool(s.strip()))
_name = st.from_regex(r"[a-zA-Z0-9_-]{1,24}", fullmatch=True)
_image = st.sampled_from(["png", "jpeg", "gif", "webp"]).map(
    lambda f: {"type": "image_url", "image_url": {"url": f"data:image/{f};base64,{PNG}"}})
_parts = st.lists(st.one_of(_text.map(lambda t: {"type": "text", "text": t}), _image),
                  min_size=1, max_size=3)
_scalars = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=8), st.booleans(), st.none())
_args = st.dictionaries(st.text(max_size=8), _scalars, max_size=3)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    tools = draw(st.lists(_name, max_size=3, unique=True))
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        msgs.append({"role": draw(st.sampled_from(["system", "developer"])),
                     "content": draw(st.one_of(_text, st.just("")))})
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        msgs.append(user(draw(st.one_of(_text, _parts))))
        if draw(st.booleans()):
            msgs.append({"role": "developer", "content": draw(_text)})
        kind = draw(st.sampled_from(["text", "tools", "none"]))
        if kind == "text":
            msgs.append(assistant(draw(st.one_of(_text, st.just(""), st.none()))))
        elif kind == "tools":
            ids = draw(st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=3,
                                unique=True))
            msgs.append(assistant(draw(st.one_of(st.none(), _text)), tool_calls=[
                call(i, draw(st.one_of(_name, st.sampled_from(tools or ["f"]))),
                     orjson.dumps(draw(_args)).decode()) for i in ids]))
            for i in ids:
                msgs.append(tool_msg(i, draw(st.one_of(st.text(max_size=20), _text.map(
                    lambda t: [{"type": "text", "text": t}])))))
    req: dict[str, Any] = {"model": "alias", "messages": msgs}
    if tools:
        req["tools"] = [{"type": "function", "function": {
            "name": n, "description": draw(st.text(max_size=10)),
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
            for n in tools]
        req["tool_choice"] = draw(st.sampled_from(
            [None, "auto", "required", "none", {"type": "function",
                                                "function": {"name": tools[0]}}]))
    optional = {
        "max_tokens": st.integers(min_value=1, max_value=100_000),
        "max_completion_tokens": st.integers(min_value=1, max_value=100_000),
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0, max_value=1),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
        "n": st.just(1),
        "seed": st.integers(),
        "user": st.text(max_size=5),
        "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}),
        "presence_penalty": st.floats(min_value=-2, max_value=2),
    }
    for key, strat in optional.items():
        if draw(st.booleans()):
            req[key] = draw(strat)
    return req


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(openai_requests())
def test_any_valid_openai_request_is_a_valid_converse_request(req: dict[str, Any]) -> None:
    assert_valid(request_from_openai(req, MODEL))


# --------------------------------------------------------------------------- responses

RESPONSE = {
    "output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
        {"text": "Hello, "}, {"text": "world!"},
    ]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 35,
              "cacheReadInputTokens": 15, "cacheWriteInputTokens": 5},
    "metrics": {"latencyMs": 120},
}


def test_response_mapping() -> None:
    out = orjson.loads(response_to_openai(RESPONSE, "fast"))
    cc = ChatCompletion.model_validate(out)
    assert cc.model == "fast" and cc.object == "chat.completion" and cc.id.startswith("chatcmpl-")
    msg = out["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "Hello, world!", "refusal": None,
                   "reasoning_content": "Think."}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
                            "prompt_tokens_details": {"cached_tokens": 15}}
    assert usage_of(RESPONSE) == Usage(30, 5, cached=15)
    assert usage_of({}) is None


def test_tool_use_response() -> None:
    resp = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "tu_2", "name": "search", "input": {}}},
    ]}}, "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4}}
    out = orjson.loads(response_to_openai(resp, "m"))
    cc = ChatCompletion.model_validate(out)
    choice = cc.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in calls] == [("tu_1", "get_weather", {"city": "Paris"}),
                                ("tu_2", "search", {})]


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("tool_use", "tool_calls"), ("max_tokens", "length"),
    ("stop_sequence", "stop"), ("guardrail_intervened", "content_filter"),
    ("content_filtered", "content_filter"), ("model_context_window_exceeded", "length"),
    ("something_new", "stop"),
])
def test_finish_reasons(stop: str, finish: str) -> None:
    out = orjson.loads(response_to_openai({**RESPONSE, "stopReason": stop}, "m"))
    assert out["choices"][0]["finish_reason"] == finish


def test_response_parsed_by_openai_sdk() -> None:
    body = response_to_openai(RESPONSE, "fast")
    client = _client(lambda _: httpx.Response(200, content=body))
    cc = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert cc.choices[0].message.content == "Hello, world!"


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "etype", "message", "otype", "code"),
    [
        (400, "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
         "Malformed input request", "invalid_request_error", None),
        (400, "ValidationException", "Input is too long for requested model.",
         "invalid_request_error", "context_length_exceeded"),
        (400, None, "prompt is too long: 210000 tokens > 200000 maximum",
         "invalid_request_error", "context_length_exceeded"),
        (400, None, "Too many input tokens. Max input tokens: 8192",
         "invalid_request_error", "context_length_exceeded"),
        (400, None, "This model's maximum context length is 32000 tokens",
         "invalid_request_error", "context_length_exceeded"),
        (429, "ThrottlingException", "Too many requests", "rate_limit_error",
         "rate_limit_exceeded"),
        (403, "AccessDeniedException", "no access", "permission_error", None),
        (403, "UnrecognizedClientException", "bad token", "authentication_error", None),
        (404, "ResourceNotFoundException", "no model", "not_found_error", None),
        (408, "ModelTimeoutException", "slow", "api_error", "timeout"),
        (424, "ModelErrorException", "model broke", "api_error", None),
        (500, "InternalServerException", "oops", "api_error", None),
        (503, "ServiceUnavailableException", "busy", "api_error", "overloaded"),
        (429, None, "by status", "rate_limit_error", "rate_limit_exceeded"),
        (503, None, "by status", "api_error", "overloaded"),
        (418, None, "teapot", "invalid_request_error", None),
        (502, "BrandNewException", "new", "api_error", None),
    ],
)
def test_error_mapping(status: int, etype: str | None, message: str, otype: str,
                       code: str | None) -> None:
    body = orjson.dumps({"message": message})
    assert orjson.loads(error_to_openai(status, body, etype)) == {
        "error": {"message": message, "type": otype, "param": None, "code": code}}


def test_error_type_from_body() -> None:
    body = orjson.dumps({"__type": "com.amazon.bedrock#ThrottlingException", "Message": "slow"})
    assert orjson.loads(error_to_openai(400, body, None))["error"] == {
        "message": "slow", "type": "rate_limit_error", "param": None,
        "code": "rate_limit_exceeded"}


def test_error_non_json_truncated() -> None:
    out = orjson.loads(error_to_openai(502, b"<html>" + b"x" * 10_000, None))
    assert out["error"]["type"] == "api_error"
    assert "502" in out["error"]["message"] and len(out["error"]["message"]) < 600
    assert orjson.loads(error_to_openai(503, b"", None))["error"]["message"] == (
        "upstream returned HTTP 503")


def test_error_parsed_by_openai_sdk() -> None:
    body = error_to_openai(429, orjson.dumps({"message": "slow down"}), "ThrottlingException")
    client = _client(lambda _: httpx.Response(429, content=body))
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ei.value.code == "rate_limit_exceeded"
    assert "slow down" in ei.value.message


# ----------------------------------------------------------------------------- streams


def ev(kind: str, payload: dict[str, Any]) -> bytes:
    return encode({":event-type": kind, ":content-type": "application/json",
                   ":message-type": "event"}, orjson.dumps({**payload, "p": "abcdef"}))


def exc(kind: str, message: str) -> bytes:
    return encode({":exception-type": kind, ":content-type": "application/json",
                   ":message-type": "exception"}, orjson.dumps({"message": message}))


TEXT = 'Héllo, "usage" 世界 🌍\n!'
EVENTS = [
    ev("messageStart", {"role": "assistant"}),
    ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hé"}}),
    ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "llo, \"usage\" "}}),
    ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "世界 🌍\n!"}}),
    ev("contentBlockStop", {"contentBlockIndex": 0}),
    ev("messageStop", {"stopReason": "end_turn"}),
    ev("metadata", {"usage": {"inputTokens": 472, "outputTokens": 15, "totalTokens": 515,
                              "cacheReadInputTokens": 28}, "metrics": {"latencyMs": 300}}),
]
STREAM = b"".join(EVENTS)
TOOL_EVENTS = [
    ev("messageStart", {"role": "assistant"}),
    ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {
        "text": "Need weather."}}}),
    ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {
        "signature": "sig"}}}),
    ev("contentBlockStop", {"contentBlockIndex": 0}),
    ev("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Checking."}}),
    ev("contentBlockStop", {"contentBlockIndex": 1}),
    ev("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {
        "toolUseId": "tu_a", "name": "get_weather"}}}),
    ev("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"ci'}}}),
    ev("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {
        "input": 'ty": "Paris"}'}}}),
    ev("contentBlockStop", {"contentBlockIndex": 2}),
    ev("contentBlockStart", {"contentBlockIndex": 3, "start": {"toolUse": {
        "toolUseId": "tu_b", "name": "get_weather"}}}),
    ev("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {
        "input": '{"city": "Rome"}'}}}),
    ev("contentBlockStop", {"contentBlockIndex": 3}),
    ev("messageStop", {"stopReason": "tool_use"}),
    ev("metadata", {"usage": {"inputTokens": 50, "outputTokens": 30, "totalTokens": 80},
                    "metrics": {"latencyMs": 300}}),
]
TOOL_STREAM = b"".join(TOOL_EVENTS)


def convert(stream: bytes, include_usage: bool, cuts: list[int] | None = None
            ) -> tuple[bytes, StreamToOpenAI]:
    conv = StreamToOpenAI("fast", include_usage, response_id="chatcmpl-fixed")
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
    assert {c.id for c in parsed} == {"chatcmpl-fixed"}
    assert {c.model for c in parsed} == {"fast"}
    assert parsed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == TEXT
    finals = [c for c in parsed if c.choices and c.choices[0].finish_reason]
    assert [f.choices[0].finish_reason for f in finals] == ["stop"]
    if include_usage:
        last = parsed[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (500, 15)
        assert last.usage.prompt_tokens_details is not None
        assert last.usage.prompt_tokens_details.cached_tokens == 28
        assert all(o["usage"] is None for o in objs[:-1])
    else:
        assert all("usage" not in o for o in objs)
    assert conv.usage == Usage(500, 15, cached=28) and conv.done and conv.error is None
    assert conv.finish_reason == "stop" and conv.first_token_at is not None


def test_stream_tool_calls_and_reasoning() -> None:
    out, conv = convert(TOOL_STREAM, False)
    parsed = [ChatCompletionChunk.model_validate(o) for o in chunks(out)]
    deltas = [c.choices[0].delta for c in parsed]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == (
        "Need weather.")
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        for tc in d.tool_calls or ():
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            slot["id"] += tc.id or ""
            if tc.function is not None:
                slot["name"] += tc.function.name or ""
                slot["args"] += tc.function.arguments or ""
    assert calls == {0: {"id": "tu_a", "name": "get_weather", "args": '{"city": "Paris"}'},
                     1: {"id": "tu_b", "name": "get_weather", "args": '{"city": "Rome"}'}}
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert conv.usage == Usage(50, 30)


def test_stream_tool_calls_through_openai_sdk() -> None:
    out, _ = convert(TOOL_STREAM, True)
    client = _client(lambda _: httpx.Response(
        200, content=out, headers={"content-type": "text/event-stream"}))
    with client.chat.completions.stream(model="fast", messages=[
            {"role": "user", "content": "x"}]) as stream:
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Checking."
    assert [(c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in msg.tool_calls or ()] == [
        ("tu_a", "get_weather", '{"city": "Paris"}'), ("tu_b", "get_weather", '{"city": "Rome"}')]
    assert final.choices[0].finish_reason == "tool_calls"


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=40),
       st.booleans(), st.booleans())
def test_stream_any_split_matches_whole(cuts: list[int], include_usage: bool,
                                        tools: bool) -> None:
    stream = TOOL_STREAM if tools else STREAM
    cuts = [c % (len(stream) + 1) for c in cuts]
    whole, _ = convert(stream, include_usage)
    split, conv = convert(stream, include_usage, cuts)
    assert no_created(split) == no_created(whole)
    assert conv.done and conv.error is None


def test_stream_byte_at_a_time() -> None:
    whole, _ = convert(TOOL_STREAM, True)
    split, _ = convert(TOOL_STREAM, True, list(range(len(TOOL_STREAM))))
    assert no_created(split) == no_created(whole)


@pytest.mark.parametrize(("stop", "finish"), [("max_tokens", "length"),
                                              ("guardrail_intervened", "content_filter"),
                                              ("stop_sequence", "stop")])
def test_stream_finish_reason(stop: str, finish: str) -> None:
    events = [*EVENTS]
    events[5] = ev("messageStop", {"stopReason": stop})
    out, conv = convert(b"".join(events), False)
    assert chunks(out)[-1]["choices"][0]["finish_reason"] == finish
    assert conv.finish_reason == finish


@pytest.mark.parametrize(("kind", "otype", "code"), [
    ("throttlingException", "rate_limit_error", "rate_limit_exceeded"),
    ("modelStreamErrorException", "api_error", None),
    ("internalServerException", "api_error", None),
    ("serviceUnavailableException", "api_error", "overloaded"),
    ("validationException", "invalid_request_error", None),
])
def test_stream_exception(kind: str, otype: str, code: str | None) -> None:
    out, conv = convert(b"".join([*EVENTS[:2], exc(kind, "it broke"), *EVENTS[2:]]), True)
    objs = chunks(out)
    assert objs[-1] == {"error": {"message": "it broke", "type": otype, "param": None,
                                  "code": code}}
    assert [ChatCompletionChunk.model_validate(o).choices[0].delta.content
            for o in objs[:-1]] == ["", "Hé"]
    assert conv.done and conv.error is not None
    assert out.count(b"[DONE]") == 1


def test_stream_protocol_error_message() -> None:
    frame = encode({":message-type": "error", ":error-code": "InternalFailure",
                    ":error-message": "boom"}, b"")
    out, conv = convert(EVENTS[0] + frame, False)
    assert chunks(out)[-1]["error"]["message"] == "boom"
    assert conv.error is not None


def test_stream_error_raises_in_openai_sdk() -> None:
    out, _ = convert(EVENTS[0] + exc("throttlingException", "Too many tokens"), False)
    client = _client(lambda _: httpx.Response(
        200, content=out, headers={"content-type": "text/event-stream"}))
    stream = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="Too many tokens"):
        list(stream)


@pytest.mark.parametrize("upto", [0, 1, 3, 5])
def test_stream_early_end_yields_error(upto: int) -> None:
    stream = b"".join(EVENTS[:upto]) + EVENTS[upto][:20]  # cut mid-frame
    out, conv = convert(stream, True)
    objs = chunks(out)
    assert objs[-1]["error"]["type"] == "api_error"
    assert "ended" in objs[-1]["error"]["message"]
    for o in objs[:-1]:
        ChatCompletionChunk.model_validate(o)
    assert conv.done and out.endswith(b"data: [DONE]\n\n")


def test_stream_clean_frames_but_no_message_stop_is_an_error() -> None:
    out, conv = convert(b"".join(EVENTS[:4]), False)
    assert "ended before messageStop" in chunks(out)[-1]["error"]["message"]
    out, conv = convert(b"".join([*EVENTS[:4], EVENTS[6]]), True)  # metadata without stop
    assert "ended before messageStop" in chunks(out)[-1]["error"]["message"]
    assert conv.usage == Usage(500, 15, cached=28)


def test_stream_without_metadata_still_completes() -> None:
    out, conv = convert(b"".join(EVENTS[:6]), True)
    objs = chunks(out)
    assert objs[-1]["choices"][0]["finish_reason"] == "stop"
    assert conv.error is None and conv.usage is None


def test_stream_corrupt_frame_is_an_error() -> None:
    bad = bytearray(EVENTS[2])
    bad[-1] ^= 0xFF
    out, conv = convert(EVENTS[0] + EVENTS[1] + bytes(bad) + b"".join(EVENTS[3:]), False)
    assert "corrupt event stream" in chunks(out)[-1]["error"]["message"]
    assert conv.done


def test_stream_malformed_payload_is_an_error() -> None:
    bad = encode({":event-type": "contentBlockDelta", ":message-type": "event"}, b"{nope")
    out, conv = convert(EVENTS[0] + bad + b"".join(EVENTS[1:]), False)
    assert chunks(out)[-1]["error"]["message"] == "malformed event from upstream stream"
    assert conv.done


def test_stream_feed_after_done_is_ignored() -> None:
    conv = StreamToOpenAI("fast", False)
    assert conv.feed(STREAM).endswith(b"data: [DONE]\n\n")
    assert conv.feed(STREAM) == b""
    assert conv.finish() == b""


# --------------------------------------------------------------------------------- SigV4

URL = "https://bedrock-runtime.us-east-1.amazonaws.com" + path(MODEL, False)
HOST = {"host": "bedrock-runtime.us-east-1.amazonaws.com"}


def test_sign_scope_and_headers() -> None:
    h = sign("POST", URL, HOST, b'{"messages":[]}', "us-east-1", "AKIDTEST", "secret", None)
    assert set(h) == {"Authorization", "X-Amz-Date"}
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=AKIDTEST/(\d{8})/us-east-1/bedrock/"
                     r"aws4_request, SignedHeaders=host;x-amz-date, Signature=[0-9a-f]{64}",
                     h["Authorization"])
    assert m is not None and h["X-Amz-Date"].startswith(m.group(1))
    with_token = sign("POST", URL, HOST, b"{}", "eu-west-1", "AKID", "s", "TOKEN")
    assert with_token["X-Amz-Security-Token"] == "TOKEN"
    assert "/eu-west-1/bedrock/aws4_request" in with_token["Authorization"]
    assert "x-amz-security-token" in with_token["Authorization"]


def test_signature_covers_body_host_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)

    def sig(url: str = URL, body: bytes = b"{}", host: dict[str, str] = HOST) -> str:
        return sign("POST", url, host, body, "us-east-1", "AKID", "s", None)["Authorization"]

    base = sig()
    assert sig() == base  # deterministic for a fixed clock
    assert sig(body=b"{ }") != base
    assert sig(host={"host": "other:8443"}) != base
    assert sig(url=URL.replace("/converse", "/converse-stream")) != base


@pytest.mark.parametrize("days", [(1, 2), (2, 2)])
def test_cached_signing_key_follows_the_date(days: tuple[int, int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-day key cache gives what a fresh botocore SigV4Auth gives, across midnight."""
    for day in days:
        now = datetime.datetime(2025, 1, day, 23, 59, 59)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda now=now: now)
        ours = sign("POST", URL, HOST, b"{}", "us-east-1", "AKID", "s", None)["Authorization"]
        ref = AWSRequest(method="POST", url=URL, data=b"{}", headers=dict(HOST))
        SigV4Auth(Credentials("AKID", "s"), "bedrock", "us-east-1").add_auth(ref)
        assert ours == ref.headers["Authorization"]


def test_sign_matches_botocores_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same URL, headers and body as botocore's client sends => byte-identical signature."""
    now = datetime.datetime(2025, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret", aws_session_token="TOK")
    sent: list[Any] = []

    class Captured(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        sent.append(request)
        raise Captured

    client.meta.events.register("before-send.bedrock-runtime.Converse", capture)
    with pytest.raises(Captured):
        client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    req = sent[0]
    assert urlsplit(req.url).path == path(MODEL, False)
    auth = req.headers["Authorization"]
    auth = auth.decode() if isinstance(auth, bytes) else auth
    names = re.search(r"SignedHeaders=([^,]+)", auth).group(1).split(";")  # type: ignore[union-attr]
    headers = {}
    for name in names:
        if name in ("x-amz-date", "x-amz-security-token"):
            continue
        value = req.headers.get(name) or urlsplit(req.url).netloc
        headers[name] = value.decode() if isinstance(value, bytes) else value
    ours = sign("POST", req.url, headers, req.body, "us-east-1", "AKIDTEST", "secret", "TOK")
    assert ours["Authorization"] == auth
    assert ours["X-Amz-Security-Token"] == "TOK"


# ---------------------------------------------------------------------------- embeddings


def test_titan_embeddings_request() -> None:
    calls = embeddings_request({"input": ["a", "b"], "dimensions": 256},
                               "amazon.titan-embed-text-v2:0")
    assert calls == [
        ("/model/amazon.titan-embed-text-v2%3A0/invoke", b'{"inputText":"a","dimensions":256}'),
        ("/model/amazon.titan-embed-text-v2%3A0/invoke", b'{"inputText":"b","dimensions":256}'),
    ]
    assert embeddings_request({"input": "x"}, "amazon.titan-embed-text-v1") == [
        ("/model/amazon.titan-embed-text-v1/invoke", b'{"inputText":"x"}')]


def test_cohere_embeddings_request_batches() -> None:
    texts = [f"t{i}" for i in range(100)]
    calls = embeddings_request({"input": texts}, "cohere.embed-english-v3")
    assert [p for p, _ in calls] == ["/model/cohere.embed-english-v3/invoke"] * 2
    bodies = [orjson.loads(b) for _, b in calls]
    assert bodies[0] == {"texts": texts[:96], "input_type": "search_document"}
    assert bodies[1]["texts"] == texts[96:]
    v4 = orjson.loads(embeddings_request({"input": "x", "dimensions": 512},
                                         "cohere.embed-v4:0")[0][1])
    assert v4["output_dimension"] == 512


@pytest.mark.parametrize(("req", "model", "param"), [
    ({"input": [1, 2, 3]}, "amazon.titan-embed-text-v2:0", "input"),
    ({"input": []}, "amazon.titan-embed-text-v2:0", "input"),
    ({"input": ["ok", ""]}, "amazon.titan-embed-text-v2:0", "input"),
    ({"input": "x"}, "meta.llama3-8b-instruct-v1:0", "model"),
    ({"input": "x", "dimensions": 256}, "cohere.embed-english-v3", "dimensions"),
    ({"input": "x", "dimensions": 0}, "amazon.titan-embed-text-v2:0", "dimensions"),
])
def test_embeddings_request_errors(req: dict[str, Any], model: str, param: str) -> None:
    with pytest.raises(TranslationError) as ei:
        embeddings_request(req, model)
    assert ei.value.param == param


def test_embeddings_response() -> None:
    titan = [orjson.dumps({"embedding": [0.5, -0.25], "inputTextTokenCount": 3}),
             orjson.dumps({"embedding": [1.0, 0.0], "inputTextTokenCount": 2})]
    out = orjson.loads(embeddings_response(titan, "emb"))
    assert out == {"object": "list", "model": "emb",
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}],
                   "usage": {"prompt_tokens": 5, "total_tokens": 5}}
    cohere = [orjson.dumps({"embeddings": [[0.1], [0.2]], "id": "x", "texts": ["a", "b"]}),
              orjson.dumps({"embeddings": {"float": [[0.3]]}})]
    out = orjson.loads(embeddings_response(cohere, "emb", prompt_tokens=9))
    assert [(d["index"], d["embedding"]) for d in out["data"]] == [(0, [0.1]), (1, [0.2]),
                                                                     (2, [0.3])]
    assert out["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    b64 = orjson.loads(embeddings_response(titan[:1], "emb", encoding_format="base64"))
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -0.25)


# ------------------------------------------------------------------------------ adapter


def backend(options: dict[str, str], prefix: str = "") -> BackendInfo:
    provider = ProviderInfo(name="bedrock-east", kind="bedrock",
                            authority=b"bedrock-runtime.us-east-1.amazonaws.com",
                            path_prefix=prefix, api_key="", headers=(), options=options)
    return BackendInfo(cluster="c", provider=provider, model=MODEL, price_input=0.0,
                       price_output=0.0, context_window=200_000, label="bedrock-east/m")


CREDS = {"region": "us-east-1", "aws_access_key_id": "AKIDTEST",
         "aws_secret_access_key": "very-secret", "aws_session_token": "TOK"}


def test_adapter_registered() -> None:
    assert isinstance(PROVIDERS["bedrock"], BedrockProvider)


@pytest.mark.parametrize("stream", [False, True])
def test_adapter_request(stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    req = {"model": "alias", "messages": [user("hi")], "stream": stream}
    p, body, headers = BedrockProvider().request(req, backend(CREDS, "/pfx"))
    assert p == ("/pfx" + path(MODEL, stream)).encode()
    assert body == request_from_openai(req, MODEL)
    h = dict(headers)
    assert h["content-type"] == b"application/json"
    assert h["accept"] == (EVENTSTREAM.encode() if stream else b"application/json")
    assert h["x-amz-security-token"] == b"TOK"
    want = sign("POST", "https://bedrock-runtime.us-east-1.amazonaws.com" + p.decode(),
                HOST, body, "us-east-1", "AKIDTEST", "very-secret", "TOK")
    assert h["authorization"] == want["Authorization"].encode()
    assert h["x-amz-date"] == want["X-Amz-Date"].encode()


@pytest.mark.parametrize("missing", ["aws_access_key_id", "aws_secret_access_key", "region"])
def test_adapter_missing_credentials(missing: str) -> None:
    opts = {k: v for k, v in CREDS.items() if k != missing}
    with pytest.raises(TranslationError) as ei:
        BedrockProvider().request({"messages": [user("hi")]}, backend(opts))
    assert ei.value.status == 500
    assert ei.value.code in ("missing_credentials", "missing_region")
    assert "bedrock-east" in ei.value.message
    assert "very-secret" not in ei.value.message and "AKIDTEST" not in ei.value.message


def test_adapter_responses() -> None:
    a = BedrockProvider()
    b = backend(CREDS)
    req = {"messages": [user("hi")], "stream": True, "stream_options": {"include_usage": True}}
    h = a.response(200, EVENTSTREAM, req, b)
    assert isinstance(h, Stream) and h.streaming
    out = h.feed(STREAM) + h.finish()
    assert chunks(out)[-1]["usage"]["completion_tokens"] == 15
    assert h.usage == Usage(500, 15, cached=28)

    h = a.response(200, "application/json", {"messages": [user("hi")]}, b)
    assert isinstance(h, Buffered) and not h.streaming
    assert h.feed(orjson.dumps(RESPONSE)) == b""
    done = h.finish()
    assert done is not None
    assert orjson.loads(done)["choices"][0]["message"]["content"] == "Hello, world!"
    assert h.usage == Usage(30, 5, cached=15)

    h = a.response(429, "application/json", {"messages": [user("hi")]}, b)
    h.feed(orjson.dumps({"message": "Too many requests, please wait."}))
    err = h.finish()
    assert err is not None
    assert orjson.loads(err)["error"]["type"] == "rate_limit_error"


def _client(handler: Any) -> openai.OpenAI:
    """An SDK client whose HTTP layer is a local handler (no network)."""
    http_client: Any = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://gw/v1", max_retries=0,
                         http_client=http_client)
