"""Every provider kind through real Envoy, driven by the official openai and anthropic SDKs.

One model per provider kind; the simulator records what arrived on the wire, so each test
checks both what the SDK parsed and that the attempt reached the provider in its own schema.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sim.gemini import fake_service_account
from tests.integration.conftest import CLIENT_KEY, free_ports, launch

KINDS = ["openai", "anthropic", "azure_openai", "bedrock", "gemini", "vertex", "vllm", "tgi"]
#: A 1x1 PNG, as clients send images inline.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5"
       "CYII=")
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look something up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}]
ANTHROPIC_TOOLS = [{"name": "lookup", "description": "Look something up",
                    "input_schema": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]


def _provider_block(kind: str, port: int, creds: Path) -> str:
    base = f'kind: {kind}, base_url: "http://127.0.0.1:{port}", simulate: {{ttft_ms: 0, tokens_per_s: 0}}'
    extra = {
        "openai": ', api_key: {value: "sk-openai"}',
        "anthropic": ', api_key: {value: "sk-ant"}',
        "azure_openai": ', api_key: {value: "az-key"}, api_version: "2024-10-21"',
        "bedrock": (', region: us-east-1, aws_access_key_id: {value: AKIDTEST}, '
                    'aws_secret_access_key: {value: "secret"}, unsupported_params: reject'),
        "gemini": ', api_key: {value: "g-key"}',
        "vertex": f', project: sim-project, location: us-central1, credentials_file: "{creds}"',
        "vllm": "",
        "tgi": ', api_key: {value: "tgi-token"}',
    }[kind]
    return "{" + base + extra + "}"


UPSTREAM_MODEL = {
    "openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest",
    "azure_openai": "my-gpt4o-deployment", "bedrock": "anthropic.claude-3-haiku-20240307-v1:0",
    "gemini": "gemini-2.0-flash", "vertex": "gemini-2.0-flash", "vllm": "meta-llama/Llama-3.1-8B",
    "tgi": "tgi",
}
EMBED_MODEL = {"openai": "text-embedding-3-small", "azure_openai": "my-embedding-deployment",
               "bedrock": "amazon.titan-embed-text-v2:0", "gemini": "text-embedding-004"}


class ProvidersGateway:
    def __init__(self, tmp: Path) -> None:
        names = ["listen", "admin", "xds", "ext_proc", "metrics", *KINDS]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        creds = tmp / "vertex-sa.json"
        creds.write_text(json.dumps(fake_service_account(
            f"http://127.0.0.1:{self.ports['vertex']}/token")))
        providers = "\n".join(f"  p-{k}: {_provider_block(k, self.ports[k], creds)}"
                              for k in KINDS)
        models = "\n".join(
            f"  m-{k}:\n    backends:\n      - {{provider: p-{k}, model: \"{UPSTREAM_MODEL[k]}\"}}"
            for k in KINDS)
        models += "\n" + "\n".join(
            f"  e-{k}:\n    backends:\n      - {{provider: p-{k}, model: \"{EMBED_MODEL[k]}\"}}"
            for k in EMBED_MODEL)
        p = self.ports
        config = f"""
