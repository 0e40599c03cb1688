"""The route phase's decision as a plain function: no gRPC, no Envoy."""

from __future__ import annotations

import orjson

from ext_proc import route
from ext_proc.ingress import INGRESS
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo, Routes
from switchyard.contract import CHAT_PATH, EMBEDDINGS_PATH, MESSAGES_PATH

_OPENAI = ProviderInfo(name="o", kind="openai", authority=b"o", path_prefix="", api_key="",
                       headers=(), options={})
_CLAUDE = ProviderInfo(name="c", kind="anthropic", authority=b"c", path_prefix="", api_key="",
                       headers=(), options={})


def _backend(name: str, provider: ProviderInfo = _OPENAI, window: int = 0) -> BackendInfo:
    return BackendInfo(cluster=name, provider=provider, model=name, price_input=1.0,
                       price_output=2.0, price_cached_input=0.5, context_window=window,
                       label=f"{provider.name}/{name}")


def _routes(hedge_ms: int = 0) -> Routes:
    a, b = _backend("a", window=1000), _backend("b", _CLAUDE, window=100_000)
    models = {"m": ModelInfo(name="m", backends=(a, b), max_retries=3, per_try_timeout_ms=900,
                             first_byte_timeout_ms=300, hedge_after_ms=hedge_ms)}
    return Routes(version="1", models=models, clusters={"a": a, "b": b})


def _chat(**extra: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         **extra})


def _decide(body: bytes, path: str = CHAT_PATH, routes: Routes | None = None,
            health: BackendHealth | None = None) -> route.Decision:
    ingress = INGRESS[path]
    parsed = route.parse(ingress, body)
    assert isinstance(parsed, route.Parsed), parsed
    return route.decide(ingress, parsed, routes if routes is not None else _routes(),
                        health or BackendHealth())


def test_unknown_path_is_404_and_bodyless_post_400() -> None:
    r = route.ingress_for("/v1/nope", end_of_stream=False)
    assert isinstance(r, route.Reject) and r.status == 404
    r = route.ingress_for(CHAT_PATH, end_of_stream=True)
    assert isinstance(r, route.Reject) and (r.status, r.code) == (400, "missing_body")
    assert route.ingress_for(CHAT_PATH + "?x=1", end_of_stream=False) is INGRESS[CHAT_PATH]


def test_bad_json_and_invalid_body_are_rejected_naming_the_problem() -> None:
    r = route.parse(INGRESS[CHAT_PATH], b"{not json")
    assert isinstance(r, route.Reject) and (r.status, r.code) == (400, "invalid_json")
    r = route.parse(INGRESS[CHAT_PATH], orjson.dumps({"model": "m", "messages": []}))
    assert isinstance(r, route.Reject) and r.status == 400 and r.param == "messages"


def test_forward_orders_candidates_and_sets_retry_budget() -> None:
    d = _decide(_chat())
    assert isinstance(d, route.Forward)
    assert [c.cluster for c in d.candidates] == ["a", "b"]
    assert d.max_retries == 1  # capped at candidates - 1
    assert d.try_timeout_ms == 900
    stream = _decide(_chat(stream=True))
    assert isinstance(stream, route.Forward) and stream.try_timeout_ms == 300
    hedged = _decide(_chat(), routes=_routes(hedge_ms=50))
    assert isinstance(hedged, route.Forward) and hedged.try_timeout_ms == 50


def test_unhealthy_backend_goes_last() -> None:
    health = BackendHealth()
    health.cool_down("a", "30")
    d = _decide(_chat(), health=health)
    assert isinstance(d, route.Forward)
    assert [c.cluster for c in d.candidates] == ["b", "a"]


def test_context_window_filters_and_overflow_rejects() -> None:
    d = _decide(_chat(max_tokens=5000))
    assert isinstance(d, route.Forward) and [c.cluster for c in d.candidates] == ["b"]
    r = _decide(_chat(max_tokens=500_000))
    assert isinstance(r, route.Reject) and r.code == "context_length_exceeded"


def test_unknown_model_not_ready_and_unserved_api() -> None:
    r = _decide(orjson.dumps({"model": "zzz", "messages": [{"role": "user", "content": "x"}]}))
    assert isinstance(r, route.Reject) and (r.status, r.code, r.param) == (
        404, "model_not_found", "model")
    anthropic_404 = _decide(orjson.dumps({"model": "zzz", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}]}), path=MESSAGES_PATH)
    assert isinstance(anthropic_404, route.Reject) and anthropic_404.type == "not_found_error"
    ingress = INGRESS[CHAT_PATH]
    parsed = route.parse(ingress, _chat())
    assert isinstance(parsed, route.Parsed)
    r = route.decide(ingress, parsed, None, BackendHealth())
    assert isinstance(r, route.Reject) and (r.status, r.code) == (503, "not_ready")
    # Embeddings: the Anthropic backend cannot embed, so only the OpenAI one remains.
    d = _decide(orjson.dumps({"model": "m", "input": "x"}), path=EMBEDDINGS_PATH)
    assert isinstance(d, route.Forward) and [c.cluster for c in d.candidates] == ["a"]


def test_huge_model_name_is_neither_echoed_nor_logged() -> None:
    body = orjson.dumps({"model": "m" * 100_000, "messages": [{"role": "user", "content": "x"}]})
    r = route.parse(INGRESS[CHAT_PATH], body)
    assert isinstance(r, route.Reject) and r.status == 400 and r.param == "model"
    assert len(r.message) < 200
