"""The vLLM-like engine model (sim/vllm_engine.py) and the simulator's engine mode."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from sim.server import SimOptions, start_sim
from sim.vllm_engine import Engine, EngineConfig, block_hashes, simulate_pool


def _words(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def test_config_from_yaml_shape() -> None:
    cfg = EngineConfig.from_dict({"max_num_seqs": 8, "tpot_ms": {"base": 10, "per_running_seq": 1}})
    assert cfg.max_num_seqs == 8 and cfg.tpot_s(4) == pytest.approx(0.014)
    with pytest.raises(ValueError):
        EngineConfig(max_num_seqs=0)


def test_block_hash_chain_names_the_prefix() -> None:
    a = block_hashes(_words(40), 16)
    b = block_hashes(_words(32) + _words(8, "x"), 16)
    assert len(a) == 2 and a == b[:2]  # 40 tokens: 2 full blocks, both shared
    c = block_hashes(["z", *_words(39)], 16)
    assert c[0] != a[0] and c[1] != a[1]  # a different first block changes every later hash


def test_single_request_timing_is_prefill_then_decode() -> None:
    cfg = EngineConfig(prefill_tokens_per_s=1000, tpot_base_ms=10, tpot_per_seq_ms=0)
    e = Engine(cfg)
    seq = e.submit(_words(500), 11, now=0.0)
    end = e.run_until_idle(0.0)
    assert seq.ttft == pytest.approx(0.5)  # 500 tokens at 1000/s
    assert seq.tpot == pytest.approx(0.010)
    assert end == pytest.approx(0.5 + 10 * 0.010)
    assert e.num_running == 0 and e.kv_usage == 0.0


def test_tpot_grows_with_running_batch() -> None:
    cfg = EngineConfig(prefill_tokens_per_s=1e9, tpot_base_ms=10, tpot_per_seq_ms=1)
    e = Engine(cfg)
    seqs = [e.submit(_words(16, f"r{i}"), 20, 0.0) for i in range(8)]
    e.run_until_idle()
    assert all(s.tpot == pytest.approx(0.018) for s in seqs)


def test_max_num_seqs_queues_the_rest() -> None:
    cfg = EngineConfig(max_num_seqs=2, prefill_tokens_per_s=1e9, tpot_base_ms=10,
                       tpot_per_seq_ms=0)
    e = Engine(cfg)
    seqs = [e.submit(_words(16, f"r{i}"), 5, 0.0) for i in range(4)]
    end = e.start_step(0.0)
    assert end is not None and e.num_running == 0 and e.num_waiting == 2
    e.finish_step()
    assert e.num_running == 2 and e.num_waiting == 2
    e.run_until_idle(end)
    assert seqs[2].ttft > seqs[0].ttft + 0.03  # waited for a slot


def test_prefix_cache_shortens_prefill_and_counts_hits() -> None:
    cfg = EngineConfig(prefill_tokens_per_s=1000, block_size=16)
    e = Engine(cfg)
    system = _words(800, "sys")
    first = e.submit(system + _words(20, "a"), 2, 0.0)
    t = e.run_until_idle(0.0)
    second = e.submit(system + _words(20, "b"), 2, t)
    e.run_until_idle(t)
    assert first.cached_tokens == 0 and second.cached_tokens == 800
    assert second.ttft < first.ttft / 10
    assert e.prefix_queries == 1640 and e.prefix_hits == 800
    off = Engine(EngineConfig(prefill_tokens_per_s=1000, prefix_cache=False))
    a = off.submit(system + _words(20, "a"), 2, 0.0)
    t = off.run_until_idle()
    b = off.submit(system + _words(20, "b"), 2, t)
    off.run_until_idle(t)
    assert b.cached_tokens == 0 and b.ttft == pytest.approx(a.ttft)


def test_kv_blocks_limit_admission_and_lru_eviction() -> None:
    cfg = EngineConfig(kv_blocks=10, block_size=16, prefill_tokens_per_s=1e9)
    e = Engine(cfg)
    a = e.submit(_words(64, "a"), 16, 0.0)  # 5 blocks (4 prompt + 1 output)
    b = e.submit(_words(64, "b"), 16, 0.0)  # 5 blocks
    c = e.submit(_words(64, "c"), 16, 0.0)  # must wait
    e.start_step(0.0)
    e.finish_step()
    assert e.num_running == 2 and e.num_waiting == 1 and e.kv_usage == 1.0
    e.run_until_idle(1.0)
    assert a.done and b.done and c.done and c.ttft > a.ttft
    assert e.kv_usage == 0.0


def test_prometheus_uses_vllm_names() -> None:
    e = Engine(EngineConfig())
    e.submit(_words(100), 3, 0.0)
    e.start_step(0.0)
    e.finish_step()
    text = e.prometheus("m")
    for name in ("num_requests_waiting", "num_requests_running", "kv_cache_usage_perc",
                 "prefix_cache_hits_total", "prefix_cache_queries_total",
                 "time_to_first_token_seconds_bucket", "time_per_output_token_seconds_count"):
        assert f"vllm:{name}{{" in text
    assert 'vllm:num_requests_running{model_name="m"} 1.0' in text


def test_deterministic() -> None:
    reqs = [(i * 0.01, 300 + i % 7 * 50, 20 + i % 5, i % 3) for i in range(300)]
    a = [(s.ttft, s.tpot) for s in simulate_pool(EngineConfig(), reqs, 2)]
    b = [(s.ttft, s.tpot) for s in simulate_pool(EngineConfig(), reqs, 2)]
    assert a == b


async def test_simulator_engine_mode_streams_and_reports_metrics() -> None:
    cfg = EngineConfig(prefill_tokens_per_s=20000, tpot_base_ms=2, tpot_per_seq_ms=0.1)
    runner = await start_sim("vllm", "pool", "127.0.0.1", 0, SimOptions(), engine=cfg)
    try:
        system = " ".join(_words(400, "sys"))
        async with httpx.AsyncClient(base_url=runner.base_url) as client:
            async def one(i: int, stream: bool) -> httpx.Response:
                return await client.post("/v1/chat/completions", json={
                    "model": "m", "stream": stream, "max_tokens": 10,
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": f"question {i}"}]})
            first = await one(0, False)
            assert first.status_code == 200
            rs = await asyncio.gather(*(one(i, i % 2 == 0) for i in range(1, 9)))
            assert all(r.status_code == 200 for r in rs)
            assert rs[1].text.rstrip().endswith("data: [DONE]")
            cached = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
                      for r in rs if not r.text.startswith("data:")]
            assert cached and min(cached) >= 384
            text = (await client.get("/metrics")).text
            hits = float(re.search(r"vllm:prefix_cache_hits_total\{[^}]*\} (\S+)", text)[1])
            assert hits >= 8 * 384 - 1
            # The engine's own timing of each finished request (9 so far): the first missed
            # the prefix cache, the rest read the system prompt from it.
            served = (await client.get("/_sim/engine")).json()
            assert len(served) == 9
            assert served[0]["cached_tokens"] == 0 and served[0]["prompt_tokens"] >= 400
            assert all(r["cached_tokens"] >= 384 for r in served[1:])
            assert all(r["ttft_s"] > 0 for r in served)
            # An uncached prefill of ~400 tokens at 20,000 tokens/s takes >= 20 ms.
            assert served[0]["ttft_s"] >= 0.02
            runner.state.set_options(runner.state.options.patched({"metrics_down": True}))
            assert (await client.get("/metrics")).status_code == 503
    finally:
        await runner.cleanup()
