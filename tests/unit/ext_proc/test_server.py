"""The gRPC servicer: an unexpected exception in a phase becomes a 500 error object in the
client's schema (never a dead stream, which Envoy would answer as "a component is
restarting"), and the request is still accounted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.pipeline_bench import CONFIG, OPENAI_ANSWER, messages
from control_plane.compile import compile_config
from control_plane.config import parse_config
from ext_proc.pipeline import Pipeline
from ext_proc.server import ExternalProcessor, serialize
from ext_proc.table import Routes, RoutingClient


def _pipeline() -> Pipeline:
    routing = RoutingClient("unused", "test")
    routing.routes = Routes.from_proto(compile_config(parse_config(CONFIG, "t.yaml")).routing)
    routing.ready = asyncio.Event()
    routing.ready.set()
    return Pipeline(routing)


async def _run(p: Pipeline, msgs: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async def it() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m
    out = []
    async for r in ExternalProcessor(p).Process(it(), None):  # type: ignore[arg-type]
        out.append(pb.ProcessingResponse.FromString(serialize(r)))
    return out


def test_a_bug_in_a_phase_answers_500_in_the_clients_schema(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    p = _pipeline()
    msgs = messages("bench-model", OPENAI_ANSWER)
    ok = asyncio.run(_run(p, msgs))
    assert [r.WhichOneof("response") for r in ok] == [
        "request_headers", "request_body", "response_headers", "response_body"]

    def boom(*_: Any) -> None:
        raise RuntimeError("bug")
    monkeypatch.setattr(p.selector, "context", boom)
    replies = asyncio.run(_run(p, msgs[:2]))
    assert replies[-1].immediate_response.status.code == 500
    err = orjson.loads(replies[-1].immediate_response.body)["error"]
    assert err["code"] == "internal_error" and err["type"] == "api_error"
    assert not p.inflight


def test_envoys_attempt_log_reports_a_route_built_first_attempt_once() -> None:
    """A failed first attempt (no translate phase ran for it) is learned from Envoy's attempt
    log, while the request is in flight or after it ended; a client hang-up is no backend
    failure; a second report of the same attempt, or one for another cluster, is ignored."""
    import time

    p = _pipeline()
    msgs = messages("bench-model", OPENAI_ANSWER)
    st = p.new_request()
    p.request_headers(st, msgs[0].request_headers)
    p.request_body(st, msgs[1].request_body.body)
    cluster = st.attempts[0].backend.cluster
    assert st.attempts[0].by_route and p.inflight[st.rid] is st
    p.attempt_failed(st.rid, "other.cluster", 429, {"retry-after": "30"})
    assert not p.health.unhealthy(cluster, time.monotonic())
    p.attempt_failed(st.rid, cluster, 429, {"retry-after": "30"})
    assert p.health.unhealthy(cluster, time.monotonic())  # cooling down
    assert st.attempts[0].status == 429
    p.ended(st)
    assert st.rid not in p._unreported  # reported already

    p = _pipeline()  # (the 429's retry-after also holds admission back for 30 s)
    gone = p.new_request()
    p.request_headers(gone, msgs[0].request_headers)
    p.request_body(gone, msgs[1].request_body.body)
    p.ended(gone)  # the client left before any answer: waits for the log
    assert gone.rid in p._unreported
    p.attempt_failed(gone.rid, cluster, 0, {}, client_gone=True)
    assert gone.rid not in p._unreported
    assert not p.health.unhealthy(cluster, time.monotonic())
