"""`/v1/messages` validation errors name the offending field (issue 12): the Messages error
object has no `param`, so a message without the field path leaves the client guessing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import ErrorResponse

from ext_proc import route
from ext_proc.ingress import INGRESS
from switchyard.contract import MESSAGES_PATH

_USER = {"role": "user", "content": "hi"}
_SCHEMA = {"type": "object", "properties": {}}


def _req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 16, "messages": [_USER]}
    for key, value in fields.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


BAD: list[tuple[dict[str, Any], str]] = [
    (_req(model=None), "model"),
    (_req(model=5), "model"),
    (_req(model=""), "model"),
    (_req(max_tokens=None), "max_tokens"),
    (_req(max_tokens="10"), "max_tokens"),
    (_req(max_tokens=0), "max_tokens"),
    (_req(max_tokens=True), "max_tokens"),
    (_req(messages=None), "messages"),
    (_req(messages=[]), "messages"),
    (_req(messages={"role": "user"}), "messages"),
    (_req(messages=["hi"]), "messages.0"),
    (_req(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
    (_req(messages=[{"role": "user"}]), "messages.0.content"),
    (_req(messages=[_USER, {"role": "assistant"}]), "messages.1.content"),
    (_req(messages=_user(5)), "messages.0.content"),
    (_req(messages=_user([5])), "messages.0.content.0"),
    (_req(messages=_user([{"type": "text", "text": 5}])), "messages.0.content.0.text"),
    (_req(messages=_user([{"type": "image"}])), "messages.0.content.0.source"),
    (_req(messages=_user([{"type": "video"}])), "messages.0.content.0.type"),
    (_req(messages=_user([{"type": "tool_result"}])), "messages.0.content.0.tool_use_id"),
    (_req(system=[{"type": "image"}]), "system.0.type"),
    (_req(system=[{"type": "text", "text": 1}]), "system.0.text"),
    (_req(system=7), "system"),
    (_req(temperature="hot"), "temperature"),
    (_req(top_p=[1]), "top_p"),
    (_req(stream="yes"), "stream"),
    (_req(stop_sequences=[1]), "stop_sequences"),
    (_req(tools={}), "tools"),
    (_req(tools=[1]), "tools.0"),
    (_req(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (_req(tools=[{"input_schema": _SCHEMA}]), "tools.0.name"),
    (_req(tool_choice="auto"), "tool_choice"),
    (_req(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (_req(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (_req(thinking={"type": "enabled", "budget_tokens": "lots"}), "thinking.budget_tokens"),
    (_req(metadata=[]), "metadata"),
    (_req(output_config={"effort": "huge"}), "output_config.effort"),
    (_req(output_format={"type": "xml"}), "output_format"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f for _, f in BAD])
def test_every_validation_error_names_its_field(body: dict[str, Any], field: str) -> None:
    ingress = INGRESS[MESSAGES_PATH]
    r = route.parse(ingress, orjson.dumps(body))
    assert isinstance(r, route.Reject), r
    assert r.status == 400 and r.param == field
    # What envoy.reject sends: the ingress's error body for the Reject.
    out = orjson.loads(ingress.error(r.message, r.type, r.code, r.param))
    ErrorResponse.model_validate(out)
    assert out["type"] == "error"
    assert out["error"]["type"] == "invalid_request_error"
    assert out["error"]["message"].startswith(field + ": "), out["error"]["message"]


def test_a_message_that_names_its_field_already_is_not_prefixed_twice() -> None:
    ingress = INGRESS[MESSAGES_PATH]
    out = orjson.loads(ingress.error("model: too long", "invalid_request_error", None, "model"))
    assert out["error"]["message"] == "model: too long"
    out = orjson.loads(ingress.error("Gateway error", "api_error", None, None))
    assert out["error"]["message"] == "Gateway error"
