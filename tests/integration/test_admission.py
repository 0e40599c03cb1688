"""Admission control end to end (issue 8, "Done when"): real Envoy, real `redis-server`, the
provider simulator with its own quotas, all on loopback. Every test asserts numbers; each is
bounded (a few hundred to a few thousand requests, under a minute on 2 cores).

Load comes from aiohttp in one event loop per phase (`asyncio.run` from a sync test): cheaper
per request than httpx, so the client does not starve the gateway on a small machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from switchyard.launcher import Gateway
from tests.conftest import RedisServer, _free_port
from tests.integration.conftest import free_ports, launch, wait_until

# -- helpers -------------------------------------------------------------------------------------


def _head(p: dict[str, int], extra: str = "") -> str:
    return f"""
listen: {{address: 127.0.0.1, port: {p['listen']}}}
admin: {{address: 127.0.0.1, port: {p['admin']}}}
control_plane: {{address: 127.0.0.1, port: {p['xds']}, status_port: 0}}
ext_proc: {{address: 127.0.0.1, port: {p['ext_proc']}, metrics_port: {p['metrics']}}}
envoy_concurrency: 1
{extra}
"""


def _sim(name: str, port: int, simulate: str = "", limits: str = "") -> str:
    lim = f"\n    limits: {{{limits}}}" if limits else ""
    return f"""
  {name}:
    kind: openai
    base_url: "http://127.0.0.1:{port}"
    simulate: {{ttft_ms: 0, tokens_per_s: 0{', ' + simulate if simulate else ''}}}{lim}"""


def _start(tmp: Path, name: str, extra_ports: list[str], render: Any) -> tuple[Gateway,
                                                                                  dict[str, int]]:
    names = ["listen", "admin", "xds", "ext_proc", "metrics", *extra_ports]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    path = tmp / f"{name}.yaml"
    path.write_text(render(ports))
    return launch(path), ports


def sim_health(port: int) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{port}/_sim/health").json()


def sim_options(port: int, **opts: Any) -> None:
    httpx.put(f"http://127.0.0.1:{port}/_sim/options", json=opts).raise_for_status()


def limits(ports: dict[str, int]) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{ports['metrics']}/limits").json()


@dataclass
class Result:
    status: int
    sent: float  # monotonic, when the request left the client
    done: float
    headers: dict[str, str]
    body: dict[str, Any] | None
    tag: str = ""


def body(model: str, content: str = "x" * 40, max_tokens: int | None = 16) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    return b


async def _post(s: aiohttp.ClientSession, url: str, key: str, payload: dict[str, Any],
                tag: str = "", extra: dict[str, str] | None = None) -> Result:
    t0 = time.monotonic()
    async with s.post(url + "/v1/chat/completions", json=payload,
                      headers={"authorization": f"Bearer {key}", **(extra or {})}) as r:
        raw = await r.read()
        try:
            parsed = await r.json(content_type=None) if raw else None
        except ValueError:
            parsed = None
        return Result(r.status, t0, time.monotonic(), {k.lower(): v for k, v in r.headers.items()},
                      parsed, tag)


def session(limit: int = 1000) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=60))


@dataclass
class Stream:
    """One open-loop arrival process: `rate` requests per second from `start` for `duration`."""

    url: str
    key: str
    payload: dict[str, Any]
    rate: float
    tag: str
    extra: dict[str, str] = field(default_factory=dict)


async def open_loop(streams: list[Stream], duration: float) -> list[Result]:
    """Fire each stream at its rate (fixed spacing, not waiting for answers) for `duration`."""
    out: list[Result] = []
    async with session() as s:
        tasks: list[asyncio.Task[Result]] = []

        async def pace(st: Stream) -> None:
            start = time.monotonic()
            n = 0
            while True:
                at = start + n / st.rate
                if at - start >= duration:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_post(s, st.url, st.key, st.payload, st.tag,
                                                       st.extra)))
                n += 1

        await asyncio.gather(*(pace(st) for st in streams))
        out = list(await asyncio.gather(*tasks))
    return out


def usage_total(r: Result) -> int:
    assert r.body is not None
    u = r.body["usage"]
    return int(u["prompt_tokens"]) + int(u["completion_tokens"])


# -- 1. a burst against a tenant's TPM: exact retry-after, refunds -----------------------------

BIG_OUT = 4000          # reserved output tokens of a "big" request
PROMPT = "x" * 40       # 10 tokens by the gateway's estimate (characters / 4)
BIG_EST = 10 + BIG_OUT  # what admission charges a big request
TPM = 10 * BIG_EST + 100  # fits exactly 10 big requests


def _burst_config(p: dict[str, int]) -> str:
    return _head(p, f"""
