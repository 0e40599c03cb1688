"""Gemini and Vertex simulators over real HTTP: httpx, Google's own google-genai client, and
the gateway's translator end to end (OpenAI request -> sim -> OpenAI response)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gt
from google.oauth2 import service_account
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.translate import gemini as tr
from ext_proc.translate.canonical import usage_from
from sim.gemini import embedding, fake_service_account
from sim.server import SimRunner, start_sim
from tests.sim.conftest import FAST

KEY = "gm-test-key"
MODEL = "gemini-2.5-flash"
GEN = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
VERTEX_BASE = "/v1/projects/p1/locations/us-central1/publishers/google/models/" + MODEL
HELLO = {"contents": [{"role": "user", "parts": [{"text": "hello there simulator"}]}]}
TOOLS = [
    {
        "functionDeclarations": [
            {
                "name": "search",
                "description": "web search",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                },
            },
            {"name": "get_time"},
        ]
    }
]


@pytest_asyncio.fixture(scope="module")
async def gem_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("gemini", "gem-sim", "127.0.0.1", 0, FAST, require_key=KEY)
    yield runner
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def vtx_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("vertex", "vtx-sim", "127.0.0.1", 0, FAST)
    yield runner
    await runner.cleanup()



def gem_http(runner: SimRunner, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=runner.base_url, headers={"x-goog-api-key": KEY}, **kw)


def vtx_http(runner: SimRunner, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=runner.base_url, headers={"authorization": "Bearer any-token"}, **kw
    )


def sse_events(body: bytes) -> list[dict[str, Any]]:
    frames = [f for f in body.split(b"\r\n\r\n") if f]
    assert all(f.startswith(b"data: ") for f in frames)
    out = [orjson.loads(f[6:]) for f in frames]
    for ev in out:
        gt.GenerateContentResponse.model_validate(ev)
    return out


def text_of(resp: dict[str, Any], i: int = 0) -> str:
    return "".join(
        p.get("text", "") for p in resp["candidates"][i]["content"]["parts"] if not p.get("thought")
    )


# ----------------------------------------------------------------------- wire format


async def test_generate_content(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(GEN, json={**HELLO, "generationConfig": {"candidateCount": 2}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    gt.GenerateContentResponse.model_validate(body)
    assert text_of(body).startswith("Simulated reply from gem-sim to: hello there simulator")
    assert text_of(body, 1) == text_of(body)
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["modelVersion"] == MODEL
    um = body["usageMetadata"]
    words = len(text_of(body).split())
    assert um["promptTokenCount"] == 3
    assert um["candidatesTokenCount"] == 2 * words
    assert um["totalTokenCount"] == 3 + 2 * words
    assert resp.headers["x-goog-request-id"]


async def test_stream_sse_matches_unary(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        unary = (await http.post(GEN, json=HELLO)).json()
        resp = await http.post(STREAM, json=HELLO)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.content)
    assert len(events) > 3
    assert "".join(text_of(e) for e in events) == text_of(unary)
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"] == unary["usageMetadata"]
    assert len({e["responseId"] for e in events}) == 1


async def test_stream_without_alt_sse_is_a_json_array(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(STREAM.split("?")[0], json=HELLO)
    arr = resp.json()
    assert isinstance(arr, list) and arr[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_max_tokens_truncates(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        body = (
            await http.post(GEN, json={**HELLO, "generationConfig": {"maxOutputTokens": 3}})
        ).json()
    assert len(text_of(body).split()) == 3
    assert body["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_snake_case_fields_are_accepted(gem_sim: SimRunner) -> None:
    req = {
        "contents": HELLO["contents"],
        "system_instruction": {"parts": [{"text": "sys"}]},
        "generation_config": {"max_output_tokens": 4},
    }
    async with gem_http(gem_sim) as http:
        body = (await http.post(GEN, json=req)).json()
    assert len(text_of(body).split()) == 4
    assert body["usageMetadata"]["promptTokenCount"] == 4


async def test_thoughts(gem_sim: SimRunner) -> None:
    cfg = {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024}}
    async with gem_http(gem_sim) as http:
        body = (await http.post(GEN, json={**HELLO, "generationConfig": cfg})).json()
    parts = body["candidates"][0]["content"]["parts"]
    assert parts[0]["thought"] is True
    assert body["usageMetadata"]["thoughtsTokenCount"] > 0


@pytest.mark.parametrize(
    ("config", "check"),
    [
        ({"responseMimeType": "application/json"}, lambda v: set(v) == {"reply"}),
        (
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "n": {"type": "integer"},
                        "ok": {"type": "boolean"},
                    },
                },
            },
            lambda v: isinstance(v["city"], str) and isinstance(v["n"], int) and v["ok"] is True,
        ),
        (
            {
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {"tags": {"type": "ARRAY", "items": {"type": "STRING"}}},
                },
            },
            lambda v: isinstance(v["tags"], list),
        ),
    ],
)
async def test_json_mode(gem_sim: SimRunner, config: dict[str, Any], check: Any) -> None:
    async with gem_http(gem_sim) as http:
        body = (await http.post(GEN, json={**HELLO, "generationConfig": config})).json()
        streamed = await http.post(STREAM, json={**HELLO, "generationConfig": config})
    value = json.loads(text_of(body))
    assert check(value)
    assert json.loads("".join(text_of(e) for e in sse_events(streamed.content))) == value


@pytest.mark.parametrize(
    ("text", "config", "expected"),
    [
        ("please use tool now", None, ["search"]),
        ("please use all tools", None, ["search", "get_time"]),
        ("no tools here", None, []),
        ("no tools here", {"mode": "ANY"}, ["search"]),
        ("whatever", {"mode": "ANY", "allowedFunctionNames": ["get_time"]}, ["get_time"]),
        ("please use tool now", {"mode": "NONE"}, []),
    ],
)
async def test_function_calling(
    gem_sim: SimRunner, text: str, config: dict[str, Any] | None, expected: list[str]
) -> None:
    req: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "tools": TOOLS,
    }
    if config:
        req["toolConfig"] = {"functionCallingConfig": config}
    async with gem_http(gem_sim) as http:
        body = (await http.post(GEN, json=req)).json()
        events = sse_events((await http.post(STREAM, json=req)).content)
    parts = body["candidates"][0]["content"]["parts"]
    calls = [p["functionCall"] for p in parts if "functionCall" in p]
    assert [c["name"] for c in calls] == expected
    assert all(c["args"] == {"query": " ".join(text.split()[:8])} for c in calls)
    assert body["candidates"][0]["finishReason"] == "STOP"
    streamed = [
        p["functionCall"]["name"]
        for e in events
        for p in e["candidates"][0]["content"]["parts"]
        if "functionCall" in p
    ]
    assert streamed == expected


async def test_no_second_call_after_a_function_response(gem_sim: SimRunner) -> None:
    req = {
        "contents": [
            {"role": "user", "parts": [{"text": "use tool please"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "search", "args": {}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "search", "response": {"content": "42"}}}],
            },
        ],
        "tools": TOOLS,
    }
    async with gem_http(gem_sim) as http:
        body = (await http.post(GEN, json=req)).json()
    assert "text" in body["candidates"][0]["content"]["parts"][0]


INVALID: list[tuple[Any, str]] = [
    ({}, "contents is not specified"),
    ({"contents": []}, "contents is not specified"),
    (
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        "Please use a valid role: user, model.",
    ),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"txt": "x"}]}]}, 'Unknown name "txt"'),
    (
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "x", "inlineData": {"mimeType": "image/png", "data": "AA=="}}
                    ],
                }
            ]
        },
        "Oneof field 'data' is already set",
    ),
    ({"contents": [{"role": "user", "parts": [{"thought": True}]}]}, "required oneof field 'data'"),
    (
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": "***"}}],
                }
            ]
        },
        "Base64 decoding failed",
    ),
    ({**HELLO, "temperatura": 1}, 'Unknown name "temperatura"'),
    (
        {**HELLO, "generationConfig": {"temperature": "hot"}},
        "Invalid value at 'generation_config.temperature' (TYPE_FLOAT)",
    ),
    (
        {**HELLO, "generationConfig": {"maxOutputTokens": 1.5}},
        "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32)",
    ),
    ({**HELLO, "generationConfig": {"temperature": 3}}, "temperature value of 3"),
    ({**HELLO, "generationConfig": {"stopSequences": list("abcdef")}}, "more than 5 stop"),
    ({**HELLO, "generationConfig": {"responseMimeType": "text/html"}}, "allowed mimetypes"),
    (
        {**HELLO, "generationConfig": {"responseJsonSchema": {}}},
        "response_mime_type must be set to application/json",
    ),
    (
        {
            **HELLO,
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 1, "thinkingLevel": "low"}},
        },
        "only one of thinking budget and thinking level",
    ),
    ({**HELLO, "tools": [{"functionDeclarations": [{"name": "1bad"}]}]}, "Invalid function name"),
    (
        {
            **HELLO,
            "tools": [
                {
                    "functionDeclarations": [
                        {"name": "f", "parameters": {}, "parametersJsonSchema": {}}
                    ]
                }
            ],
        },
        "cannot both be set",
    ),
    (
        {
            **HELLO,
            "tools": TOOLS,
            "toolConfig": {
                "functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["search"]}
            },
        },
        "allowed_function_names may only be set when mode is ANY",
    ),
    (
        {**HELLO, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
        "function_calling_config.mode",
    ),
    ([1, 2], "Invalid JSON payload received"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
async def test_validation(gem_sim: SimRunner, body: Any, message: str) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(GEN, json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT"
    assert message in err["message"]
    # ... and the gateway maps it to an OpenAI invalid_request_error
    mapped = orjson.loads(tr.error_to_openai(400, resp.content))["error"]
    assert mapped["type"] == "invalid_request_error"


async def test_not_json(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(GEN, content=b"{nope")
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "path",
    [f"/v1beta/models/{MODEL}:fly", f"/v9/models/{MODEL}:generateContent", "/v1beta/other"],
)
async def test_unknown_paths_are_google_404s(gem_sim: SimRunner, path: str) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(path, json=HELLO)
    assert resp.status_code == 404
    assert resp.json()["error"]["status"] == "NOT_FOUND"


async def test_count_tokens_and_models(gem_sim: SimRunner) -> None:
    async with gem_http(gem_sim) as http:
        resp = await http.post(f"/v1beta/models/{MODEL}:countTokens", json=HELLO)
        models = await http.get("/v1beta/models")
    assert resp.json() == {"totalTokens": 3}
    assert f"models/{MODEL}" in [m["name"] for m in models.json()["models"]]


# ------------------------------------------------------------------------------ auth


async def test_gemini_api_key(gem_sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=gem_sim.base_url) as http:
        missing = await http.post(GEN, json=HELLO)
        wrong = await http.post(GEN, json=HELLO, headers={"x-goog-api-key": "bad"})
        by_query = await http.post(GEN + f"?key={KEY}", json=HELLO)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert orjson.loads(tr.error_to_openai(400, wrong.content))["error"]["code"] == (
        "invalid_api_key"
    )
    assert by_query.status_code == 200


async def test_gemini_any_key_without_require_key() -> None:
    runner = await start_sim("gemini", "open", "127.0.0.1", 0, FAST)
    try:
        async with httpx.AsyncClient(base_url=runner.base_url) as http:
            ok = await http.post(GEN, json=HELLO, headers={"x-goog-api-key": "whatever"})
            missing = await http.post(GEN, json=HELLO)
        assert ok.status_code == 200
        assert missing.status_code == 403
    finally:
        await runner.cleanup()


async def test_vertex_bearer_and_token_endpoint(vtx_sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=vtx_sim.base_url) as http:
        missing = await http.post(VERTEX_BASE + ":generateContent", json=HELLO)
        bad_grant = await http.post("/token", data={"grant_type": "password"})
        bad_jwt = await http.post(
            "/token",
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y"},
        )
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"
    assert bad_jwt.status_code == 400 and bad_jwt.json()["error"] == "invalid_grant"
    async with vtx_http(vtx_sim) as http:
        resp = await http.post(VERTEX_BASE + ":generateContent", json=HELLO)
        v1beta1 = await http.post(
            VERTEX_BASE.replace("/v1/", "/v1beta1/") + ":generateContent", json=HELLO
        )
        v1beta = await http.post(
            VERTEX_BASE.replace("/v1/", "/v1beta/") + ":generateContent", json=HELLO
        )
    assert resp.status_code == 200 and v1beta1.status_code == 200
    assert v1beta.status_code == 404


# ---------------------------------------------------------------------------- faults


async def test_rate_limit(gem_sim: SimRunner) -> None:
    gem_sim.state.set_options(
        gem_sim.state.options.patched({"rate_limit": True, "retry_after_s": 7})
    )
    async with gem_http(gem_sim) as http:
        resp = await http.post(GEN, json=HELLO)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    err = resp.json()["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED"
    assert err["details"][0]["retryDelay"] == "7s"
    mapped = orjson.loads(tr.error_to_openai(429, resp.content))["error"]
    assert (mapped["type"], mapped["code"]) == ("rate_limit_error", "rate_limit_exceeded")


async def test_error_rate(vtx_sim: SimRunner) -> None:
    vtx_sim.state.set_options(
        vtx_sim.state.options.patched({"error_rate": 1.0, "error_status": 503})
    )
    async with vtx_http(vtx_sim) as http:
        resp = await http.post(VERTEX_BASE + ":generateContent", json=HELLO)
    assert resp.status_code == 503
    assert resp.json()["error"]["status"] == "UNAVAILABLE"


async def test_hang(gem_sim: SimRunner) -> None:
    gem_sim.state.set_options(gem_sim.state.options.patched({"hang": True}))
    async with gem_http(gem_sim, timeout=0.3) as http:
        with pytest.raises(httpx.TimeoutException):
            await http.post(GEN, json=HELLO)
    for _ in range(100):  # the sim notices the client left
        if gem_sim.state.hanging == 0:
            break
        await asyncio.sleep(0.02)
    assert gem_sim.state.hanging == 0


async def test_reset_after_chunks_ends_translated_stream_with_an_error(gem_sim: SimRunner) -> None:
    gem_sim.state.set_options(gem_sim.state.options.patched({"reset_after_chunks": 3}))
    t = tr.StreamToOpenAI(MODEL, include_usage=True)
    out = b""
    async with gem_http(gem_sim) as http:
        with pytest.raises(httpx.TransportError):
            async with http.stream("POST", STREAM, json=HELLO) as resp:
                async for chunk in resp.aiter_raw():
                    out += t.feed(chunk)
    out += t.finish()
    frames = [f for f in out.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    assert orjson.loads(frames[-2][6:])["error"]["type"] == "api_error"
    assert t.error is not None


# ------------------------------------------------------------------------ embeddings


async def test_gemini_embeddings(gem_sim: SimRunner) -> None:
    path, body = tr.embeddings_request(
        {"input": ["a b", "c"], "dimensions": 8}, "gemini-embedding-001", vertex=False
    )
    async with gem_http(gem_sim) as http:
        resp = await http.post(path, content=body)
        single = await http.post(
            "/v1beta/models/gemini-embedding-001:embedContent",
            json={"content": {"parts": [{"text": "c"}]}, "outputDimensionality": 8},
        )
        wrong_model = await http.post(path.replace("gemini-embedding-001", "other"), content=body)
    assert resp.status_code == 200, resp.text
    vectors = [e["values"] for e in resp.json()["embeddings"]]
    assert vectors == [embedding("a b", 8), embedding("c", 8)]
    assert single.json()["embedding"]["values"] == vectors[1]
    assert wrong_model.status_code == 400
    out = orjson.loads(tr.embeddings_response(resp.content, "e", vertex=False))
    assert [d["embedding"] for d in out["data"]] == vectors


async def test_vertex_embeddings(vtx_sim: SimRunner) -> None:
    path, body = tr.embeddings_request(
        {"input": "one two three"},
        "text-embedding-005",
        vertex=True,
        project="p1",
        location="us-central1",
    )
    async with vtx_http(vtx_sim) as http:
        resp = await http.post(path, content=body)
    assert resp.status_code == 200, resp.text
    pred = resp.json()["predictions"][0]["embeddings"]
    assert len(pred["values"]) == 768 and pred["statistics"]["token_count"] == 3
    out = orjson.loads(tr.embeddings_response(resp.content, "e", vertex=True))
    assert out["usage"]["prompt_tokens"] == 3


# ------------------------------------------------------------ google-genai, the real SDK


def gem_client(runner: SimRunner) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=gt.HttpOptions(base_url=runner.base_url))


async def test_genai_client_generate_and_stream(gem_sim: SimRunner) -> None:
    client = gem_client(gem_sim)
    resp = await client.aio.models.generate_content(
        model=MODEL,
        contents="hello from the sdk",
        config=gt.GenerateContentConfig(
            system_instruction="be brief", max_output_tokens=50, temperature=0.2
        ),
    )
    assert resp.text is not None and resp.text.startswith("Simulated reply from gem-sim")
    assert resp.usage_metadata is not None and resp.usage_metadata.prompt_token_count == 6
    pieces = [
        c.text
        async for c in await client.aio.models.generate_content_stream(
            model=MODEL, contents="hello from the sdk"
        )
    ]
    assert "".join(p or "" for p in pieces) == resp.text
    sent = gem_sim.state.requests()[0]
    assert sent["headers"]["x-goog-api-key"] == KEY


async def test_genai_client_tools_json_and_thinking(gem_sim: SimRunner) -> None:
    client = gem_client(gem_sim)
    fn = gt.FunctionDeclaration(
        name="search", description="search", parameters_json_schema={"type": "object"}
    )
    resp = await client.aio.models.generate_content(
        model=MODEL,
        contents="use tool for cats",
        config=gt.GenerateContentConfig(tools=[gt.Tool(function_declarations=[fn])]),
    )
    assert resp.function_calls and resp.function_calls[0].name == "search"
    resp = await client.aio.models.generate_content(
        model=MODEL,
        contents="give json",
        config=gt.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
            thinking_config=gt.ThinkingConfig(include_thoughts=True, thinking_budget=512),
        ),
    )
    assert resp.text is not None and isinstance(json.loads(resp.text)["n"], int)
    assert resp.usage_metadata is not None and resp.usage_metadata.thoughts_token_count


async def test_genai_client_embeddings_and_errors(gem_sim: SimRunner) -> None:
    client = gem_client(gem_sim)
    emb = await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=["a", "b"],
        config=gt.EmbedContentConfig(output_dimensionality=4),
    )
    assert emb.embeddings is not None
    assert [e.values for e in emb.embeddings] == [embedding("a", 4), embedding("b", 4)]
    gem_sim.state.set_options(gem_sim.state.options.patched({"rate_limit": True}))
    with pytest.raises(gerrors.ClientError) as err:
        await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"


async def test_genai_vertex_client_with_service_account(tmp_path: Path) -> None:
    """The SDK's own Vertex mode: service-account OAuth at the sim's /token, then a call."""
    runner = await start_sim("vertex", "vtx-auth", "127.0.0.1", 0, FAST, require_key="unused")
    try:
        info = fake_service_account(runner.base_url + "/token")
        creds = service_account.Credentials.from_service_account_info(
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        client = genai.Client(
            vertexai=True,
            project="p1",
            location="us-central1",
            credentials=creds,
            http_options=gt.HttpOptions(base_url=runner.base_url),
        )
        resp = await client.aio.models.generate_content(model=MODEL, contents="hi vertex")
        assert resp.text is not None and resp.text.startswith("Simulated reply from vtx-auth")
        paths = [r["path"] for r in runner.state.requests()]
        assert paths[0] == "/token"
        assert paths[1].endswith(
            f"/projects/p1/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
        )
        auth = runner.state.requests()[1]["headers"]["authorization"]
        assert auth.startswith("Bearer sim-token-")
    finally:
        await runner.cleanup()


# --------------------------------------------- the gateway's translator, end to end


def _openai_requests() -> list[dict[str, Any]]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
        }
    ]
    msgs = [
        {"role": "system", "content": "be helpful"},
        {"role": "user", "content": "hello gateway"},
    ]
    return [
        {"messages": msgs, "max_tokens": 5, "temperature": 0.3, "stop": ["zzz"], "seed": 1},
        {"messages": msgs, "n": 2},
        {"messages": msgs, "response_format": {"type": "json_object"}},
        {"messages": msgs, "reasoning_effort": "low"},
        {"messages": [{"role": "user", "content": "use tool for news"}], "tools": tools},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
            "tool_choice": "required",
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
                    ],
                }
            ]
        },
    ]


@pytest.mark.parametrize("req", _openai_requests())
async def test_translator_against_the_sim(gem_sim: SimRunner, req: dict[str, Any]) -> None:
    body = tr.request_from_openai(req)
    async with gem_http(gem_sim) as http:
        resp = await http.post(tr.gemini_path(MODEL), content=body)
        assert resp.status_code == 200, resp.text
        out = orjson.loads(tr.response_to_openai(resp.json(), MODEL))
        ChatCompletion.model_validate(out)
        sresp = await http.post(tr.gemini_path(MODEL, stream=True), content=body)
    t = tr.StreamToOpenAI(MODEL, include_usage=True)
    frames = [f for f in (t.feed(sresp.content) + t.finish()).split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert t.error is None
    # streamed and buffered answers agree (choice 0)
    choice = out["choices"][0]
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == 0
    )
    assert streamed == (choice["message"]["content"] or "")
    assert t.finish_reason == choice["finish_reason"]
    # the whole usage (cached and reasoning tokens too), as the buffered answer reports it
    assert t.usage == usage_from(out["usage"])
    if req.get("tools"):
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "search"
    if req.get("reasoning_effort"):
        assert choice["message"]["reasoning_content"]


async def test_tool_loop_through_translator(gem_sim: SimRunner) -> None:
    """call -> tool result -> final answer, all through request/response translation."""
    tools = [{"type": "function", "function": {"name": "search"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "use all tools please"}]
    async with gem_http(gem_sim) as http:
        resp = await http.post(
            tr.gemini_path(MODEL),
            content=tr.request_from_openai({"messages": messages, "tools": tools}),
        )
        msg = orjson.loads(tr.response_to_openai(resp.json(), MODEL))["choices"][0]["message"]
        assert msg["tool_calls"][0]["id"] == "call_0_search"
        messages.append(msg)
        messages.append({"role": "tool", "tool_call_id": "call_0_search", "content": '{"n": 1}'})
        resp = await http.post(
            tr.gemini_path(MODEL),
            content=tr.request_from_openai({"messages": messages, "tools": tools}),
        )
    assert resp.status_code == 200, resp.text
    final = orjson.loads(tr.response_to_openai(resp.json(), MODEL))["choices"][0]
    assert final["finish_reason"] == "stop" and final["message"]["content"]
    sent = gem_sim.state.requests()[-1]["body"]
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == tr.SKIP_SIGNATURE
