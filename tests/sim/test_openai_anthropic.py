"""Provider simulator, driven by the official OpenAI and Anthropic SDKs over real HTTP."""

import asyncio
import contextlib
import importlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletion

from ext_proc.translate import anthropic as to_anthropic
from ext_proc.translate import anthropic_messages as ingress
from sim.common import SimOptions
from sim.server import SimRunner, create_app, start_sim
from tests.sim.conftest import FAST

KEY = "sk-test-key"
USER_TEXT = "please tell me a story about a lighthouse keeper and his cat"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a cut stream raises: the SDKs wrap some reads, others surface the HTTP library's."""
    errors: list[type[BaseException]] = [
        openai.APIConnectionError,
        anthropic.APIConnectionError,
        httpx.TransportError,
    ]
    with contextlib.suppress(ImportError):  # newer SDKs read through httpx2
        errors.append(importlib.import_module("httpx2").TransportError)
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


@pytest_asyncio.fixture(scope="module")
async def oai_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("openai", "oai-sim", "127.0.0.1", 0, FAST)
    yield runner
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def ant_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("anthropic", "ant-sim", "127.0.0.1", 0, FAST)
    yield runner
    await runner.cleanup()



def oai_client(runner: SimRunner, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=runner.base_url + "/v1", api_key=KEY, max_retries=0, timeout=timeout
    )


def ant_client(runner: SimRunner, timeout: float = 30.0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=runner.base_url, api_key=KEY, max_retries=0, timeout=timeout
    )


async def set_options(runner: SimRunner, **patch: object) -> None:
    """Change options through the control endpoint, as tests of the gateway will."""
    async with httpx.AsyncClient(base_url=runner.base_url) as http:
        resp = await http.put("/_sim/options", json=patch)
        assert resp.status_code == 200, resp.text
        for key, value in patch.items():
            assert resp.json()[key] == value


# --- OpenAI --------------------------------------------------------------------------------


async def test_openai_non_stream(oai_sim: SimRunner) -> None:
    client = oai_client(oai_sim)
    resp = await client.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": USER_TEXT},
        ],
    )
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-test"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    text = choice.message.content or ""
    assert text.startswith("Simulated reply from oai-sim to: please tell me a story about a")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 2 + len(USER_TEXT.split())
    assert resp.usage.completion_tokens == len(text.split())
    assert 24 <= resp.usage.completion_tokens <= 48
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Deterministic: the same prompt gives the same answer.
    again = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert again.choices[0].message.content == text


async def test_openai_stream_with_usage(oai_sim: SimRunner) -> None:
    client = oai_client(oai_sim)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": USER_TEXT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-test" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    # One chunk per token, plus role, finish and usage chunks.
    assert len(chunks) == len(text.split()) + 3
    plain = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert plain.choices[0].message.content == text


async def test_openai_stream_without_usage(oai_sim: SimRunner) -> None:
    stream = await oai_client(oai_sim).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_openai_max_tokens_truncates(oai_sim: SimRunner) -> None:
    client = oai_client(oai_sim)
    resp = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": USER_TEXT}], max_completion_tokens=5
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Simulated reply from oai-sim to:"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": USER_TEXT}], max_tokens=3, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Simulated reply from"
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, None, "model"),
        ({"model": "m"}, "messages", "messages"),
        ({"model": "m", "messages": []}, "messages", "empty array"),
        ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "bot"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
            "max_tokens",
        ),
    ],
)
async def test_openai_validation(
    oai_sim: SimRunner, body: dict[str, object], param: str | None, needle: str
) -> None:
    client = oai_client(oai_sim)
    with pytest.raises(openai.BadRequestError) as info:
        await client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert needle in error["message"]


async def test_openai_malformed_json(oai_sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=oai_sim.base_url) as http:
        resp = await http.post("/v1/chat/completions", content=b"{not json")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "parse the JSON body" in resp.json()["error"]["message"]
    # Rejected requests are recorded too, with the raw body.
    assert oai_sim.state.requests()[-1]["body"] == "{not json"


async def test_openai_models_and_not_found(oai_sim: SimRunner) -> None:
    client = oai_client(oai_sim)
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o" in models
    with pytest.raises(openai.NotFoundError) as info:
        await client.post("/nope", body={}, cast_to=object)
    assert isinstance(info.value.body, dict) and "Invalid URL" in info.value.body["message"]