tenants:
  alice: {{api_keys: [{{value: "key-alice"}}], limits: {{tpm: {TPM}}}}}
providers:{_sim('sim', p['sim'], 'reply_tokens: 90')}
models:
  m:
    backends: [{{provider: sim, model: m1}}]
""")


@pytest.fixture(scope="module")
def burst_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, int]]]:
    gw, ports = _start(tmp_path_factory.mktemp("burst"), "burst", ["sim"], _burst_config)
    yield gw, ports
    gw.stop()


def test_burst_against_tenant_tpm_exact_retry_after_and_refunds(burst_gw: Any) -> None:
    """200 big requests at once against a TPM that fits 10: at most 10 go upstream, every
    429 says when the 11th would fit (retry-after-ms within 1 s of the bucket's true refill,
    retry-after its ceiling); the 10 use ~100 tokens of their 4k reservation, and the refunds
    let small requests afterwards use >= 90% of the budget."""
    gw, p = burst_gw
    # The admitted ones hold their reservation until the whole burst was decided.
    sim_options(p["sim"], ttft_ms=3000)
    big = body("m", PROMPT, BIG_OUT)

    async def burst() -> list[Result]:
        async with session() as s:
            return list(await asyncio.gather(*(_post(s, gw.url, "key-alice", big)
                                               for _ in range(200))))

    t_start = time.monotonic()
    results = asyncio.run(burst())
    statuses = Counter(r.status for r in results)
    assert statuses[200] <= 10 and statuses[200] + statuses[429] == 200, statuses
    assert statuses[200] >= 9, statuses  # the budget is really used, not refused wholesale
    assert sim_health(p["sim"])["quota_admitted"] == 0  # no sim quota here; nothing refused
    # The bucket after 10 big charges holds TPM - 10 x BIG_EST = 100 tokens; it refills at
    # TPM/60 per second, so the 11th big request fits (BIG_EST - 100) * 60 / TPM after the
    # burst's first admission, less the time that passed until each refusal was decided.
    true_at_start = (BIG_EST - (TPM - 10 * BIG_EST)) * 60 / TPM
    errors = []
    for r in results:
        if r.status != 429:
            continue
        assert r.body is not None and r.body["error"]["code"] == "rate_limit_exceeded"
        assert "tenant 'alice' tokens per minute" in r.body["error"]["message"]
        ms = int(r.headers["retry-after-ms"])
        secs = int(r.headers["retry-after"])
        # decided somewhere between the burst's start and this answer's arrival
        lo, hi = true_at_start - (r.done - t_start), true_at_start
        errors.append(max(lo - ms / 1000, ms / 1000 - hi, 0.0))
        assert lo - 1.0 <= ms / 1000 <= hi + 1.0, (ms, lo, hi)
        assert secs == math.ceil(ms / 1000) and lo - 1.0 <= secs <= hi + 1.0, (secs, lo, hi)
        assert int(r.headers["x-ratelimit-limit-tokens"]) == TPM
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < BIG_EST
    print(f"burst: {dict(statuses)}; retry-after true {true_at_start:.3f}s at the start, "
          f"worst error {max(errors):.3f}s over {len(errors)} 429s, burst "
          f"{max(r.done for r in results) - t_start:.2f}s")

    # The 10 used ~100 tokens each (their answers end ~3 s in): their refunds come back.
    admitted = [r for r in results if r.status == 200]
    big_used = sum(usage_total(r) for r in admitted)
    assert all(usage_total(r) <= 120 for r in admitted)
    sim_options(p["sim"], ttft_ms=0)

    async def smalls() -> tuple[list[Result], float]:
        out: list[Result] = []
        small = body("m", PROMPT, 100)  # reserves 110, uses ~100
        async with session() as s:
            while True:
                batch = await asyncio.gather(*(_post(s, gw.url, "key-alice", small)
                                               for _ in range(4)))
                out += batch
                if any(r.status == 429 for r in batch):
                    return out, time.monotonic()

    small_results, t_end = asyncio.run(smalls())
    small_used = sum(usage_total(r) for r in small_results if r.status == 200)
    # budget: the bucket's capacity plus what it refilled from the burst to the end
    budget = TPM + (t_end - t_start) * TPM / 60
    used = big_used + small_used
    print(f"refunds: big used {big_used}, small used {small_used} "
          f"({sum(r.status == 200 for r in small_results)} requests), budget {budget:.0f}, "
          f"{used / budget:.1%} used")
    assert used >= 0.9 * budget, (used, budget)
    lim = limits(p)["buckets"]["tenant:alice"]["tpm"]
    assert lim["limit"] == TPM and lim["remaining"] < 4 * 110


# -- 2. a spike of 10x a provider quota: priorities, zero provider 429s, spill-over -------------

QUOTA_RPM = 600  # the provider account's quota: 10 requests per second


def _spike_config(p: dict[str, int]) -> str:
    quota = f"rpm: {QUOTA_RPM}"
    return _head(p, f"""
