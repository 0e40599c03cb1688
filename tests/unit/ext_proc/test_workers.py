"""Several ext_proc workers: a retry whose translate phase lands on a worker that did not
route the request is built by the owner (through its internal Unix socket) on the owner's
own state; an owner that is gone or does not know the request gives today's retryable 503;
Envoy's report of a failed first attempt reaches the owner wherever it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from bench.pipeline_bench import OPENAI_ANSWER, messages
from control_plane.compile import compile_config
from control_plane.config import parse_config
from ext_proc import respond
from ext_proc.envoy import ATTR_NS
from ext_proc.pipeline import Pipeline
from ext_proc.server import serialize
from ext_proc.stats import BackendHealth
from ext_proc.table import Routes, RoutingClient
from ext_proc.workers import Siblings, owner_of, start_internal
from switchyard.contract import ANSWERED_BY_HEADER, REQUEST_ID_HEADER

CONFIG = """
providers:
  sim: {kind: openai, base_url: "http://127.0.0.1:9", api_key: {value: "sk-sim"}}
  claude: {kind: anthropic, base_url: "http://127.0.0.1:9", api_key: {value: "sk-ant"}}
models:
  m:
    backends: [{provider: sim, model: gpt-x}, {provider: claude, model: claude-x}]
"""


def _pipeline(index: int, sockets: list[str]) -> Pipeline:
    routing = RoutingClient("unused", "test")
    routing.routes = Routes.from_proto(compile_config(parse_config(CONFIG, "t.yaml")).routing)
    routing.ready = asyncio.Event()
    routing.ready.set()
    return Pipeline(routing, siblings=Siblings(index, sockets))


def _attempt(rid: str, cluster: str) -> pb.ProcessingRequest:
    """An upstream filter's request headers, as Envoy sends them for a retry."""
    attrs = struct_pb2.Struct()
    attrs.fields["xds.cluster_name"].string_value = cluster
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in (
            (":path", "/v1/chat/completions"), (REQUEST_ID_HEADER, rid),
            ("user-agent", "curl"))])))
    req.attributes[ATTR_NS].CopyFrom(attrs)
    return req


async def _translate(p: Pipeline, rid: str, cluster: str) -> list[pb.ProcessingResponse]:
    async def rest() -> AsyncIterator[pb.ProcessingRequest]:
        yield pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])))
    return [pb.ProcessingResponse.FromString(serialize(r))
            async for r in p.translate_phase(_attempt(rid, cluster), rest())]


def test_a_retry_on_another_worker_is_built_by_the_owner(tmp_path: Path) -> None:
    sockets = [str(tmp_path / "w0.sock"), str(tmp_path / "w1.sock")]

    async def main() -> None:
        owner, other = _pipeline(0, sockets), _pipeline(1, sockets)
        servers = [await start_internal(sockets[0], owner),
                   await start_internal(sockets[1], other)]
        msgs = messages("m", OPENAI_ANSWER)
        st = owner.new_request()
        assert owner_of(st.rid) == 0 and other.new_request().rid.startswith("w1-")
        owner.request_headers(st, msgs[0].request_headers)
        owner.request_body(st, msgs[1].request_body.body)
        first, second = (b.cluster for b in st.candidates)
        assert [a.backend.cluster for a in st.attempts] == [first]

        # Envoy's attempt log reaches the other worker: it is forwarded to the owner.
        other.attempt_failed(st.rid, first, 500, {})
        for _ in range(100):
            if st.attempts[0].status:
                break
            await asyncio.sleep(0.01)
        assert st.attempts[0].status == 500

        replies = await _translate(other, st.rid, second)
        headers = {h.header.key: h.header.raw_value for h in
                   replies[0].request_headers.response.header_mutation.set_headers}
        assert headers[":path"] == b"/v1/messages"  # translated for the Anthropic backend
        assert headers["x-api-key"] == b"sk-ant"
        body = orjson.loads(replies[0].request_headers.response.body_mutation.body)
        assert body["model"] == "claude-x"
        assert headers["content-length"] == str(len(
            replies[0].request_headers.response.body_mutation.body)).encode()
        assert "user-agent" in replies[0].request_headers.response.header_mutation.remove_headers
        answered = replies[1].response_headers.response.header_mutation.set_headers
        assert [(h.header.key, h.header.raw_value) for h in answered] == [
            (ANSWERED_BY_HEADER, second.encode())]
        # The owner recorded the attempt on its own state, so its response path knows it.
        assert [a.backend.cluster for a in st.attempts] == [first, second]
        assert not other.inflight

        # A request the owner does not know, and an owner that is gone: retryable 503.
        gone = await _translate(other, "w0-dead-1", second)
        assert gone[0].immediate_response.status.code == 503
        await servers[0].cleanup()
        t = asyncio.get_running_loop().time()
        down = await _translate(other, st.rid, second)
        assert down[0].immediate_response.status.code == 503
        assert asyncio.get_running_loop().time() - t < 2
        await servers[1].cleanup()
        for p in (owner, other):
            assert p.siblings is not None
            await p.siblings.close()

    asyncio.run(main())


def test_answered_by_another_workers_attempt_picks_the_candidate() -> None:
    """The response names a backend this worker recorded no attempt for (the worker that
    ran the retry could not reach the owner): the handler is still that backend's."""
    p = _pipeline(0, ["a", "b"])
    msgs = messages("m", OPENAI_ANSWER)
    st = p.new_request()
    p.request_headers(st, msgs[0].request_headers)
    p.request_body(st, msgs[1].request_body.body)
    second = st.candidates[1]
    respond.on_headers(st, {":status": "200", ANSWERED_BY_HEADER: second.cluster,
                            "content-type": "application/json",
                            "x-envoy-upstream-service-time": "1"}, False, BackendHealth())
    assert st.backend is second
