"""Response handling as plain functions: which attempt answered, errors in the client's
schema, and the usage record's cost."""

from __future__ import annotations

import orjson

from ext_proc import respond
from ext_proc.ingress import INGRESS
from ext_proc.state import Attempt, RequestState
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import Usage
from ext_proc.usage import cost_usd
from switchyard.contract import ANSWERED_BY_HEADER, CHAT_PATH, MESSAGES_PATH
from switchyard.framing.sse import SSEParser

_P = ProviderInfo(name="p", kind="openai", authority=b"h", path_prefix="", api_key="",
                  headers=(), options={})
_C = ProviderInfo(name="c", kind="anthropic", authority=b"h", path_prefix="", api_key="",
                  headers=(), options={})


def _b(name: str, p: ProviderInfo = _P) -> BackendInfo:
    return BackendInfo(cluster=name, provider=p, model=name, price_input=1.0,
                       price_output=2.0, price_cached_input=0.25, context_window=0,
                       label=f"{p.name}/{name}")


class _Broken:
    """A handler whose provider sent bytes it cannot translate."""

    rewrites = True
    content_type = b"text/event-stream"
    usage = None

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming

    def feed(self, chunk: bytes) -> bytes:
        raise ValueError("garbled")

    def finish(self) -> bytes:
        return b""


def _state(path: str, streaming: bool) -> RequestState:
    st = RequestState("r1")
    st.ingress = INGRESS[path]
    st.handler = _Broken(streaming)
    return st


def test_untranslatable_buffered_answer_is_a_502_in_the_client_schema() -> None:
    st = _state(MESSAGES_PATH, streaming=False)
    out = respond.on_body(st, b"{", end_of_stream=True)
    assert dict(out.set_headers)[":status"] == b"502"
    assert out.body is not None
    body = orjson.loads(out.body)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    st = _state(CHAT_PATH, streaming=False)
    out = respond.on_body(st, b"{", end_of_stream=True)
    assert out.body is not None
    assert orjson.loads(out.body)["error"]["code"] == "bad_upstream_response"


def test_same_schema_answer_that_is_not_json_is_a_502_not_relayed() -> None:
    """A same-schema success is relayed as it came (only `model` renamed), but its body is
    parsed for usage anyway: one that is not a JSON object ends as the documented 502."""
    from ext_proc.providers.base import same_schema
    from ext_proc.translate import openai as openai_schema

    for model, alias in (("gpt-x", "gpt-x"), ("gpt-x", "my-alias")):  # relayed / renamed
        for garbage in (b"<html>502 Bad Gateway</html>", b'{"id": "chatcmpl-1", "cho',
                        b"[1, 2]", b""):
            st = RequestState("r1")
            st.ingress = INGRESS[CHAT_PATH]
            st.handler = same_schema(openai_schema.usage_of, alias, _b(model))
            out = respond.on_body(st, garbage, end_of_stream=True)
            assert dict(out.set_headers)[":status"] == b"502", garbage
            assert out.body is not None
            assert orjson.loads(out.body)["error"]["code"] == "bad_upstream_response"
            assert st.status == 502
        st = RequestState("r2")
        st.ingress = INGRESS[CHAT_PATH]
        st.handler = same_schema(openai_schema.usage_of, alias, _b(model))
        good = orjson.dumps({"id": "chatcmpl-2", "model": model, "choices": [],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
        out = respond.on_body(st, good, end_of_stream=True)
        assert not out.set_headers
        if alias == model:
            assert out.body is None  # relayed untouched
        else:
            assert out.body is not None and orjson.loads(out.body)["model"] == alias
        assert st.handler.usage is not None and st.handler.usage.prompt == 3


def test_untranslatable_stream_ends_with_one_error_event_in_the_ingress_format() -> None:
    for path, event in ((CHAT_PATH, None), (MESSAGES_PATH, "error")):
        st = _state(path, streaming=True)
        out = respond.on_body(st, b"data: {garbage\n\n", end_of_stream=False)
        assert out.body is not None
        events = SSEParser().feed(out.body)
        assert len(events) == 1 and events[0].event == event
        assert b"error" in events[0].data
        # Nothing more reaches the client after the error event.
        assert respond.on_body(st, b"data: more\n\n", end_of_stream=True).body == b""


def test_the_attempt_that_answered_owns_the_response() -> None:
    st = RequestState("r2")
    first, second = _b("first", _C), _b("second")
    st.candidates = (first, second)
    st.attempts = [Attempt(1, first), Attempt(2, second)]
    st.backend = second  # the hedge started last
    reply = respond.on_headers(st, {":status": "200", "content-type": "application/json",
                                    "x-envoy-upstream-service-time": "3",
                                    ANSWERED_BY_HEADER: "first"}, False, BackendHealth())
    assert st.backend is first
    assert dict(reply.set_headers)["x-switchyard-backend"] == b"c/first"
    assert ANSWERED_BY_HEADER in reply.remove_headers
    assert reply.mode is respond.BodyMode.BUFFERED


def test_cost_prices_cached_input_and_counts_reasoning_as_output() -> None:
    b = _b("x")
    assert cost_usd(b, Usage(1000, 500)) == (1000 * 1.0 + 500 * 2.0) / 1e6
    assert cost_usd(b, Usage(1000, 500, cached=800, reasoning=300)) == (
        200 * 1.0 + 800 * 0.25 + 500 * 2.0) / 1e6
    assert cost_usd(None, Usage(1, 1)) == 0.0
