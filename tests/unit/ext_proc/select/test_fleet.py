"""Live selection shared across replicas (issue 9): the merge math of sketches and quality
counts, and two Selector replicas over a REAL redis-server (tests/conftest.py starts one)."""

from __future__ import annotations

import asyncio
import math
import random
import time

import orjson
import pytest

from ext_proc.select import Selector, rank
from ext_proc.select.features import _CODE_MARKS, _MATH_MARKS, classify
from ext_proc.select.fleet import FleetSync, merge_quality
from ext_proc.select.quality import MAX_OBSERVATIONS
from ext_proc.stats import BackendHealth
from ext_proc.stats.latency import HALF_LIFE_S, BackendStats, LiveStats
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo, RoutingPolicy

_P = ProviderInfo(name="p", kind="openai", authority=b"h", path_prefix="", api_key="",
                  headers=(), options={})
CHAT: dict[str, object] = {"model": "m",
                           "messages": [{"role": "user", "content": "hello there"}]}
INTERVAL = 0.2


def _b(name: str, quality: float = 0.7) -> BackendInfo:
    return BackendInfo(cluster=name, provider=_P, model=name, price_input=1.0,
                       price_output=2.0, context_window=0, label=f"p/{name}", quality=quality)


def _m(*backends: BackendInfo, strategy: str = "latency") -> ModelInfo:
    return ModelInfo(name="m", backends=backends, max_retries=len(backends) - 1,
                     per_try_timeout_ms=1000, first_byte_timeout_ms=1000, hedge_after_ms=0,
                     routing=RoutingPolicy(strategy=strategy))


def _feed(s: BackendStats | Selector, cluster: str, ttft_ms: float, now: float,
          n: int = 20) -> None:
    for _ in range(n):
        if isinstance(s, Selector):
            s.finished(cluster, now, 200, ttft_ms / 1000, ttft_ms / 1000 + 0.5, 21, True,
                       "completed")
        else:
            s.observe(now, ttft_ms, ttft_ms + 500, 21)
            s.observe_status(now, 200)


# -- merge math --------------------------------------------------------------------------------
def test_sum_of_replica_sketches_is_the_sketch_of_all_their_traffic() -> None:
    """Forward-decayed sketches add exactly: B's own sketch plus A's snapshot, decayed by its
    age, equals one sketch that saw both replicas' samples."""
    rng = random.Random(3)
    a, b, both = BackendStats(0.0), BackendStats(2.0), BackendStats(0.0)
    for i in range(400):
        t = i * 0.02
        ttft = rng.lognormvariate(5.5 if i % 2 else 6.5, 0.3)
        for s in (a if i % 2 else b, both):
            s.observe(t, ttft, ttft + 300, 30)
            s.observe_status(t, 500 if i % 10 == 0 else 200)
    published_at, now = 8.0, 9.5
    snap = a.snapshot(published_at)
    assert snap is not None
    b.set_remote([(now - published_at, orjson.loads(orjson.dumps(snap)))], now)
    got, want = b.view(now, 95.0), both.view(now, 95.0)
    assert got.ttft_p50 == want.ttft_p50 and got.ttft_pq == want.ttft_pq
    assert got.latency_pq == want.latency_pq and got.tpot_p50 == want.tpot_p50
    assert got.error_rate == pytest.approx(want.error_rate, rel=1e-9)
    assert got.tokens_per_s == pytest.approx(want.tokens_per_s, rel=1e-9)
    assert got.weight == pytest.approx(want.weight, rel=1e-9)
    assert got.samples == want.samples == 400


def test_remote_statistics_decay_with_their_age_and_survive_rescaling() -> None:
    a, b = BackendStats(0.0), BackendStats(0.0)
    _feed(a, "x", 2000.0, 0.0, n=60)
    _feed(b, "x", 100.0, 0.0, n=40)
    snap = a.snapshot(0.0)
    assert snap is not None
    b.set_remote([(0.0, snap)], 0.0)
    fresh = b.view(0.0).ttft_p50
    assert fresh is not None and fresh > 1000  # 60 + 40 samples: the median is A's
    # the same remote data, published 3 half-lives ago, weighs 60/8 against B's 40
    b.set_remote([(3 * HALF_LIFE_S, snap)], 0.0)
    assert b.view(0.0).ttft_p50 == pytest.approx(100.0, rel=0.15)
    # far in the future B's clock rescales: the remote part is rescaled with it
    late = 500.0
    b.observe(late, 100.0, 600.0, 21)
    b.set_remote([(0.0, snap)], late)
    b.observe(late + 300.0, 100.0, 600.0, 21)  # past the rescale threshold again
    v = b.view(late + 300.0)
    assert v.ttft_p50 is not None and math.isfinite(v.weight)


