"""Anthropic Messages as an ingress schema <-> canonical OpenAI chat form.

Produced Anthropic bodies and events are checked with the anthropic SDK's own pydantic types
(and its client, over a mock transport); produced OpenAI requests must be accepted by the
OpenAI -> Anthropic translator, and a property test checks that round trip is lossless.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from ext_proc.translate import anthropic as to_anthropic
from ext_proc.translate.anthropic import StreamUsageReader, rename_model
from ext_proc.translate.anthropic import usage_of as usage_of_message
from ext_proc.translate.anthropic_messages import (
    PATH,
    StreamFromOpenAI,
    error_body,
    error_event,
    error_from_openai,
    error_type,
    request_to_openai,
    response_from_openai,
    translation_error_body,
    validate,
)
from ext_proc.translate.canonical import TranslationError, Usage
from switchyard.framing.sse import SSEParser

EVENT = TypeAdapter(RawMessageStreamEvent)


def base(**kw: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, **kw}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def back(oa: dict[str, Any]) -> dict[str, Any]:
    """The canonical request as the Anthropic backend translator would send it."""
    out: dict[str, Any] = orjson.loads(to_anthropic.request_from_openai(oa, "claude-up"))
    return out


SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "cats"}}
CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "search", "arguments": '{"q":"cats"}'},
}

# (Anthropic request, the canonical OpenAI request's expected fields besides model/max tokens)
REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("minimal", base(messages=[user("hi")]), {"messages": [user("hi")]}),
    (
        "system string",
        base(system="Be brief.", messages=[user("hi")]),
        {"messages": [{"role": "system", "content": "Be brief."}, user("hi")]},
    ),
    (
        "system blocks",
        base(
            system=[
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ],
            messages=[user("hi")],
        ),
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                },
                user("hi"),
            ]
        },
    ),
    (
        "one system block, empty system",
        base(system=[{"type": "text", "text": "A"}], messages=[user("hi")]),
        {"messages": [{"role": "system", "content": "A"}, user("hi")]},
    ),
    ("empty system", base(system="", messages=[user("hi")]), {"messages": [user("hi")]}),
    (
        "images and documents",
        base(
            messages=[
                user(
                    [
                        {"type": "text", "text": "what?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVB="},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                        {
                            "type": "document",
                            "title": "r.pdf",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBER",
                            },
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        },
                    ]
                )
            ]
        ),
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "what?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVB="}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                        {
                            "type": "file",
                            "file": {
                                "filename": "r.pdf",
                                "file_data": "data:application/pdf;base64,JVBER",
                            },
                        },
                        {"type": "text", "text": "notes"},
                    ]
                )
            ]
        },
    ),
    (
        "tool loop",
        base(
            messages=[
                user([{"type": "text", "text": "find cats"}]),
                assistant(
                    [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "x"},
                        {"type": "text", "text": "Searching."},
                        TOOL_USE,
                        {"type": "tool_use", "id": "toolu_2", "name": "search", "input": {}},
                    ]
                ),
                user(
                    [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 cats"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "no "},
                                {"type": "text", "text": "luck"},
                            ],
                        },
                        {"type": "text", "text": "and dogs?"},
                    ]
                ),
                assistant([{"type": "tool_use", "id": "toolu_3", "name": "search", "input": {}}]),
                user(
                    [
                        {"type": "tool_result", "tool_use_id": "toolu_3"},
                    ]
                ),
            ],
            tools=[{"name": "search", "description": "Web search", "input_schema": SCHEMA}],
        ),
        {
            "messages": [
                user("find cats"),
                {
                    "role": "assistant",
                    "content": "Searching.",
                    "tool_calls": [
                        CALL,
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "search", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "3 cats"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": [{"type": "text", "text": "no "}, {"type": "text", "text": "luck"}],
                },
                user("and dogs?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "toolu_3",
                            "type": "function",
                            "function": {"name": "search", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "search",
                        "description": "Web search",
                        "parameters": SCHEMA,
                    },
                }
            ],
        },
    ),
    (
        "assistant prefill and empty turns",
        base(
            messages=[
                user("hi"),
                assistant([{"type": "thinking", "thinking": "t", "signature": "s"}]),
                user("again"),
                assistant("{"),
                assistant(""),
            ]
        ),
        {"messages": [user("hi"), user("again"), assistant("{")]},
    ),
    (
        "sampling and metadata",
        base(
            messages=[user("hi")],
            stop_sequences=["END", "STOP"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stream=True,
            metadata={"user_id": "u-1"},
            service_tier="auto",
        ),
        {
            "messages": [user("hi")],
            "stop": ["END", "STOP"],
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-1",
        },
    ),
    (
        "stream false, empty stops",
        base(messages=[user("hi")], stream=False, stop_sequences=[], metadata={}),
        {"messages": [user("hi")]},
    ),
    (
        "structured output",
        base(
            messages=[user("hi")],
            output_config={"effort": "max", "format": {"type": "json_schema", "schema": SCHEMA}},
        ),
        {
            "messages": [user("hi")],
            "reasoning_effort": "xhigh",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": SCHEMA},
            },
        },
    ),
    (
        "structured output, top-level output_format (structured-outputs beta)",
        base(messages=[user("hi")], output_format={"type": "json_schema", "schema": SCHEMA}),
        {
            "messages": [user("hi")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": SCHEMA},
            },
        },
    ),
    (
        "strict tool",
        base(
            messages=[user("hi")],
            tools=[{"name": "f", "input_schema": {"type": "object"}, "strict": True}],
        ),
        {
            "messages": [user("hi")],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
                }
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("req", "want"), [(r, w) for _, r, w in REQUESTS], ids=[n for n, *_ in REQUESTS]
)
def test_request_to_openai(req: dict[str, Any], want: dict[str, Any]) -> None:
    assert validate(req) is None
    out = request_to_openai(req)
    assert out == {"model": "claude-x", "max_completion_tokens": 100, **want}
    assert back(out)["max_tokens"] == 100  # accepted by the Anthropic backend translator


@pytest.mark.parametrize(
    ("choice", "want", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "search"},
            {"type": "function", "function": {"name": "search"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
    ],
)
def test_tool_choice(choice: dict[str, Any], want: Any, parallel: bool | None) -> None:
    tools = [{"name": "search", "input_schema": SCHEMA}]
    out = request_to_openai(base(messages=[user("x")], tools=tools, tool_choice=choice))
    assert out["tool_choice"] == want
    assert out.get("parallel_tool_calls") == parallel
    assert back(out)["tool_choice"]["type"] == choice["type"]
    # Without tools there is nothing to choose from: dropped (OpenAI would refuse it).
    assert "tool_choice" not in request_to_openai(base(messages=[user("x")], tool_choice=choice))


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 2048}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 8192}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
        ({"type": "enabled", "budget_tokens": 60000}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_thinking_to_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    req = base(max_tokens=64000, messages=[user("x")], thinking=thinking)
    out = request_to_openai(req)
    assert out.get("reasoning_effort") == effort
    if effort is not None:
        budget = back(out)["thinking"]["budget_tokens"]
        assert budget == to_anthropic.THINKING_BUDGETS[effort]


@pytest.mark.parametrize(
    ("req", "param"),
    [
        ([], None),
        ({"max_tokens": 5, "messages": [user("x")]}, "model"),
        ({"model": 3, "max_tokens": 5, "messages": [user("x")]}, "model"),
        (base(max_tokens=None, messages=[user("x")]), "max_tokens"),
        (base(max_tokens=0, messages=[user("x")]), "max_tokens"),
        (base(max_tokens=True, messages=[user("x")]), "max_tokens"),
        (base(), "messages"),
        (base(messages=[]), "messages"),
        (base(messages=["hi"]), "messages.0"),
        (base(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (base(messages=[{"role": "user"}]), "messages.0.content"),
        (base(messages=[user(5)]), "messages.0.content"),
        (base(messages=[user([{"text": "x"}])]), "messages.0.content.0"),
        (base(messages=[user("x")], system=5), "system"),
        (base(messages=[user("x")], system=[{"type": "image"}]), "system.0.type"),
        (base(messages=[user("x")], system=[{"type": "text"}]), "system.0.text"),
        (base(messages=[user("x")], temperature="hot"), "temperature"),
        (base(messages=[user("x")], stream="yes"), "stream"),
        (base(messages=[user("x")], stop_sequences="END"), "stop_sequences"),
        (base(messages=[user("x")], tools={}), "tools"),
        (base(messages=[user("x")], tools=["f"]), "tools.0"),
        (base(messages=[user("x")], tool_choice="auto"), "tool_choice"),
        (base(messages=[user("x")], tool_choice={"type": "some"}), "tool_choice.type"),
        (base(messages=[user("x")], thinking=True), "thinking"),
    ],
)
def test_validate_names_the_field(req: Any, param: str | None) -> None:
    problem = validate(req)
    assert problem is not None and problem[0] == param and problem[1]
    with pytest.raises(TranslationError) as ei:
        request_to_openai(req)
    assert ei.value.param == param


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (base(messages=[user([{"type": "video"}])]), "messages.0.content.0.type"),
        (base(messages=[user([{"type": "tool_use", **TOOL_USE}])]), "messages.0.content.0.type"),
        (base(messages=[user([{"type": "text", "text": 1}])]), "messages.0.content.0.text"),
        (
            base(messages=[user([{"type": "image", "source": {"type": "file", "file_id": "f"}}])]),
            "messages.0.content.0.source",
        ),
        (base(messages=[user([{"type": "image"}])]), "messages.0.content.0.source"),
        (
            base(
                messages=[
                    user(
                        [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://x.test/a.pdf"},
                            }
                        ]
                    )
                ]
            ),
            "messages.0.content.0.source",
        ),
        (
            base(messages=[user([{"type": "tool_result", "content": "x"}])]),
            "messages.0.content.0.tool_use_id",
        ),
        (
            base(
                messages=[
                    user(
                        [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ]
                    )
                ]
            ),
            "messages.0.content.0.content.0.type",
        ),
        (base(messages=[user("x"), assistant([{"type": "image"}])]), "messages.1.content.0.type"),
        (
            base(messages=[user("x"), assistant([{**TOOL_USE, "input": "q"}])]),
            "messages.1.content.0.input",
        ),
        (
            base(messages=[user("x")], tools=[{"type": "web_search_20250305", "name": "web"}]),
            "tools.0.type",
        ),
        (base(messages=[user("x")], tools=[{"name": "f"}]), "tools.0.input_schema"),
        (base(messages=[user("x")], tools=[{"input_schema": SCHEMA}]), "tools.0.name"),
        (
            base(
                messages=[user("x")],
                tools=[{"name": "f", "input_schema": SCHEMA}],
                tool_choice={"type": "tool"},
            ),
            "tool_choice.name",
        ),
        (base(messages=[user("x")], thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (base(messages=[user("x")], thinking={"type": "sometimes"}), "thinking.type"),
        (base(messages=[user("x")], output_config={"effort": "huge"}), "output_config.effort"),
        (
            base(messages=[user("x")], output_config={"format": {"type": "xml"}}),
            "output_config.format",
        ),
        (base(messages=[user("x")], output_format={"type": "xml"}), "output_format"),
        (
            base(
                messages=[user("x")],
                output_format={"type": "json_schema", "schema": SCHEMA},
                output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
            ),
            "output_format",
        ),
    ],
)
def test_conversion_errors_name_the_field(req: dict[str, Any], param: str) -> None:
    assert validate(req) is None  # deeper than the cheap check
    with pytest.raises(TranslationError) as ei:
        request_to_openai(req)
    assert ei.value.param == param
    assert ei.value.status == 400
    body = orjson.loads(translation_error_body(ei.value))
    ErrorResponse.model_validate(body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(param + ": ")


def test_request_is_not_mutated() -> None:
    req = base(messages=[user("hi")], stream=True, metadata={"user_id": "u"})
    snapshot = orjson.dumps(req)
    request_to_openai(req)
    assert orjson.dumps(req) == snapshot


# ------------------------------------------------------- round-trip property (hypothesis)

_TEXT = st.text(min_size=1, max_size=12)
_NAME = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_-]{0,15}", fullmatch=True)
_ID = st.from_regex(r"toolu_[A-Za-z0-9_-]{1,10}", fullmatch=True)
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
_INPUT = st.dictionaries(st.text(max_size=6), _JSON_VALUE, max_size=3)
_IMAGE = st.one_of(
    st.builds(
        lambda mt, data: {
            "type": "image",
            "source": {"type": "base64", "media_type": mt, "data": data},
        },
        st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
        st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True),
    ),
    st.builds(
        lambda path: {"type": "image", "source": {"type": "url", "url": f"https://x.test/{path}"}},
        st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True),
    ),
)
_TEXT_BLOCK = st.builds(lambda t: {"type": "text", "text": t}, _TEXT)


@st.composite
def _tools(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(_NAME, max_size=3, unique=True))
    tools = []
    for name in names:
        tool: dict[str, Any] = {"name": name}
        if draw(st.booleans()):
            tool["description"] = draw(_TEXT)
        props = draw(st.dictionaries(_NAME, st.just({"type": "string"}), max_size=2))
        tool["input_schema"] = {"type": "object", "properties": props}
        tools.append(tool)
    return tools


@st.composite
def _result(draw: st.DrawFn, tool_use_id: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    kind = draw(st.sampled_from(["none", "str", "blocks"]))
    if kind == "str":
        block["content"] = draw(st.text(max_size=12))
    elif kind == "blocks":
        block["content"] = draw(st.lists(_TEXT_BLOCK, min_size=1, max_size=3))
    return block


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Valid Messages requests: alternating turns, tool loops with paired ids, images."""
    tools = draw(_tools())
    names = [t["name"] for t in tools]
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # tool_use ids the next user turn must answer
    used_ids: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        # user turn
        blocks: list[dict[str, Any]] = [draw(_result(i)) for i in pending]
        pending = []
        extra = draw(st.lists(st.one_of(_TEXT_BLOCK, _IMAGE), max_size=3))
        if not blocks and (not extra or draw(st.booleans())):
            messages.append(user(draw(_TEXT)))
        else:
            messages.append(user(blocks + extra))
        # assistant turn
        texts = draw(st.lists(_TEXT_BLOCK, max_size=2))
        uses = []
        if names:
            for _ in range(draw(st.integers(0, 2))):
                tid = draw(_ID.filter(lambda i: i not in used_ids))
                used_ids.add(tid)
                uses.append(
                    {
                        "type": "tool_use",
                        "id": tid,
                        "name": draw(st.sampled_from(names)),
                        "input": draw(_INPUT),
                    }
                )
        if not texts and not uses:
            messages.append(assistant(draw(_TEXT)))
        else:
            messages.append(assistant(texts + uses))
        pending = [u["id"] for u in uses]
    # the closing user turn
    results = [draw(_result(i)) for i in pending]
    messages.append(user([*results, draw(_TEXT_BLOCK)]) if results else user(draw(_TEXT)))

    req: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": draw(st.integers(1, 200_000)),
        "messages": messages,
    }
    system = draw(st.one_of(st.none(), _TEXT, st.lists(_TEXT_BLOCK, min_size=1, max_size=3)))
    if system is not None:
        req["system"] = system
    if tools:
        req["tools"] = tools
        choice = draw(
            st.one_of(
                st.none(),
                st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
                st.builds(lambda n: {"type": "tool", "name": n}, st.sampled_from(names)),
            )
        )
        if choice is not None:
            if choice["type"] != "none" and draw(st.booleans()):
                choice["disable_parallel_tool_use"] = True
            req["tool_choice"] = choice
    stops = draw(st.lists(_TEXT, max_size=4))
    if stops:
        req["stop_sequences"] = stops
    if draw(st.booleans()):
        req["temperature"] = draw(st.floats(0, 1))
    return req


