"""The Provider and Ingress protocols: per-kind unsupported parameters, each ingress's in-stream
error event, and token usage (cached and reasoning tokens included) through every provider's
response handlers, buffered and streamed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ext_proc.ingress import INGRESS, Ingress
from ext_proc.ingress.anthropic_messages import AnthropicMessages, ToAnthropic
from ext_proc.ingress.embeddings import Embeddings
from ext_proc.ingress.openai_chat import OpenAIChat
from ext_proc.providers import PROVIDERS, EmbeddingsProvider, Provider, Warm, without
from ext_proc.providers.base import ResponseHandler
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import Usage, usage_from
from ext_proc.translate.openai import StreamRelay, usage_of
from switchyard.contract import CHAT_PATH, EMBEDDINGS_PATH, MESSAGES_PATH
from switchyard.framing.eventstream import encode
from switchyard.framing.sse import SSEParser

KINDS = ("openai", "anthropic", "bedrock", "gemini", "vertex", "azure_openai", "vllm", "tgi")
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def backend(kind: str, model: str = "up-model") -> BackendInfo:
    options = {"region": "us-east-1", "aws_access_key_id": "AK", "aws_secret_access_key": "SK",
               "api_version": "2024-10-21", "project": "p", "location": "us-central1"}
    provider = ProviderInfo(name=f"p-{kind}", kind=kind, authority=b"api.example.com",
                            path_prefix="", api_key="key", headers=(), options=options)
    return BackendInfo(cluster="c", provider=provider, model=model, price_input=0.0,
                       price_output=0.0, context_window=128_000, label=f"p-{kind}/{model}")


def run(handler: ResponseHandler, body: bytes, piece: int = 7) -> bytes:
    """Feed `body` in pieces; what the client gets (the body itself when not rewritten)."""
    out = [handler.feed(body[i : i + piece]) for i in range(0, len(body), piece)]
    tail = handler.finish()
    if not handler.rewrites:
        return body
    return b"".join(o for o in out if o) + (tail or b"")


def sse(*objs: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return b"".join(head + b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o))
                    + b"\n\n" for o in objs)


# ------------------------------------------------------------------------- the registries


def test_every_kind_is_a_provider() -> None:
    assert set(PROVIDERS) == set(KINDS)
    for kind in KINDS:
        p: Provider = PROVIDERS[kind]
        assert callable(p.request) and callable(p.response) and callable(p.unsupported)
    assert isinstance(PROVIDERS["vertex"], Warm) and not isinstance(PROVIDERS["openai"], Warm)
    embedders = {k for k in KINDS if isinstance(PROVIDERS[k], EmbeddingsProvider)}
    assert embedders == {"openai", "azure_openai", "vllm", "tgi", "bedrock", "gemini", "vertex"}


def test_ingress_registry() -> None:
    assert isinstance(INGRESS[CHAT_PATH], OpenAIChat)
    assert isinstance(INGRESS[MESSAGES_PATH], AnthropicMessages)
    assert isinstance(INGRESS[EMBEDDINGS_PATH], Embeddings)
    assert INGRESS[EMBEDDINGS_PATH].serves(backend("bedrock"))
    assert not INGRESS[EMBEDDINGS_PATH].serves(backend("anthropic"))


# ------------------------------------------------------------------ unsupported parameters

ASKS = {"logprobs": True, "top_logprobs": 3, "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": 0, "n": 1, "response_format": {"type": "json_object"},
        "logit_bias": {}, "store": False, "service_tier": "flex", "temperature": 0.2}


@pytest.mark.parametrize(("kind", "expected"), [
    ("openai", []), ("vllm", []), ("tgi", []), ("azure_openai", []),
    ("anthropic", ["logprobs", "presence_penalty", "seed", "service_tier", "top_logprobs"]),
    ("bedrock", ["logprobs", "presence_penalty", "response_format", "seed", "service_tier",
                 "top_logprobs"]),
    ("gemini", ["service_tier"]),
    ("vertex", ["service_tier"]),
])
def test_unsupported_per_kind(kind: str, expected: list[str]) -> None:
    """No-op defaults (n=1, a 0 penalty, false, {}) ask for nothing and are not reported."""
    assert PROVIDERS[kind].unsupported({**CHAT, **ASKS}) == expected
    assert PROVIDERS[kind].unsupported(CHAT) == []


def test_without_copies() -> None:
    body = {**CHAT, "seed": 1, "n": 2}
    out = without(body, ["seed", "n", "absent"])
    assert out == CHAT and body["seed"] == 1


# ------------------------------------------------------------------- in-stream error events


def one_event(data: bytes) -> Any:
    events = SSEParser().feed(data)
    assert len(events) == 1, data
    return events[0]


def test_openai_chat_stream_error() -> None:
    ev = one_event(INGRESS[CHAT_PATH].stream_error("upstream died", "api_error", "upstream_x"))
    assert ev.event in (None, "", "message")
    assert orjson.loads(ev.data) == {"error": {"message": "upstream died", "type": "api_error",
                                               "code": "upstream_x", "param": None}}


def test_embeddings_stream_error_is_openai_format() -> None:
    ingress: Ingress = INGRESS[EMBEDDINGS_PATH]
    ev = one_event(ingress.stream_error("boom", "api_error", None))
    assert orjson.loads(ev.data)["error"] == {"message": "boom", "type": "api_error",
                                              "code": None, "param": None}


@pytest.mark.parametrize(("type_", "expected"), [
    ("api_error", "api_error"), ("rate_limit_error", "rate_limit_error"),
    ("overloaded_error", "overloaded_error"),
])
def test_anthropic_messages_stream_error(type_: str, expected: str) -> None:
    ev = one_event(INGRESS[MESSAGES_PATH].stream_error("upstream died", type_, "some_code"))
    assert ev.event == "error"
    assert orjson.loads(ev.data) == {"type": "error",
                                     "error": {"type": expected, "message": "upstream died"}}


def test_stream_error_ends_cleanly_after_other_frames() -> None:
    """Appended after complete frames, it parses as its own event (no torn frame)."""
    body = sse({"choices": []}) + INGRESS[CHAT_PATH].stream_error("x", "api_error", None)
    events = SSEParser().feed(body)
    assert len(events) == 2 and "error" in orjson.loads(events[1].data)


# ------------------------------------------------------------------- usage, kind by kind

OPENAI_USAGE = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 25}}
OPENAI_EXPECTED = Usage(100, 40, cached=64, reasoning=25)
OPENAI_BODY = orjson.dumps({"id": "c", "object": "chat.completion", "model": "up-model",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "hi"}}],
                            "usage": OPENAI_USAGE})
OPENAI_STREAM = sse(
    {"id": "c", "object": "chat.completion.chunk", "model": "up-model",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                  "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "model": "up-model",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "object": "chat.completion.chunk", "model": "up-model", "choices": [],
     "usage": OPENAI_USAGE},
    b"[DONE]",
)


def test_openai_usage_details() -> None:
    assert usage_of({"usage": OPENAI_USAGE}) == OPENAI_EXPECTED
    assert usage_from({"prompt_tokens": 3, "completion_tokens": 2,
                       "prompt_tokens_details": None}) == Usage(3, 2)
    relay = StreamRelay(client_wants_usage=False)
    out = relay.feed(OPENAI_STREAM) + relay.finish()
    assert relay.usage == OPENAI_EXPECTED and b'"usage"' not in out


@pytest.mark.parametrize("kind", ["openai", "azure_openai", "vllm"])
def test_openai_compatible_handlers_usage(kind: str) -> None:
    """Same schema: the body is kept but for `model`, which names the client's alias."""
    p, b = PROVIDERS[kind], backend(kind)
    h = p.response(200, "application/json", CHAT, b)
    assert run(h, OPENAI_BODY) == OPENAI_BODY.replace(b'"up-model"', b'"m"')
    assert h.usage == OPENAI_EXPECTED
    for wants_usage in (False, True):
        req = {**CHAT, "stream": True, "stream_options": {"include_usage": wants_usage}}
        h = p.response(200, "text/event-stream", req, b)
        out = run(h, OPENAI_STREAM, piece=7)
        assert h.streaming and h.usage == OPENAI_EXPECTED
        chunks = [orjson.loads(e.data) for e in SSEParser().feed(out) if e.data != b"[DONE]"]
        assert {c["model"] for c in chunks} == {"m"}
        assert (b'"usage"' in out) is wants_usage


