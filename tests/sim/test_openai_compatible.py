"""OpenAI-compatible simulators (OpenAI, Azure OpenAI, vLLM, TGI) driven by the official sync
`openai.OpenAI` / `openai.AzureOpenAI` clients: tools, JSON modes, multimodal parts,
embeddings, and Azure's path/api-version/api-key rules.

The simulators run on an event loop in a background thread, so the blocking SDK clients can
talk to them over real HTTP from plain (sync) tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from sim.server import SimRunner, start_sim
from tests.sim.conftest import FAST

KEY = "sk-test-key"
AZURE_KEY = "az-test-key"
API_VERSION = "2024-10-21"
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search"}}
TOOLS: Any = [LOOKUP, SEARCH]


class SimThread:
    """Simulators on their own event loop thread (the sync SDK would block a shared loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[SimRunner] = []

    def start(self, kind: str, name: str, require_key: str | None = None) -> SimRunner:
        coro = start_sim(kind, name, "127.0.0.1", 0, FAST, require_key=require_key)
        runner = asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, SimRunner]]:
    st = SimThread()
    try:
        yield {
            "openai": st.start("openai", "oai-sim"),
            "azure": st.start("azure_openai", "az-sim", require_key=AZURE_KEY),
            "azure_open": st.start("azure_openai", "az-open"),
            "vllm": st.start("vllm", "vllm-sim"),
            "tgi": st.start("tgi", "tgi-sim"),
        }
    finally:
        st.close()


@pytest.fixture
def oai(sims: dict[str, SimRunner]) -> openai.OpenAI:
    return openai.OpenAI(base_url=sims["openai"].base_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def azure(sims: dict[str, SimRunner]) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=sims["azure"].base_url,
        api_key=AZURE_KEY,
        api_version=API_VERSION,
        max_retries=0,
    )


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# --- tools ---------------------------------------------------------------------------------


def test_tool_call_when_asked(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o", messages=user("Please use tool lookup for switchyard"), tools=TOOLS
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {
        "query": "Please use tool lookup for switchyard"
    }
    assert call.function.arguments.startswith('{"query": ')
    assert resp.usage is not None and resp.usage.completion_tokens > 0


def test_tool_choice_decides(oai: openai.OpenAI) -> None:
    # `required` forces a call without being asked; a named function picks that tool.
    forced = oai.chat.completions.create(
        model="gpt-4o", messages=user("hello there"), tools=TOOLS, tool_choice="required"
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "lookup"  # type: ignore[index, union-attr]
    named = oai.chat.completions.create(
        model="gpt-4o",
        messages=user("hello there"),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "search"}},
    )
    assert named.choices[0].message.tool_calls[0].function.name == "search"  # type: ignore[index, union-attr]
    # `none`, or `auto` without the magic words: plain text.
    cases: list[tuple[Any, str]] = [("none", "please use tool lookup"), ("auto", "hello there")]
    for choice, text in cases:
        resp = oai.chat.completions.create(
            model="gpt-4o", messages=user(text), tools=TOOLS, tool_choice=choice
        )
        assert resp.choices[0].finish_reason == "stop"
        assert resp.choices[0].message.tool_calls is None
        assert resp.choices[0].message.content