def _norm_content(role: str, content: Any) -> list[dict[str, Any]]:
    """One canonical form for content the round trip may reshape but not change."""
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    out: list[dict[str, Any]] = []
    for b in blocks:
        if b["type"] == "tool_result":
            c = b.get("content")
            if isinstance(c, list) and len(c) == 1:
                c = c[0]["text"]
            b = {"type": "tool_result", "tool_use_id": b["tool_use_id"]}
            if c:
                b["content"] = c
        out.append(b)
    if role == "assistant":  # texts gather before the tool calls, as one string
        text = "".join(b["text"] for b in out if b["type"] == "text")
        calls = [b for b in out if b["type"] != "text"]
        out = ([{"type": "text", "text": text}] if text else []) + calls
    return out


def _norm(req: dict[str, Any]) -> dict[str, Any]:
    system = req.get("system") or ""
    if isinstance(system, list):
        system = "".join(b["text"] for b in system)
    tools = [
        {k: t[k] for k in ("name", "description", "input_schema") if k in t}
        for t in req.get("tools") or ()
    ]
    return {
        "system": system,
        "messages": [(m["role"], _norm_content(m["role"], m["content"])) for m in req["messages"]],
        "tools": tools,
        "tool_choice": req.get("tool_choice"),
        "max_tokens": req["max_tokens"],
        "stop_sequences": req.get("stop_sequences"),
        "temperature": req.get("temperature"),
    }


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_requests())
def test_round_trip_through_canonical_form(req: dict[str, Any]) -> None:
    assert validate(req) is None
    canonical = request_to_openai(req)
    again = back(canonical)
    assert again["model"] == "claude-up"
    assert _norm(again) == _norm(req)


