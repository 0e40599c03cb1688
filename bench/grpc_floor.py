"""`python -m bench.grpc_floor`: what grpc.aio alone charges an ext_proc, per stream and per
message, with no Envoy and no gateway logic.

A do-nothing ExternalProcessor (grpc.aio on uvloop, replies pre-serialized) runs in its own
process behind a Unix socket; a client in this process opens streams of 1 and of 4 messages
(the gateway's route phase is one stream of four) with 16 in flight. The server's CPU time
(/proc) divided by the streams is the floor of any design built on grpc.aio: it bounds how
close the gateway's ext_proc can get to the one-message `minimal` target of `bench.run`.

    python -m bench.grpc_floor [--streams 4800] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_REPLY = pb.ProcessingResponse(request_headers=pb.HeadersResponse()).SerializeToString()
_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


async def _process(it: AsyncIterator[pb.ProcessingRequest], _: object) -> AsyncIterator[bytes]:
    async for _msg in it:
        yield _REPLY


async def _serve(socket: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    handler = grpc.stream_stream_rpc_method_handler(
        _process, request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        _SERVICE, {"Process": handler}),))
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    await server.wait_for_termination()


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.grpc_floor")
    ap.add_argument("--streams", type=int, default=4800)
    ap.add_argument("--rounds", type=int, default=3, help="runs per shape (median)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        uvloop.run(_serve(args.serve))
        return
    results: dict[int, list[float]] = {1: [], 4: []}
    with tempfile.TemporaryDirectory() as tmp:
        socket = f"{tmp}/floor.sock"
        server = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", socket])
        try:
            deadline = time.monotonic() + 20
            while not Path(socket).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            uvloop.run(_drive(socket, 320, 1))  # warm-up
            for r in range(args.rounds):
                for messages in (1, 4):
                    t0 = _cpu_s(server.pid)
                    uvloop.run(_drive(socket, args.streams, messages))
                    per = (_cpu_s(server.pid) - t0) / args.streams * 1e6
                    results[messages].append(per)
                    print(f"  round {r + 1}: {messages} message(s) per stream: "
                          f"{per:6.0f} µs server CPU per stream", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    one = sorted(results[1])[len(results[1]) // 2]
    four = sorted(results[4])[len(results[4]) // 2]
    print(f"\nmedian: 1 message {one:.0f} µs, 4 messages {four:.0f} µs per stream "
          f"({(four - one) / 3:.0f} µs per extra message; 4/1 = {four / one:.2f}x)")


if __name__ == "__main__":
    main()
