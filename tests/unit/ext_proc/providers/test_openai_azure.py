"""Adapters for OpenAI-schema backends (OpenAI, Azure OpenAI, vLLM, TGI) and Bedrock
embeddings: request paths, headers and bodies, response handlers, and each adapter end to end
against its simulator (what the adapter sends is what the provider accepts)."""

from __future__ import annotations

import base64
import datetime
import struct
from collections.abc import AsyncIterator
from typing import Any

import botocore.auth
import httpx
import orjson
import pytest
import pytest_asyncio
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from ext_proc.auth.sigv4 import sign
from ext_proc.providers import PROVIDERS
from ext_proc.providers.azure import AzureOpenAIProvider
from ext_proc.providers.base import Buffered, ResponseHandler
from ext_proc.providers.bedrock import BedrockProvider
from ext_proc.providers.openai import OpenAIProvider
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import TranslationError, Usage
from sim.common import SimOptions
from sim.server import SimRunner, start_sim
from switchyard.framing.sse import SSEParser

FAST = SimOptions(ttft_ms=0, tokens_per_s=0)
CHAT = {"model": "alias", "messages": [{"role": "user", "content": "hello there"}]}
EMBED = {"model": "alias", "input": ["one two", "three"], "dimensions": 16, "user": "u-1"}
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
AWS = {"region": "us-east-1", "aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "s3cr3t"}


def backend(kind: str, model: str, *, api_key: str = "", prefix: str = "",
            options: dict[str, str] | None = None,
            authority: bytes = b"api.example.com") -> BackendInfo:
    provider = ProviderInfo(name=f"p-{kind}", kind=kind, authority=authority,
                            path_prefix=prefix, api_key=api_key, headers=(),
                            options=options or {})
    return BackendInfo(cluster="c", provider=provider, model=model, price_input=0.0,
                       price_output=0.0, context_window=128_000, label=f"p-{kind}/{model}")


def run(handler: ResponseHandler, body: bytes, piece: int = 5) -> bytes | None:
    """Feed `body` in pieces; the bytes the client gets (None: the original, untouched)."""
    out = [handler.feed(body[i : i + piece]) for i in range(0, len(body), piece)]
    tail = handler.finish()
    if not handler.rewrites:
        assert all(o is None for o in out) and tail is None
        return None
    return b"".join(o or b"" for o in out) + (tail or b"")


def test_registered_kinds() -> None:
    assert isinstance(PROVIDERS["azure_openai"], AzureOpenAIProvider)
    assert type(PROVIDERS["vllm"]) is OpenAIProvider and type(PROVIDERS["tgi"]) is OpenAIProvider
    for kind in ("openai", "azure_openai", "vllm", "tgi", "bedrock"):
        assert hasattr(PROVIDERS[kind], "embeddings_request")


# --- OpenAI / vLLM / TGI -------------------------------------------------------------------


def test_openai_chat_request() -> None:
    b = backend("openai", "gpt-4o-mini", api_key="sk-up", prefix="/pfx")
    path, body, headers = OpenAIProvider().request({**CHAT, "stream": True}, b)
    assert path == b"/pfx/v1/chat/completions"
    sent = orjson.loads(body)
    assert sent["model"] == "gpt-4o-mini" and sent["stream_options"] == {"include_usage": True}
    assert dict(headers) == {"content-type": b"application/json",
                             "authorization": b"Bearer sk-up"}


def test_openai_embeddings_request() -> None:
    b = backend("openai", "text-embedding-3-small", api_key="sk-up", prefix="/pfx")
    path, body, headers = OpenAIProvider().embeddings_request(EMBED, b)
    assert path == b"/pfx/v1/embeddings"
    assert orjson.loads(body) == {**EMBED, "model": "text-embedding-3-small"}
    assert dict(headers)["authorization"] == b"Bearer sk-up"


def test_vllm_without_key_sends_no_authorization() -> None:
    b = backend("vllm", "meta-llama/Llama-3.1-8B")
    adapter = PROVIDERS["vllm"]
    for path, _, headers in (adapter.request(CHAT, b),
                             OpenAIProvider().embeddings_request(EMBED, b)):
        assert path.startswith(b"/v1/")
        assert "authorization" not in dict(headers)


def test_openai_embeddings_response_reads_usage_and_names_the_alias() -> None:
    b = backend("openai", "text-embedding-3-small")
    ok = orjson.dumps({"object": "list", "data": [], "model": "text-embedding-3-small",
                       "usage": {"prompt_tokens": 7, "total_tokens": 7}})
    h = OpenAIProvider().embeddings_response(200, "application/json", EMBED, b)
    assert isinstance(h, Buffered) and not h.streaming and h.rewrites
    assert run(h, ok) == ok.replace(b'"text-embedding-3-small"', b'"alias"')
    assert h.usage == Usage(7, 0)
    err = OpenAIProvider().embeddings_response(400, "application/json", EMBED, b)
    assert run(err, b'{"error": {"message": "bad"}}') is None and err.usage is None
    junk = OpenAIProvider().embeddings_response(200, "application/json", EMBED, b)
    with pytest.raises(ValueError):  # a success that is not JSON: respond.py's 502
        run(junk, b"not json")
    same = backend("openai", "alias")  # alias == upstream name: nothing to rewrite
    h = OpenAIProvider().embeddings_response(200, "application/json", EMBED, same)
    assert not h.rewrites and run(h, ok) is None


# --- Azure ---------------------------------------------------------------------------------

AZ_OPTS = {"api_version": "2024-10-21"}


def test_azure_chat_request() -> None:
    b = backend("azure_openai", "my gpt/4o", api_key="az-key", prefix="/pfx", options=AZ_OPTS)
    path, body, headers = AzureOpenAIProvider().request({**CHAT, "stream": True}, b)
    assert path == (b"/pfx/openai/deployments/my%20gpt%2F4o/chat/completions"
                    b"?api-version=2024-10-21")
    sent = orjson.loads(body)
    assert sent["model"] == "my gpt/4o" and sent["messages"] == CHAT["messages"]
    assert sent["stream_options"] == {"include_usage": True}
    assert dict(headers) == {"content-type": b"application/json", "api-key": b"az-key"}


def test_azure_embeddings_request() -> None:
    b = backend("azure_openai", "embed-dep", api_key="az-key", options=AZ_OPTS)
    path, body, headers = AzureOpenAIProvider().embeddings_request(EMBED, b)
    assert path == b"/openai/deployments/embed-dep/embeddings?api-version=2024-10-21"
    assert orjson.loads(body) == {**EMBED, "model": "embed-dep"}
    assert "authorization" not in dict(headers) and dict(headers)["api-key"] == b"az-key"


def test_azure_without_api_version_is_a_gateway_error() -> None:
    b = backend("azure_openai", "dep", api_key="az-key")
    for call in (AzureOpenAIProvider().request, AzureOpenAIProvider().embeddings_request):
        with pytest.raises(TranslationError) as info:
            call(CHAT, b)
        assert info.value.status == 500 and info.value.code == "missing_api_version"
        assert "p-azure_openai" in info.value.message


def test_azure_responses_like_openai() -> None:
    b = backend("azure_openai", "dep", options=AZ_OPTS)
    a = AzureOpenAIProvider()
    body = orjson.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 3,
                                                             "completion_tokens": 4}})
    h = a.response(200, "application/json", CHAT, b)
    assert run(h, body) == body and h.usage == Usage(3, 4)  # no `model` to rename
    # A stream cut before [DONE] gets an error event appended, exactly as for OpenAI.
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    s = a.response(200, "text/event-stream; charset=utf-8", CHAT, b)
    out = run(s, chunk)
    assert out is not None and out.startswith(chunk)
    events = SSEParser().feed(out[len(chunk):])
    assert orjson.loads(events[0].data)["error"]["code"] == "upstream_stream_truncated"
    assert events[-1].data == b"[DONE]"
    e = a.embeddings_response(200, "application/json", EMBED, b)
    assert run(e, b'{"usage": {"prompt_tokens": 2, "total_tokens": 2}}') is not None
    assert e.usage == Usage(2, 0)


