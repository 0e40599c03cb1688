"""What `python -m bench.fuzz` found (issue 12): wrong types where a field was trusted. Each
used to raise TypeError/AttributeError outside the designed error path (a request's 400 became
ext_proc's 503; a garbled usage object could break cost accounting)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ext_proc import route
from ext_proc.ingress import INGRESS
from ext_proc.providers.base import translated
from ext_proc.select.candidates import estimate_tokens
from ext_proc.translate import anthropic, anthropic_messages, bedrock, gemini
from ext_proc.translate.canonical import TranslationError, Usage, cache_usage, usage_from
from switchyard.contract import MESSAGES_PATH

USER = [{"role": "user", "content": "hi"}]


def test_messages_effort_of_the_wrong_type_is_a_400() -> None:
    body = {"model": "m", "max_tokens": 8, "messages": USER, "output_config": {"effort": []}}
    r = route.parse(INGRESS[MESSAGES_PATH], orjson.dumps(body))
    assert isinstance(r, route.Reject) and (r.status, r.param) == (400, "output_config.effort")


@pytest.mark.parametrize("translate", [
    lambda req: anthropic.request_from_openai(req, "claude"),
    gemini.request_from_openai,
])
def test_reasoning_effort_of_the_wrong_type_is_a_translation_error(translate: Any) -> None:
    with pytest.raises(TranslationError) as ei:
        translate({"model": "m", "messages": USER, "reasoning_effort": ["high"]})
    assert ei.value.param == "reasoning_effort"


def test_bedrock_tool_choice_name_of_the_wrong_type() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    req = {"model": "m", "messages": USER, "tools": [tool],
           "tool_choice": {"type": "function", "function": {"name": ["f"]}}}
    with pytest.raises(TranslationError):
        bedrock.request_from_openai(req, "anthropic.claude")


@pytest.mark.parametrize("messages", ["x", [1, "a"], None, {"role": "user"}])
def test_token_estimate_ignores_messages_it_cannot_read(messages: Any) -> None:
    assert estimate_tokens({"model": "m", "input": "x", "messages": messages}) == 0


@pytest.mark.parametrize("value", ["5", [1], {"a": 1}, True, -3, 2**64 - 1, 1.5])
def test_garbled_token_counts_count_as_zero(value: Any) -> None:
    keys = ("input_tokens", "output_tokens", "cache_read_input_tokens",
            "cache_creation_input_tokens")
    assert cache_usage({k: value for k in keys}, *keys) == Usage(0, 0, 0)
    assert usage_from({"prompt_tokens": value, "completion_tokens": 2,
                       "prompt_tokens_details": {"cached_tokens": value}}) == Usage(0, 2)
    assert gemini.usage_of({"usageMetadata": {"promptTokenCount": value,
                                              "candidatesTokenCount": 1}}) == Usage(0, 1)


def test_anthropic_message_with_wrong_types_still_translates() -> None:
    resp = {"id": "msg_1", "content": True, "stop_reason": ["end_turn"],
            "usage": {"input_tokens": 2**64 - 1, "output_tokens": 2**64 - 1}}
    out = orjson.loads(anthropic.response_to_openai(resp, "alias"))
    assert out["choices"][0]["finish_reason"] == "stop"
    resp = {"content": [{"type": "text", "text": {"x": 1}}, {"type": "thinking", "thinking": 5},
                        {"type": "text", "text": "ok"}]}
    out = orjson.loads(anthropic.response_to_openai(resp, "alias"))
    assert out["choices"][0]["message"]["content"] == "ok"


def test_gemini_response_with_wrong_types_still_translates() -> None:
    resp = {"candidates": [{"index": 2**70, "finishReason": {"r": 1},
                            "content": {"parts": True}}]}
    out = orjson.loads(gemini.response_to_openai(resp, "alias"))
    assert out["choices"][0]["index"] == 0
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("body", "ok"), [
    ({"embeddings": [1, {"values": [0.5]}]}, True),
    ({"embeddings": True}, True),
    ({"embeddings": [{"values": "abc"}]}, False),
    ({"embeddings": [{"values": [1, "x"]}]}, False),
    ([1, 2], False),
])
def test_gemini_embeddings_with_wrong_types(body: Any, ok: bool) -> None:
    if ok:
        out = orjson.loads(gemini.embeddings_response(orjson.dumps(body), "e", False))
        assert out["object"] == "list"
    else:
        with pytest.raises(ValueError):
            gemini.embeddings_response(orjson.dumps(body), "e", False)


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"5", b"null"])
def test_an_answer_that_is_not_an_object_is_a_value_error(body: bytes) -> None:
    """ValueError is the designed failure of a buffered handler: respond.py's 502."""
    handler = translated(lambda data: b"{}", lambda data: None)
    handler.feed(body)
    with pytest.raises(ValueError):
        handler.finish()
    with pytest.raises(ValueError):
        anthropic_messages.response_from_openai(orjson.loads(body), "m")