listen: {{address: 127.0.0.1, port: {p['listen']}}}
admin: {{address: 127.0.0.1, port: {p['admin']}}}
control_plane: {{address: 127.0.0.1, port: {p['xds']}}}
# TCP between Envoy and ext_proc here (the other suites use the default Unix socket).
ext_proc: {{address: 127.0.0.1, port: {p['ext_proc']}, metrics_port: {p['metrics']}, unix_socket: false}}
envoy_concurrency: 1
providers:
{providers}
models:
{models}
"""
        path = tmp / "providers.yaml"
        path.write_text(config)
        self.gateway = launch(path)
        self.openai = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key=CLIENT_KEY,
                                    max_retries=2, timeout=30)
        self.anthropic = anthropic.Anthropic(base_url=self.gateway.url, api_key=CLIENT_KEY,
                                             max_retries=2, timeout=30)

    def last(self, kind: str) -> dict[str, Any]:
        reqs = httpx.get(f"http://127.0.0.1:{self.ports[kind]}/_sim/requests").json()
        reqs = [r for r in reqs if r["path"] != "/token"]
        assert reqs, f"nothing reached the {kind} simulator"
        return reqs[-1]


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProvidersGateway]:
    gw = ProvidersGateway(tmp_path_factory.mktemp("providers"))
    yield gw
    gw.gateway.stop()


def _assert_wire(pg: ProvidersGateway, kind: str, stream: bool) -> dict[str, Any]:
    """The attempt arrived in the provider's own schema, path and credentials."""
    wire = pg.last(kind)
    path, headers, body = wire["path"], wire["headers"], wire["body"]
    model = UPSTREAM_MODEL[kind]
    if kind in ("openai", "vllm", "tgi"):
        assert path == "/v1/chat/completions" and body["model"] == model
        assert "messages" in body
    elif kind == "azure_openai":
        assert path == f"/openai/deployments/{model}/chat/completions"
        assert "api-version=2024-10-21" in wire["query"] or wire["query"].get("api-version")
        assert headers["api-key"] == "az-key" and "authorization" not in headers
    elif kind == "anthropic":
        assert path == "/v1/messages" and body["model"] == model and "max_tokens" in body
        assert headers["x-api-key"] == "sk-ant"
    elif kind == "bedrock":
        assert path.startswith("/model/") and path.endswith(
            "/converse-stream" if stream else "/converse")
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
        assert "messages" in body and "model" not in body
    elif kind == "gemini":
        assert path == f"/v1beta/models/{model}:" + (
            "streamGenerateContent" if stream else "generateContent")
        assert headers["x-goog-api-key"] == "g-key" and "contents" in body
    elif kind == "vertex":
        assert path == ("/v1/projects/sim-project/locations/us-central1/publishers/google/"
                        f"models/{model}:" + ("streamGenerateContent" if stream
                                              else "generateContent"))
        assert headers["authorization"].startswith("Bearer sim-token")
    if kind == "tgi":
        assert headers["authorization"] == "Bearer tgi-token"
    if kind == "vllm":
        assert "authorization" not in headers
    assert CLIENT_KEY not in json.dumps(headers)
    return wire


MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Describe the gateway in a few words"}]


