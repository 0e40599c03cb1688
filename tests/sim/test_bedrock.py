"""Bedrock simulator, driven by botocore's real bedrock-runtime client and by our own adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import botocore.session
import httpx
import orjson
import pytest
import pytest_asyncio
from botocore.config import Config
from botocore.exceptions import ClientError
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.auth.sigv4 import sign
from ext_proc.providers.bedrock import BedrockProvider
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate import bedrock
from sim.server import SimRunner, start_sim
from switchyard.framing.eventstream import EventStreamDecoder
from switchyard.framing.sse import SSEParser
from tests.sim.conftest import FAST

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TOOLS = {"tools": [
    {"toolSpec": {"name": "search", "description": "Search", "inputSchema": {"json": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}},
    {"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}},
]}
T = TypeVar("T")


@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("bedrock", "bed-sim", "127.0.0.1", 0, FAST)
    yield runner
    await runner.cleanup()


@pytest.fixture(autouse=True)
def _no_key(sim: SimRunner) -> None:
    """Options and records are reset by the shared conftest; some tests also set a key."""
    sim.state.require_key = None


def client(runner: SimRunner, key: str = "AKIDTEST") -> Any:
    return botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=runner.base_url,
        aws_access_key_id=key, aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=10))


async def run(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


# ---------------------------------------------------------------------- botocore client


async def test_converse(sim: SimRunner) -> None:
    c = client(sim)
    out = await run(lambda: c.converse(
        modelId=MODEL, system=[{"text": "be nice"}], messages=[user("hello there friend")]))
    text = out["output"]["message"]["content"][0]["text"]
    assert text.startswith("Simulated reply from bed-sim to: hello there friend")
    assert out["stopReason"] == "end_turn"
    assert out["usage"]["inputTokens"] == 5
    assert out["usage"]["totalTokens"] == 5 + out["usage"]["outputTokens"]
    assert "latencyMs" in out["metrics"]
    assert out["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    rec = sim.state.requests()[-1]
    assert rec["path"] == f"/model/{MODEL}/converse"
    assert rec["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")


async def test_converse_stream_matches_converse(sim: SimRunner) -> None:
    c = client(sim)
    msgs = [user("tell me about lighthouses")]
    whole = await run(lambda: c.converse(modelId=MODEL, messages=msgs,
                                         inferenceConfig={"maxTokens": 10}))
    events = await run(lambda: list(c.converse_stream(
        modelId=MODEL, messages=msgs, inferenceConfig={"maxTokens": 10})["stream"]))
    assert list(events[0]) == ["messageStart"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text == whole["output"]["message"]["content"][0]["text"]
    assert len(text.split()) == 10
    assert events[-2] == {"messageStop": {"stopReason": "max_tokens"}}
    assert whole["stopReason"] == "max_tokens"
    assert events[-1]["metadata"]["usage"] == whole["usage"]


@pytest.mark.parametrize("choice", [None, {"any": {}}, {"tool": {"name": "lookup"}}])
async def test_tool_use(sim: SimRunner, choice: dict[str, Any] | None) -> None:
    c = client(sim)
    cfg = {**TOOLS, **({"toolChoice": choice} if choice else {})}
    text = "please use tool for me" if choice is None else "what is up"
    out = await run(lambda: c.converse(modelId=MODEL, messages=[user(text)], toolConfig=cfg))
    want = "lookup" if choice and "tool" in choice else "search"
    blocks = out["output"]["message"]["content"]
    use = blocks[-1]["toolUse"]
    assert use["name"] == want and set(use["input"]) == {"query"}
    assert ("text" in blocks[0]) == (choice is None)
    assert out["stopReason"] == "tool_use"

    events = await run(lambda: list(c.converse_stream(
        modelId=MODEL, messages=[user(text)], toolConfig=cfg)["stream"]))
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == want
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
              if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})]
    assert len(pieces) >= 2
    assert set(orjson.loads("".join(pieces))) == {"query"}
    assert {"messageStop": {"stopReason": "tool_use"}} in events

    # The tool result goes back; the next reply is text.
    follow = [user(text), out["output"]["message"], {"role": "user", "content": [
        {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "42"}]}}]}]
    again = await run(lambda: c.converse(modelId=MODEL, messages=follow, toolConfig=TOOLS))
    assert again["stopReason"] == "end_turn"


@pytest.mark.parametrize(
    ("messages", "extra", "fragment"),
    [
        ([{"role": "assistant", "content": [{"text": "hi"}]}], {}, "start with a user"),
        ([user("a"), user("b")], {}, "alternate"),
        ([user("  ")], {}, "is blank"),
        ([user("a"), {"role": "assistant", "content": [{"toolUse": {
            "toolUseId": "t1", "name": "search", "input": {}}}]},
          {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [
              {"text": "r"}]}}]}], {}, "toolConfig field must be defined"),
        ([user("a"), {"role": "assistant", "content": [{"toolUse": {
            "toolUseId": "t1", "name": "search", "input": {}}}]},
          {"role": "user", "content": [{"text": "no result"}]}], {"toolConfig": TOOLS},
         "Expected toolResult blocks"),
        ([user("a")], {"toolConfig": {**TOOLS, "toolChoice": {"tool": {"name": "nope"}}}},
         "toolChoice"),
        ([user("a")], {"inferenceConfig": {"temperature": 1.5}}, "temperature"),
        ([{"role": "user", "content": []}], {}, "non-empty"),
    ],
)
async def test_validation_errors(sim: SimRunner, messages: list[dict[str, Any]],
                                 extra: dict[str, Any], fragment: str) -> None:
    c = client(sim)
    with pytest.raises(c.exceptions.ValidationException) as ei:
        await run(lambda: c.converse(modelId=MODEL, messages=messages, **extra))
    assert fragment in ei.value.response["Error"]["Message"]
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_faults(sim: SimRunner) -> None:
    c = client(sim)
    sim.state.set_options(FAST.patched({"rate_limit": True}))
    with pytest.raises(c.exceptions.ThrottlingException):
        await run(lambda: c.converse(modelId=MODEL, messages=[user("x")]))
    sim.state.set_options(FAST.patched({"error_rate": 1.0}))
    with pytest.raises(c.exceptions.InternalServerException):
        await run(lambda: c.converse(modelId=MODEL, messages=[user("x")]))
    sim.state.set_options(FAST.patched({"error_rate": 1.0, "error_status": 503}))
    with pytest.raises(c.exceptions.ServiceUnavailableException):
        await run(lambda: c.converse_stream(modelId=MODEL, messages=[user("x")]))


async def test_wrong_access_key(sim: SimRunner) -> None:
    sim.state.require_key = "AKIDGOOD"
    with pytest.raises(ClientError) as ei:
        await run(lambda: client(sim, "AKIDBAD").converse(modelId=MODEL, messages=[user("x")]))
    assert ei.value.response["Error"]["Code"] == "UnrecognizedClientException"
    ok = await run(lambda: client(sim, "AKIDGOOD").converse(modelId=MODEL, messages=[user("x")]))
    assert ok["stopReason"] == "end_turn"


async def test_embeddings_through_botocore(sim: SimRunner) -> None:
    c = client(sim)
    titan = await run(lambda: c.invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                             body=b'{"inputText":"hello world","dimensions":256}'))
    obj = orjson.loads(titan["body"].read())
    assert len(obj["embedding"]) == 256 and obj["inputTextTokenCount"] == 2
    again = await run(lambda: c.invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                             body=b'{"inputText":"hello world","dimensions":256}'))
    assert orjson.loads(again["body"].read())["embedding"] == obj["embedding"]
    cohere = await run(lambda: c.invoke_model(
        modelId="cohere.embed-english-v3",
        body=orjson.dumps({"texts": ["a", "b c"], "input_type": "search_query"})))
    assert cohere["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "3"
    assert [len(v) for v in orjson.loads(cohere["body"].read())["embeddings"]] == [1024, 1024]
    with pytest.raises(c.exceptions.ValidationException):
        await run(lambda: c.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=b"{}"))


# ----------------------------------------------------------- raw HTTP: auth and wire format


async def test_auth_shape_checked(sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        url = bedrock.path(MODEL, False)
        body = orjson.dumps({"messages": [user("x")]})
        r = await http.post(url, content=body)
        assert r.status_code == 403
        assert r.headers["x-amzn-errortype"].startswith("AccessDeniedException:")
        assert "message" in r.json()
        wrong = {"Authorization": "AWS4-HMAC-SHA256 Credential=AK/20250101/us-east-1/s3/"
                 "aws4_request, SignedHeaders=host, Signature=00", "X-Amz-Date": "x"}
        r = await http.post(url, content=body, headers=wrong)
        assert r.status_code == 403 and "bedrock" in r.json()["message"]
        signed = sign("POST", sim.base_url + url, {}, body, "us-east-1", "AK", "s", None)
        r = await http.post(url, content=body, headers={**signed, "Authorization":
                                                          signed["Authorization"]})
        assert r.status_code == 200
        r = await http.post(url, content=body, headers={"Authorization": signed["Authorization"]})
        assert r.status_code == 403 and "X-Amz-Date" in r.json()["message"]
        r = await http.post("/model/x/unknown", content=body, headers=signed)
        assert r.status_code == 404
        assert r.headers["x-amzn-errortype"].startswith("UnknownOperationException")


async def test_stream_frames_on_the_wire(sim: SimRunner) -> None:
    body = orjson.dumps({"messages": [user("hi")]})
    url = bedrock.path(MODEL, True)
    signed = sign("POST", sim.base_url + url, {}, body, "us-east-1", "AK", "s", None)
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        r = await http.post(url, content=body, headers=signed)
    assert r.headers["content-type"] == bedrock.EVENTSTREAM
    msgs = EventStreamDecoder().feed(r.content)
    assert all(m.headers[":message-type"] == "event" for m in msgs)
    assert all(m.headers[":content-type"] == "application/json" for m in msgs)
    assert [m.headers[":event-type"] for m in msgs][:2] == ["messageStart", "contentBlockDelta"]
    assert [m.headers[":event-type"] for m in msgs][-3:] == [
        "contentBlockStop", "messageStop", "metadata"]


# ------------------------------------------------ our adapter end to end against the sim


def _backend(sim: SimRunner) -> BackendInfo:
    provider = ProviderInfo(
        name="bed", kind="bedrock", authority=f"127.0.0.1:{sim.port}".encode(),
        path_prefix="", api_key="", headers=(),
        options={"region": "us-east-1", "aws_access_key_id": "AKIDTEST",
                 "aws_secret_access_key": "x"})
    return BackendInfo(cluster="c", provider=provider, model=MODEL, price_input=0.0,
                       price_output=0.0, context_window=200_000, label="bed/m")


async def _through_adapter(sim: SimRunner, req: dict[str, Any], chunk: int = 7) -> bytes:
    """What the gateway would send the client, with the body fed in small pieces."""
    backend = _backend(sim)
    adapter = BedrockProvider()
    path, body, headers = adapter.request(req, backend)
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        r = await http.post(path.decode(), content=body,
                            headers=[(k, v.decode()) for k, v in headers])
    handler = adapter.response(r.status_code, r.headers["content-type"], req, backend)
    out = []
    for i in range(0, len(r.content), chunk):
        piece = handler.feed(r.content[i : i + chunk])
        out.append(piece or b"")
    out.append(handler.finish() or b"")
    return b"".join(out)


def _chunks(out: bytes) -> list[dict[str, Any]]:
    events = SSEParser().feed(out)
    assert events[-1].data == b"[DONE]"
    return [orjson.loads(e.data) for e in events[:-1]]


OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}}}}}]


async def test_adapter_round_trip_with_tools(sim: SimRunner) -> None:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "please use tool now"}]
    first = ChatCompletion.model_validate(orjson.loads(await _through_adapter(
        sim, {"model": "m", "messages": msgs, "tools": OPENAI_TOOLS})))
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "search"  # type: ignore[union-attr]

    msgs += [first.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": calls[0].id, "content": "result text"}]
    req = {"model": "m", "messages": msgs, "tools": OPENAI_TOOLS, "stream": True,
           "stream_options": {"include_usage": True}}
    objs = _chunks(await _through_adapter(sim, req))
    parsed = [ChatCompletionChunk.model_validate(o) for o in objs]
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text.startswith("Simulated reply from bed-sim")
    assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens > 0
    sent = sim.state.requests()[-1]["body"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]


async def test_adapter_streamed_tool_call(sim: SimRunner) -> None:
    req = {"model": "m", "stream": True, "tools": OPENAI_TOOLS, "tool_choice": "required",
           "messages": [{"role": "user", "content": "hello"}]}
    parsed = [ChatCompletionChunk.model_validate(o)
              for o in _chunks(await _through_adapter(sim, req, chunk=3))]
    args = "".join(tc.function.arguments or "" for c in parsed for tc in
                   (c.choices[0].delta.tool_calls or ()) if tc.function)
    assert set(orjson.loads(args)) == {"query"}
    assert parsed[-1].choices[0].finish_reason == "tool_calls"


async def test_adapter_maps_sim_errors(sim: SimRunner) -> None:
    sim.state.set_options(FAST.patched({"rate_limit": True}))
    out = orjson.loads(await _through_adapter(sim, {"messages": [
        {"role": "user", "content": "x"}]}))
    assert out["error"]["type"] == "rate_limit_error"
    sim.state.set_options(FAST)
    out = orjson.loads(await _through_adapter(sim, {"messages": [
        {"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}]}))
    assert out["error"]["type"] == "invalid_request_error"
    assert "start with a user message" in out["error"]["message"]


async def test_reset_mid_stream_becomes_an_error_chunk(sim: SimRunner) -> None:
    sim.state.set_options(FAST.patched({"reset_after_chunks": 3}))
    backend = _backend(sim)
    req = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    path, body, headers = BedrockProvider().request(req, backend)
    conv = bedrock.StreamToOpenAI("m", False)
    got = b""
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        with pytest.raises(httpx.TransportError):
            async with http.stream("POST", path.decode(), content=body,
                                   headers=[(k, v.decode()) for k, v in headers]) as r:
                async for piece in r.aiter_raw():
                    got += conv.feed(piece)
    got += conv.finish()
    objs = _chunks(got)
    assert "ended before messageStop" in objs[-1]["error"]["message"]
    assert len(objs) >= 2  # some content made it before the cut