tenants:
  web: {{api_keys: [{{value: "key-web"}}], priority: interactive}}
  etl: {{api_keys: [{{value: "key-etl"}}], priority: batch}}
providers:{_sim('solo', p['solo'], quota, quota)}{_sim('busy', p['busy'], quota, quota)}{
        _sim('roomy', p['roomy'])}
models:
  solo:
    backends: [{{provider: solo, model: s1}}]
  spill:
    backends: [{{provider: busy, model: b1}}, {{provider: roomy, model: r1}}]
""")


@pytest.fixture(scope="module")
def spike_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, int]]]:
    gw, ports = _start(tmp_path_factory.mktemp("spike"), "spike", ["solo", "busy", "roomy"],
                       _spike_config)
    yield gw, ports
    gw.stop()


SPIKE_S = 12.0
RATE = QUOTA_RPM / 60  # the quota per second


def _spike(gw: Gateway, model: str) -> list[Result]:
    """10x the provider's quota for SPIKE_S: interactive 0.4x, batch 9.6x."""
    return asyncio.run(open_loop([
        Stream(gw.url, "key-web", body(model), 0.4 * RATE, "interactive"),
        Stream(gw.url, "key-etl", body(model), 9.6 * RATE, "batch"),
    ], SPIKE_S))


def test_spike_of_10x_provider_quota_sheds_batch_first_and_never_reaches_the_provider(
        spike_gw: Any) -> None:
    gw, p = spike_gw
    results = _spike(gw, "solo")
    by = {t: Counter(r.status for r in results if r.tag == t) for t in ("interactive", "batch")}
    inter, batch = by["interactive"], by["batch"]
    health = sim_health(p["solo"])
    print(f"spike: interactive {dict(inter)}, batch {dict(batch)}, provider {health}")
    # the provider never had to refuse: the gateway held its quota
    assert health["quota_refused"] == 0
    assert inter[200] / sum(inter.values()) >= 0.99
    # batch was shed (by the gateway, as 429 naming the provider's rpm) and interactive not
    assert batch[429] > 0 and set(batch) <= {200, 429}
    shed = [r for r in results if r.tag == "batch" and r.status == 429]
    assert all("provider 'solo' requests per minute" in r.body["error"]["message"]  # type: ignore[index]
               for r in shed)
    # batch may use at most its 70% share of the bucket: what it got is bounded by that plus
    # the refill over the spike
    served = health["quota_admitted"]
    assert served <= QUOTA_RPM + SPIKE_S * RATE + 1
    assert batch[200] <= 0.7 * QUOTA_RPM + SPIKE_S * RATE + 1


