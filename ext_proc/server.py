"""The ext_proc gRPC server: demultiplexes Envoy's streams to the pipeline's phases.

Route phase (listener filter): request headers and buffered body -> `route`; response headers
and body -> `respond`. Translate phase (upstream filter, one stream per attempt, told apart by
the attributes Envoy sends) -> `attempt`. An attempt finds the route phase's parsed request
in memory by request id; with several workers (`ext_proc.workers`) a retry that lands on
another worker is built by the owner (`workers.py`). `envoy.py` converts protobuf.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import structlog
import uvloop
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.accesslog.v3 import als_pb2_grpc as als_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc import admin, envoy, workers
from ext_proc.admission.gate import Gate
from ext_proc.pipeline import Pipeline, Reply
from ext_proc.providers import warm
from ext_proc.route import Reject, Wait
from ext_proc.select import Selector
from ext_proc.state import RequestState
from ext_proc.stats import BackendHealth
from ext_proc.stats.pool_metrics import Pools
from ext_proc.table import Routes, RoutingClient
from ext_proc.usage import ledger as usage_ledger
from ext_proc.usage.ledger import Ledger
from switchyard.contract import REQUEST_ID_HEADER
from switchyard.helpfmt import HelpFormatter
from switchyard.logs import configure_logging

syslog = structlog.get_logger("switchyard.ext_proc")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Reply]:
        p = self.pipeline
        st: RequestState | None = None
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if kind == "request_headers":
                    if req.attributes:  # an upstream filter: one attempt's translate phase
                        async for resp in p.translate_phase(req, request_iterator):
                            yield resp
                        return
                    st = p.new_request()
                    yield p.request_headers(st, req.request_headers)
                elif st is None:
                    if kind != "response_headers":
                        yield envoy.EMPTY
                        continue
                    # Envoy's own reply to a request it never passed on (HTTP/1.0, headers
                    # too large, a malformed request): answer it, as a JSON error object.
                    st = p.new_request()
                    yield p.response(st, req)
                elif kind == "request_body":
                    if st.feedback:  # may look the response id up in Redis (awaited)
                        yield await p.feedback(req.request_body.body)
                        continue
                    reply = p.request_body(st, req.request_body.body)
                    if isinstance(reply, Wait):  # queued for headroom
                        yield envoy.extend_timeout(reply.deadline - time.monotonic() + 1)
                        reply = await p.after_wait(st, reply)
                    yield reply
                elif kind in ("response_headers", "response_body"):
                    yield p.response(st, req)
                else:
                    yield envoy.EMPTY
        except Exception:  # a bug, not a client's error: say so in the client's schema
            syslog.exception("ext_proc failed on a request",
                             rid=st.rid if st is not None else None)
            if st is not None and not st.logged:
                yield envoy.reject(st.ingress, INTERNAL_ERROR)
        finally:
            if st is not None:
                p.ended(st)


#: The answer to a request the route phase failed on (an unexpected exception).
INTERNAL_ERROR = Reject(500, "The gateway failed to process this request", "api_error",
                        "internal_error")


def serialize(reply: Reply) -> bytes:
    """Replies the pipeline wrote in wire format (`wire.py`) go out as they are."""
    return reply if type(reply) is bytes else reply.SerializeToString()  # type: ignore[union-attr]


def add_processor(servicer: ExternalProcessor, server: grpc.aio.Server) -> None:
    """`add_ExternalProcessorServicer_to_server`, with `serialize` for the replies."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.Process, request_deserializer=pb.ProcessingRequest.FromString,
        response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "envoy.service.ext_proc.v3.ExternalProcessor", {"Process": handler}),))


