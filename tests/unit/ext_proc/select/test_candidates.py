"""Candidate ordering and backend health (the route phase's decisions, no Envoy needed)."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from ext_proc.select import ContextTooLong, candidates, estimate_tokens
from ext_proc.stats import FAST_DEMOTE_AFTER, BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo

_P = ProviderInfo(name="p", kind="openai", authority=b"h", path_prefix="", api_key="",
                  headers=(), options={})


def _backend(name: str, window: int = 0) -> BackendInfo:
    return BackendInfo(cluster=name, provider=_P, model=name, price_input=0, price_output=0,
                       context_window=window, label=f"p/{name}")


def _model(*backends: BackendInfo) -> ModelInfo:
    return ModelInfo(name="m", backends=backends, max_retries=len(backends) - 1,
                     per_try_timeout_ms=1000, first_byte_timeout_ms=1000, hedge_after_ms=0)


def _names(cands: tuple[BackendInfo, ...]) -> list[str]:
    return [c.cluster for c in cands]


def test_estimate_counts_text_parts_and_requested_output() -> None:
    body = {"messages": [{"role": "user", "content": "a" * 40},
                         {"role": "user", "content": [{"type": "text", "text": "b" * 8},
                                                      {"type": "image_url", "image_url": {}}]}],
            "max_tokens": 7}
    assert estimate_tokens(body) == 12 + 7
    assert estimate_tokens({**body, "max_completion_tokens": 100}) == 112


def test_context_window_skips_small_backends_and_rejects_when_none_fits() -> None:
    model = _model(_backend("small", 50), _backend("large", 1000), _backend("unknown"))
    short = {"messages": [{"role": "user", "content": "hi"}]}
    assert _names(candidates(model, short, BackendHealth())) == ["small", "large", "unknown"]
    long = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert _names(candidates(model, long, BackendHealth())) == ["large", "unknown"]
    sized = _model(_backend("small", 50), _backend("large", 1000))
    with pytest.raises(ContextTooLong) as exc:
        candidates(sized, {"messages": [{"role": "user", "content": "x" * 8000}]},
                   BackendHealth())
    assert "1000" in str(exc.value)


def test_unhealthy_backends_go_last_not_away() -> None:
    model = _model(_backend("a"), _backend("b"), _backend("c"))
    health = BackendHealth()
    health.apply_envoy(
        orjson.dumps({"cluster_statuses": [
            {"name": "a", "host_statuses": [{"health_status": {"failed_outlier_check": True}}]},
            {"name": "b", "host_statuses": [{"health_status": {}}]}]}),
        orjson.dumps({"stats": [{"name": "cluster.c.circuit_breakers.default.rq_open",
                                 "value": 1}]}))
    assert health.ejected == {"a"} and health.breaker_open == {"c"}
    assert _names(candidates(model, {"messages": []}, health)) == ["b", "a", "c"]
    assert health.snapshot() == {"a": "ejected", "c": "circuit_breaker_open"}


def test_retry_after_seconds_and_http_date() -> None:
    health = BackendHealth()
    health.cool_down("a", "30")
    assert 29 < health.cooling["a"] - time.monotonic() <= 30
    health.cool_down("b", email.utils.formatdate(time.time() + 60, usegmt=True))
    assert 55 < health.cooling["b"] - time.monotonic() <= 61
    health.cool_down("c", "garbage")
    assert health.cooling["c"] - time.monotonic() <= 1.0
    assert health.unhealthy("a", time.monotonic())
    assert not health.unhealthy("a", time.monotonic() + 31)


def test_consecutive_failures_demote_and_a_success_resets() -> None:
    health = BackendHealth()
    for _ in range(FAST_DEMOTE_AFTER - 1):
        health.record("a", failed=True)
    health.record("a", failed=False)
    health.record("a", failed=True)
    assert not health.unhealthy("a", time.monotonic())
    for _ in range(FAST_DEMOTE_AFTER):
        health.record("a", failed=True)
    assert health.unhealthy("a", time.monotonic())