# --- Bedrock embeddings --------------------------------------------------------------------


def test_bedrock_embeddings_request_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    b = backend("bedrock", TITAN, prefix="/pfx", options=AWS,
                authority=b"bedrock-runtime.us-east-1.amazonaws.com")
    path, body, headers = BedrockProvider().embeddings_request(
        {"model": "alias", "input": "hello world", "dimensions": 256}, b)
    assert path == b"/pfx/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert orjson.loads(body) == {"inputText": "hello world", "dimensions": 256}
    h = dict(headers)
    assert h["content-type"] == h["accept"] == b"application/json"
    want = sign("POST", "http://bedrock-runtime.us-east-1.amazonaws.com" + path.decode(),
                {"host": "bedrock-runtime.us-east-1.amazonaws.com"}, body, "us-east-1",
                "AKIDTEST", "s3cr3t", None)
    assert h["authorization"] == want["Authorization"].encode()
    assert h["x-amz-date"] == want["X-Amz-Date"].encode()
    assert b"Credential=AKIDTEST/20250102/us-east-1/bedrock/aws4_request" in h["authorization"]


def test_bedrock_embeddings_one_call_only() -> None:
    titan = backend("bedrock", TITAN, options=AWS)
    with pytest.raises(TranslationError) as info:
        BedrockProvider().embeddings_request({"model": "a", "input": ["a", "b"]}, titan)
    assert info.value.param == "input" and "at most 1 " in info.value.message
    cohere = backend("bedrock", COHERE, options=AWS)
    with pytest.raises(TranslationError) as info:
        BedrockProvider().embeddings_request({"model": "a", "input": ["x"] * 97}, cohere)
    assert info.value.param == "input" and "at most 96 " in info.value.message
    _, body, _ = BedrockProvider().embeddings_request({"model": "a", "input": ["x"] * 96}, cohere)
    assert len(orjson.loads(body)["texts"]) == 96


