"""`/v1/messages` 400s through real Envoy name the field, in the Anthropic error schema."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.integration.conftest import CLIENT_KEY, RunningGateway


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "claude-sim", "max_tokens": 8, "messages": [{"role": "user"}]},
     "messages.0.content"),
    ({"model": "claude-sim", "max_tokens": "8", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
])
def test_messages_400_names_the_field(gateway: RunningGateway, body: dict[str, object],
                                      field: str) -> None:
    r = httpx.post(gateway.url + "/v1/messages", json=body, timeout=20,
                   headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(field + ": ")


def test_anthropic_sdk_reads_the_field(gateway: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ei:
        client.messages.create(model="claude-sim", max_tokens=8,
                               messages=[{"role": "system", "content": "x"}])  # type: ignore[list-item,misc]
    assert "messages.0.role" in str(ei.value)