def test_live_stats_publish_own_data_only_and_learn_backends_only_others_served() -> None:
    mine, theirs = LiveStats(), LiveStats()
    _feed_live(theirs, "only-theirs", 300.0, 1.0)
    _feed_live(mine, "shared", 100.0, 1.0)
    mine.set_remote([(0.1, theirs.snapshot(1.0))], 1.0)
    assert mine.view("only-theirs", 1.0).ttft_p50 == pytest.approx(300.0, rel=0.1)
    assert set(mine.snapshot(1.0)) == {"shared"}  # never republishes what others saw
    mine.set_remote([], 1.5)
    assert mine.view("only-theirs", 1.5).samples == 0


def _feed_live(s: LiveStats, cluster: str, ttft_ms: float, now: float) -> None:
    for _ in range(20):
        s.observe(cluster, now, 200, ttft_ms / 1000, ttft_ms / 1000 + 0.5, 21)


def test_quality_is_the_fleet_totals_plus_what_is_not_pushed_yet() -> None:
    fleet = {("a", "chat"): [30.0, 10.0], ("b", "code"): [MAX_OBSERVATIONS - 1.0, 0.0]}
    pending = {("a", "chat"): [1.0, 0.0], ("b", "code"): [0.0, 3.0], ("c", "chat"): [0.5, 0.5]}
    out = merge_quality(fleet, pending)
    assert out[("a", "chat")] == [31.0, 10.0]
    assert sum(out[("b", "code")]) == pytest.approx(MAX_OBSERVATIONS)  # capped like local
    assert out[("c", "chat")] == [0.5, 0.5]
    assert fleet[("a", "chat")] == [30.0, 10.0]  # inputs untouched


def test_classifier_guards_match_a_plain_search_of_every_mark() -> None:
    """The guarded marks (features._guarded) and the one-dot vocabulary decide exactly what
    searching every mark and stripping trailing dots did."""
    from ext_proc.select import features as F

    def reference(text_in: str) -> str:
        text = text_in[:F._SCAN_CHARS].encode().lower()
        words = set(text.translate(F._WORDS_TABLE).split())
        words.update([w.rstrip(b".") for w in words if w.endswith(b".")])
        if not F._CODE_WORDS.isdisjoint(words) or any(m in text for m in _CODE_MARKS):
            return "code"
        if not F._MATH_WORDS.isdisjoint(words) or any(m in text for m in _MATH_MARKS):
            return "reasoning"
        arith = text.translate(F._ARITH_TABLE).replace(b" ", b"")
        return "reasoning" if any(m in arith for m in F._ARITH_MARKS) else "chat"

    rng = random.Random(5)
    vocab = ["tell", "me", "a", "story", "of", "the", "castle", "python", "python.",
             "python..", "def", "class", "(", ");", "=>", "#", "#include", "`", "```", "what",
             "is", "value", "sum", "how", "many", "step", "by", "12", "*", "3", "$5", "5%",
             "π", "≤", "unit", "test", "stack", "trace", "select", "import", "prove",
             "solve.", "node.js", "c++", "deploy..."]
    for _ in range(3000):
        text = " ".join(rng.choice(vocab) + rng.choice(["", "", ".", "..", ",", "\n"])
                        for _ in range(rng.randint(0, 30)))
        assert classify({"messages": [{"role": "user", "content": text}]}, 10) == \
            reference(text), text


# -- two replicas over a real Redis ---------------------------------------------------------------
async def _replicas(url: str, interval_s: float = INTERVAL) -> tuple[Selector, Selector]:
    out = []
    for i in range(2):
        s = Selector(BackendHealth(), seed=i)
        s.fleet = FleetSync(url, s.stats, s.quality, s.served, replica_id=f"r{i}",
                            interval_s=interval_s)
        await s.fleet.start()
        out.append(s)
    return out[0], out[1]


async def _close(*sels: Selector) -> None:
    for s in sels:
        assert s.fleet is not None
        await s.fleet.close()


