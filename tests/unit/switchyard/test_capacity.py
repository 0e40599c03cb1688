"""Capacity planning: analytic sizing, break-even arithmetic, cheapest mix, and the plan's
N-1 / N check on the Azure trace (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config import load_config
from switchyard.capacity.plan import make_plan
from switchyard.capacity.sizing import (
    Profile,
    break_even_utilisation,
    cheapest_mix,
    hosted_cost_per_request,
    replica_capacity,
    replica_load,
    replicas_for,
)
from switchyard.replay.trace import read_trace

ROOT = Path(__file__).resolve().parents[3]
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_conv_2023.csv"
PROF = Profile(prefill_tokens_per_s=10000, tpot_base_ms=10, tpot_per_seq_ms=0.5,
               max_num_seqs=64)


def test_hosted_cost_and_break_even() -> None:
    per = hosted_cost_per_request(1000, 200, price_in=0.15, price_out=0.60)
    assert per == pytest.approx((1000 * 0.15 + 200 * 0.60) / 1e6)  # 0.00027 USD
    # A $2.50/h GPU serving 5 req/s at full load: hosted would cost 5*3600*0.00027 = $4.86/h.
    u = break_even_utilisation(2.5, 1, 5.0, per)
    assert u == pytest.approx(2.5 / (5 * 3600 * per))
    assert u == pytest.approx(0.5144, abs=1e-3)
    assert break_even_utilisation(2.5, 2, 5.0, per) == pytest.approx(2 * u)


def test_replica_load_and_capacity() -> None:
    load = replica_load(PROF, 2.0, 1000, 100)
    assert load is not None and load.rho_prefill == pytest.approx(0.2)
    assert replica_load(PROF, 10.0, 1000, 100) is None  # prefill alone saturates
    cap = replica_capacity(PROF, 1000, 100, slo_ttft_s=0.5, slo_tpot_s=0.05)
    at = replica_load(PROF, cap, 1000, 100)
    assert at is not None and at.ttft_s <= 0.5 + 1e-6 and at.tpot_s <= 0.05 + 1e-6
    assert replica_load(PROF, cap * 1.05, 1000, 100) is None or (
        replica_load(PROF, cap * 1.05, 1000, 100).ttft_s > 0.5  # type: ignore[union-attr]
        or replica_load(PROF, cap * 1.05, 1000, 100).tpot_s > 0.05)  # type: ignore[union-attr]
    assert replicas_for(10.0, 3.0) == 4 and replicas_for(9.0, 3.0) == 3


def test_cheapest_mix_puts_base_load_on_gpus() -> None:
    rates = [2.0] * 55 + [10.0] * 5  # a steady base and a short burst
    # GPU at $1/h serving 2 req/s; hosted $0.001/request (= $7.2/h at 2 req/s).
    m = cheapest_mix(rates, 60, 2.0, 1.0, 1, 0.001, 5)
    assert m.gpu_replicas == 1  # the burst is cheaper on the hosted backend
    assert 0 < m.hosted_share < 0.5
    assert cheapest_mix(rates, 60, 2.0, 100.0, 1, 0.001, 5).gpu_replicas == 0


@pytest.mark.skipif(not TRACE.exists(), reason="Azure trace not available")
def test_plan_on_azure_trace_n_meets_n_minus_1_does_not() -> None:
    cfg = load_config(ROOT / "config" / "examples" / "gpu_pool.yaml")
    plan = make_plan(cfg, read_trace(TRACE), slo_ttft_ms=500, slo_tpot_ms=50)
    checks = {c.replicas: c for c in plan.checks}
    assert checks[plan.replicas].meets
    assert plan.replicas == 1 or not checks[plan.replicas - 1].meets
    assert 0 < plan.utilisation < 1
    assert plan.hosted[0].backend == "openai/gpt-4o-mini"
    assert plan.mix["gpu_replicas"] <= plan.replicas