def test_parallel_tool_calls(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o", messages=user("use tools to find the answer"), tools=TOOLS
    )
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["lookup", "search"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2
    single = oai.chat.completions.create(
        model="gpt-4o",
        messages=user("use tools to find the answer"),
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_streamed_tool_calls_reassemble(oai: openai.OpenAI) -> None:
    ask = user("use tools to find the answer")
    whole = oai.chat.completions.create(model="gpt-4o", messages=ask, tools=TOOLS)
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=ask,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.tool_calls is not None
    opening = first.tool_calls[0]
    assert opening.index == 0 and opening.id and opening.type == "function"
    assert opening.function is not None and opening.function.name == "lookup"
    assert opening.function.arguments == ""
    args: dict[int, str] = {}
    pieces: dict[int, int] = {}
    for chunk in chunks:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if tc.function and tc.function.arguments:
                args[tc.index] = args.get(tc.index, "") + tc.function.arguments
                pieces[tc.index] = pieces.get(tc.index, 0) + 1
    assert sorted(args) == [0, 1]
    assert all(n >= 2 for n in pieces.values())
    expected = [c.function.arguments for c in whole.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert [args[0], args[1]] == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # The SDK's own stream helper accumulates the same calls.
    with oai.chat.completions.stream(model="gpt-4o", messages=ask, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    got = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in got] == expected
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(oai: openai.OpenAI) -> None:
    ask = user("Please use tool lookup for switchyard")
    first = oai.chat.completions.create(model="gpt-4o", messages=ask, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    follow: Any = [
        *ask,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Switchyard routes LLM traffic"},
    ]
    answer = oai.chat.completions.create(model="gpt-4o", messages=follow, tools=TOOLS)
    assert answer.choices[0].finish_reason == "stop"
    assert "tool result: Switchyard routes LLM traffic" in (answer.choices[0].message.content or "")
    streamed = oai.chat.completions.create(
        model="gpt-4o", messages=follow, tools=TOOLS, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == answer.choices[0].message.content


BAD_REQUESTS: list[tuple[dict[str, Any], str | None, str]] = [
    ({"tools": {"a": 1}}, "tools", "expected an array"),
    ({"tools": []}, "tools", "empty array"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "Missing required parameter"),
    ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools[0].type", "'retrieval'"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "Missing"),
    (
        {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
        "tools[0].function.name",
        "does not match pattern",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "x", "parameters": "{}"}}]},
        "tools[0].function.parameters",
        "expected an object",
    ),
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
    ({"tools": [LOOKUP], "tool_choice": "always"}, "tool_choice", "'none', 'auto', and 'required'"),
    (
        {"tools": [LOOKUP], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
        "'nope'",
    ),
    ({"tools": [LOOKUP], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "a boolean"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls", "only allowed when 'tools'"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]},
        "messages[1].tool_call_id",
        "Missing required parameter",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "content": "x", "tool_call_id": "call_1"},
            ]
        },
        "messages.[1].role",
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]},
            ]
        },
        "messages[1].tool_calls[0].id",
        "Missing required parameter",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "x"}}
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "Missing required parameter",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "x", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": "and?"},
            ]
        },
        "messages.[1].role",
        "did not have response messages: call_1",
    ),
    (
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ]
        },
        "messages[0].content",
        "only allowed for messages with role 'user'",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        "messages[0].content[0].image_url.url",
        "base64-encoded data URL",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
        "messages[0].content[0].type",
        "'video'",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'json_schema'"),
    ({"response_format": {"type": "json_object"}}, "messages", "must contain the word 'json'"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "Missing required parameter",
    ),
]


@pytest.mark.parametrize(("patch", "param", "needle"), BAD_REQUESTS)
def test_validation_errors(
    oai: openai.OpenAI, patch: dict[str, Any], param: str | None, needle: str
) -> None:
    body = {"model": "gpt-4o", "messages": user("hi"), **patch}
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/chat/completions", body=body, cast_to=object)
    error = info.value.body
    assert isinstance(error, dict), error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert needle in error["message"]


# --- response_format and content parts -----------------------------------------------------