# --------------------------------------------------------------------------- responses

_USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 100},
}


def completion(message: dict[str, Any], finish: str | None = "stop", **kw: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-up",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _USAGE,
        **kw,
    }


RESPONSES: list[tuple[str, dict[str, Any], list[dict[str, Any]], str]] = [
    (
        "text",
        completion({"role": "assistant", "content": "Hello!"}),
        [{"type": "text", "text": "Hello!"}],
        "end_turn",
    ),
    (
        "length",
        completion({"role": "assistant", "content": "Hel"}, "length"),
        [{"type": "text", "text": "Hel"}],
        "max_tokens",
    ),
    (
        "reasoning and tools",
        completion(
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "think",
                "tool_calls": [
                    CALL,
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "search", "arguments": "not json"},
                    },
                    {
                        "id": "call_3",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    },
                ],
            },
            "tool_calls",
        ),
        [
            {"type": "thinking", "thinking": "think", "signature": ""},
            TOOL_USE,
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "search",
                "input": {"_raw_arguments": "not json"},
            },
            {"type": "tool_use", "id": "call_3", "name": "f", "input": {}},
        ],
        "tool_use",
    ),
    (
        "tool calls with finish stop",
        completion({"role": "assistant", "content": "ok", "tool_calls": [CALL]}, "stop"),
        [{"type": "text", "text": "ok"}, TOOL_USE],
        "tool_use",
    ),
    (
        "vLLM reasoning field",
        completion({"role": "assistant", "content": "x", "reasoning": "r"}),
        [{"type": "thinking", "thinking": "r", "signature": ""}, {"type": "text", "text": "x"}],
        "end_turn",
    ),
    (
        "refusal",
        completion({"role": "assistant", "content": None, "refusal": "No."}, "content_filter"),
        [{"type": "text", "text": "No."}],
        "refusal",
    ),
    ("empty", completion({"role": "assistant", "content": ""}, None), [], "end_turn"),
]