ANTHROPIC_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 80,
                   "cache_creation_input_tokens": 5, "output_tokens": 30}
ANTHROPIC_EXPECTED = Usage(95, 30, cached=80, reasoning=0)
ANTHROPIC_BODY = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                               "model": "up-model", "content": [{"type": "text", "text": "hi"}],
                               "stop_reason": "end_turn", "stop_sequence": None,
                               "usage": ANTHROPIC_USAGE})
ANTHROPIC_STREAM = (
    sse({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "up-model",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}}, event="message_start")
    + sse({"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}}, event="content_block_start")
    + sse({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": "hi"}}, event="content_block_delta")
    + sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    + sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 30}}, event="message_delta")
    + sse({"type": "message_stop"}, event="message_stop")
)


def test_anthropic_handlers_usage() -> None:
    p, b = PROVIDERS["anthropic"], backend("anthropic")
    h = p.response(200, "application/json", CHAT, b)
    out = orjson.loads(run(h, ANTHROPIC_BODY))
    assert h.usage == ANTHROPIC_EXPECTED and usage_from(out["usage"]) == ANTHROPIC_EXPECTED
    h = p.response(200, "text/event-stream", {**CHAT, "stream": True}, b)
    run(h, ANTHROPIC_STREAM)
    assert h.usage == ANTHROPIC_EXPECTED