async def test_feedback_reaching_another_replica_updates_the_quality_both_use(redis_server):
    a, b = await _replicas(redis_server.url)
    try:
        x = _b("x", quality=0.5)
        a.remember("resp-1", "m", "x", "code")
        before = a.quality.mean(x, "code")
        # B never served resp-1; the id reaches Redis with A's next sync (B retries once)
        reply = await b.feedback_async(orjson.dumps({"id": "resp-1", "score": 1.0}))
        assert reply.status == 200 and reply.body is not None
        assert reply.body["model"] == "m" and reply.body["category"] == "code"
        deadline = time.monotonic() + 3 * INTERVAL + 1.0
        while time.monotonic() < deadline and a.quality.mean(x, "code") == before:
            await asyncio.sleep(0.05)
        await asyncio.sleep(3 * INTERVAL)  # both synced after B's push
        assert a.quality.mean(x, "code") > before
        assert a.quality.mean(x, "code") == pytest.approx(b.quality.mean(x, "code"))
        assert a.quality.feedback_count("x", "code") == pytest.approx(1.0)
        # unknown to the whole fleet: 404 (after one retry)
        miss = await b.feedback_async(orjson.dumps({"id": "nope", "accepted": True}))
        assert miss.status == 404
        # local ids still answer without Redis at all
        assert (await a.feedback_async(orjson.dumps({"id": "resp-1", "accepted": False}))
                ).status == 200
    finally:
        await _close(a, b)


async def test_a_latency_change_seen_by_one_replica_moves_the_others_ranking(redis_server):
    a, b = await _replicas(redis_server.url, interval_s=0.5)  # the default interval
    try:
        model = _m(_b("x"), _b("y"))
        now = time.monotonic()
        for s in (a, b):
            _feed(s, "x", 150.0, now)
            _feed(s, "y", 400.0, now)
        await asyncio.sleep(1.0)

        def firsts(s: Selector) -> float:
            picks = [rank(model, CHAT, s.context(time.monotonic())).candidates[0].cluster
                     for _ in range(50)]
            return picks.count("y") / len(picks)

        assert firsts(b) == 0.0  # x is faster
        t0 = time.monotonic()
        _feed(a, "x", 3000.0, t0, n=200)  # only A sees x degrade
        while firsts(b) < 0.9 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        moved = time.monotonic() - t0
        assert firsts(b) >= 0.9 and moved <= 2.0, moved
        print(f"B moved after {moved:.2f} s")
        assert b.fleet is not None and b.fleet.others == 1
    finally:
        await _close(a, b)


async def test_redis_down_keeps_learning_locally_and_pushes_later(redis_server):
    a, b = await _replicas(redis_server.url)
    try:
        redis_server.stop()
        a.remember("resp-2", "m", "x", "chat")
        ok = await a.feedback_async(orjson.dumps({"id": "resp-2", "score": 1.0}))
        assert ok.status == 200 and a.quality.feedback_count("x", "chat") == 1.0
        down = await b.feedback_async(orjson.dumps({"id": "resp-2", "score": 1.0}))
        assert down.status == 503
        await asyncio.sleep(2 * INTERVAL)
        assert a.fleet is not None and not a.fleet.connected
        redis_server.start()  # empty: what A learnt while down is pushed now
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b.quality.feedback_count("x", "chat") < 1.0:
            await asyncio.sleep(0.05)
        assert b.quality.feedback_count("x", "chat") == pytest.approx(1.0)
        assert (await b.feedback_async(orjson.dumps({"id": "resp-2", "score": 0.5}))
                ).status == 200
    finally:
        await _close(a, b)


async def test_selector_share_starts_and_stops_the_sync(redis_server):
    s = Selector(BackendHealth(), seed=1)
    s.share(redis_server.url)
    assert s.fleet is not None
    fleet = s.fleet
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not fleet.connected:
        await asyncio.sleep(0.02)
    assert fleet.connected
    assert s.table(_routes())["fleet"]["connected"] is True
    s.share(redis_server.url)  # same URL: same sync
    assert s.fleet is fleet
    s.share(None)
    assert s.fleet is None
    await asyncio.sleep(0.1)  # the old sync closes in the background
    assert fleet._task is None


def _routes():  # type: ignore[no-untyped-def]
    from ext_proc.table import Routes

    return Routes(version="1", models={}, clusters={})