@pytest.mark.parametrize(
    ("resp", "content", "stop"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_response_from_openai(resp: dict[str, Any], content: list[Any], stop: str) -> None:
    out = orjson.loads(response_from_openai(resp, "claude-alias"))
    msg = Message.model_validate(out)
    assert out["content"] == content
    assert msg.stop_reason == stop
    assert msg.id == "msg_abc123"
    assert msg.model == "claude-alias"
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (20, 30)
    assert msg.usage.cache_read_input_tokens == 100
    assert usage_of_message(out) == Usage(120, 30, cached=100)


def test_response_without_usage_or_choices() -> None:
    out = orjson.loads(response_from_openai({"id": "x"}, "m"))
    msg = Message.model_validate(out)
    assert msg.content == [] and msg.usage.input_tokens == 0
    assert usage_of_message({}) is None


def test_response_through_anthropic_sdk() -> None:
    body = response_from_openai(RESPONSES[2][1], "claude-alias")
    client = _client(respond(200, body))
    msg = client.messages.create(
        model="claude-alias", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["thinking", "tool_use", "tool_use", "tool_use"]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "err", "atype", "exc"),
    [
        (
            400,
            {"type": "invalid_request_error"},
            "invalid_request_error",
            anthropic.BadRequestError,
        ),
        (
            401,
            {"type": "invalid_request_error", "code": "invalid_api_key"},
            "authentication_error",
            anthropic.AuthenticationError,
        ),
        (403, {"type": "permission_error"}, "permission_error", anthropic.PermissionDeniedError),
        (
            404,
            {"type": "invalid_request_error", "code": "model_not_found"},
            "not_found_error",
            anthropic.NotFoundError,
        ),
        (413, {"type": "invalid_request_error"}, "invalid_request_error", anthropic.APIStatusError),
        (429, {"type": "insufficient_quota"}, "rate_limit_error", anthropic.RateLimitError),
        (500, {"type": "server_error"}, "api_error", anthropic.InternalServerError),
        (
            500,
            {"type": "api_error", "code": "overloaded"},
            "overloaded_error",
            anthropic.InternalServerError,
        ),
        (503, {"type": "server_error"}, "overloaded_error", anthropic.InternalServerError),
        (504, {"type": "timeout"}, "timeout_error", anthropic.InternalServerError),
        (418, {"type": "weird"}, "invalid_request_error", anthropic.APIStatusError),
        (502, {}, "api_error", anthropic.InternalServerError),
    ],
)
def test_error_from_openai(
    status: int, err: dict[str, Any], atype: str, exc: type[Exception]
) -> None:
    body = error_from_openai(status, orjson.dumps({"error": {"message": "boom", **err}}))
    parsed = ErrorResponse.model_validate(orjson.loads(body))
    assert parsed.error.type == atype
    assert parsed.error.message == "boom"
    client = _client(respond(status, body))
    with pytest.raises(exc) as ei:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "boom" in str(ei.value)


def test_error_from_non_json() -> None:
    out = orjson.loads(error_from_openai(502, b"<html>" + b"x" * 5000))
    assert out["error"]["type"] == "api_error"
    assert out["error"]["message"].startswith("upstream returned HTTP 502: <html>")
    assert len(out["error"]["message"]) < 600
    assert orjson.loads(error_from_openai(429, b""))["error"] == {
        "type": "rate_limit_error",
        "message": "upstream returned HTTP 429",
    }


def test_error_helpers() -> None:
    assert error_type(429) == "rate_limit_error"
    assert error_type(529) == "overloaded_error"
    assert error_type(599) == "api_error" and error_type(422) == "invalid_request_error"
    ErrorResponse.model_validate(orjson.loads(error_body("no", error_type(404))))
    ev = SSEParser().feed(error_event("gone", "overloaded_error"))
    assert ev[0].event == "error"
    ErrorResponse.model_validate(orjson.loads(ev[0].data))


# ----------------------------------------------------------------------------- streams


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **kw: Any) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-up",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **kw,
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
STREAM = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "Hé"}),
        chunk({"content": 'llo "world" 🌍\n'}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_A",
                        "type": "function",
                        "function": {"name": "search", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"cats"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_B",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q":"dogs"}'},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        chunk(None, usage=_USAGE),
        DONE,
    ]
)