def test_spike_overflow_spills_to_a_backend_with_headroom(spike_gw: Any) -> None:
    gw, p = spike_gw
    results = _spike(gw, "spill")
    by = {t: Counter(r.status for r in results if r.tag == t) for t in ("interactive", "batch")}
    busy = sim_health(p["busy"])
    served_roomy = len(httpx.get(f"http://127.0.0.1:{p['roomy']}/_sim/requests").json())
    print(f"spill: {by}, busy {busy}, roomy served {served_roomy}")
    assert busy["quota_refused"] == 0
    # nobody was shed: what the quota'd backend could not take went to the roomy one
    assert set(by["interactive"]) == {200} and set(by["batch"]) == {200}
    assert served_roomy > 0
    assert busy["quota_admitted"] + served_roomy == len(results)
    backends = Counter(r.headers.get("x-switchyard-backend") for r in results)
    assert backends["roomy/r1"] == served_roomy, backends


# -- 3. two gateway replicas sharing one Redis ---------------------------------------------------

FLEET_RPM = 600          # the tenant's limit, fleet-wide: 10 requests per second
FLEET_RATE = FLEET_RPM / 60


@dataclass
class Fleet:
    redis: RedisServer
    gws: list[Gateway]
    ports: list[dict[str, int]]


def _fleet_config(redis_url: str) -> Any:
    def render(p: dict[str, int]) -> str:
        return _head(p, f"""
shared_state: {{redis: {{url: "{redis_url}"}}}}
tenants:
  acme: {{api_keys: [{{value: "key-acme"}}], limits: {{rpm: {FLEET_RPM}}}}}
providers:{_sim('sim', p['sim'])}
models:
  m:
    backends: [{{provider: sim, model: m1}}]
""")
    return render


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    tmp = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(_free_port(), str(tmp))
    redis.start()
    gws: list[Gateway] = []
    ports: list[dict[str, int]] = []
    try:
        for i in range(2):
            gw, p = _start(tmp, f"replica{i}", ["sim"], _fleet_config(redis.url))
            gws.append(gw)
            ports.append(p)
        yield Fleet(redis, gws, ports)
    finally:
        for gw in gws:
            gw.stop()
        redis.stop()


def _fleet_ready(f: Fleet) -> None:
    def ready() -> bool:
        return all((r := limits(p).get("redis")) and r["connected"] and r["live_replicas"] == 2
                   for p in f.ports)
    wait_until(ready, timeout=15, interval=0.1)


async def _drain(f: Fleet) -> None:
    """Empty the fleet bucket (it starts with a whole minute's quota)."""
    async with session(100) as s:
        await asyncio.gather(*(_post(s, f.gws[i % 2].url, "key-acme", body("m"))
                               for i in range(FLEET_RPM + 40)))


def _admitted(results: list[Result], lo: float, hi: float, tag: str | None = None) -> int:
    return sum(1 for r in results if r.status == 200 and lo <= r.sent < hi
               and (tag is None or r.tag == tag))


def _fleet_load(f: Fleet, duration: float, events: dict[float, Any] | None = None
                ) -> tuple[list[Result], float]:
    """2x the fleet limit (each replica offered 1x) for `duration`, with `events` (seconds
    in -> blocking callable, run in a thread) on the way; returns the results and the start."""
    streams = [Stream(gw.url, "key-acme", body("m"), FLEET_RATE, f"r{i}")
               for i, gw in enumerate(f.gws)]

    async def run() -> tuple[list[Result], float]:
        await _drain(f)
        t0 = time.monotonic()

        async def fire() -> None:
            for at, job in sorted((events or {}).items()):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                await asyncio.to_thread(job)

        out, _ = await asyncio.gather(open_loop(streams, duration), fire())
        return out, t0

    return asyncio.run(run())


def test_two_replicas_hold_one_tenant_limit_within_5_percent(fleet: Fleet) -> None:
    """2x load split over two replicas sharing Redis admits the fleet limit, not 2x it.

    The issue asks for 60 s; this runs 24 s of load (the first 8 s settle after the drain:
    on a loaded 2-core machine the replicas' shares took up to ~6 s to converge after the
    drain's burst) to stay inside a CI minute; the window still holds ~160 admissions."""
    _fleet_ready(fleet)
    results, t0 = _fleet_load(fleet, 24.0)
    lo, hi = t0 + 8, t0 + 24
    got = _admitted(results, lo, hi)
    want = FLEET_RATE * (hi - lo)
    per = [_admitted(results, lo, hi, f"r{i}") for i in range(2)]
    statuses = Counter(r.status for r in results)
    print("per second:", [_admitted(results, t0 + i, t0 + i + 1) for i in range(24)])
    print(f"fleet: admitted {got} in {hi - lo:.0f}s (limit {want:.0f}), per replica {per}, "
          f"{dict(statuses)}")
    assert set(statuses) <= {200, 429}
    assert abs(got - want) <= 0.05 * want, (got, want)
    assert min(per) > 0.25 * got  # both replicas get a fair part, not one starving


