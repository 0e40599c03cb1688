"""Issue 10's latency claim in simulated time: the endpoint picker in front of simulated vLLM
engines (bench.pool_affinity_sim), 8 long shared system prompts, Poisson arrivals at ~70% of
round robin's capacity: prefix-cache hit rate >= 2x and p95 TTFT <= 0.7x round robin's on
every hash ring drawn (the ring depends on the endpoints' addresses). Deterministic, so it
does not depend on the CPU the way the real-time test through Envoy does."""

from __future__ import annotations

import json
import random

import pytest

from bench.pool_affinity_sim import run

ENGINE = json.loads('{"max_num_seqs": 32, "kv_blocks": 160, "block_size": 16, '
                    '"prefill_tokens_per_s": 12000, '
                    '"tpot_ms": {"base": 8, "per_running_seq": 0.4}}')
POOL = {"metrics_interval_ms": 200, "saturation": {"max_waiting": 1000, "max_kv_usage": 1.0}}


@pytest.mark.parametrize("ring", range(6))
def test_affinity_beats_round_robin_on_hit_rate_and_p95_ttft(ring: int) -> None:
    ports = random.Random(1000 + ring).sample(range(20000, 60000), 4)
    args = (ports, 30.0, 360, 1 + ring, 1000, 8, POOL, True, 2.0)
    hit_rr, p95_rr = run("round_robin", ENGINE, *args)
    hit_aff, p95_aff = run("score", ENGINE, *args)
    assert hit_aff >= 2 * hit_rr
    assert p95_aff <= 0.7 * p95_rr, (p95_aff, p95_rr)