def convert(stream: bytes, cuts: list[int] | None = None) -> tuple[bytes, StreamFromOpenAI]:
    conv = StreamFromOpenAI("claude-alias")
    out = []
    prev = 0
    for cut in [*sorted(cuts or []), len(stream)]:
        out.append(conv.feed(stream[prev:cut]))
        prev = cut
    out.append(conv.finish())
    return b"".join(out), conv


def events(out: bytes) -> list[dict[str, Any]]:
    """Parse and validate every event with the SDK's types; event name must match the type."""
    objs = []
    for ev in SSEParser().feed(out):
        obj = orjson.loads(ev.data)
        assert ev.event == obj["type"]
        if obj["type"] == "error":
            ErrorResponse.model_validate(obj)
        else:
            EVENT.validate_python(obj)
        objs.append(obj)
    return objs


def test_stream_event_sequence() -> None:
    out, conv = convert(STREAM)
    objs = events(out)
    assert [(o["type"], o.get("index")) for o in objs] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3),
        ("content_block_delta", 3),
        ("content_block_stop", 3),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert objs[0]["message"]["id"] == "msg_s1"
    assert objs[0]["message"]["model"] == "claude-alias"
    assert objs[9]["content_block"] == {
        "type": "tool_use",
        "id": "call_A",
        "name": "search",
        "input": {},
    }
    assert objs[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert objs[-2]["usage"] == {
        "output_tokens": 30,
        "input_tokens": 20,
        "cache_read_input_tokens": 100,
    }
    assert conv.usage == Usage(120, 30, cached=100)
    assert conv.done and conv.error is None
    assert conv.stop_reason == "tool_use" and conv.finish_reason == "tool_calls"
    assert conv.first_token_at is not None


def test_stream_through_anthropic_sdk() -> None:
    out, _ = convert(STREAM)
    client = _client(respond(200, out, sse=True))
    with client.messages.stream(
        model="claude-alias", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": 'Héllo "world" 🌍\n'},
        {"type": "tool_use", "id": "call_A", "name": "search", "input": {"q": "cats"}},
        {"type": "tool_use", "id": "call_B", "name": "search", "input": {"q": "dogs"}},
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 30)
    assert final.usage.cache_read_input_tokens == 100


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40), st.booleans())
def test_stream_any_split_matches_whole(cuts: list[int], crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    cuts = [c % (len(stream) + 1) for c in cuts]
    whole, _ = convert(stream)
    split, conv = convert(stream, cuts)
    assert split == whole
    assert conv.usage == Usage(120, 30, cached=100)


def test_stream_byte_at_a_time() -> None:
    whole, _ = convert(STREAM)
    split, _ = convert(STREAM, list(range(len(STREAM))))
    assert split == whole


def test_stream_plain_text_end_turn_without_usage() -> None:
    stream = chunk({"role": "assistant", "content": "Hi"}) + chunk({}, "stop") + DONE
    out, conv = convert(stream)
    objs = events(out)
    assert [o["type"] for o in objs] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert objs[-2]["usage"] == {"output_tokens": 0}
    assert objs[-2]["delta"]["stop_reason"] == "end_turn"
    assert conv.usage is None


@pytest.mark.parametrize(
    ("finish", "stop"), [("length", "max_tokens"), ("content_filter", "refusal")]
)
def test_stream_stop_reasons(finish: str, stop: str) -> None:
    out, conv = convert(chunk({"content": "x"}, finish) + DONE)
    assert events(out)[-2]["delta"]["stop_reason"] == stop
    assert conv.stop_reason == stop


def test_stream_interleaved_tool_arguments() -> None:
    """Backends that interleave parallel calls' arguments still reach the right block."""
    stream = b"".join(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}),
            chunk({}, "tool_calls"),
            DONE,
        ]
    )
    out, _ = convert(stream)
    events(out)
    client = _client(respond(200, out, sse=True))
    with client.messages.stream(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ) as s:
        final = s.get_final_message()
    assert [(b.id, b.input) for b in final.content if b.type == "tool_use"] == [
        ("a", {"x": 1}),
        ("b", {}),
    ]


