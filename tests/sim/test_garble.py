"""The `garble_rate` fault: answers (bodies and stream events) corrupted, seeded, repeatable."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import pytest_asyncio

from sim.common import SimOptions, garble
from sim.server import SimRunner, start_sim
from tests.sim.conftest import FAST

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


@pytest_asyncio.fixture(scope="module")
async def garble_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("openai", "garbled", "127.0.0.1", 0, FAST)
    yield runner
    await runner.cleanup()


def test_garble_always_changes_the_bytes_and_is_seeded() -> None:
    data = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert garble(data, random.Random(7)) == garble(data, random.Random(7))
    rng = random.Random(1)
    assert all(garble(data, rng) != data for _ in range(200))
    assert garble(b"", rng)


async def test_full_rate_garbles_every_answer(garble_sim: SimRunner) -> None:
    garble_sim.state.set_options(FAST.patched({"garble_rate": 1.0, "garble_seed": 3}))
    async with httpx.AsyncClient(base_url=garble_sim.base_url) as http:
        bodies = []
        for _ in range(20):
            r = await http.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200
            bodies.append(r.content)
        streams = []
        for _ in range(20):
            r = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
            streams.append(r.content)
    intact = 0
    for body in bodies:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            intact += isinstance(orjson.loads(body).get("choices"), list)
    assert intact < 20  # some corruptions (a flipped bit in a letter) still parse
    assert sum(not s.endswith(b"data: [DONE]\n\n") for s in streams) > 0


async def test_rate_zero_is_untouched_and_rate_is_checked(garble_sim: SimRunner) -> None:
    async with httpx.AsyncClient(base_url=garble_sim.base_url) as http:
        r = await http.post("/v1/chat/completions", json=CHAT)
    assert r.json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="garble_rate"):
        SimOptions(garble_rate=1.5)