class AttemptLog(als_grpc.AccessLogServiceServicer):
    """Envoy's access log of failed upstream attempts (router `upstream_log`), batched."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def StreamAccessLogs(
            self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
            context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        p = self.pipeline
        async for msg in request_iterator:
            for e in msg.http_logs.log_entry:
                rid = e.request.request_headers.get(REQUEST_ID_HEADER, "")
                if rid:
                    flags = e.common_properties.response_flags
                    p.attempt_failed(rid, e.common_properties.upstream_cluster,
                                     e.response.response_code.value,
                                     dict(e.response.response_headers),
                                     flags.downstream_connection_termination
                                     or flags.downstream_remote_reset)
        return als_pb2.StreamAccessLogsResponse()


async def serve(address: str, port: int, control_plane: str, metrics_port: int, node_id: str,
                envoy_admin: str | None = None, unix_socket: str | None = None,
                ledger: Ledger | None = None, worker: int = 0,
                internal_sockets: list[str] | None = None) -> None:
    gate = Gate()
    pools = Pools()

    def on_update(routes: Routes) -> None:
        gate.configure(routes.admission_json)
        selector.share(gate.redis_url)  # live selection's fleet state: the same Redis
        warm(routes.clusters.values())
        pools.sync_routes(routes)  # GPU pools are scraped before their first request

    routing = RoutingClient(control_plane, node_id, on_update=on_update)
    tasks = [asyncio.create_task(routing.run())]
    health = BackendHealth()
    selector = Selector(health)
    if envoy_admin:
        tasks.append(asyncio.create_task(health.poll_envoy(envoy_admin)))
    if ledger is not None:
        usage_ledger.LEDGER = ledger
        tasks.append(asyncio.create_task(ledger.run()))
    big = 64 * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000), (
        "grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)])
    siblings = workers.Siblings(worker, internal_sockets) if internal_sockets else None
    pipeline = Pipeline(routing, health, gate, selector, pools, siblings)
    add_processor(ExternalProcessor(pipeline), server)
    als_grpc.add_AccessLogServiceServicer_to_server(AttemptLog(pipeline), server)
    bound = server.add_insecure_port(f"{address}:{port}")
    if unix_socket:
        server.add_insecure_port(f"unix:{unix_socket}")
    await server.start()
    internal = (await workers.start_internal(internal_sockets[worker], pipeline)
                if internal_sockets else None)
    http = await admin.start_http(address, metrics_port, routing, health, gate, selector,
                                  pools)
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
    if internal is not None:
        await internal.cleanup()
    if siblings is not None:
        await siblings.close()
    if ledger is not None:
        ledger.close()  # requests that ended during the grace period are written too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard ext-proc",
                                     formatter_class=HelpFormatter)
    for flag, default, help_ in (
        ("--address", "127.0.0.1", "address of the gRPC and metrics listeners"),
        ("--port", 18081, "gRPC port Envoy connects to (0: any free port)"),
        ("--control-plane", "127.0.0.1:18000", "control plane's RoutingTable gRPC address"),
        ("--metrics-port", 9464, "port of /metrics and /healthz"),
        ("--node-id", f"ext-proc-{os.getpid()}", "name this process gives the control plane"),
        ("--unix-socket", None, "also listen on this Unix socket (Envoy beside ext_proc)"),
        ("--envoy-admin", None, "local Envoy admin URL, for outlier/circuit-breaker state"),
        ("--log-level", "info", "debug, info, warning or error"),
        ("--usage-dir", None, "append the usage ledger (one JSON line per request) to files "
                              "in this directory; default: no ledger"),
        ("--usage-flush-ms", 1000, "longest time a ledger record waits in memory"),
        ("--usage-max-file-mb", 64.0, "start a new ledger file past this size"),
        ("--worker", 0, "this worker's index among the ext_proc workers behind one Envoy"),
        ("--internal-sockets", None, "every worker's internal Unix socket, comma-separated by "
                                     "index: a retry another worker routed is built there"),
    ):
        parser.add_argument(flag, default=default, help=help_,
                            type=type(default) if default is not None else str)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    ledger = (Ledger(args.usage_dir, args.node_id, flush_interval_s=args.usage_flush_ms / 1000,
                     max_file_mb=args.usage_max_file_mb) if args.usage_dir else None)
    uvloop.run(serve(args.address, args.port, args.control_plane, args.metrics_port,
                     args.node_id, args.envoy_admin, args.unix_socket, ledger, args.worker,
                     args.internal_sockets.split(",") if args.internal_sockets else None))


if __name__ == "__main__":
    main()
