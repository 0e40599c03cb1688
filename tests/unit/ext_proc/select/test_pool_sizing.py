"""GPU pool live view (issue 10 item 7): the decayed demand window, the desired-replicas gauge
sized by `switchyard plan`'s own function, the `/pools` snapshot, and the pick in the usage
record."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from control_plane.compile.endpoints import pool_json
from control_plane.config import load_config
from ext_proc import admin, respond
from ext_proc.select.pool import Decayed, PoolPicker, PoolSettings
from ext_proc.state import RequestState
from ext_proc.stats.pool_metrics import Pools
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import Usage
from switchyard.capacity.plan import profile_of
from switchyard.capacity.sizing import Profile, replica_capacity, replicas_for

ROOT = Path(__file__).resolve().parents[4]
EPS = ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000")
PROFILE = Profile(prefill_tokens_per_s=8000, tpot_base_ms=12, tpot_per_seq_ms=0.25,
                  max_num_seqs=64)


def _picker(window_s: float = 60.0) -> PoolPicker:
    return PoolPicker("p", PoolSettings(endpoints=EPS, profile=PROFILE, slo_ttft_s=0.5,
                                        slo_tpot_s=0.05, demand_window_s=window_s))


def _steady(p: PoolPicker, rate: float, seconds: float, tin: int, tout: int,
            t0: float) -> float:
    """`rate` requests/s of `tin`/`tout` tokens for `seconds` from `t0`; the end time."""
    n = int(rate * seconds)
    for i in range(n):
        t = t0 + i / rate
        p.demand.arrived(t)
        p.demand.finished(tin, tout, t)
    return t0 + n / rate


def test_decayed_rate_tracks_a_steady_rate_and_decays() -> None:
    d = Decayed(60.0, 0.0)
    d.add(1.0, 0.0)  # one request at the start is not a spike
    assert d.rate(0.001) < 0.25
    for i in range(1, 50):  # 10 s at 5/s: no slow ramp from zero while the window fills
        d.add(1.0, i * 0.2)
    assert d.rate(10.0) == pytest.approx(5.0, rel=0.1)
    for i in range(50, 1500):
        d.add(1.0, i * 0.2)
    assert d.rate(300.0) == pytest.approx(5.0, rel=0.05)
    assert d.rate(300.0 + 5 * 60) < 0.05 * 5.0


def test_desired_replicas_is_the_planners_sizing_of_the_live_demand() -> None:
    p = _picker()
    t0 = p.demand.requests._since
    assert p.desired_replicas(t0 + 1) is None  # no finished request: lengths unknown
    now = _steady(p, 20.0, 600, 1000, 200, t0)
    cap = replica_capacity(PROFILE, 1000, 200, 0.5, 0.05)
    assert p.capacity_rps(now) == pytest.approx(cap)
    assert p.desired_replicas(now) == replicas_for(20.0, cap)
    assert p.desired_replicas(now) == math.ceil(20.0 / cap)
    # Demand doubles: within a few windows the gauge follows, by the same function.
    now = _steady(p, 40.0, 600, 1000, 200, now)
    assert p.desired_replicas(now) == replicas_for(40.0, cap) > replicas_for(20.0, cap)
    # Traffic stops: the decayed rate falls and so does the gauge (at least one replica).
    assert p.desired_replicas(now + 3600) == 1


def test_compiled_sizing_uses_the_planners_profile() -> None:
    cfg = load_config(ROOT / "config" / "examples" / "gpu_pool.yaml")
    provider = next(pr for pr in cfg.providers.values() if pr.endpoints)
    settings = PoolSettings.from_json(pool_json(provider))
    assert settings.profile == profile_of(provider, None)
    assert settings.slo_ttft_s == 0.5 and settings.slo_tpot_s == 0.05


def _backend(provider: str) -> BackendInfo:
    info = ProviderInfo(name=provider, kind="vllm", authority=b"h", path_prefix="",
                        api_key="", headers=(), options={})
    return BackendInfo(cluster=provider, provider=info, model="llama", price_input=0.0,
                       price_output=0.0, context_window=0, label=f"{provider}/llama")


def _pools() -> Pools:
    pools = Pools()
    pools.sync("v1", {"pool": json.dumps({
        "endpoints": list(EPS), "sizing": {"profile": {
            "prefill_tokens_per_s": 8000, "tpot_base_ms": 12, "tpot_per_seq_ms": 0.25,
            "max_num_seqs": 64}}})})
    return pools


def test_release_feeds_the_demand_and_snapshot_shows_it() -> None:
    pools = _pools()
    st = RequestState("r1")
    pick = pools.pick("r1", "pool", None, "interactive", st)
    assert pick is not None
    st.backend = _backend("pool")
    st.handler = SimpleNamespace(usage=Usage(900, 100))  # type: ignore[assignment]
    pools.release("r1")
    picker = pools.pickers["pool"]
    assert picker.demand.mean_lengths(picker.demand.requests._at + 1) == pytest.approx(
        (900.0, 100.0))
    view = pools.snapshot()["pool"]
    assert view["demand"]["mean_input_tokens"] == 900.0
    assert view["desired_replicas"] == 1
    assert view["sizing"]["replica_capacity_rps"] > 0
    ep = next(e for e in view["endpoints"] if e["address"] == pick.endpoints[0])
    assert ep["picks"] == 1 and ep["inflight"] == 0
    assert ep["picks_by_reason"] == {"fail_open": 1}  # never scraped: every endpoint stale
    assert ep["scrape_age_s"] is None and ep["prefix_hit_rate"] is None
    # A request that failed over to another backend does not size the pool.
    st2 = RequestState("r2")
    pools.pick("r2", "pool", None, "interactive", st2)
    st2.backend = _backend("hosted")
    st2.handler = SimpleNamespace(usage=Usage(5000, 5000))  # type: ignore[assignment]
    pools.release("r2")
    lengths = picker.demand.mean_lengths(picker.demand.requests._at + 1)
    assert lengths == pytest.approx((900.0, 100.0))


def test_usage_record_names_the_pool_pick_only_when_the_pool_answered() -> None:
    st = RequestState("r1")
    st.model = "llama"
    st.pool_pick = ("pool", "10.0.0.2:8000", "prefix")
    st.backend = _backend("pool")
    rec = respond.finish(st)
    assert (rec.endpoint, rec.pick) == ("10.0.0.2:8000", "prefix")
    st2 = RequestState("r2")
    st2.pool_pick = ("pool", "10.0.0.2:8000", "score")
    st2.backend = _backend("hosted")  # failed over off the pool
    rec2 = respond.finish(st2)
    assert (rec2.endpoint, rec2.pick) == ("", "")


def test_admin_pools_endpoint_serves_the_snapshot() -> None:
    pools = _pools()
    info = ProviderInfo(name="pool", kind="vllm", authority=b"h", path_prefix="", api_key="",
                        headers=(), options={}, pool_json=pools._json["pool"])
    ready = asyncio.Event()
    ready.set()
    routing = SimpleNamespace(ready=ready, routes=SimpleNamespace(
        version="v1", clusters={"c": SimpleNamespace(provider=info)}))

    async def go() -> dict[str, object]:
        runner = await admin.start_http("127.0.0.1", 0, routing,  # type: ignore[arg-type]
                                        pools=pools)
        try:
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{port}/pools") as r:
                assert r.status == 200
                body: dict[str, object] = await r.json()
                return body
        finally:
            await runner.cleanup()
    body = asyncio.run(go())
    view = body["pools"]["pool"]  # type: ignore[index]
    assert [e["address"] for e in view["endpoints"]] == list(EPS)
    assert {"desired_replicas", "demand", "sizing", "fail_open_s"} <= set(view)