def test_anthropic_passthrough_usage() -> None:
    """Messages ingress -> Anthropic backend: bytes untouched, usage still read."""
    ingress, b = INGRESS[MESSAGES_PATH], backend("anthropic")
    raw = {"model": "alias", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    path, body, _ = ingress.request({}, raw, b)
    assert path == b"/v1/messages" and orjson.loads(body) == {**raw, "model": "up-model"}
    h = ingress.response(200, "application/json", {}, b)  # no alias known: nothing renamed
    assert not h.rewrites and run(h, ANTHROPIC_BODY) == ANTHROPIC_BODY
    assert h.usage == ANTHROPIC_EXPECTED
    canonical = {"model": "alias"}
    h = ingress.response(200, "application/json", canonical, b)
    assert run(h, ANTHROPIC_BODY) == ANTHROPIC_BODY.replace(b'"up-model"', b'"alias"')
    assert h.usage == ANTHROPIC_EXPECTED
    h = ingress.response(200, "text/event-stream", canonical, b)
    assert h.streaming
    assert run(h, ANTHROPIC_STREAM) == ANTHROPIC_STREAM.replace(b'"up-model"', b'"alias"')
    assert h.usage == ANTHROPIC_EXPECTED


@pytest.mark.parametrize("cut", [3, 4])
def test_anthropic_passthrough_stream_cut_short_ends_with_one_error_event(cut: int) -> None:
    """The upstream stops after `cut` whole frames (or in the middle of the next): the client
    gets those frames and then one `event: error`, never a stream that just stops."""
    ingress, b = INGRESS[MESSAGES_PATH], backend("anthropic")
    frames = ANTHROPIC_STREAM.split(b"\n\n")
    body = b"\n\n".join(frames[:cut]) + b"\n\n" + frames[cut][:10]
    h = ingress.response(200, "text/event-stream", {"model": "alias"}, b)
    out = run(h, body)
    events = SSEParser().feed(out)
    assert [e.event for e in events][:-1] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    ][:cut]
    assert events[-1].event == "error" and [e.event for e in events].count("error") == 1
    assert orjson.loads(events[-1].data) == {"type": "error", "error": {
        "type": "api_error",
        "message": "The upstream provider ended the stream before it was complete"}}
    assert b"message_stop" not in out


def test_messages_ingress_over_openai_backend_keeps_usage() -> None:
    ingress, b = INGRESS[MESSAGES_PATH], backend("openai")
    h = ingress.response(200, "application/json", CHAT, b)
    assert isinstance(h, ToAnthropic)
    msg = orjson.loads(run(h, OPENAI_BODY))
    assert h.usage == OPENAI_EXPECTED
    assert msg["usage"]["input_tokens"] == 36 and msg["usage"]["cache_read_input_tokens"] == 64
    h = ingress.response(200, "text/event-stream", {**CHAT, "stream": True}, b)
    run(h, OPENAI_STREAM)
    assert h.usage == OPENAI_EXPECTED


BEDROCK_USAGE = {"inputTokens": 12, "outputTokens": 9, "totalTokens": 71,
                 "cacheReadInputTokens": 50}
BEDROCK_EXPECTED = Usage(62, 9, cached=50, reasoning=0)


def bedrock_event(event_type: str, payload: dict[str, Any]) -> bytes:
    return encode({":event-type": event_type, ":content-type": "application/json",
                   ":message-type": "event"}, orjson.dumps(payload))


def test_bedrock_handlers_usage() -> None:
    p, b = PROVIDERS["bedrock"], backend("bedrock")
    body = orjson.dumps({"output": {"message": {"role": "assistant",
                                                "content": [{"text": "hi"}]}},
                         "stopReason": "end_turn", "usage": BEDROCK_USAGE})
    h = p.response(200, "application/json", CHAT, b)
    out = orjson.loads(run(h, body))
    assert h.usage == BEDROCK_EXPECTED and usage_from(out["usage"]) == BEDROCK_EXPECTED
    stream = b"".join([
        bedrock_event("messageStart", {"role": "assistant"}),
        bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        bedrock_event("messageStop", {"stopReason": "end_turn"}),
        bedrock_event("metadata", {"usage": BEDROCK_USAGE, "metrics": {"latencyMs": 1}}),
    ])
    h = p.response(200, "application/vnd.amazon.eventstream", {**CHAT, "stream": True}, b)
    run(h, stream)
    assert h.usage == BEDROCK_EXPECTED


GEMINI_USAGE = {"promptTokenCount": 40, "candidatesTokenCount": 6, "thoughtsTokenCount": 14,
                "cachedContentTokenCount": 32, "totalTokenCount": 60}
GEMINI_EXPECTED = Usage(40, 20, cached=32, reasoning=14)


@pytest.mark.parametrize("kind", ["gemini", "vertex"])
def test_gemini_handlers_usage(kind: str) -> None:
    p, b = PROVIDERS[kind], backend(kind)
    cand = {"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP",
            "index": 0}
    body = orjson.dumps({"candidates": [cand], "usageMetadata": GEMINI_USAGE,
                         "modelVersion": "up-model"})
    h = p.response(200, "application/json", CHAT, b)
    out = orjson.loads(run(h, body))
    assert h.usage == GEMINI_EXPECTED and usage_from(out["usage"]) == GEMINI_EXPECTED
    h = p.response(200, "text/event-stream", {**CHAT, "stream": True}, b)
    run(h, sse({"candidates": [{**cand, "finishReason": None}]},
               {"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": GEMINI_USAGE}))
    assert h.usage == GEMINI_EXPECTED