def test_redis_killed_then_back_replicas_fall_back_to_their_share_and_reconverge(
        fleet: Fleet) -> None:
    """Redis dies mid-run: no 5xx, each replica admits its share (limit / 2); Redis comes
    back (empty, as after a restart): the fleet converges on the limit again."""
    _fleet_ready(fleet)
    kill_at, back_at, end = 3.0, 15.0, 30.0
    results, t0 = _fleet_load(fleet, end, {kill_at: fleet.redis.stop,
                                           back_at: fleet.redis.start})
    statuses = Counter(r.status for r in results)
    assert set(statuses) <= {200, 429}, statuses
    # outage: after a second to notice, each replica on its own at half the limit
    lo, hi = t0 + kill_at + 1, t0 + back_at
    per = [_admitted(results, lo, hi, f"r{i}") for i in range(2)]
    share = FLEET_RATE / 2 * (hi - lo)
    print(f"outage: per replica {per} (share {share:.0f} each)")
    for n in per:
        assert abs(n - share) <= 0.1 * share + 2, (per, share)
    # Redis back: converged again within a few seconds
    lo, hi = t0 + back_at + 5, t0 + end
    got = _admitted(results, lo, hi)
    want = FLEET_RATE * (hi - lo)
    print(f"back: admitted {got} in {hi - lo:.0f}s (limit {want:.0f}), {dict(statuses)}")
    assert abs(got - want) <= 0.05 * want + 2, (got, want)
    wait_until(lambda: all(limits(p)["redis"]["connected"] for p in fleet.ports), timeout=5)


# -- 4. backpressure from a provider's own rate-limit headers ----------------------------------

PROVIDER_RPM = 840                   # the provider's own quota: 14 requests per second
OFFERED = PROVIDER_RPM / 60 / 0.7    # 20 per second: ~30% over it


def _pressure_config(p: dict[str, int]) -> str:
    return _head(p, f"""
providers:{_sim('tight', p['tight'], f'rpm: {PROVIDER_RPM}')}
models:
  m:
    backends: [{{provider: tight, model: t1}}]
""")


@pytest.fixture(scope="module")
def pressure_gw(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Gateway, dict[str, int]]]:
    gw, ports = _start(tmp_path_factory.mktemp("pressure"), "pressure", ["tight"],
                       _pressure_config)
    yield gw, ports
    gw.stop()


async def _sampled(coro: Any, port: int, every: float = 1.0) -> tuple[Any, list[tuple[float,
                                                                                     int, int]]]:
    """Run `coro` while sampling the simulator's quota counters: (t, admitted, refused)."""
    samples: list[tuple[float, int, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(f"http://127.0.0.1:{port}/_sim/health") as r:
                    h = await r.json()
                samples.append((time.monotonic(), h["quota_admitted"], h["quota_refused"]))
                if done.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), every)

    task = asyncio.create_task(sample())
    out = await coro
    done.set()
    await task
    return out, samples


def _ratio(samples: list[tuple[float, int, int]], lo: float, hi: float) -> tuple[float, float]:
    """The provider's 429 ratio and its offered rate (per s) between two sample times."""
    a = min(samples, key=lambda s: abs(s[0] - lo))
    b = min(samples, key=lambda s: abs(s[0] - hi))
    adm, ref = b[1] - a[1], b[2] - a[2]
    return (ref / (adm + ref) if adm + ref else 0.0), (adm + ref) / max(1e-9, b[0] - a[0])