async def test_openai_require_key() -> None:
    runner = await start_sim("openai", "keyed", "127.0.0.1", 0, FAST, require_key=KEY)
    try:
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "user", "content": "hi"}
        ]
        ok = await oai_client(runner).chat.completions.create(model="m", messages=messages)
        assert ok.choices[0].message.content
        bad = openai.AsyncOpenAI(base_url=runner.base_url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.chat.completions.create(model="m", messages=messages)
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
    finally:
        await runner.cleanup()


# --- Anthropic -----------------------------------------------------------------------------


async def test_anthropic_non_stream(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    msg = await client.messages.create(
        model="claude-test",
        max_tokens=1000,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-test"
    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    block = msg.content[0]
    assert block.type == "text"
    assert block.text.startswith("Simulated reply from ant-sim to: please tell me a story")
    assert msg.usage.input_tokens == 2 + len(USER_TEXT.split())
    assert msg.usage.output_tokens == len(block.text.split())


async def test_anthropic_stream(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    events = []
    async with client.messages.stream(
        model="claude-test", max_tokens=1000, messages=[{"role": "user", "content": USER_TEXT}]
    ) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    kinds = [e for e in events if e not in ("text", "content_block")]  # SDK's derived events
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = final.content[0].text if final.content[0].type == "text" else ""
    assert len(kinds[2:-3]) == len(text.split())
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(text.split())
    plain = await client.messages.create(
        model="claude-test", max_tokens=1000, messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert plain.content[0].type == "text" and plain.content[0].text == text


async def test_anthropic_raw_stream_has_ping(ant_sim: SimRunner) -> None:
    async with (
        httpx.AsyncClient(base_url=ant_sim.base_url) as http,
        http.stream(
            "POST",
            "/v1/messages",
            headers={"anthropic-version": "2023-06-01"},
            json={
                "model": "c",
                "max_tokens": 2,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ) as resp,
    ):
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    names = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_max_tokens_truncates(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    msg = await client.messages.create(
        model="c", max_tokens=4, messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].type == "text" and msg.content[0].text == "Simulated reply from ant-sim"
    assert msg.usage.output_tokens == 4
    async with client.messages.stream(
        model="c", max_tokens=2, messages=[{"role": "user", "content": USER_TEXT}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "c", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ({"model": "c", "max_tokens": 5}, "messages"),
        ({"model": "c", "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "system",
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]},
            "first message",
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
            "role",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
            },
            "video",
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
            "content",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "temperature": 1.5,
                "messages": [{"role": "user", "content": "x"}],
            },
            "temperature",
        ),
    ],
)
async def test_anthropic_validation(
    ant_sim: SimRunner, body: dict[str, object], needle: str
) -> None:
    client = ant_client(ant_sim)
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.post("/v1/messages", body=body, cast_to=object)
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"]


async def test_anthropic_requires_version_header(ant_sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=ant_sim.base_url) as http:
        resp = await http.post(
            "/v1/messages",
            json={"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
    assert resp.status_code == 400
    assert resp.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "anthropic-version: header is required",
        },
    }


async def test_anthropic_require_key() -> None:
    runner = await start_sim("anthropic", "keyed", "127.0.0.1", 0, FAST, require_key=KEY)
    try:
        ok = await ant_client(runner).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.content
        bad = anthropic.AsyncAnthropic(base_url=runner.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await runner.cleanup()


# --- Anthropic tool use --------------------------------------------------------------------

WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
CLOCK: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
ASK = "please use tool to check the weather in Paris"


async def test_anthropic_tool_use(ant_sim: SimRunner) -> None:
    msg = await ant_client(ant_sim).messages.create(
        model="c",
        max_tokens=100,
        tools=[WEATHER, CLOCK],
        messages=[{"role": "user", "content": ASK}],
    )
    assert msg.stop_reason == "tool_use"
    [block] = msg.content
    assert block.type == "tool_use"
    assert block.name == "get_weather" and block.id.startswith("toolu_")
    assert block.input == {"query": ASK}
    assert msg.usage.output_tokens >= 1


async def test_anthropic_tool_use_stream(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    kinds = []
    async with client.messages.stream(
        model="c", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": ASK}]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta":
                assert event.delta.type == "input_json_delta"
        final = await stream.get_final_message()
    assert kinds.count("content_block_delta") >= 3  # the input arrives in several pieces
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"query": ASK}


@pytest.mark.parametrize(
    ("choice", "text", "want"),
    [
        ({"type": "any"}, "hello", "get_weather"),
        ({"type": "tool", "name": "get_time"}, "hello", "get_time"),
        ({"type": "auto"}, "hello", None),
        ({"type": "none"}, ASK, None),
    ],
)
async def test_anthropic_tool_choice(
    ant_sim: SimRunner, choice: dict[str, str], text: str, want: str | None
) -> None:
    msg = await ant_client(ant_sim).post(
        "/v1/messages",
        body={
            "model": "c",
            "max_tokens": 100,
            "tools": [WEATHER, CLOCK],
            "tool_choice": choice,
            "messages": [{"role": "user", "content": text}],
        },
        cast_to=anthropic.types.Message,
    )
    if want is None:
        assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"
    else:
        assert msg.stop_reason == "tool_use"
        assert msg.content[0].type == "tool_use" and msg.content[0].name == want


async def test_anthropic_tool_result_gets_text(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    first = await client.messages.create(
        model="c", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": ASK}]
    )
    call = first.content[0]
    assert call.type == "tool_use"
    history: Any = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny and 21C"}
            ],
        },
    ]
    msg = await client.messages.create(model="c", max_tokens=100, tools=[WEATHER], messages=history)
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text"
    assert "tool result: sunny and 21C" in msg.content[0].text


async def test_anthropic_thinking(ant_sim: SimRunner) -> None:
    client = ant_client(ant_sim)
    kwargs: dict[str, object] = {
        "model": "c",
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "hi"}],
    }
    msg = await client.messages.create(**kwargs)  # type: ignore[call-overload]
    assert [b.type for b in msg.content] == ["thinking", "text"]
    async with client.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].type == "thinking" and final.content[0].signature
    assert final.content[1].type == "text" and final.content[1].text == msg.content[1].text  # type: ignore[union-attr]


_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"tools": {"name": "x"}}, "tools: Input should be a valid list"),
        ({"tools": [{**WEATHER, "name": "bad name!"}]}, "tools.0.custom.name: String should match"),
        ({"tools": [{"name": "f"}]}, "tools.0.custom.input_schema: Field required"),
        (
            {"tools": [{"name": "f", "input_schema": {"type": "array"}}]},
            "tools.0.custom.input_schema.type: Input should be 'object'",
        ),
        ({"tools": [WEATHER, WEATHER]}, "Tool names must be unique"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice: Input should be a valid dict"),
        ({"tools": [WEATHER], "tool_choice": {"type": "sometimes"}}, "does not match any"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.tool.name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "Tool 'nope' not found",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified while providing"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "none", "disable_parallel_tool_use": True},
            },
            "Extra inputs are not permitted",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "greater than or equal to 1024"),
        (
            {"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            {
                "max_tokens": 4000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "tools": [WEATHER],
                "tool_choice": {"type": "any"},
            },
            "Thinking may not be enabled when tool_choice forces tool use",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [_USE]},
                    {"role": "user", "content": "y"},
                ]
            },
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "r"}
                        ],
                    }
                ]
            },
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{**_USE, "input": "q"}]},
                ]
            },
            "messages.1.content.0.tool_use.input: Input should be a valid dictionary",
        ),
    ],
)
async def test_anthropic_tool_validation(
    ant_sim: SimRunner, extra: dict[str, object], needle: str
) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        await ant_client(ant_sim).post("/v1/messages", body=body, cast_to=object)
    error = info.value.body
    assert isinstance(error, dict) and error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"]