@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_chat(pg: ProvidersGateway, kind: str) -> None:
    resp = pg.openai.chat.completions.create(model=f"m-{kind}", messages=MESSAGES,  # type: ignore[arg-type]
                                             max_tokens=16)
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    _assert_wire(pg, kind, stream=False)
    chunks = list(pg.openai.chat.completions.create(
        model=f"m-{kind}", messages=MESSAGES, max_tokens=16, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices and
            c.choices[0].finish_reason] in (["stop"], ["length"])
    assert chunks[-1].usage is not None
    _assert_wire(pg, kind, stream=True)


@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_tools(pg: ProvidersGateway, kind: str) -> None:
    ask = [{"role": "user", "content": "Please use tool lookup for switchyard"}]
    resp = pg.openai.chat.completions.create(model=f"m-{kind}", messages=ask,  # type: ignore[arg-type]
                                             tools=TOOLS, tool_choice="required")  # type: ignore[arg-type]
    calls = resp.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "lookup"
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args, dict) and "query" in args
    assert resp.choices[0].finish_reason == "tool_calls"
    _assert_wire(pg, kind, stream=False)
    # Streamed tool-call argument deltas reassemble into the same call.
    chunks = list(pg.openai.chat.completions.create(
        model=f"m-{kind}", messages=ask, tools=TOOLS, tool_choice="required",  # type: ignore[arg-type]
        stream=True))
    streamed = "".join(tc.function.arguments or "" for c in chunks if c.choices
                       for tc in (c.choices[0].delta.tool_calls or []) if tc.function)
    assert json.loads(streamed) == args
    # The tool result goes back in the provider's own schema and yields a text answer.
    follow = [*ask, resp.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": calls[0].id, "content": "Switchyard is a gateway"}]
    answer = pg.openai.chat.completions.create(model=f"m-{kind}", messages=follow,  # type: ignore[arg-type]
                                               tools=TOOLS)  # type: ignore[arg-type]
    assert answer.choices[0].message.content


@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_image(pg: ProvidersGateway, kind: str) -> None:
    msg = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    resp = pg.openai.chat.completions.create(model=f"m-{kind}", messages=msg)  # type: ignore[arg-type]
    assert resp.choices[0].message.content
    wire = json.dumps(_assert_wire(pg, kind, stream=False)["body"])
    assert PNG[:40] in wire or PNG[:40] in base64.b64encode(base64.b64decode(PNG)).decode()


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_sdk_messages(pg: ProvidersGateway, kind: str) -> None:
    msg = pg.anthropic.messages.create(
        model=f"m-{kind}", max_tokens=32, system="Be brief.",
        messages=[{"role": "user", "content": "Describe the gateway in a few words"}])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text  # type: ignore[union-attr]
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens > 0
    _assert_wire(pg, kind, stream=False)
    if kind == "anthropic":  # same schema: passed through untouched, model renamed
        assert pg.last(kind)["body"]["system"] == "Be brief."
    with pg.anthropic.messages.stream(
            model=f"m-{kind}", max_tokens=32,
            messages=[{"role": "user", "content": "Describe the gateway in a few words"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.stop_reason in ("end_turn", "max_tokens")
    _assert_wire(pg, kind, stream=True)


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_sdk_tools_and_image(pg: ProvidersGateway, kind: str) -> None:
    msg = pg.anthropic.messages.create(
        model=f"m-{kind}", max_tokens=64, tools=ANTHROPIC_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "text", "text": "Please use tool lookup on this image"}]}])
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "lookup" and isinstance(uses[0].input, dict)
    assert msg.stop_reason == "tool_use"
    _assert_wire(pg, kind, stream=False)


def test_unsupported_params_dropped_or_rejected(pg: ProvidersGateway) -> None:
    raw = pg.openai.chat.completions.with_raw_response.create(
        model="m-anthropic", messages=MESSAGES, seed=7, logit_bias={"50256": -100},  # type: ignore[arg-type]
        n=1, presence_penalty=0)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-switchyard-dropped-params"] == "logit_bias,seed"
    body = pg.last("anthropic")["body"]
    assert "seed" not in body and "logit_bias" not in body
    plain = pg.openai.chat.completions.with_raw_response.create(
        model="m-anthropic", messages=MESSAGES, seed=None)  # type: ignore[arg-type]
    assert "x-switchyard-dropped-params" not in plain.headers
    with pytest.raises(openai.BadRequestError) as exc:  # p-bedrock: unsupported_params: reject
        pg.openai.chat.completions.create(model="m-bedrock", messages=MESSAGES, seed=7)  # type: ignore[arg-type]
    assert exc.value.param == "seed" and "seed" in exc.value.message


def test_anthropic_ingress_errors(pg: ProvidersGateway) -> None:
    with pytest.raises(anthropic.NotFoundError):
        pg.anthropic.messages.create(model="nope", max_tokens=5,
                                     messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        pg.anthropic.messages.create(model="m-openai", max_tokens=5,
                                     messages=[{"role": "system", "content": "x"}])  # type: ignore[list-item]


@pytest.mark.parametrize("kind", list(EMBED_MODEL))
def test_embeddings(pg: ProvidersGateway, kind: str) -> None:
    resp = pg.openai.embeddings.create(model=f"e-{kind}", input="switchyard embeds text")
    assert len(resp.data) == 1 and len(resp.data[0].embedding) > 0
    assert all(isinstance(x, float) for x in resp.data[0].embedding)
    floats = pg.openai.embeddings.create(model=f"e-{kind}", input="switchyard embeds text",
                                         encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(resp.data[0].embedding, rel=1e-5)


def test_embeddings_unsupported_backend(pg: ProvidersGateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        pg.openai.embeddings.create(model="m-anthropic", input="hello")
    assert exc.value.code == "unsupported_api"