def test_stream_error_chunk_becomes_error_event() -> None:
    err = b'data: {"error": {"message": "slow down", "type": "rate_limit_error", "code": null}}\n\n'
    out, conv = convert(chunk({"content": "Hi"}) + err + chunk({"content": "ignored"}))
    objs = events(out)
    assert objs[-1] == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert b"ignored" not in out
    assert conv.done and conv.error == objs[-1]["error"]
    client = _client(respond(200, out, sse=True))
    with (
        pytest.raises(anthropic.APIStatusError, match="slow down"),
        client.messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as s,
    ):
        s.get_final_message()


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        chunk({"content": "Hi"}),
        chunk({"content": "Hi"}) + DONE,  # [DONE] but no finish_reason
        chunk({"content": "Hi"}) + b'data: {"id": "chatcmpl-s1", "choi',  # cut mid-frame
    ],
)
def test_stream_early_end_is_an_error(stream: bytes) -> None:
    out, conv = convert(stream)
    objs = events(out)
    assert objs[-1]["type"] == "error"
    assert objs[-1]["error"]["type"] == "api_error"
    assert conv.done and conv.error is not None
    assert all(o["type"] != "message_stop" for o in objs)


def test_stream_finish_without_done_still_completes() -> None:
    out, conv = convert(
        chunk({"content": "Hi"}) + chunk({}, "stop") + chunk(None, usage=_USAGE)[:-2]
    )
    objs = events(out)
    assert objs[-1]["type"] == "message_stop"
    assert conv.error is None and conv.usage == Usage(120, 30, cached=100)


