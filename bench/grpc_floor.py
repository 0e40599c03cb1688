"""`python -m bench.grpc_floor`: what grpc.aio alone charges an ext_proc, per stream and per
message, with no Envoy and no gateway logic.

A do-nothing ExternalProcessor (replies pre-serialized) runs in its own process behind a Unix
socket; a client in this process opens streams of 1 and of 4 messages (the gateway's route
phase is one stream of four) with 16 in flight. The server's CPU time (/proc) divided by the
streams is the floor of any design built on that server: it bounds how close the gateway's
ext_proc can get to the one-message `minimal` target of `bench.run`. Three servers are
measured: grpc.aio on uvloop (what the gateway runs), grpcio's synchronous server (a thread
pool, the other lever issue 11 names) and grpclib (pure-Python HTTP/2 on the `h2` library, on
uvloop; `pip install -e '.[bench]'`, skipped when absent).

    python -m bench.grpc_floor [--streams 4800] [--rounds 3] [--servers aio,sync,grpclib]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_REPLY = pb.ProcessingResponse(request_headers=pb.HeadersResponse()).SerializeToString()
_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


async def _process(it: AsyncIterator[pb.ProcessingRequest], _: object) -> AsyncIterator[bytes]:
    async for _msg in it:
        yield _REPLY


def _process_sync(it: Iterator[pb.ProcessingRequest], _: object) -> Iterator[bytes]:
    for _msg in it:
        yield _REPLY


def _handlers(process: object) -> tuple[grpc.GenericRpcHandler]:
    handler = grpc.stream_stream_rpc_method_handler(
        process, request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=lambda b: b)
    return (grpc.method_handlers_generic_handler(_SERVICE, {"Process": handler}),)


async def _serve(socket: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    server.add_generic_rpc_handlers(_handlers(_process))
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    await server.wait_for_termination()


def _serve_sync(socket: str) -> None:
    """grpcio's synchronous server: one pool thread per stream in flight (32 >= the client's
    16), the GIL handed between them and the server's polling thread."""
    server = grpc.server(ThreadPoolExecutor(max_workers=32),
                         options=[("grpc.max_concurrent_streams", 100_000)])
    server.add_generic_rpc_handlers(_handlers(_process_sync))
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    server.wait_for_termination()


async def _drive(socket: str, streams: int, messages: int, concurrency: int = 16) -> None:
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders())

        async def one() -> None:
            call = stub.Process()
            for _ in range(messages):
                await call.write(msg)
                await call.read()
            await call.done_writing()
            await call.read()

        async def worker(n: int) -> None:
            for _ in range(n):
                await one()

        await asyncio.gather(*(worker(streams // concurrency) for _ in range(concurrency)))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_grpclib(socket: str) -> None:
    """grpclib's server with a codec that sends the pre-serialized reply as it is."""
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server, Stream

    class Raw(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return message if isinstance(message, bytes) else bytes(message.SerializeToString())

        def decode(self, data: bytes, message_type: Any) -> Any:
            return message_type.FromString(data)

    class Processor:
        async def process(self, stream: Stream[Any, Any]) -> None:
            async for _msg in stream:
                await stream.send_message(_REPLY)

        def __mapping__(self) -> dict[str, Handler]:
            return {f"/{_SERVICE}/Process": Handler(
                self.process, Cardinality.STREAM_STREAM, pb.ProcessingRequest,
                pb.ProcessingResponse)}

    async def serve() -> None:
        server = Server([Processor()], codec=Raw())
        await server.start(path=socket)
        await server.wait_closed()

    uvloop.run(serve())


def _measure(kind: str, streams: int, rounds: int) -> dict[int, float]:
    """Median server CPU µs per stream for 1 and 4 messages, one server process of `kind`."""
    results: dict[int, list[float]] = {1: [], 4: []}
    with tempfile.TemporaryDirectory() as tmp:
        socket = f"{tmp}/floor.sock"
        server = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", socket,
                                   "--server", kind])
        try:
            deadline = time.monotonic() + 20
            while not Path(socket).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            uvloop.run(_drive(socket, 320, 1))  # warm-up
            for r in range(rounds):
                for messages in (1, 4):
                    t0 = _cpu_s(server.pid)
                    uvloop.run(_drive(socket, streams, messages))
                    per = (_cpu_s(server.pid) - t0) / streams * 1e6
                    results[messages].append(per)
                    print(f"  {kind} round {r + 1}: {messages} message(s) per stream: "
                          f"{per:6.0f} µs server CPU per stream", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    return {m: sorted(v)[len(v) // 2] for m, v in results.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.grpc_floor")
    ap.add_argument("--streams", type=int, default=4800)
    ap.add_argument("--rounds", type=int, default=3, help="runs per shape (median)")
    ap.add_argument("--servers", default="aio,sync,grpclib", help="which servers to measure")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--server", default="aio", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        if args.server == "sync":
            _serve_sync(args.serve)
        elif args.server == "grpclib":
            _serve_grpclib(args.serve)
        else:
            uvloop.run(_serve(args.serve))
        return
    kinds = args.servers.split(",")
    if "grpclib" in kinds and importlib.util.find_spec("grpclib") is None:
        print("grpclib not installed (pip install -e '.[bench]'): not measured")
        kinds.remove("grpclib")
    medians = {kind: _measure(kind, args.streams, args.rounds) for kind in kinds}
    print("\n| server | 1 message µs/stream | 4 messages µs/stream | per extra message | 4/1 |")
    print("|---|---:|---:|---:|---:|")
    for kind, m in medians.items():
        print(f"| {kind} | {m[1]:.0f} | {m[4]:.0f} | {(m[4] - m[1]) / 3:.0f} | "
              f"{m[4] / m[1]:.2f}x |")

if __name__ == "__main__":
    main()
