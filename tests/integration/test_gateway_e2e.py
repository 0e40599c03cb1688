"""End to end through real Envoy, driven with the official openai SDK."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.integration.conftest import ANTHROPIC_KEY, CLIENT_KEY, OPENAI_KEY, RunningGateway

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about gateways please"},
]


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    gateway.sim_clear()
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def _last(gateway: RunningGateway, provider: str) -> dict:
    reqs = gateway.sim_requests(provider)
    assert reqs, f"no request reached the {provider} simulator"
    return reqs[-1]


def test_openai_non_streaming(gateway: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-sim", messages=MESSAGES, max_tokens=20, temperature=0.3)
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == "sim-openai/gpt-4o-mini"
    assert raw.headers["x-switchyard-attempts"] == "1"
    assert resp.choices[0].message.content.startswith("Simulated reply from sim-openai")
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 20
    wire = _last(gateway, "openai")
    assert wire["path"] == "/v1/chat/completions"
    assert wire["body"]["model"] == "gpt-4o-mini"  # renamed to the backend's upstream name
    assert wire["body"]["messages"] == MESSAGES  # same schema: untouched
    assert wire["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert CLIENT_KEY not in str(wire["headers"])
    # Only the opaque request id travels (every attempt of a request needs it).
    assert [h for h in wire["headers"] if h.startswith("x-switchyard")] == ["x-switchyard-rid"]
    assert not any(h.startswith("x-envoy-max-retries") for h in wire["headers"])


def test_openai_streaming(gateway: RunningGateway, client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="gpt-sim", messages=MESSAGES)
    stream = client.chat.completions.create(model="gpt-sim", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The gateway asks upstream for usage, but a client that did not ask gets no usage chunk.
    assert all(c.usage is None for c in chunks)
    assert _last(gateway, "openai")["body"]["stream_options"] == {"include_usage": True}

    with_usage = list(client.chat.completions.create(
        model="gpt-sim", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == full.usage.completion_tokens


def test_anthropic_non_streaming(gateway: RunningGateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sim", messages=MESSAGES, stop=["xyz"], temperature=1.5, top_p=0.9)
    resp = raw.parse()
    assert raw.headers["x-switchyard-backend"] == "sim-anthropic/claude-3-5-haiku-latest"
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.startswith("Simulated reply from sim-anthropic")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    wire = _last(gateway, "anthropic")
    assert wire["path"] == "/v1/messages"
    body = wire["body"]
    assert body["model"] == "claude-3-5-haiku-latest"
    assert body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "Tell me about gateways please"}]
    assert body["max_tokens"] == 4096  # defaulted: Anthropic requires it
    assert body["stop_sequences"] == ["xyz"]
    assert body["temperature"] == 1.0  # clamped to Anthropic's range
    assert body["top_p"] == 0.9
    assert wire["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert wire["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in wire["headers"]


def test_anthropic_streaming(gateway: RunningGateway, client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="claude-sim", messages=MESSAGES, max_tokens=12)
    chunks = list(client.chat.completions.create(
        model="claude-sim", messages=MESSAGES, max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert {c.id for c in chunks} == {chunks[0].id}
    wire = _last(gateway, "anthropic")
    assert wire["body"]["stream"] is True and wire["body"]["max_tokens"] == 12


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models == {"gpt-sim": "openai", "claude-sim": "anthropic"}


def test_models_retrieve(client: openai.OpenAI) -> None:
    """`GET /v1/models/{id}` (Envoy direct responses): the same object the list holds, with a
    real `created` (when the control plane first loaded the model); unknown id -> 404."""
    listed = {m.id: m for m in client.models.list()}
    for alias in ("gpt-sim", "claude-sim"):
        model = client.models.retrieve(alias)
        assert model == listed[alias]
        assert model.id == alias and model.object == "model"
        assert abs(model.created - time.time()) < 24 * 3600, model.created
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.code == "model_not_found" and exc.value.param == "model"


def test_unknown_model_is_404(gateway: RunningGateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    assert gateway.sim_requests("openai") == [] and gateway.sim_requests("anthropic") == []
    # Rejections get their request log line and reject counter too.
    records = [json.loads(ln) for ln in gateway.logs().splitlines() if ln.startswith("{")]
    assert any(r.get("event") == "request" and r.get("model") == "no-such-model"
               and r.get("status") == 404 and r.get("outcome") == "rejected"
               and r.get("code") == "model_not_found" for r in records)
    metrics = httpx.get(f"http://127.0.0.1:{gateway.ports['metrics']}/metrics").text
    assert 'switchyard_rejected_total{reason="model_not_found"}' in metrics


def test_missing_fields_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-sim", messages=[])
    assert exc.value.param == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-sim", messages=[{"content": "no role"}])


def test_malformed_json_is_400(gateway: RunningGateway) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"model": "gpt-sim", ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"[1, 2]")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gateway.url + "/v1/chat/completions")
    assert r.status_code == 400 and "error" in r.json()


def test_unknown_path_is_404_json(gateway: RunningGateway) -> None:
    r = httpx.get(gateway.url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_oversize_body_is_413_json(gateway: RunningGateway) -> None:
    big = b'{"model": "gpt-sim", "messages": [{"role": "user", "content": "' + b"a" * (
        gateway.gateway.cfg.limits.max_request_bytes + 10) + b'"}]}'
    r = httpx.post(gateway.url + "/v1/chat/completions", content=big, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_provider_error_mapped_to_openai_error(gateway: RunningGateway,
                                               client: openai.OpenAI) -> None:
    gateway.sim_options("anthropic", error_rate=1.0, error_status=529)
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="claude-sim", messages=MESSAGES)
        assert exc.value.status_code == 529
        assert exc.value.body["type"] == "api_error"  # type: ignore[index]
        gateway.sim_options("anthropic", error_rate=0.0, rate_limit=True, retry_after_s=2)
        with pytest.raises(openai.RateLimitError) as rl:
            client.chat.completions.create(model="claude-sim", messages=MESSAGES)
        assert rl.value.response.headers["retry-after"] == "2"
        assert rl.value.code == "rate_limit_exceeded"
        # The provider asked for 2 s of quiet: the gateway sheds the next request itself
        # (admission backpressure) instead of sending it, with the remaining wait.
        sent = len(gateway.sim_requests("anthropic"))
        with pytest.raises(openai.RateLimitError) as shed:
            client.chat.completions.create(model="claude-sim", messages=MESSAGES)
        assert "provider rate limit" in shed.value.message
        assert 1 <= int(shed.value.response.headers["retry-after"]) <= 2
        assert len(gateway.sim_requests("anthropic")) == sent
    finally:
        gateway.sim_options("anthropic", error_rate=0.0, rate_limit=False)
        time.sleep(2.1)  # let the provider's retry-after pass for the next tests


def test_request_log_line_and_no_keys_in_logs(gateway: RunningGateway,
                                              client: openai.OpenAI) -> None:
    client.chat.completions.create(model="claude-sim", messages=MESSAGES, max_tokens=5)
    logs = gateway.logs()
    records = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
    line = next(r for r in reversed(records)
                if r.get("event") == "request" and r.get("model") == "claude-sim")
    assert line["backend"] == "sim-anthropic/claude-3-5-haiku-latest"
    assert line["status"] == 200 and line["completion_tokens"] == 5
    assert line["prompt_tokens"] > 0 and line["latency_ms"] > 0 and line["ttft_ms"] is not None
    assert line["cost_usd"] > 0 and line["attempts"] == 1
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, CLIENT_KEY):
        assert secret not in logs
    metrics = httpx.get(f"http://127.0.0.1:{gateway.ports['metrics']}/metrics").text
    assert "switchyard_requests_total" in metrics
    assert OPENAI_KEY not in metrics and ANTHROPIC_KEY not in metrics


@pytest.mark.parametrize("model", ["gpt-sim", "claude-sim"])
def test_large_body_under_limit_is_translated(gateway: RunningGateway, client: openai.OpenAI,
                                              model: str) -> None:
    """Multi-megabyte bodies cross both ext_proc phases (message timeouts and gRPC sizes)."""
    # ~3 MB; gpt-sim has a 128k-token context window, so ~400 KB there.
    text = "lorem ipsum " * (250_000 if model == "claude-sim" else 35_000)
    resp = client.chat.completions.create(model=model, max_tokens=5,
                                          messages=[{"role": "user", "content": text}])
    assert resp.choices[0].message.content
    provider = "openai" if model == "gpt-sim" else "anthropic"
    wire = gateway.sim_requests(provider)[-1]
    sent = wire["body"]["messages"][-1]["content"]
    assert (sent if isinstance(sent, str) else sent[0]["text"]) == text
