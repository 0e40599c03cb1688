"""Calibration ext_proc for the optional `minimal` target: one phase, headers only, no logic.

Same stack as the gateway's ext_proc (grpc.aio on uvloop, xds-protos), but every stream is
one request-headers message answered with CONTINUE. Comparing it with the gateway separates
the floor cost of a Python gRPC ext_proc on this machine from the gateway's own work.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_CONTINUE = pb.ProcessingResponse(request_headers=pb.HeadersResponse())


class MinimalProcessor(pb_grpc.ExternalProcessorServicer):
    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for _ in request_iterator:
            yield _CONTINUE


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    pb_grpc.add_ExternalProcessorServicer_to_server(MinimalProcessor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ext_proc_minimal")
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