def test_provider_429s_with_remaining_headers_make_the_gateway_send_less(
        pressure_gw: Any) -> None:
    """A provider with a quota ~30% under the offered load (the gateway has no limit of its
    own for it): directly, it refuses ~30%; through the gateway, its remaining-quota headers
    and 429s bring its 429 ratio to <= 5% within 30 s, and the gateway sheds the excess."""
    gw, p = pressure_gw
    sim = f"http://127.0.0.1:{p['tight']}"
    direct = Stream(sim, "unused", body("t1"), OFFERED, "direct")

    async def baseline() -> list[tuple[float, int, int]]:
        async with session(200) as s:  # drain the provider's minute of burst first
            while True:
                rs = await asyncio.gather(*(_post(s, sim, "unused", body("t1"))
                                            for _ in range(100)))
                if any(r.status == 429 for r in rs):
                    break
        _, samples = await _sampled(open_loop([direct], 5.0), p["tight"])
        return samples

    samples = asyncio.run(baseline())
    before, _ = _ratio(samples, samples[1][0], samples[-1][0])
    print(f"provider alone: {before:.1%} 429s")
    assert 0.2 <= before <= 0.4, before

    through = Stream(gw.url, "unused", body("m"), OFFERED, "gw")
    t0 = time.monotonic()
    results, samples = asyncio.run(_sampled(open_loop([through], 30.0), p["tight"]))
    ratios = [(round(s0[0] - t0), *_ratio(samples, s0[0], s0[0] + 5)) for s0 in samples
              if s0[0] + 5 <= samples[-1][0]][::5]
    print("through the gateway (t, 429 ratio, sent/s over the next 5 s):",
          [(t, f"{r:.1%}", f"{rate:.1f}") for t, r, rate in ratios])
    last, rate = _ratio(samples, t0 + 20, t0 + 30)
    statuses = Counter(r.status for r in results)
    print(f"last 10 s: {last:.1%} 429s at the provider, {rate:.1f} sent/s; clients {statuses}")
    assert last <= 0.05, last
    assert rate <= PROVIDER_RPM / 60 * 1.1  # it really sends less ...
    assert rate >= PROVIDER_RPM / 60 * 0.7  # ... but does not starve the provider either
    assert set(statuses) <= {200, 429}


# -- 5. flood safety: one tenant at 10x its limit does not starve another ------------------------

FLOOD_RPM = 600  # each tenant's own limit: 10 per second


def _flood_config(p: dict[str, int]) -> str:
    return _head(p, f"""
tenants:
  noisy: {{api_keys: [{{value: "key-noisy"}}], limits: {{rpm: {FLOOD_RPM}}}}}
  quiet: {{api_keys: [{{value: "key-quiet"}}], limits: {{rpm: {FLOOD_RPM}}}}}
providers:{_sim('sim', p['sim'])}
models:
  m:
    backends: [{{provider: sim, model: m1}}]
""")


def test_flood_from_one_tenant_does_not_starve_another(tmp_path: Path) -> None:
    """`noisy` sends 10x its limit (after its minute of burst is spent); `quiet` keeps its
    modest rate: every one of quiet's requests succeeds (>= 99%), noisy's excess is shed
    with 429s decided by ext_proc (never a 5xx), and the provider sees only what was
    admitted."""
    gw, p = _start(tmp_path, "flood", ["sim"], _flood_config)
    drain: list[Result] = []
    try:
        async def run() -> list[Result]:
            async with session(200) as s:  # noisy spends its burst first
                drain.extend(await asyncio.gather(*(_post(s, gw.url, "key-noisy", body("m"))
                                                    for _ in range(FLOOD_RPM + 20))))
            return await open_loop([
                Stream(gw.url, "key-noisy", body("m"), 10 * FLOOD_RPM / 60, "noisy"),
                Stream(gw.url, "key-quiet", body("m"), 0.5 * FLOOD_RPM / 60, "quiet"),
            ], 10.0)

        results = asyncio.run(run())
        upstream = len(httpx.get(f"http://127.0.0.1:{p['sim']}/_sim/requests").json())
    finally:
        gw.stop()
    by = {t: Counter(r.status for r in results if r.tag == t) for t in ("noisy", "quiet")}
    lat = sorted(r.done - r.sent for r in results if r.tag == "quiet")
    print(f"flood: {by}; quiet p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms")
    assert by["quiet"][200] / sum(by["quiet"].values()) >= 0.99
    assert set(by["noisy"]) <= {200, 429}
    # noisy got its refill rate over the flood, no more
    assert by["noisy"][200] <= FLOOD_RPM / 60 * 10.0 * 1.1 + 2
    assert upstream == sum(r.status == 200 for r in [*drain, *results])