def test_json_object_mode(oai: openai.OpenAI) -> None:
    ask = user("Answer in JSON please")
    resp = oai.chat.completions.create(
        model="gpt-4o", messages=ask, response_format={"type": "json_object"}
    )
    content = resp.choices[0].message.content or ""
    obj = json.loads(content)
    assert isinstance(obj, dict) and obj["answer"].startswith("Simulated reply from oai-sim")
    streamed = oai.chat.completions.create(
        model="gpt-4o", messages=ask, response_format={"type": "json_object"}, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == content


class Address(BaseModel):
    city: str
    zip_code: int


class Person(BaseModel):
    name: str
    age: int
    score: float
    active: bool
    tags: list[str]
    address: Address
    role: Literal["admin", "user"]
    nickname: str | None


def test_json_schema_mode_parses_into_pydantic(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.parse(
        model="gpt-4o", messages=user("Describe a person"), response_format=Person
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person.name.startswith("Simulated reply")
    assert person.age == 42 and person.active is True and person.role == "admin"
    assert isinstance(person.address, Address) and len(person.tags) == 1


def test_images_audio_and_files_count_no_tokens(oai: openai.OpenAI) -> None:
    parts: Any = [
        {"type": "text", "text": "what is in these"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
    ]
    resp = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": parts}]
    )
    assert resp.usage is not None and resp.usage.prompt_tokens == 4
    assert "what is in these" in (resp.choices[0].message.content or "")


# --- embeddings ----------------------------------------------------------------------------


def test_embeddings_float_and_base64(oai: openai.OpenAI) -> None:
    floats = oai.embeddings.create(
        model="text-embedding-3-small",
        input=["switchyard embeds text", "something else"],
        encoding_format="float",
    )
    assert floats.object == "list" and floats.model == "text-embedding-3-small"
    assert [d.index for d in floats.data] == [0, 1]
    first = floats.data[0].embedding
    assert len(first) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in first)), 1.0, rel_tol=1e-5)
    assert floats.data[1].embedding != first
    assert floats.usage.prompt_tokens == 5 and floats.usage.total_tokens == 5
    # The SDK asks for base64 by default and decodes it: the same float32 values.
    default = oai.embeddings.create(model="text-embedding-3-small", input="switchyard embeds text")
    assert default.data[0].embedding == first
    raw = oai.with_raw_response.embeddings.create(
        model="text-embedding-3-small", input="switchyard embeds text"
    )
    assert isinstance(json.loads(raw.http_response.text)["data"][0]["embedding"], str)
    sent = json.loads(raw.http_request.content)
    assert sent["encoding_format"] == "base64"


