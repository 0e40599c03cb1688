"""The ext_proc gRPC server: demultiplexes Envoy's streams to the pipeline's phases.

Route phase (listener filter): request headers and buffered body -> `route`; response headers
and body -> `respond`. Translate phase (upstream filter, one stream per attempt, told apart by
the attributes Envoy sends) -> `attempt`. Both reach this process, so an attempt finds the
route phase's parsed request in memory by request id. `envoy.py` converts protobuf.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import structlog
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc import admin, attempt, envoy, respond, route
from ext_proc.ingress import INGRESS
from ext_proc.providers import warm
from ext_proc.state import RequestState
from ext_proc.stats import BackendHealth
from ext_proc.table import RoutingClient
from ext_proc.usage import account
from switchyard.contract import CHAT_PATH
from switchyard.logs import configure_logging

syslog = structlog.get_logger("switchyard.ext_proc")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, routing: RoutingClient, health: BackendHealth | None = None) -> None:
        self.routing = routing
        self.health = health or BackendHealth()
        self.inflight: dict[str, RequestState] = {}
        self._order = envoy.OrderMetadata()
        self._strip = attempt.StripList()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{int(time.time()) & 0xFFFFFF:x}-"

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        st: RequestState | None = None
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if kind == "request_headers":
                    if req.attributes:
                        async for resp in self._translate_phase(req, request_iterator):
                            yield resp
                        return
                    st = RequestState(self._prefix + str(next(self._ids)))
                    yield self._on_request_headers(st, req.request_headers)
                elif st is None:
                    yield envoy.EMPTY
                elif kind == "request_body":
                    yield self._on_request_body(st, req.request_body.body)
                elif kind in ("response_headers", "response_body"):
                    yield self._on_response(st, req)
                else:
                    yield envoy.EMPTY
        finally:
            if st is not None:
                self.inflight.pop(st.rid, None)
                if not st.logged and st.model:
                    account(respond.finish(st, outcome=respond.interrupted(st)))

    # -- route phase ------------------------------------------------------------------------
    def _reject(self, st: RequestState, r: route.Reject) -> pb.ProcessingResponse:
        account(respond.rejected(st, r))
        return envoy.reject(st.ingress, r)

    def _on_request_headers(self, st: RequestState, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        path, internal = envoy.request_line(msg)
        ingress = route.ingress_for(path, msg.end_of_stream)
        if isinstance(ingress, route.Reject):
            if ingress.status == 404:  # not an API request: no log line, as Envoy's own 404
                return envoy.reject(st.ingress, ingress)
            return self._reject(st, ingress)
        st.ingress = ingress
        return envoy.strip_internal(internal) if internal else envoy.CONTINUE_REQUEST_HEADERS

    def _on_request_body(self, st: RequestState, raw: bytes) -> pb.ProcessingResponse:
        st.bytes_in = len(raw)
        parsed = route.parse(st.ingress, raw)
        if isinstance(parsed, route.Reject):
            return self._reject(st, parsed)
        st.model = parsed.alias
        st.stream = parsed.stream
        routes = self.routing.routes if self.routing.ready.is_set() else None
        decision = route.decide(st.ingress, parsed, routes, self.health)
        if isinstance(decision, route.Reject):
            return self._reject(st, decision)
        st.body = parsed.canonical
        st.raw = parsed.raw
        st.candidates = decision.candidates
        self.inflight[st.rid] = st
        return envoy.forward(decision, parsed.alias, st.rid, self._order)

    def _on_response(self, st: RequestState, req: pb.ProcessingRequest
                     ) -> pb.ProcessingResponse:
        if req.HasField("response_headers"):
            msg = req.response_headers
            end = msg.end_of_stream
            reply = envoy.response_headers(
                respond.on_headers(st, envoy.headers(msg), end, self.health))
        else:
            end = req.response_body.end_of_stream
            reply = envoy.response_body(respond.on_body(st, req.response_body.body, end))
        if end:
            account(respond.finish(st))
        return reply

    # -- translate phase --------------------------------------------------------------------
    async def _translate_phase(self, req: pb.ProcessingRequest,
                               rest: AsyncIterator[pb.ProcessingRequest]
                               ) -> AsyncIterator[pb.ProcessingResponse]:
        """One attempt: rewrite the request, then watch its response status for health."""
        rid, cluster = envoy.attempt_target(req)
        st, routes = self.inflight.get(rid), self.routing.routes
        backend, problem = attempt.resolve(st, cluster, routes)
        if st is None or backend is None:
            assert problem is not None
            yield envoy.reject(st.ingress if st else INGRESS[CHAT_PATH], problem)
            return
        built = attempt.prepare(st, backend, self._strip.of(routes))
        if isinstance(built, route.Reject):
            yield envoy.reject(st.ingress, built)  # logged by the route phase's response path
            return
        yield envoy.upstream(built)
        async for msg in rest:
            if msg.WhichOneof("request") == "response_headers":
                status, retry_after = envoy.status_and_retry_after(msg.response_headers)
                attempt.answered(st, backend, status, retry_after, self.health)
                yield envoy.answered_by(backend.cluster)
            else:
                yield envoy.EMPTY


async def serve(address: str, port: int, control_plane: str, metrics_port: int, node_id: str,
                envoy_admin: str | None = None, unix_socket: str | None = None) -> None:
    routing = RoutingClient(control_plane, node_id,
                            on_update=lambda routes: warm(routes.clusters.values()))
    tasks = [asyncio.create_task(routing.run())]
    health = BackendHealth()
    if envoy_admin:
        tasks.append(asyncio.create_task(health.poll_envoy(envoy_admin)))
    big = 64 * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000), (
        "grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)])
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(routing, health), server)
    bound = server.add_insecure_port(f"{address}:{port}")
    if unix_socket:
        server.add_insecure_port(f"unix:{unix_socket}")
    await server.start()
    http = await admin.start_http(address, metrics_port, routing, health)
    syslog.info("ext_proc listening", address=address, port=bound, control_plane=control_plane,
                metrics_port=metrics_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await server.stop(grace=2)
    await http.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="switchyard ext-proc")
    for flag, default, help_ in (
        ("--address", "127.0.0.1", "address of the gRPC and metrics listeners"),
        ("--port", 18081, "gRPC port Envoy connects to (0: any free port)"),
        ("--control-plane", "127.0.0.1:18000", "control plane's RoutingTable gRPC address"),
        ("--metrics-port", 9464, "port of /metrics and /healthz"),
        ("--node-id", f"ext-proc-{os.getpid()}", "name this process gives the control plane"),
        ("--unix-socket", None, "also listen on this Unix socket (Envoy beside ext_proc)"),
        ("--envoy-admin", None, "local Envoy admin URL, for outlier/circuit-breaker state"),
        ("--log-level", "info", "debug, info, warning or error"),
    ):
        parser.add_argument(flag, default=default, help=f"{help_} (default: {default})",
                            type=type(default) if default is not None else str)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    uvloop.run(serve(args.address, args.port, args.control_plane, args.metrics_port,
                     args.node_id, args.envoy_admin, args.unix_socket))


if __name__ == "__main__":
    main()
