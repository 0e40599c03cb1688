"""GPU pools through real Envoy (issue 10): four simulated vLLM replicas per pool, endpoint
picking on live /metrics (override_host), prefix affinity vs round robin, burst spreading,
two gateway replicas agreeing, stale metrics failing open, saturation spill-over.
Bounded: each test runs well under 60 s on 2 cores."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from switchyard.launcher import Gateway
from tests.integration.conftest import free_ports, launch, wait_until

POOLS = ("rr", "aff", "main", "sat")
#: Prefix test: prefill-bound replicas whose KV cache holds about two system prompts; round
#: robin saturates at ~42 req/s of the test's traffic (bench.pool_affinity_sim), so AFF_RATE is
#: ~70% of its capacity.
AFF_ENGINE = ("{max_num_seqs: 32, kv_blocks: 160, block_size: 16, prefill_tokens_per_s: 12000, "
              "tpot_ms: {base: 8, per_running_seq: 0.4}}")
AFF_RATE, AFF_N, AFF_WARMUP_S = 30.0, 600, 2.0
ENGINES = {
    "rr": AFF_ENGINE, "aff": AFF_ENGINE,
    "main": "{max_num_seqs: 64, prefill_tokens_per_s: 50000, tpot_ms: {base: 5, "
            "per_running_seq: 0.1}}",
    "sat": "{max_num_seqs: 2, prefill_tokens_per_s: 50000, tpot_ms: {base: 40, "
           "per_running_seq: 0}}",
}
POOL_SETTINGS = {
    "rr": "{picker: round_robin, metrics_interval_ms: 200}",
    "aff": "{metrics_interval_ms: 200, saturation: {max_waiting: 1000, max_kv_usage: 1.0}}",
    "main": "{metrics_interval_ms: 1000}",
    "sat": "{metrics_interval_ms: 100, saturation: {max_waiting: 1, max_kv_usage: 0.99}}",
}
REPLY = {"rr": 8, "aff": 8, "main": 4, "sat": 12}


def _config(p: dict[str, int], gw: int) -> str:
    providers = []
    for pool in POOLS:
        eps = ", ".join(f'"http://127.0.0.1:{p[f"{pool}{i}"]}"' for i in range(4))
        providers.append(f"""  {pool}:
    kind: vllm
    endpoints: [{eps}]
    pool: {POOL_SETTINGS[pool]}
    cost: {{gpu_hour_usd: 2.5}}
    simulate: {{replicas: 4, reply_tokens: {REPLY[pool]}, engine: {ENGINES[pool]}}}""")
    pr = "\n".join(providers)
    return f"""
listen: {{address: 127.0.0.1, port: {p[f'listen{gw}']}}}
admin: {{address: 127.0.0.1, port: {p[f'admin{gw}']}}}
control_plane: {{address: 127.0.0.1, port: {p[f'xds{gw}']}}}
ext_proc: {{address: 127.0.0.1, port: {p[f'ext_proc{gw}']}, metrics_port: {p[f'metrics{gw}']}}}
envoy_concurrency: 1
providers:
{pr}
  hosted:
    kind: openai
    base_url: "http://127.0.0.1:{p['hosted']}"
    simulate: {{ttft_ms: 5, tokens_per_s: 0, reply_tokens: 4}}
models:
  llama-rr: {{backends: [{{provider: rr, model: llama}}]}}
  llama-aff: {{backends: [{{provider: aff, model: llama}}]}}
  llama: {{backends: [{{provider: main, model: llama}}, {{provider: hosted, model: gpt-4o-mini}}]}}
  llama-sat: {{backends: [{{provider: sat, model: llama}}, {{provider: hosted, model: gpt-4o-mini}}]}}
