"""Admission control on one replica, with a fake clock: numbers, not mocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from ext_proc.admission import (
    Admission,
    Admit,
    Queue,
    Shed,
    WaitQueue,
    compile_admission,
    request_class,
)
from ext_proc.admission.backpressure import Backpressure, parse_duration, parse_retry_after
from ext_proc.admission.buckets import TokenBucket, go_duration
from ext_proc.admission.estimate import DEFAULT_OUTPUT, MIN_SAMPLES, Estimator
from ext_proc.admission.priorities import compile_priorities
from tests.unit.ext_proc.admission.candidates import ANT, AZ, OAI


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, **cfg) -> Admission:
    return Admission(compile_admission(**cfg), clock=clock)


def test_200_at_once_against_tpm_for_10_and_exact_retry_after():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"tpm": 10_000}}})
    results = [adm.admit("t", "interactive", "m", [OAI], 1000) for _ in range(200)]
    admitted = [r for r in results if isinstance(r, Admit)]
    shed = [r for r in results if isinstance(r, Shed)]
    assert len(admitted) == 10 and len(shed) == 190
    true_refill = 1000 / (10_000 / 60)  # 6 s for the next 1000 tokens
    for s in shed:
        assert s.refusal.scope == "tenant" and s.refusal.limit == "tpm"
        assert abs(s.retry_after_s - true_refill) < 1.0
        hdrs = dict(s.headers)
        assert int(hdrs["retry-after"]) == 6
        assert hdrs["x-ratelimit-limit-tokens"] == "10000"
        assert hdrs["x-ratelimit-remaining-tokens"] == "0"
    clock.t += shed[0].retry_after_s - 0.5
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1000), Shed)
    clock.t += 0.5
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1000), Admit)


def test_refund_lets_small_requests_use_90_percent():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"tpm": 40_000}}})
    big = [adm.admit("t", "interactive", "m", [OAI], 4000) for _ in range(20)]
    big_ok = [r for r in big if isinstance(r, Admit)]
    assert len(big_ok) == 10
    for r in big_ok:
        adm.reconcile(r.reservation, 100, output_tokens=50)
        adm.release(r.reservation)
    used = 100 * len(big_ok)
    small = 0
    while isinstance(adm.admit("t", "interactive", "m", [OAI], 100), Admit):
        small += 1
    assert used + small * 100 >= 0.9 * 40_000


def test_under_estimate_runs_into_debt_never_more_than_own_estimate():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"tpm": 6000}}})
    r = adm.admit("t", "interactive", "m", [OAI], 1000)
    assert isinstance(r, Admit)
    adm.reconcile(r.reservation, 9000)  # used far more than estimated
    s = adm.admit("t", "interactive", "m", [OAI], 100)
    assert isinstance(s, Shed)
    # 6000 - 9000 = -3000; 100 more needs 3100 tokens of refill at 100/s
    assert s.retry_after_s == pytest.approx(31.0)


def test_batch_shed_before_interactive_on_provider_quota():
    clock = Clock()
    adm = make(clock, providers={"openai": {"tpm": 100_000}})
    got = {"batch": 0, "interactive": 0}
    first_batch_shed_at = None
    for i in range(200):
        klass = "batch" if i % 2 == 0 else "interactive"
        r = adm.admit(f"t-{klass}", klass, "m", [OAI], 1000)
        if isinstance(r, Admit):
            got[klass] += 1
        elif klass == "batch" and first_batch_shed_at is None:
            first_batch_shed_at = got["batch"] + got["interactive"]
            assert r.refusal.scope == "provider" and r.refusal.name == "openai"
    assert first_batch_shed_at is not None and first_batch_shed_at <= 70
    assert got["batch"] <= 70
    assert got["batch"] + got["interactive"] == 100  # interactive gets the rest, all of it
    assert got["interactive"] >= 30


def test_spill_over_skips_backends_without_headroom_in_order():
    clock = Clock()
    adm = make(clock, backends={OAI.cluster: {"rpm": 2}, AZ.cluster: {"rpm": 1}})
    r1 = adm.admit("t", "interactive", "m", [OAI, AZ, ANT], 10)
    assert isinstance(r1, Admit) and r1.candidates == (OAI, AZ, ANT)
    assert r1.reservation.charged == OAI.cluster
    adm.admit("t", "interactive", "m", [OAI, AZ, ANT], 10)  # OAI now empty
    r3 = adm.admit("t", "interactive", "m", [OAI, AZ, ANT], 10)
    assert isinstance(r3, Admit) and r3.candidates == (AZ, ANT)
    assert r3.reservation.charged == AZ.cluster
    r4 = adm.admit("t", "interactive", "m", [OAI, AZ, ANT], 10)
    assert isinstance(r4, Admit) and r4.candidates == (ANT,)
    r5 = adm.admit("t", "interactive", "m", [OAI, AZ], 10)
    assert isinstance(r5, Shed) and r5.refusal.scope == "backend"
    # the earliest refill of the two: AZ (1/min) vs OAI (2/min): OAI, 30 s
    assert r5.retry_after_s == pytest.approx(30.0)


def test_reconcile_moves_charge_to_backend_that_answered():
    clock = Clock()
    adm = make(clock, backends={OAI.cluster: {"tpm": 6000}, AZ.cluster: {"tpm": 6000}})
    r = adm.admit("t", "interactive", "m", [OAI, AZ], 3000)
    assert isinstance(r, Admit)
    adm.reconcile(r.reservation, 6000, answered=AZ)
    snap = adm.snapshot()
    assert snap[f"backend:{OAI.cluster}"]["tpm"]["remaining"] == 6000
    assert snap[f"backend:{AZ.cluster}"]["tpm"]["remaining"] == 0


def test_concurrency_and_release():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"max_concurrent": 2}}})
    a = adm.admit("t", "interactive", "m", [OAI], 1)
    b = adm.admit("t", "interactive", "m", [OAI], 1)
    c = adm.admit("t", "interactive", "m", [OAI], 1)
    assert isinstance(a, Admit) and isinstance(b, Admit)
    assert isinstance(c, Shed) and c.refusal.limit == "concurrency"
    adm.release(a.reservation)
    adm.release(a.reservation)  # idempotent
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1), Admit)
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1), Shed)


def test_tenant_model_limits_and_headers():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"rpm": 100, "tpm": 100_000},
                                     "models": {"m": {"rpm": 2}}}})
    r = adm.admit("t", "interactive", "m", [OAI], 10)
    assert isinstance(r, Admit)
    h = dict(r.headers)
    assert h["x-ratelimit-limit-requests"] == "2"  # the tighter of tenant / tenant x model
    assert h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert h["x-ratelimit-remaining-tokens"] == "99990"
    assert h["x-ratelimit-reset-requests"] == "30s"
    adm.admit("t", "interactive", "m", [OAI], 10)
    s = adm.admit("t", "interactive", "m", [OAI], 10)
    assert isinstance(s, Shed) and s.refusal.scope == "tenant_model" and s.refusal.name == "m"
    assert "tenant model 'm' requests per minute" in s.refusal.message
    assert isinstance(adm.admit("t", "interactive", "other", [OAI], 10), Admit)
    assert adm.headers("nobody", "m") == ()


def test_queue_decision_by_class():
    clock = Clock()
    adm = make(clock, tenants={"t": {"limits": {"rpm": 60}}})
    for _ in range(60):
        assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1), Admit)
    q = adm.admit("t", "chat", "m", [OAI], 1)
    assert isinstance(q, Queue)
    assert q.deadline == pytest.approx(clock.t + 2.0) and q.retry_after_s == pytest.approx(1.0)
    assert isinstance(adm.admit("t", "batch", "m", [OAI], 1), Shed)
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1), Shed)


async def test_wait_queue_is_earliest_deadline_first() -> None:
    adm = make(Clock(), tenants={"t": {"limits": {"rpm": 600}}})  # 10 per second
    adm.clock = time.monotonic
    for _ in range(600):
        assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1), Admit)
    wq = WaitQueue()
    adm.on_free = wq.kick
    order: list[str] = []
    now = time.monotonic()

    async def one(name: str, deadline_s: float) -> Admit | Shed:
        d = await wq.wait(lambda: adm.admit("t", "agent", "m", [OAI], 1), now + deadline_s)
        if isinstance(d, Admit):
            order.append(name)
        return d

    res = await asyncio.gather(one("late", 3.0), one("early", 1.0), one("mid", 2.0),
                               one("hopeless", 0.05))
    assert order == ["early", "mid", "late"]
    assert isinstance(res[3], Shed)
    assert len(wq) == 0


def test_lowering_class_never_raising():
    assert request_class("chat", "batch") == "batch"
    assert request_class("chat", "interactive") == "chat"
    assert request_class("chat", "nonsense") == "chat"
    assert request_class("batch", None) == "batch"
    pr = compile_priorities({"batch": {"quota_share": 0.5}})
    assert pr["batch"].quota_share == 0.5 and pr["batch"].max_queue_ms == 0
    assert pr["chat"].quota_share == 0.95 and pr["agent"].max_queue_ms == 5000
    with pytest.raises(ValueError, match="unknown class"):
        compile_priorities({"urgent": {}})


def test_bad_limits_rejected():
    with pytest.raises(ValueError, match="rpm"):
        compile_admission(tenants={"t": {"limits": {"rpm": -1}}})
    with pytest.raises(ValueError, match="unknown keys"):
        compile_admission(providers={"p": {"rps": 1}})


def test_bucket_refill_is_smooth_and_large_requests_pass_when_full():
    b = TokenBucket(600, now=0.0)
    assert b.wait(600, 0.0) == 0.0
    b.take(600)
    assert b.level(0.5) == pytest.approx(5.0)  # 10/s, no window edge
    assert b.wait(10, 0.5) == pytest.approx(0.5)
    big = TokenBucket(100, now=0.0)
    assert big.wait(1000, 0.0) == 0.0  # larger than the bucket: admitted when full
    big.take(1000)
    assert big.wait(1, 0.0) == pytest.approx(901 / (100 / 60))
    assert go_duration(0.02) == "20ms" and go_duration(1.5) == "1.5s"
    assert go_duration(360) == "6m0s"


def test_estimator_max_tokens_or_learned_p95():
    est = Estimator()
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert est.estimate("m", body) == 100 + 50
    body2 = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert est.estimate("m", body2) == 100 + DEFAULT_OUTPUT
    for i in range(1000):
        est.observe("m", 1 + i % 100)  # uniform 1..100: p95 = 95
    p95 = est.output("m")
    assert 95 <= p95 <= 95 * 1.25 + 1
    assert est.estimate("m", body2) == 100 + p95
    # it follows recent traffic: outputs grow to ~1000
    for i in range(3000):
        est.observe("m", 901 + i % 100)
    assert 995 <= est.output("m") <= 1000 * 1.25 + 1
    assert MIN_SAMPLES > 1


def test_backpressure_429_blocks_shrinks_and_recovers():
    clock = Clock()
    bp = Backpressure()
    adm = Admission(compile_admission(backends={OAI.cluster: {"rpm": 100}}), backpressure=bp,
                    clock=clock)
    bp.observe(OAI.cluster, 429, {"retry-after": "2"}, now=clock.t)
    bp.observe(OAI.cluster, 429, {"retry-after": "2"}, now=clock.t)  # same burst: one decrease
    assert bp.factor(OAI.cluster, clock.t) == 0.5
    r = adm.admit("t", "interactive", "m", [OAI, AZ], 10)
    assert isinstance(r, Admit) and r.candidates == (AZ,)  # spills over while blocked
    s = adm.admit("t", "interactive", "m", [OAI], 10)
    assert isinstance(s, Shed) and s.refusal.limit == "provider_backpressure"
    assert s.retry_after_s == pytest.approx(2.0)
    clock.t += 2.0
    r = adm.admit("t", "interactive", "m", [OAI], 10)
    assert isinstance(r, Admit)
    assert adm.snapshot()[f"backend:{OAI.cluster}"]["rpm"]["factor"] == pytest.approx(0.55)
    clock.t += 60
    assert bp.factor(OAI.cluster, clock.t) == 1.0


def test_backpressure_from_remaining_headers():
    clock = Clock()
    bp = Backpressure()
    adm = Admission(compile_admission(), backpressure=bp, clock=clock)
    bp.observe(OAI.cluster, 200, {"x-ratelimit-remaining-requests": "2",
                                  "x-ratelimit-remaining-tokens": "5000",
                                  "x-ratelimit-reset-requests": "1s",
                                  "x-ratelimit-reset-tokens": "6m0s"}, now=clock.t)
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 3000), Admit)
    s = adm.admit("t", "interactive", "m", [OAI], 3000)  # 2000 tokens left by our count
    assert isinstance(s, Shed) and s.retry_after_s == pytest.approx(360.0)
    assert isinstance(adm.admit("t", "interactive", "m", [OAI], 1000), Admit)
    s = adm.admit("t", "interactive", "m", [OAI], 10)  # both requests used: wait for 1 s reset
    assert isinstance(s, Shed) and s.retry_after_s == pytest.approx(1.0)
    bp.observe(ANT.cluster, 200, {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-12-07T00:00:30Z",
        "anthropic-ratelimit-tokens-remaining": "100",
        "anthropic-ratelimit-tokens-reset": "2026-12-07T00:00:10Z",
    }, now=clock.t, wall=1796601600.0)  # 2026-12-07T00:00:00Z
    assert bp.wait(ANT.cluster, 10, clock.t) == pytest.approx(30.0)


def test_backpressure_remaining_refills_at_the_providers_rate_when_it_names_its_limit():
    """remaining 0 of 840 rpm, full again in 60 s: one request every 60/840 s, not a minute's
    silence; the provider's 429 with retry-after still blocks until then."""
    clock = Clock()
    bp = Backpressure()
    bp.observe(OAI.cluster, 200, {"x-ratelimit-limit-requests": "840",
                                  "x-ratelimit-remaining-requests": "0",
                                  "x-ratelimit-reset-requests": "1m0s"}, now=clock.t)
    assert bp.wait(OAI.cluster, 1, clock.t) == pytest.approx(60 / 840)
    clock.t += 60 / 840 + 1e-9
    assert bp.wait(OAI.cluster, 1, clock.t) == 0.0
    bp.sent(OAI.cluster, 1)
    assert bp.wait(OAI.cluster, 1, clock.t) == pytest.approx(60 / 840)
    # Anthropic names its limits too; tokens: the tighter budget, capped at the limit
    bp.observe(ANT.cluster, 200, {
        "anthropic-ratelimit-tokens-limit": "6000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-12-07T00:01:00Z",
    }, now=clock.t, wall=1796601600.0)
    assert bp.wait(ANT.cluster, 100, clock.t) == pytest.approx(1.0)
    assert bp.wait(ANT.cluster, 10**6, clock.t) == pytest.approx(60.0)  # never past reset


def test_duration_and_retry_after_parsing():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == 0.02
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2
    assert parse_duration("1h2m3s") == 3723 and parse_duration("junk") is None
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after(
        {"retry-after": "Mon, 07 Dec 2026 00:00:05 GMT"}, wall=1796601600.0) == 5
