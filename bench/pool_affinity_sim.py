"""Prefix affinity vs round robin in simulated time (issue 10's TTFT claim, without Envoy).

The endpoint picker (`ext_proc.select.pool.PoolPicker`) in front of simulated vLLM engines
(`sim.vllm_engine.Engine`), scraped every `interval` like the gateway does, with the gateway's
own in-flight counts; the same open-loop traffic as tests/integration/test_gpu_pool.py (8 long
shared system prompts, Poisson arrivals at ~70% of round robin's capacity, p95 after a 2 s
warm-up). Each run draws random endpoint addresses, so the hash ring differs as
it does between test runs (free ports). Prints hit rates and p95 TTFT per picker and the
share of runs meeting the issue's bounds (hit rate >= 2x, p95 TTFT <= 0.7x).

    python -m bench.pool_affinity_sim --runs 40
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics

from ext_proc.select.pool import PoolPicker, PoolSettings, prefix_key
from sim.vllm_engine import Engine, EngineConfig


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def arrivals(rate: float, n: int, seed: int, poisson: bool) -> list[float]:
    """Evenly spaced, or a Poisson process (exponential gaps) of the same mean rate."""
    if not poisson:
        return [i / rate for i in range(n)]
    rng = random.Random(seed * 7919 + 1)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def run(picker: str, engine: dict[str, object], ports: list[int], rate: float, n: int,
        seed: int, words: int, reply: int, pool: dict[str, object],
        poisson: bool = False, warmup_s: float = 0.0) -> tuple[float, float]:
    """(prefix hit rate, p95 TTFT s of requests arriving after `warmup_s`) of one picker on
    one load."""
    cfg = EngineConfig.from_dict(dict(engine))
    eps = [f"127.0.0.1:{p}" for p in ports]
    doc = {"endpoints": eps, "picker": picker, **pool}
    pk = PoolPicker("p", PoolSettings.from_json(json.dumps(doc)))
    engines = [Engine(cfg) for _ in eps]
    systems = [" ".join(f"sys{k}-word{j}" for j in range(words)) for k in range(8)]
    rng = random.Random(seed)
    order = [rng.randrange(8) for _ in range(n)]
    interval = pk.settings.metrics_interval_s
    # Events: (time, seq, kind, payload); kinds: 0 step end, 1 scrape, 2 arrival.
    ev: list[tuple[float, int, int, int]] = []
    counter = 0

    def push(t: float, kind: int, payload: int) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(ev, (t, counter, kind, payload))

    for i, at in enumerate(arrivals(rate, n, seed, poisson)):
        push(at, 2, i)
    push(0.0, 1, 0)
    stepping = [False] * len(engines)
    ttfts: list[float] = []
    done = 0
    while ev and done < n:
        t, _, kind, payload = heapq.heappop(ev)
        if kind == 1:
            for e, st in zip(engines, pk.endpoints, strict=True):
                st.observe({"vllm:num_requests_waiting": e.num_waiting,
                            "vllm:num_requests_running": e.num_running,
                            "vllm:kv_cache_usage_perc": e.kv_usage}, t)
            push(t + interval, 1, 0)
            continue
        if kind == 2:
            k = order[payload]
            user = f"question {payload} about topic {k}"
            msgs = [{"role": "system", "content": systems[k]}, {"role": "user", "content": user}]
            key = prefix_key(msgs, pk.settings.prefix_chars)
            pick = pk.pick(key, "interactive", t)
            j = eps.index(pick.endpoints[0])
            tokens = systems[k].split() + user.split()
            engines[j].submit(tokens, reply, t, tag=(payload, j))
            if not stepping[j]:
                end = engines[j].start_step(t)
                if end is not None:
                    stepping[j] = True
                    push(end, 0, j)
            continue
        j = payload
        e = engines[j]
        for seq in e.finish_step():
            if seq.generated == 1 and seq.t_first is not None and seq.arrival >= warmup_s:
                ttfts.append(seq.t_first - seq.arrival)
            if seq.t_done is not None and seq.t_done == t:
                pk.release(eps[j])
                done += 1
        end = e.start_step(t)
        stepping[j] = end is not None
        if end is not None:
            push(end, 0, j)
    hits = sum(e.prefix_hits for e in engines)
    queries = sum(e.prefix_queries for e in engines)
    return hits / queries if queries else 0.0, _p95(ttfts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("--reply", type=int, default=8)
    ap.add_argument("--even", action="store_true",
                    help="evenly spaced arrivals (else Poisson)")
    ap.add_argument("--warmup-s", type=float, default=2.0,
                    help="leave requests arriving before this out of the p95")
    ap.add_argument("--engine", default=json.dumps({
        "max_num_seqs": 32, "kv_blocks": 160, "block_size": 16,
        "prefill_tokens_per_s": 12000, "tpot_ms": {"base": 8, "per_running_seq": 0.4}}))
    ap.add_argument("--pool", default=json.dumps({
        "metrics_interval_ms": 200, "saturation": {"max_waiting": 1000, "max_kv_usage": 1.0}}))
    a = ap.parse_args()
    engine = json.loads(a.engine)
    pool = json.loads(a.pool)
    ok_hit = ok_ttft = 0
    ratios = []
    for r in range(a.runs):
        ports = random.Random(1000 + r).sample(range(20000, 60000), 4)
        h_rr, p_rr = run("round_robin", engine, ports, a.rate, a.n, 1 + r, a.words, a.reply,
                         pool, not a.even, a.warmup_s)
        h_af, p_af = run("score", engine, ports, a.rate, a.n, 1 + r, a.words, a.reply, pool,
                         not a.even, a.warmup_s)
        ok_hit += h_af >= 2 * h_rr
        ok_ttft += p_af <= 0.7 * p_rr
        ratios.append(p_af / p_rr)
        print(f"run {r:2d}: hit rr {h_rr:.2f} aff {h_af:.2f}; p95 TTFT rr {p_rr * 1000:6.1f} "
              f"aff {p_af * 1000:6.1f} ms ({p_af / p_rr:.2f}x)")
    print(f"hit >= 2x: {ok_hit}/{a.runs}; p95 TTFT <= 0.7x: {ok_ttft}/{a.runs}; "
          f"ratio median {statistics.median(ratios):.2f} max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