"""


class PoolGateways:
    def __init__(self, tmp: Path) -> None:
        names = [f"{n}{g}" for g in (1, 2) for n in ("listen", "admin", "xds", "ext_proc",
                                                     "metrics")]
        names += ["hosted"] + [f"{pool}{i}" for pool in POOLS for i in range(4)]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.gws: list[Gateway] = []
        self.tmp = tmp
        #: The affinity-vs-round-robin load's results (run once per module).
        self.affinity: AffinityRun | None = None
        for g in (1, 2):
            d = tmp / f"gw{g}"
            d.mkdir()
            path = d / "gateway.yaml"
            path.write_text(_config(self.ports, g))
            if g == 1:
                self.gws.append(launch(path))
            else:
                gw = Gateway(path, log_dir=d / "logs", with_sim=False)
                gw.start()
                try:
                    gw.wait_ready(timeout=60)
                except Exception:
                    gw.stop()
                    raise
                self.gws.append(gw)

    def url(self, g: int = 1) -> str:
        return self.gws[g - 1].url

    def replica(self, pool: str, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[f'{pool}{i}']}"

    def metrics(self, pool: str, i: int) -> dict[str, float]:
        text = httpx.get(self.replica(pool, i) + "/metrics").text
        out: dict[str, float] = {}
        for m in re.finditer(r"^(vllm:[a-z_]+)\{[^}]*\} (\S+)$", text, re.M):
            out[m[1]] = float(m[2])
        return out

    def served_by(self, pool: str, marker: str) -> list[int]:
        """Which replicas recorded a chat request whose body contains `marker`."""
        hits = []
        for i in range(4):
            for r in httpx.get(self.replica(pool, i) + "/_sim/requests").json():
                if r["path"].endswith("/chat/completions") and marker in str(r["body"]):
                    hits.append(i)
        return hits

    def pools_view(self) -> dict[str, Any]:
        view: dict[str, Any] = httpx.get(
            f"http://127.0.0.1:{self.ports['metrics1']}/pools").json()["pools"]
        return view

    def ledger(self) -> list[dict[str, Any]]:
        """Gateway 1's usage records so far."""
        return [orjson.loads(line) for f in sorted((self.tmp / "gw1" / "logs" / "usage")
                                                   .glob("*.jsonl"))
                for line in f.read_bytes().splitlines() if line]

    def stop(self) -> None:
        for gw in reversed(self.gws):
            gw.stop()


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolGateways]:
    running = PoolGateways(tmp_path_factory.mktemp("pools"))
    yield running
    running.stop()


def _body(model: str, system: str | None, user: str, stream: bool = False) -> dict[str, Any]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    return {"model": model, "messages": msgs, "stream": stream}