async def test_openai_tools_through_translator_and_sim(ant_sim: SimRunner) -> None:
    """OpenAI tools -> Anthropic request -> simulator -> back: a full tool loop, then JSON mode."""
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
    }
    headers = {"anthropic-version": to_anthropic.API_VERSION}
    req: dict[str, Any] = {"messages": [{"role": "user", "content": ASK}], "tools": [tool]}
    async with httpx.AsyncClient(base_url=ant_sim.base_url, headers=headers) as http:

        async def turn(req: dict[str, Any]) -> ChatCompletion:
            body = to_anthropic.request_from_openai(req, "claude-sim")
            resp = await http.post("/v1/messages", content=body)
            assert resp.status_code == 200, resp.text
            out = to_anthropic.response_to_openai(
                resp.json(), "alias", json_tool=to_anthropic.json_tool_name(req)
            )
            return ChatCompletion.model_validate_json(out)

        first = await turn(req)
        assert first.choices[0].finish_reason == "tool_calls"
        calls = first.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
        req["messages"] += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        ]
        second = await turn(req)
        assert second.choices[0].finish_reason == "stop"
        assert "tool result: sunny" in (second.choices[0].message.content or "")

        rf = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        }
        third = await turn(
            {"messages": [{"role": "user", "content": "2+2?"}], "response_format": rf}
        )
        assert third.choices[0].finish_reason == "stop"
        assert orjson.loads(third.choices[0].message.content or "") == {"query": "2+2?"}


