"""A simulated provider's own RPM/TPM quota: 429s with that provider's headers, smooth refill."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from sim.common import SimOptions
from sim.quota import Quota, cost_of
from sim.server import SimRunner, start_sim

CHAT = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest_asyncio.fixture
async def oai() -> AsyncIterator[SimRunner]:
    runner = await start_sim("openai", "quota-oai", "127.0.0.1", 0,
                             SimOptions(ttft_ms=0, tokens_per_s=0, rpm=5))
    yield runner
    await runner.cleanup()


@pytest_asyncio.fixture
async def ant() -> AsyncIterator[SimRunner]:
    runner = await start_sim("anthropic", "quota-ant", "127.0.0.1", 0,
                             SimOptions(ttft_ms=0, tokens_per_s=0, tpm=100))
    yield runner
    await runner.cleanup()


async def test_openai_quota_refuses_over_rpm_with_its_headers(oai: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=oai.base_url) as c:
        statuses = []
        for _ in range(8):
            r = await c.post("/v1/chat/completions", json=CHAT)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert int(r.headers["x-ratelimit-remaining-requests"]) < 5
                assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        health = (await c.get("/_sim/health")).json()
        assert (health["quota_admitted"], health["quota_refused"]) == (5, 3)


async def test_anthropic_quota_counts_tokens_and_sends_anthropic_headers(ant: SimRunner) -> None:
    body = {**CHAT, "max_tokens": 40}
    headers = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=ant.base_url, headers=headers) as c:
        ok = await c.post("/v1/messages", json=body)
        assert ok.status_code == 200
        assert ok.headers["anthropic-ratelimit-tokens-limit"] == "100"
        assert int(ok.headers["anthropic-ratelimit-tokens-remaining"]) <= 60
        await c.post("/v1/messages", json=body)
        refused = await c.post("/v1/messages", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert "anthropic-ratelimit-tokens-reset" in refused.headers


def test_bucket_refills_smoothly_not_in_windows() -> None:
    q = Quota(rpm=60, tpm=None)  # one request per second
    for _ in range(60):
        assert q.take(1) == 0
    wait = q.take(1)
    assert 0.9 < wait <= 1.0  # the next slot is one refill interval away, not a window edge
    time.sleep(0.2)
    assert 0.7 < q.take(1) <= 0.8
    assert cost_of(CHAT) == 0 + 10 and cost_of({"messages": [{"content": "x" * 400}]}) == 356