async def _ttft(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float | None:
    t0 = time.monotonic()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return None
        first = None
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data:") and '"content"' in line:
                first = time.monotonic() - t0
        return first


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


async def _open_loop(url: str, model: str, systems: list[str], rate: float, n: int,
                     seed: int, warmup_s: float) -> tuple[float, list[float]]:
    """Poisson arrivals at `rate`: when the load started (time.monotonic()) and the TTFTs the
    client saw for requests sent after `warmup_s` (steady state: the first request of each
    prompt misses every cache, whatever the picker)."""
    rng = random.Random(seed)
    order = [rng.randrange(len(systems)) for _ in range(n)]
    starts = list(itertools.accumulate((rng.expovariate(rate) for _ in range(n - 1)),
                                       initial=0.0))
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        t0 = time.monotonic()

        async def one(i: int) -> float | None:
            await asyncio.sleep(max(0.0, t0 + starts[i] - time.monotonic()))
            return await _ttft(client, url, _body(model, systems[order[i]],
                                                  f"question {i} about topic {order[i]}",
                                                  stream=True))
        out = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(x is not None for x in out), "every request must succeed"
    return t0, [x for i, x in enumerate(out) if x is not None and starts[i] >= warmup_s]


def _engine_ttfts(pools: PoolGateways, pool: str, since: float) -> list[float]:
    """TTFT as the pool's four engines timed it (queueing + prefill in the engine's model) for
    requests that reached them after `since` (time.monotonic(), the engines' clock too)."""
    return [r["ttft_s"] for i in range(4)
            for r in httpx.get(pools.replica(pool, i) + "/_sim/engine").json()
            if r["arrival"] >= since]


def _hit_rate(pools: PoolGateways, pool: str) -> float:
    hits = queries = 0.0
    for i in range(4):
        m = pools.metrics(pool, i)
        hits += m["vllm:prefix_cache_hits_total"]
        queries += m["vllm:prefix_cache_queries_total"]
    return hits / queries if queries else 0.0


@dataclass(frozen=True)
class AffinityRun:
    """The affinity-vs-round-robin load's results: prefix-cache hit rates and p95 TTFTs (in
    seconds) as the engines timed them and as the client saw them, after the warm-up."""
    hit_rr: float
    hit_aff: float
    engine_p95_rr: float
    engine_p95_aff: float
    client_p95_rr: float
    client_p95_aff: float


def _affinity_vs_round_robin(pools: PoolGateways) -> AffinityRun:
    """8 long shared system prompts at ~70% of round robin's capacity (Poisson arrivals), the
    same arrival sequence to both pickers at the same time (each pool has its own 4 replicas),
    once per module."""
    if pools.affinity is None:
        systems = [" ".join(f"sys{k}-word{j}" for j in range(1000)) for k in range(8)]

        async def both() -> list[tuple[float, list[float]]]:
            return list(await asyncio.gather(*(
                _open_loop(pools.url(), model, systems, AFF_RATE, AFF_N, 1, AFF_WARMUP_S)
                for model in ("llama-rr", "llama-aff"))))
        (t_rr, rr), (t_aff, aff) = asyncio.run(both())
        pools.affinity = AffinityRun(
            _hit_rate(pools, "rr"), _hit_rate(pools, "aff"),
            _p95(_engine_ttfts(pools, "rr", t_rr + AFF_WARMUP_S)),
            _p95(_engine_ttfts(pools, "aff", t_aff + AFF_WARMUP_S)), _p95(rr), _p95(aff))
    r = pools.affinity
    print(f"prefix hit rate rr={r.hit_rr:.3f} aff={r.hit_aff:.3f}; p95 TTFT at the engines "
          f"rr={r.engine_p95_rr * 1000:.1f} ms aff={r.engine_p95_aff * 1000:.1f} ms "
          f"({r.engine_p95_aff / r.engine_p95_rr:.2f}x); at the client "
          f"rr={r.client_p95_rr * 1000:.1f} ms aff={r.client_p95_aff * 1000:.1f} ms "
          f"({r.client_p95_aff / r.client_p95_rr:.2f}x)")
    return r


def test_prefix_affinity_doubles_the_cache_hit_rate(pools: PoolGateways) -> None:
    """The scored picker keeps a prompt prefix on the replica that has it cached: >= 2x round
    robin's prefix-cache hit rate on the same load."""
    r = _affinity_vs_round_robin(pools)
    assert r.hit_aff >= 2 * r.hit_rr


def test_prefix_affinity_beats_round_robin_on_ttft(pools: PoolGateways) -> None:
    """The issue's latency claim through real Envoy in real time: p95 TTFT <= 0.7x round
    robin's on the same load, as the replicas' engines timed it (queueing + prefill: what the
    picker decides). The client's own TTFT adds the client's and the gateway's CPU time on
    this shared machine, the same for both pickers; it is printed, not asserted: on a
    CPU-saturated machine both client p95s are that machine's own queueing (9.4 vs 7.3 s
    once, with three busy loops on two cores, while the engines measured 1,038 vs 102 ms)."""
    r = _affinity_vs_round_robin(pools)
    assert r.hit_aff >= 2 * r.hit_rr
    assert r.engine_p95_aff <= 0.7 * r.engine_p95_rr


def test_burst_spreads_within_share(pools: PoolGateways) -> None:
    """100 requests at once, scrape interval 1 s: in-flight counts spread them; no replica
    gets more than its share + 25%."""
    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=120, max_keepalive_connections=120)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            rs = await asyncio.gather(*(client.post(
                pools.url() + "/v1/chat/completions",
                json=_body("llama", None, f"burst-{i} hello")) for i in range(100)))
        return [r.status_code for r in rs]
    assert all(s == 200 for s in asyncio.run(burst()))
    counts = Counter(pools.served_by("main", "burst-"))
    print(f"burst spread: {dict(sorted(counts.items()))}")
    assert sum(counts.values()) == 100
    assert max(counts.values()) <= 25 * 1.25


def test_two_gateway_replicas_pick_the_same_endpoint(pools: PoolGateways) -> None:
    """The same prompt prefix through two gateway replicas (no shared state) lands on the
    same endpoint >= 95% of the time."""
    same = 0
    n = 40
    with httpx.Client(timeout=30) as client:
        for k in range(n):
            system = " ".join(f"tenant{k}-ctx{j}" for j in range(200))
            for g in (1, 2):
                r = client.post(pools.url(g) + "/v1/chat/completions",
                                json=_body("llama-aff", system, f"twogw-{k}-via-{g}"))
                assert r.status_code == 200
            a = pools.served_by("aff", f"twogw-{k}-via-1")
            b = pools.served_by("aff", f"twogw-{k}-via-2")
            same += a == b and len(a) == 1
    print(f"same endpoint through two gateways: {same}/{n}")
    assert same >= 0.95 * n


