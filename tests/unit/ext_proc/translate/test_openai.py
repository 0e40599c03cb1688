"""OpenAI same-schema pass-through: request rewrite, usage, stream relay, error bodies."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from ext_proc.translate.canonical import (
    TranslationError,
    Usage,
    client_wants_usage,
    error_body,
    error_event,
)
from ext_proc.translate.openai import (
    StreamRelay,
    request_to_backend,
    rewrite_model,
    usage_of,
)
from switchyard.framing.sse import SSEParser


def _chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    obj = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
USAGE_FRAME = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": USAGE,
        }
    )
    + b"\n\n"
)
BODY_FRAMES = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hel"}),
    # Content mentioning "usage" in quotes must not be mistaken for a usage chunk.
    _chunk({"content": 'lo "usage"'}),
    b": comment frames pass through too\n\n",
    _chunk({}, "stop"),
]
DONE = b"data: [DONE]\n\n"
STREAM = b"".join(BODY_FRAMES) + USAGE_FRAME + DONE


def relay(stream: bytes, wants_usage: bool, cuts: list[int]) -> tuple[bytes, StreamRelay]:
    r = StreamRelay(wants_usage)
    out = []
    prev = 0
    for cut in [*sorted(cuts), len(stream)]:
        out.append(r.feed(stream[prev:cut]))
        prev = cut
    out.append(r.finish())
    return b"".join(out), r


# ---------------------------------------------------------------------------- requests


def test_request_model_replaced_and_input_untouched() -> None:
    req = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    body = orjson.loads(request_to_backend(req, "gpt-4o-mini"))
    assert body == {**req, "model": "gpt-4o-mini"}
    assert req["model"] == "fast"
    assert "stream_options" not in body


def test_request_stream_forces_include_usage_keeping_other_options() -> None:
    so = {"include_obfuscation": False}
    req = {"model": "fast", "messages": [], "stream": True, "stream_options": so}
    body = orjson.loads(request_to_backend(req, "up"))
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert so == {"include_obfuscation": False}  # caller's dict not mutated
    assert not client_wants_usage(req)
    assert client_wants_usage({"stream_options": {"include_usage": True}})


def test_request_stream_without_options() -> None:
    body = orjson.loads(request_to_backend({"model": "a", "stream": True}, "b"))
    assert body["stream_options"] == {"include_usage": True}


def test_usage_of() -> None:
    assert usage_of({"usage": USAGE}) == Usage(12, 3)
    assert usage_of({"usage": None}) is None
    assert usage_of({}) is None
    assert usage_of({"usage": {"prompt_tokens": 5}}) == Usage(5, 0)


def test_rewrite_model() -> None:
    resp = {"model": "gpt-4o-2024-08-06"}
    rewrite_model(resp, "fast")
    assert resp == {"model": "fast"}


# ------------------------------------------------------------------------------ errors


def test_translation_error_attributes() -> None:
    e = TranslationError("bad n", param="n")
    assert (e.message, e.param, e.status, e.code) == ("bad n", "n", 400, None)
    assert orjson.loads(e.body()) == {
        "error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": None}
    }


def test_error_body_parsed_by_openai_sdk() -> None:
    body = error_body("no such model", "invalid_request_error", "model_not_found", "model")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=body, headers={"content-type": "application/json"})

    # Typed Any: newer openai releases annotate http_client as httpx2.Client but accept httpx.
    http_client: Any = httpx.Client(transport=httpx.MockTransport(handler))
    client = openai.OpenAI(
        api_key="k", base_url="http://gw/v1", max_retries=0, http_client=http_client
    )
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ei.value.code == "model_not_found"
    assert ei.value.param == "model"
    assert ei.value.type == "invalid_request_error"
    assert "no such model" in ei.value.message


def test_error_event_frames() -> None:
    events = SSEParser().feed(error_event("boom", "api_error", "x"))
    assert [e.data for e in events][-1] == b"[DONE]"
    assert orjson.loads(events[0].data)["error"]["message"] == "boom"


# ------------------------------------------------------------------------------ relay


def test_relay_client_wants_usage_is_byte_identical() -> None:
    out, r = relay(STREAM, True, [])
    assert out == STREAM
    assert r.usage == Usage(12, 3)
    assert r.saw_done
    assert r.error is None


def test_relay_strips_injected_usage_chunk() -> None:
    out, r = relay(STREAM, False, [])
    assert out == b"".join(BODY_FRAMES) + DONE
    assert r.usage == Usage(12, 3)
    assert r.saw_done
    for ev in SSEParser().feed(out):
        if ev.data != b"[DONE]":
            ChatCompletionChunk.model_validate(orjson.loads(ev.data))


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=25), st.booleans())
def test_relay_any_split(cuts: list[int], wants_usage: bool) -> None:
    whole, _ = relay(STREAM, wants_usage, [])
    out, r = relay(STREAM, wants_usage, cuts)
    assert out == whole
    assert r.usage == Usage(12, 3)
    assert r.saw_done


def test_relay_keeps_usage_on_chunks_with_choices() -> None:
    # Servers that put usage on content chunks (continuous usage stats): nothing is dropped.
    frame = _chunk({"content": "x"}, usage=USAGE)
    out, r = relay(frame + DONE, False, [])
    assert out == frame + DONE
    assert r.usage == Usage(12, 3)


def test_relay_unterminated_tail_flushed() -> None:
    stream = _chunk({"content": "x"}) + b"data: [DONE]"
    out, r = relay(stream, False, [])
    assert out == stream
    assert r.saw_done
    out, r = relay(_chunk({"content": "x"}) + USAGE_FRAME[:-2], False, [])
    assert out == _chunk({"content": "x"})
    assert r.usage == Usage(12, 3)


def test_relay_crlf_stream() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")
    out, r = relay(stream, False, [5, 100, 333])
    assert out == b"".join(BODY_FRAMES).replace(b"\n", b"\r\n") + DONE.replace(b"\n", b"\r\n")
    assert r.usage == Usage(12, 3)


def test_relay_records_error() -> None:
    err = b'data: {"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}'
    stream = BODY_FRAMES[1] + err + b"\n\n"
    out, r = relay(stream, False, [3])
    assert out == stream
    assert r.error is not None and r.error["message"] == "overloaded"
    assert not r.saw_done