def test_bedrock_embeddings_request_errors() -> None:
    b = backend("bedrock", TITAN, options=AWS)
    with pytest.raises(TranslationError) as info:
        BedrockProvider().embeddings_request(
            {"model": "a", "input": "x", "encoding_format": "hex"}, b)
    assert info.value.param == "encoding_format"
    no_creds = backend("bedrock", TITAN, options={"region": "us-east-1"})
    with pytest.raises(TranslationError) as info:
        BedrockProvider().embeddings_request({"model": "a", "input": "x"}, no_creds)
    assert info.value.status == 500 and info.value.code == "missing_credentials"
    with pytest.raises(TranslationError) as info:
        BedrockProvider().embeddings_request({"model": "a", "input": [1, 2]}, b)
    assert info.value.param == "input"


def test_bedrock_embeddings_response() -> None:
    b = backend("bedrock", TITAN, options=AWS)
    titan = orjson.dumps({"embedding": [0.5, -0.25], "inputTextTokenCount": 3})
    h = BedrockProvider().embeddings_response(200, "application/json", {"input": "a"}, b)
    out = run(h, titan)
    assert out is not None and h.rewrites and h.content_type == b"application/json"
    parsed = CreateEmbeddingResponse.model_validate_json(out)
    assert parsed.data[0].embedding == [0.5, -0.25] and parsed.model == TITAN
    assert parsed.usage.prompt_tokens == 3 and h.usage == Usage(3, 0)
    h64 = BedrockProvider().embeddings_response(
        200, "application/json", {"input": "a", "encoding_format": "base64"}, b)
    raw = base64.b64decode(orjson.loads(run(h64, titan) or b"")["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -0.25)
    # Cohere counts tokens only in a response header: no usage from the body.
    hc = BedrockProvider().embeddings_response(200, "application/json", {"input": ["a", "b"]},
                                              backend("bedrock", COHERE, options=AWS))
    data = orjson.loads(run(hc, b'{"embeddings": [[1.0], [2.0]], "id": "x"}') or b"")
    assert [d["embedding"] for d in data["data"]] == [[1.0], [2.0]] and hc.usage is None
    err = BedrockProvider().embeddings_response(400, "application/json", {"input": "a"}, b)
    body = orjson.loads(run(err, b'{"message": "Malformed input request"}') or b"")
    assert body["error"]["message"] == "Malformed input request"
    assert body["error"]["type"] == "invalid_request_error"


# --- end to end against the simulators -----------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def sims() -> AsyncIterator[dict[str, SimRunner]]:
    runners = {
        "openai": await start_sim("openai", "oai", "127.0.0.1", 0, FAST, require_key="sk-up"),
        "azure_openai": await start_sim("azure_openai", "az", "127.0.0.1", 0, FAST,
                                        require_key="az-key"),
        "vllm": await start_sim("vllm", "vl", "127.0.0.1", 0, FAST),
        "bedrock": await start_sim("bedrock", "bed", "127.0.0.1", 0, FAST),
    }
    yield runners
    for r in runners.values():
        await r.cleanup()


def _sim_backend(sims: dict[str, SimRunner], kind: str, model: str) -> BackendInfo:
    sim = sims[kind]
    return backend(kind, model, api_key={"openai": "sk-up", "azure_openai": "az-key"}.get(
        kind, ""), options={**AZ_OPTS, **AWS}, authority=f"127.0.0.1:{sim.port}".encode())


async def _exchange(sim: SimRunner, path: bytes, body: bytes, headers: Any,
                    respond: Any) -> tuple[int, bytes]:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        r = await http.post(path.decode(), content=body,
                            headers=[(k, v.decode()) for k, v in headers])
    handler = respond(r.status_code, r.headers["content-type"])
    out = run(handler, r.content)
    return r.status_code, r.content if out is None else out


@pytest.mark.parametrize(("kind", "model"), [("openai", "text-embedding-3-small"),
                                             ("azure_openai", "embed-dep"),
                                             ("vllm", "bge-small"),
                                             ("bedrock", TITAN)])
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_through_adapter_and_sim(
    sims: dict[str, SimRunner], kind: str, model: str, encoding: str
) -> None:
    adapter: Any = PROVIDERS[kind]
    b = _sim_backend(sims, kind, model)
    req = {"model": "alias", "input": "switchyard embeds text", "encoding_format": encoding}
    path, body, headers = adapter.embeddings_request(req, b)
    status, out = await _exchange(
        sims[kind], path, body, headers,
        lambda s, ct: adapter.embeddings_response(s, ct, req, b))
    assert status == 200, out
    resp = orjson.loads(out)
    vec = resp["data"][0]["embedding"]
    if encoding == "base64":
        raw = base64.b64decode(vec)
        vec = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert isinstance(vec, list) and len(vec) > 0 and all(isinstance(x, float) for x in vec)
    assert resp["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(("kind", "model"), [("openai", "gpt-4o-mini"),
                                             ("azure_openai", "chat-dep"),
                                             ("vllm", "meta-llama/Llama-3.1-8B")])
async def test_chat_through_adapter_and_sim(
    sims: dict[str, SimRunner], kind: str, model: str
) -> None:
    adapter = PROVIDERS[kind]
    b = _sim_backend(sims, kind, model)
    path, body, headers = adapter.request(CHAT, b)
    status, out = await _exchange(sims[kind], path, body, headers,
                                  lambda s, ct: adapter.response(s, ct, CHAT, b))
    assert status == 200, out
    completion = ChatCompletion.model_validate_json(out)
    assert completion.model == CHAT["model"]  # the alias the client asked for
    assert "hello there" in (completion.choices[0].message.content or "")