def test_stream_malformed_chunk_is_an_error() -> None:
    out, conv = convert(chunk({"content": "Hi"}) + b"data: {nope\n\n" + chunk({}, "stop") + DONE)
    assert events(out)[-1]["error"]["message"] == "malformed event from upstream stream"
    assert conv.done


def test_stream_feed_after_done_is_ignored() -> None:
    conv = StreamFromOpenAI("m")
    assert conv.feed(STREAM).endswith(b'data: {"type":"message_stop"}\n\n')
    assert conv.feed(STREAM) == b""
    assert conv.finish() == b""


# ------------------------------------------------------------------- same-schema helpers


def test_rename_model() -> None:
    req = base(messages=[user("hi")])
    assert orjson.loads(rename_model(req, "claude-up"))["model"] == "claude-up"
    assert req["model"] == "claude-x"  # the caller's dict is left alone
    assert orjson.loads(rename_model(orjson.dumps(req), "up")) == {**req, "model": "up"}
    with pytest.raises(TranslationError):
        rename_model(b"[1]", "up")
    with pytest.raises(TranslationError):
        rename_model(b"{nope", "up")


ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"c","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":12,"cache_read_input_tokens":30,"cache_creation_input_tokens":8,'
    b'"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"\\"usage\\": {\\"output_tokens\\": 999}"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":7}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def read(stream: bytes, cuts: list[int] | None = None) -> tuple[bytes, StreamUsageReader]:
    reader = StreamUsageReader()
    out = []
    prev = 0
    for cut in [*sorted(cuts or []), len(stream)]:
        out.append(reader.feed(stream[prev:cut]))
        prev = cut
    out.append(reader.finish())
    return b"".join(out), reader