def test_embeddings_dimensions_and_tokens(oai: openai.OpenAI) -> None:
    resp = oai.embeddings.create(model="text-embedding-3-large", input="abc", dimensions=32)
    assert len(resp.data[0].embedding) == 32
    tokens = oai.embeddings.create(model="text-embedding-3-small", input=[1, 2, 3])
    assert len(tokens.data) == 1 and tokens.usage.prompt_tokens == 3
    batches = oai.embeddings.create(model="text-embedding-3-small", input=[[1, 2], [3, 4, 5]])
    assert len(batches.data) == 2 and batches.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": "text-embedding-3-small"}, "input", "Missing required parameter: 'input'"),
        ({"model": "text-embedding-3-small", "input": ""}, "input", "'$.input' is invalid"),
        ({"model": "text-embedding-3-small", "input": []}, "input", "'$.input' is invalid"),
        ({"model": "text-embedding-3-small", "input": ["a", 1]}, "input", "is invalid"),
        ({"input": "a"}, None, "you must provide a model parameter"),
        (
            {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"},
            "encoding_format",
            "'float' and 'base64'",
        ),
        (
            {"model": "text-embedding-ada-002", "input": "a", "dimensions": 4},
            "dimensions",
            "does not support specifying dimensions",
        ),
        (
            {"model": "text-embedding-3-small", "input": "a", "dimensions": 0},
            "dimensions",
            "below minimum",
        ),
    ],
)
def test_embeddings_validation(
    oai: openai.OpenAI, body: dict[str, Any], param: str | None, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.post("/embeddings", body=body, cast_to=object)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and needle in error["message"]


# --- Azure ---------------------------------------------------------------------------------


def test_azure_chat_and_wire(azure: openai.AzureOpenAI, sims: dict[str, SimRunner]) -> None:
    resp = azure.chat.completions.create(model="my-deployment", messages=user("hello azure"))
    assert resp.model == "my-deployment"
    assert "hello azure" in (resp.choices[0].message.content or "")
    wire = sims["azure"].state.requests()[-1]
    assert wire["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert wire["query"] == {"api-version": API_VERSION}
    assert wire["headers"]["api-key"] == AZURE_KEY
    raw = azure.chat.completions.with_raw_response.create(
        model="my-deployment", messages=user("hello azure")
    )
    body = json.loads(raw.http_response.text)
    assert body["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert "content_filter_results" in body["choices"][0]
    # Streams open with Azure's choices-less filter chunk; the SDK copes.
    chunks = list(
        azure.chat.completions.create(
            model="my-deployment", messages=user("hello azure"), stream=True
        )
    )
    assert chunks[0].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == resp.choices[0].message.content


def test_azure_tools_and_embeddings(azure: openai.AzureOpenAI) -> None:
    resp = azure.chat.completions.create(
        model="dep", messages=user("please use tool lookup"), tools=TOOLS
    )
    assert resp.choices[0].message.tool_calls[0].function.name == "lookup"  # type: ignore[index, union-attr]
    emb = azure.embeddings.create(model="embed-dep", input=["a b", "c"])
    assert emb.model == "embed-dep" and len(emb.data) == 2 and emb.usage.prompt_tokens == 3


def test_azure_body_model_is_optional(sims: dict[str, SimRunner]) -> None:
    resp = httpx.post(
        sims["azure"].base_url + "/openai/deployments/dep-1/chat/completions",
        params={"api-version": API_VERSION},
        headers={"api-key": AZURE_KEY},
        json={"messages": user("no model here")},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "dep-1"


def test_azure_requires_api_version_and_key(sims: dict[str, SimRunner]) -> None:
    base = sims["azure"].base_url
    url = base + "/openai/deployments/dep/chat/completions"
    body = {"messages": user("hi")}
    # No api-version: Azure answers a bare 404 "Resource not found".
    resp = httpx.post(url, headers={"api-key": AZURE_KEY}, json=body)
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": "404", "message": "Resource not found"}}
    resp = httpx.post(url, params={"api-version": "latest"}, headers={"api-key": AZURE_KEY},
                      json=body)
    assert resp.status_code == 400 and "API version not supported" in resp.text
    # Through the SDK: a missing key and a wrong key are both 401s.
    for key in ("", "wrong"):
        client = openai.AzureOpenAI(
            azure_endpoint=base, api_key="placeholder", api_version=API_VERSION, max_retries=0,
            default_headers={"api-key": key},
        )
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="dep", messages=user("hi"))
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "401"
    # Without require_key any key is accepted, but one must be sent.
    open_url = sims["azure_open"].base_url + "/openai/deployments/dep/embeddings"
    resp = httpx.post(open_url, params={"api-version": API_VERSION}, json={"input": "x"})
    assert resp.status_code == 401
    resp = httpx.post(open_url, params={"api-version": API_VERSION}, headers={"api-key": "any"},
                      json={"input": "x"})
    assert resp.status_code == 200 and resp.json()["model"] == "dep"


# --- vLLM and TGI --------------------------------------------------------------------------


def _gauges(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def test_vllm_serves_chat_and_metrics(sims: dict[str, SimRunner]) -> None:
    runner = sims["vllm"]
    client = openai.OpenAI(base_url=runner.base_url + "/v1", api_key="x", max_retries=0)
    resp = client.chat.completions.create(model="meta-llama/Llama-3.1-8B", messages=user("hi"))
    assert resp.choices[0].message.content
    idle = httpx.get(runner.base_url + "/metrics")
    assert idle.status_code == 200 and idle.headers["content-type"].startswith("text/plain")
    assert "# TYPE vllm:num_requests_running gauge" in idle.text
    assert _gauges(idle.text) == {
        "vllm:num_requests_running": 0.0,
        "vllm:num_requests_waiting": 0.0,
        "vllm:gpu_cache_usage_perc": 0.0,
    }
    runner.state.set_options(runner.state.options.patched({"ttft_ms": 800.0}))
    worker = threading.Thread(
        target=lambda: client.chat.completions.create(model="m", messages=user("slow"))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 5
        busy: dict[str, float] = {}
        while time.monotonic() < deadline:
            busy = _gauges(httpx.get(runner.base_url + "/metrics").text)
            if busy["vllm:num_requests_running"] == 1.0:
                break
            time.sleep(0.02)
        assert busy["vllm:num_requests_running"] == 1.0
        assert busy["vllm:gpu_cache_usage_perc"] > 0
    finally:
        worker.join(10)


def test_tgi_speaks_openai(sims: dict[str, SimRunner]) -> None:
    client = openai.OpenAI(base_url=sims["tgi"].base_url + "/v1", api_key="x", max_retries=0)
    resp = client.chat.completions.create(model="tgi", messages=user("hello tgi"), max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert sims["tgi"].state.kind == "tgi"