def test_stale_metrics_fail_open(pools: PoolGateways) -> None:
    """One replica's /metrics down: its metrics go stale, the picker falls back to in-flight
    counts for it; >= 99% succeed and nothing answers 503."""
    httpx.put(pools.replica("main", 0) + "/_sim/options",
              json={"metrics_down": True}).raise_for_status()
    try:
        # Stale after 3 scrape intervals (1 s each); the gauge is published by the scrape loop,
        # which a busy machine may run late: poll for it instead of sleeping a fixed 3.5 s.
        ep0 = f"127.0.0.1:{pools.ports['main0']}"
        stale = re.compile(r'switchyard_pool_endpoint_stale\{endpoint="' + re.escape(ep0)
                           + r'",pool="main"\} 1\.0')
        assert wait_until(lambda: stale.search(httpx.get(
            f"http://127.0.0.1:{pools.ports['metrics1']}/metrics").text), timeout=15), \
            "replica 0 should be stale"

        async def load() -> list[int]:
            sem = asyncio.Semaphore(20)
            async with httpx.AsyncClient(timeout=30) as client:
                async def one(i: int) -> int:
                    async with sem:
                        r = await client.post(pools.url() + "/v1/chat/completions",
                                              json=_body("llama", None, f"stale-{i} hi"))
                        return r.status_code
                return await asyncio.gather(*(one(i) for i in range(200)))
        statuses = asyncio.run(load())
        ok = sum(s == 200 for s in statuses)
        print(f"stale metrics: {ok}/200 ok")
        assert ok >= 198 and 503 not in statuses
        assert pools.served_by("main", "stale-").count(0) > 0  # the stale replica still serves
    finally:
        httpx.put(pools.replica("main", 0) + "/_sim/options",
                  json={"metrics_down": False}).raise_for_status()


def test_saturated_pool_spills_batch_keeps_interactive(pools: PoolGateways) -> None:
    """A batch flood saturates the pool: later batch requests spill to the hosted backend,
    interactive requests keep being served by the pool."""
    async def flood() -> tuple[list[str], list[str]]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            async def one(i: int, klass: str, delay: float) -> str:
                await asyncio.sleep(delay)
                r = await client.post(
                    pools.url() + "/v1/chat/completions",
                    json=_body("llama-sat", None, f"sat-{klass}-{i} work"),
                    headers={"x-switchyard-priority": klass})
                assert r.status_code == 200, r.text
                return r.headers.get("x-switchyard-backend", "")
            batch = [one(i, "batch", i * 0.02) for i in range(120)]
            inter = [one(i, "interactive", 1.0 + i * 0.1) for i in range(15)]
            res = await asyncio.gather(*batch, *inter)
        return res[:120], res[120:]
    batch, inter = asyncio.run(flood())
    spilled = sum(b.startswith("hosted/") for b in batch)
    print(f"batch spilled to hosted: {spilled}/120; interactive on pool: "
          f"{sum(b.startswith('sat/') for b in inter)}/15")
    assert spilled >= 30
    assert all(b.startswith("sat/") for b in inter)
    metrics = httpx.get(f"http://127.0.0.1:{pools.ports['metrics1']}/metrics").text
    assert re.search(r'switchyard_pool_spills_total\{klass="batch",pool="sat"\} [1-9]', metrics)


def test_pools_view_and_the_pick_in_the_usage_record(pools: PoolGateways) -> None:
    """GET /pools shows every endpoint's live state and the desired replicas; each request's
    usage record names the endpoint that served it and why it was picked."""
    system = " ".join(f"view-ctx{j}" for j in range(300))
    rids: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        for k in range(6):
            r = client.post(pools.url() + "/v1/chat/completions",
                            json=_body("llama-aff", system, f"view-{k} question"))
            assert r.status_code == 200
            rids[r.headers["x-switchyard-request-id"]] = f"view-{k} "
    view = wait_until(lambda: (v := pools.pools_view()["aff"])["demand"]["mean_input_tokens"]
                      and v, timeout=5)
    print(f"/pools aff: desired {view['desired_replicas']}, demand {view['demand']}")
    eps = view["endpoints"]
    assert {e["address"] for e in eps} == {f"127.0.0.1:{pools.ports[f'aff{i}']}"
                                           for i in range(4)}
    assert all(e["scrape_age_s"] is not None for e in eps) and not view["all_stale"]
    assert max(e["prefix_hit_rate"] or 0.0 for e in eps) > 0.5  # the prefix's replica
    assert sum(e["picks"] for e in eps) >= 6 and view["fail_open_s"] == 0
    assert isinstance(view["desired_replicas"], int) and view["desired_replicas"] >= 1
    assert view["demand"]["requests_per_s"] > 0
    records = wait_until(lambda: (rs := [x for x in pools.ledger() if x["rid"] in rids])
                         and len(rs) == len(rids) and rs, timeout=5)
    for rec in records:
        served = pools.served_by("aff", rids[rec["rid"]])
        assert served and rec["endpoint"] == f"127.0.0.1:{pools.ports[f'aff{served[0]}']}"
        assert rec["pick"] in ("prefix", "score")
    assert sum(rec["pick"] == "prefix" for rec in records) >= 5  # one prefix, one replica