def test_usage_reader_passes_bytes_through() -> None:
    reader = StreamUsageReader()
    assert reader.feed(ANTHROPIC_STREAM) is ANTHROPIC_STREAM  # whole frames: no copy
    assert reader.finish() == b""
    assert reader.usage == Usage(50, 7, cached=30)
    assert reader.stop_reason == "end_turn"
    assert reader.done and reader.error is None
    assert reader.first_token_at is not None
    for o in events(ANTHROPIC_STREAM.replace(b'event: ping\ndata: {"type": "ping"}\n\n', b"")):
        assert o["type"] != "error"


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM)), max_size=30),
    st.booleans(),
)
def test_usage_reader_any_split(cuts: list[int], crlf: bool) -> None:
    stream = ANTHROPIC_STREAM.replace(b"\n", b"\r\n") if crlf else ANTHROPIC_STREAM
    out, reader = read(stream, [c % (len(stream) + 1) for c in cuts])
    assert out == stream  # byte for byte, whatever the chunking
    assert reader.usage == Usage(50, 7, cached=30)
    assert reader.done and reader.error is None


def test_usage_reader_early_end_gets_a_clean_error() -> None:
    cut = ANTHROPIC_STREAM.index(b"event: content_block_stop") + 20
    out, reader = read(ANTHROPIC_STREAM[:cut])
    assert out.startswith(ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: content_block_stop")])
    assert out.endswith(b"\n\n")
    last = SSEParser().feed(out)[-1]
    assert last.event == "error"
    ErrorResponse.model_validate(orjson.loads(last.data))
    assert reader.error is not None and reader.usage == Usage(50, 1, cached=30)


def test_usage_reader_last_frame_without_blank_line() -> None:
    out, reader = read(ANTHROPIC_STREAM[:-2])
    assert out == ANTHROPIC_STREAM
    assert reader.error is None and reader.done


def test_usage_reader_upstream_error_event() -> None:
    err = error_event("Overloaded", "overloaded_error")
    out, reader = read(
        ANTHROPIC_STREAM[:300] + ANTHROPIC_STREAM[300:].split(b"\n\n", 1)[0] + b"\n\n" + err
    )
    assert out.endswith(err)
    assert reader.error == {"type": "overloaded_error", "message": "Overloaded"}


def test_path() -> None:
    assert PATH == "/v1/messages"


def _http() -> ModuleType:
    """The HTTP library the installed anthropic SDK reads through (newer ones use httpx2)."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("httpx2")
    return httpx


HTTP = _http()


def respond(status: int, content: bytes, sse: bool = False) -> Any:
    headers = {"content-type": "text/event-stream" if sse else "application/json"}
    return lambda _: HTTP.Response(status, content=content, headers=headers)


def _client(handler: Any) -> anthropic.Anthropic:
    """An SDK client whose HTTP layer is a local handler (no network)."""
    http_client: Any = HTTP.Client(transport=HTTP.MockTransport(handler))
    return anthropic.Anthropic(
        api_key="k", base_url="http://gw", max_retries=0, http_client=http_client
    )