async def test_anthropic_ingress_through_translators_and_sim(ant_sim: SimRunner) -> None:
    """Anthropic request -> canonical OpenAI -> Anthropic backend request: the sim accepts it."""
    req = {
        "model": "claude-alias",
        "max_tokens": 200,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": [{**_USE, "input": {"query": "Paris"}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    }
    body = to_anthropic.request_from_openai(ingress.request_to_openai(req), "claude-sim")
    async with httpx.AsyncClient(base_url=ant_sim.base_url) as http:
        resp = await http.post(
            "/v1/messages", content=body, headers={"anthropic-version": "2023-06-01"}
        )
    assert resp.status_code == 200, resp.text
    msg = anthropic.types.Message.model_validate(resp.json())
    assert msg.content[0].type == "text" and "tool result: rain" in msg.content[0].text


# --- recording and control endpoints ------------------------------------------------------


async def test_recording_and_control_endpoints(oai_sim: SimRunner) -> None:
    client = oai_client(oai_sim)
    await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_query={"trace": "1"}
    )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="m", messages=[])
    async with httpx.AsyncClient(base_url=oai_sim.base_url) as http:
        assert (await http.get("/_sim/health")).status_code == 200
        records = (await http.get("/_sim/requests")).json()
        assert [r["path"] for r in records] == ["/v1/chat/completions"] * 2
        first = records[0]
        assert first["method"] == "POST"
        assert first["query"] == {"trace": "1"}
        assert first["headers"]["authorization"] == f"Bearer {KEY}"
        assert first["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert abs(first["time"] - time.time()) < 60
        assert records[1]["body"]["messages"] == []
        assert (await http.delete("/_sim/requests")).status_code == 200
        assert (await http.get("/_sim/requests")).json() == []

        options = (await http.get("/_sim/options")).json()
        assert options["ttft_ms"] == 0 and options["hang"] is False
        assert (await http.put("/_sim/options", json={"nope": 1})).status_code == 400
        assert (await http.put("/_sim/options", json={"error_rate": "x"})).status_code == 400
        assert (await http.put("/_sim/options", json={"error_rate": 2})).status_code == 400
        changed = (await http.put("/_sim/options", json={"tokens_per_s": 50})).json()
        assert changed["tokens_per_s"] == 50.0 and changed["ttft_ms"] == 0
        reset = (await http.delete("/_sim/options")).json()
        assert reset["tokens_per_s"] == 0


async def test_record_is_bounded(oai_sim: SimRunner) -> None:
    await set_options(oai_sim, record_limit=3)
    client = oai_client(oai_sim)
    for i in range(5):
        await client.chat.completions.create(
            model=f"m{i}", messages=[{"role": "user", "content": "hi"}]
        )
    assert [r["body"]["model"] for r in oai_sim.state.requests()] == ["m2", "m3", "m4"]


# --- faults --------------------------------------------------------------------------------


async def test_rate_limit_openai(oai_sim: SimRunner) -> None:
    await set_options(oai_sim, rate_limit=True, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as info:
        await oai_client(oai_sim).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "rate_limit_exceeded"


async def test_rate_limit_anthropic(ant_sim: SimRunner) -> None:
    await set_options(ant_sim, rate_limit=True)
    with pytest.raises(anthropic.RateLimitError) as info:
        await ant_client(ant_sim).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "1"
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "rate_limit_error"


async def test_error_rate(oai_sim: SimRunner, ant_sim: SimRunner) -> None:
    await set_options(oai_sim, error_rate=1.0, error_status=503)
    with pytest.raises(openai.InternalServerError) as oai_info:
        await oai_client(oai_sim).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert oai_info.value.status_code == 503
    await set_options(ant_sim, error_rate=1.0)
    with pytest.raises(anthropic.InternalServerError) as ant_info:
        await ant_client(ant_sim).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert ant_info.value.status_code == 500
    assert isinstance(ant_info.value.body, dict)
    assert ant_info.value.body["error"]["type"] == "api_error"


async def test_reset_after_chunks_breaks_stream(oai_sim: SimRunner, ant_sim: SimRunner) -> None:
    await set_options(oai_sim, reset_after_chunks=3)
    received = 0
    with pytest.raises(TRANSPORT_ERRORS):
        stream = await oai_client(oai_sim).chat.completions.create(
            model="m", messages=[{"role": "user", "content": USER_TEXT}], stream=True
        )
        async for _ in stream:
            received += 1
    assert received == 3  # role chunk + 2 tokens got through before the reset

    await set_options(ant_sim, reset_after_chunks=5)
    deltas = 0
    with pytest.raises(TRANSPORT_ERRORS):
        async with ant_client(ant_sim).messages.stream(
            model="c", max_tokens=100, messages=[{"role": "user", "content": USER_TEXT}]
        ) as ant_stream:
            async for event in ant_stream:
                deltas += event.type == "content_block_delta"
    assert deltas == 2  # message_start, content_block_start, ping, 2 deltas


async def test_hang_until_client_disconnects(oai_sim: SimRunner) -> None:
    await set_options(oai_sim, hang=True)
    client = oai_client(oai_sim, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    for _ in range(100):
        if oai_sim.state.hanging == 0:
            break
        await asyncio.sleep(0.02)
    assert oai_sim.state.hanging == 0


async def test_streaming_timing() -> None:
    options = SimOptions(ttft_ms=100, tokens_per_s=100, reply_tokens=11)
    runner = await start_sim("openai", "timed", "127.0.0.1", 0, options)
    try:
        started = time.perf_counter()
        stream = await oai_client(runner).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        arrivals = [time.perf_counter() - started async for _ in stream]
        # First token after ~ttft; the 10 further tokens take ~10 / 100 tokens per second.
        # Lower bounds prove the pacing; the upper ones only catch runaway delays (a loaded
        # 2-core CI machine must not fail them).
        assert 0.09 <= arrivals[0] < 3.0
        assert 0.09 <= arrivals[-1] - arrivals[0] < 3.0
    finally:
        await runner.cleanup()


async def test_slow_first_token_overrides_ttft(oai_sim: SimRunner) -> None:
    await set_options(oai_sim, slow_first_token_ms=150)
    started = time.perf_counter()
    await oai_client(oai_sim).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert time.perf_counter() - started >= 0.14


async def test_hang_ends_on_shutdown() -> None:
    runner = await start_sim("anthropic", "hung", "127.0.0.1", 0, SimOptions(hang=True))
    client = ant_client(runner, timeout=10)
    call = asyncio.ensure_future(
        client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    )
    for _ in range(100):
        if runner.state.hanging:
            break
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    await runner.cleanup()
    assert time.perf_counter() - started < 5.0  # well below the client's 10 s timeout
    with pytest.raises(anthropic.APIConnectionError):
        await call


def test_create_app_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown provider kind"):
        create_app("nope", "x", FAST)
    with pytest.raises(ValueError):
        SimOptions(error_rate=1.5)


async def test_faults_from_config_at_start() -> None:
    """`simulate:` in the gateway config sets faults from the start (as `switchyard sim` does)."""
    import httpx

    from control_plane.config import parse_config

    cfg = parse_config("providers:\n  p: {kind: openai, base_url: 'http://127.0.0.1:1', "
                       "simulate: {ttft_ms: 0, error_rate: 1.0, error_status: 503}}\n")
    sim = cfg.providers["p"].simulate
    assert sim is not None
    runner = await start_sim("openai", "p", "127.0.0.1", 0, SimOptions(**sim.model_dump(exclude={"replicas", "engine"})))
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{runner.base_url}/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["type"]
    finally:
        await runner.cleanup()
