"""The ext_proc's own Python work per request, without gRPC: the pipeline's phase functions
fed the protobuf messages Envoy would send for one non-streaming ~1 KB request (route phase:
request headers, body; response headers, body), in-process, µs of this thread's CPU.

Separates the gateway's decisions and translation from the grpc.aio per-stream and
per-message cost that `python -m bench.run` includes; use it to measure a lever on the
Python side before paying for a full load run.

    python -m bench.pipeline_bench [--n 20000] [--translated]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.wrk import MODEL, request_body
from control_plane.compile import compile_config
from control_plane.config import parse_config
from ext_proc.pipeline import Pipeline
from ext_proc.table import Routes, RoutingClient
from switchyard.logs import configure_logging

CONFIG = """
providers:
  sim: {kind: openai, base_url: "http://127.0.0.1:9", api_key: {value: "sk-bench"}}
  claude: {kind: anthropic, base_url: "http://127.0.0.1:9", api_key: {value: "sk-ant"}}
models:
  bench-model:
    backends: [{provider: sim, model: bench-model, price: {input: 0.15, output: 0.6}}]
  bench-claude:
    backends: [{provider: claude, model: claude-x, price: {input: 1, output: 5}}]
"""

OPENAI_ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello there, how can I help?"}}],
    "usage": {"prompt_tokens": 250, "completion_tokens": 8, "total_tokens": 258}})
ANTHROPIC_ANSWER = orjson.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "Hello there, how can I help?"}],
    "stop_reason": "end_turn", "usage": {"input_tokens": 250, "output_tokens": 8}})


def _headers(pairs: list[tuple[str, str]], end: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]),
        end_of_stream=end)


def messages(model: str, answer: bytes) -> list[pb.ProcessingRequest]:
    body = request_body(1024).replace(orjson.dumps(MODEL), orjson.dumps(model))
    return [
        pb.ProcessingRequest(request_headers=_headers([
            (":method", "POST"), (":path", "/v1/chat/completions"),
            (":authority", "127.0.0.1:8080"), (":scheme", "http"),
            ("content-type", "application/json"), ("content-length", str(len(body))),
            ("user-agent", "wrk"), ("x-forwarded-proto", "http"),
            ("x-request-id", "5f2a5c1e-0000-4000-8000-000000000000")])),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=_headers([
            (":status", "200"), ("content-type", "application/json"),
            ("content-length", str(len(answer))), ("x-envoy-upstream-service-time", "1"),
            ("x-switchyard-attempts", "1")])),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True)),
    ]


def one(p: Pipeline, msgs: list[pb.ProcessingRequest]) -> None:
    st = p.new_request()
    p.request_headers(st, msgs[0].request_headers)
    reply = p.request_body(st, msgs[1].request_body.body)
    assert isinstance(reply, bytes), reply  # the routed reply (an error would be a message)
    p.response(st, msgs[2])
    p.response(st, msgs[3])
    p.ended(st)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline_bench")
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args(argv)
    configure_logging("warning")  # the log line's cost is measured by bench.run, not here
    snap = compile_config(parse_config(CONFIG, "bench.yaml"))
    routing = RoutingClient("unused", "bench")
    routing.routes = Routes.from_proto(snap.routing)
    routing.ready = asyncio.Event()
    routing.ready.set()
    p = Pipeline(routing)
    p.gate.configure(routing.routes.admission_json)
    for name, model, answer in (("same schema (OpenAI -> OpenAI)", "bench-model", OPENAI_ANSWER),
                                ("translated (OpenAI -> Anthropic)", "bench-claude",
                                 ANTHROPIC_ANSWER)):
        msgs = messages(model, answer)
        for _ in range(1000):
            one(p, msgs)
        best = float("inf")
        per = max(1, args.n // 5)
        for _ in range(5):
            t0 = time.thread_time()
            for _ in range(per):
                one(p, msgs)
            best = min(best, time.thread_time() - t0)
        print(f"{name:36s} {best / per * 1e6:8.1f} µs per request (4 messages, best of 5)")


if __name__ == "__main__":
    main()
