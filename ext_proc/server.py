"""The ext_proc gRPC server: per-request brain on Envoy's data path.

Two kinds of stream arrive here (told apart by the attributes Envoy sends):

* **route phase** (listener filter, before the router): request headers, the buffered body,
  then response headers and body. Parses the OpenAI request once, rejects bad input, picks
  candidate backends, tells Envoy the cluster (header + clear_route_cache), and later
  translates the response back to the ingress schema (buffered or SSE chunk by chunk).
* **translate phase** (upstream filter inside each cluster, once per attempt): one headers
  message. Looks up the route phase's parsed body by request id and replaces path, headers,
  credentials and body for the backend this attempt goes to (CONTINUE_AND_REPLACE), so Envoy
  never streams the request body to Python twice.

Both phases of a request reach this same process (ext_proc runs beside Envoy), so the parsed
body is shared in memory, keyed by an id the route phase mints.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2, text_format

from ext_proc import metrics, params
from ext_proc.adapters import ResponseHandler
from ext_proc.contract import (
    ATTEMPTS_HEADER,
    CHAT_PATH,
    HEDGE_PREFIX,
    INTERNAL_HEADER_PREFIX,
    MESSAGES_PATH,
    METADATA_NAMESPACE,
    MODEL_HEADER,
    PRIORITY_GROUPS_KEY,
    REQUEST_ID_HEADER,
)
from ext_proc.ingress import INGRESS, Ingress, IngressError
from ext_proc.select import ContextTooLong, candidates
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, Routes, RoutingClient
from ext_proc.translate.openai import TranslationError, error_body

log = structlog.get_logger("switchyard.request")
syslog = structlog.get_logger("switchyard.ext_proc")

#: Client headers that must never reach a provider (the gateway sets its own credentials).
#: Upstream filters mutate the one header map every attempt of a request shares, so each
#: attempt strips every credential/provider header any adapter might have set for an earlier
#: attempt before setting its own. The request id header stays: later attempts need it.
_STRIP_UPSTREAM = (
    "authorization",
    "x-api-key",
    "api-key",
    "anthropic-version",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "accept",
    "cookie",
    MODEL_HEADER,
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
)
_ATTR_NS = "envoy.filters.http.ext_proc"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

_CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
_BUFFER_RESPONSE = processing_mode_pb2.ProcessingMode(
    response_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED
)
_STREAM_RESPONSE = processing_mode_pb2.ProcessingMode(
    response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED
)
_SKIP_RESPONSE = processing_mode_pb2.ProcessingMode(
    response_body_mode=processing_mode_pb2.ProcessingMode.NONE
)


def _hv(key: str, value: bytes) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value), append_action=_OVERWRITE
    )


def _headers(msg: pb.HttpHeaders) -> dict[str, str]:
    return {
        h.key: (h.raw_value.decode("latin-1") if h.raw_value else h.value)
        for h in msg.headers.headers
    }


def _immediate(
    status: int, body: bytes, details: str, extra: tuple[tuple[str, bytes], ...] = ()
) -> pb.ProcessingResponse:
    headers = [_hv("content-type", b"application/json"), *(_hv(k, v) for k, v in extra)]
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type]
            headers=pb.HeaderMutation(set_headers=headers),
            body=body,
            details=details,
        )
    )


def _error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> pb.ProcessingResponse:
    return _immediate(status, error_body(message, type_, code, param), code or type_)


class RequestState:
    """One HTTP request's route-phase state; shared with its translate-phase attempts."""

    __slots__ = (
        "attempts",
        "backend",
        "body",
        "bytes_in",
        "candidates",
        "dropped",
        "handler",
        "ingress",
        "logged",
        "model",
        "raw",
        "rid",
        "seen",
        "sent_cache",
        "status",
        "stream",
        "t0",
        "t_first",
    )

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.t0 = time.monotonic()
        self.t_first: float | None = None
        self.body: dict[str, Any] = {}
        #: The request as the client sent it (for same-schema passthrough).
        self.raw: dict[str, Any] = {}
        self.ingress: Ingress = INGRESS[CHAT_PATH]
        self.model = ""
        self.stream = False
        self.candidates: tuple[BackendInfo, ...] = ()
        self.attempts = 0
        self.backend: BackendInfo | None = None
        self.sent_cache: dict[str, tuple[bytes, bytes, list[tuple[str, bytes]]]] = {}
        self.status = 0
        self.handler: ResponseHandler | None = None
        self.bytes_in = 0
        self.logged = False
        self.dropped: set[str] = set()
        #: Clusters whose attempts reached the translate phase.
        self.seen: set[str] = set()


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, routing: RoutingClient, health: BackendHealth | None = None) -> None:
        self.routing = routing
        self.health = health or BackendHealth()
        self._order_cache: dict[tuple[str, ...], struct_pb2.Struct] = {}
        self._strip: tuple[Routes | None, tuple[str, ...]] = (None, _STRIP_UPSTREAM)
        self.inflight: dict[str, RequestState] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{int(time.time()) & 0xFFFFFF:x}-"

    # -- gRPC entry point -------------------------------------------------------------------
    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ProcessingResponse]:
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
                    yield pb.ProcessingResponse()
                elif kind == "request_body":
                    yield self._on_request_body(st, req.request_body)
                elif kind == "response_headers":
                    yield self._on_response_headers(st, req.response_headers)
                elif kind == "response_body":
                    yield self._on_response_body(st, req.response_body)
                else:
                    yield pb.ProcessingResponse()
        finally:
            if st is not None:
                self.inflight.pop(st.rid, None)
                if not st.logged and st.model:
                    self._finish(st, outcome=_interrupted(st))

    # -- route phase ------------------------------------------------------------------------
    def _on_request_headers(self, st: RequestState, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        path = ""
        internal = []
        for h in msg.headers.headers:
            if h.key == ":path":
                path = (h.raw_value or h.value.encode()).decode("latin-1").split("?", 1)[0]
            elif h.key.startswith(INTERNAL_HEADER_PREFIX):
                internal.append(h.key)
        ingress = INGRESS.get(path)
        if ingress is None:
            return _error(404, "Unknown path or method", "invalid_request_error", "not_found")
        st.ingress = ingress
        if msg.end_of_stream:
            return self._reject(st, 400, "Request body is required", "invalid_request_error",
                                "missing_body")
        if internal:
            return pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(
                    response=pb.CommonResponse(
                        header_mutation=pb.HeaderMutation(remove_headers=internal)
                    )
                )
            )
        return _CONTINUE_REQUEST_HEADERS

    def _on_request_body(self, st: RequestState, msg: pb.HttpBody) -> pb.ProcessingResponse:
        raw = msg.body
        st.bytes_in = len(raw)
        try:
            raw_body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._reject(st, 400, f"Request body is not valid JSON: {exc}",
                                "invalid_request_error", "invalid_json")
        try:
            body, alias, stream = st.ingress.parse(raw_body)
        except IngressError as exc:
            return self._reject(st, exc.status, exc.message, exc.type, exc.code, exc.param)
        if not self.routing.ready.is_set():
            return self._reject(st, 503, "The gateway has no routing table yet; retry shortly",
                                "api_error", "not_ready")
        routes = self.routing.routes
        model = routes.models.get(alias)
        if model is None:
            return self._reject(
                st, 404, f"The model `{alias}` does not exist or is not served by this gateway",
                "not_found_error" if st.ingress is INGRESS[MESSAGES_PATH]
                else "invalid_request_error", "model_not_found", "model", model=alias)
        st.body = body
        st.raw = raw_body
        st.model = alias
        st.stream = stream
        try:
            cands = candidates(model, body, self.health)
        except ContextTooLong as exc:
            return self._reject(st, 400, str(exc), "invalid_request_error",
                                "context_length_exceeded", "messages")
        if st.ingress is not INGRESS[CHAT_PATH]:
            cands = tuple(c for c in cands if st.ingress.serves(c))
            if not cands:
                return self._reject(st, 400, f"The model `{alias}` has no backend that serves "
                                    f"this API", "invalid_request_error", "unsupported_api",
                                    "model")
        st.candidates = cands
        self.inflight[st.rid] = st
        if model.hedge_after_ms:
            try_timeout = model.hedge_after_ms
        else:
            try_timeout = model.first_byte_timeout_ms if stream else model.per_try_timeout_ms
        retries = min(model.max_retries, max(len(cands) - 1, 0)) if len(cands) > 1 else \
            model.max_retries
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(
                response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(
                        set_headers=[
                            _hv(MODEL_HEADER, alias.encode()),
                            _hv(REQUEST_ID_HEADER, st.rid.encode()),
                            _hv("x-envoy-max-retries", str(retries).encode()),
                            _hv("x-envoy-upstream-rq-per-try-timeout-ms",
                                str(try_timeout).encode()),
                        ]
                    ),
                    clear_route_cache=True,
                )
            ),
            dynamic_metadata=self._order_metadata(cands),
        )

    def _reject(self, st: RequestState, status: int, message: str, type_: str,
                code: str | None, param: str | None = None, *, model: str = "",
                log_it: bool = True) -> pb.ProcessingResponse:
        """An immediate error reply in the client's own (ingress) error schema.

        Route-phase rejections get their request log line and reject counter here; the
        translate phase passes `log_it=False` (its reply reaches the route phase's response
        path, which logs it)."""
        if log_it and not st.logged:
            st.logged = True
            st.status = status
            metrics.REJECTED.labels(reason=code or type_).inc()
            log.info("request", rid=st.rid, model=model or st.model or None, status=status,
                     outcome="rejected", code=code or type_,
                     latency_ms=round((time.monotonic() - st.t0) * 1000, 1))
        return _immediate(status, st.ingress.error(message, type_, code, param), code or type_)

    def _order_metadata(self, cands: tuple[BackendInfo, ...]) -> struct_pb2.Struct:
        """Dynamic metadata for the priority_group specifier: attempt k -> candidate k.

        Cached per distinct order: there are only a few per model."""
        key = tuple(c.cluster for c in cands)
        cached = self._order_cache.get(key)
        if cached is None:
            if len(self._order_cache) > 4096:
                self._order_cache.clear()
            cached = struct_pb2.Struct()
            cached.update({METADATA_NAMESPACE: {PRIORITY_GROUPS_KEY: [
                {"name": c, "clusters": [{"cluster_name": c, "weight": 1}]} for c in key]}})
            self._order_cache[key] = cached
        return cached

    def _on_response_headers(self, st: RequestState, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        headers = _headers(msg)
        st.status = status = int(headers.get(":status", "0"))
        backend = st.backend
        content_type = headers.get("content-type", "")
        set_headers = []
        if st.dropped:
            set_headers.append(_hv("x-switchyard-dropped-params",
                                   ",".join(sorted(st.dropped)).encode()))
        # Envoy counts every attempt (the route adds the header), connect failures included,
        # which never reach the translate phase.
        envoy_attempts = headers.get(ATTEMPTS_HEADER, "")
        if envoy_attempts.isdigit():
            self._note_unseen_failures(st, int(envoy_attempts))
            st.attempts = max(st.attempts, int(envoy_attempts))
        if backend is not None:
            set_headers.append(_hv("x-switchyard-backend", backend.label.encode()))
            set_headers.append(_hv(ATTEMPTS_HEADER, str(st.attempts).encode()))
        from_upstream = backend is not None and "x-envoy-upstream-service-time" in headers
        handler: ResponseHandler
        if not from_upstream:
            # Envoy's own reply (no healthy upstream, timeout, overflow): the ingress's error.
            handler = _EnvoyErrorHandler(status, st.ingress)
        else:
            assert backend is not None
            handler = st.ingress.response(status, content_type, st.body, backend)
        st.handler = handler
        remove = []
        if handler.rewrites:
            remove.append("content-length")
            if handler.content_type:
                set_headers.append(_hv("content-type", handler.content_type))
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove)
        )
        if msg.end_of_stream:
            self._finish(st)
            return pb.ProcessingResponse(
                response_headers=pb.HeadersResponse(response=common), mode_override=_SKIP_RESPONSE
            )
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(response=common),
            mode_override=_STREAM_RESPONSE if handler.streaming else _BUFFER_RESPONSE,
        )

    def _note_unseen_failures(self, st: RequestState, attempts: int) -> None:
        """Attempts Envoy made that the translate phase never saw (connection refused or
        reset before a stream existed) failed on candidates[k]: count them for health."""
        if attempts <= 1 or st.backend is None:
            return
        seen = st.seen
        for c in st.candidates[:attempts - 1]:
            if c.cluster not in seen and c.cluster != st.backend.cluster:
                self.health.record(c.cluster, True)

    def _on_response_body(self, st: RequestState, msg: pb.HttpBody) -> pb.ProcessingResponse:
        handler = st.handler
        if st.t_first is None:
            st.t_first = time.monotonic()
        if handler is None:
            return pb.ProcessingResponse(response_body=pb.BodyResponse())
        extra_headers: list[base_pb2.HeaderValueOption] = []
        try:
            out = handler.feed(msg.body)
            if msg.end_of_stream:
                tail = handler.finish()
                if tail is not None:
                    out = tail if not out else out + tail
        except Exception as exc:  # a provider sent something we cannot translate
            syslog.warning("response translation failed", rid=st.rid, error=repr(exc))
            out = error_body(
                "The upstream provider returned a malformed response",
                "api_error",
                "bad_upstream_response",
            )
            if not handler.streaming:
                extra_headers.append(_hv(":status", b"502"))
                st.status = 502
        if msg.end_of_stream:
            self._finish(st)
        if out is None:
            return pb.ProcessingResponse(response_body=pb.BodyResponse())
        mutation = pb.BodyMutation(body=out) if out else pb.BodyMutation(clear_body=True)
        return pb.ProcessingResponse(
            response_body=pb.BodyResponse(
                response=pb.CommonResponse(
                    body_mutation=mutation,
                    header_mutation=pb.HeaderMutation(set_headers=extra_headers)
                    if extra_headers
                    else None,
                )
            )
        )

    # -- translate phase --------------------------------------------------------------------
    async def _translate_phase(
        self, req: pb.ProcessingRequest, rest: AsyncIterator[pb.ProcessingRequest]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """One attempt: rewrite the request, then watch its response status for health."""
        reply, backend = self._attempt(req)
        yield reply
        async for msg in rest:
            if msg.WhichOneof("request") == "response_headers" and backend is not None:
                self._attempt_answered(backend, msg.response_headers)
                yield _CONTINUE_RESPONSE_HEADERS
            else:
                yield pb.ProcessingResponse()

    def _attempt_answered(self, backend: BackendInfo, msg: pb.HttpHeaders) -> None:
        status = b""
        retry_after = None
        for h in msg.headers.headers:
            if h.key == ":status":
                status = h.raw_value or h.value.encode()
            elif h.key == "retry-after":
                retry_after = (h.raw_value or h.value.encode()).decode("latin-1")
        metrics.ATTEMPTS.labels(backend.label, status.decode()).inc()
        if status == b"429":
            self.health.cool_down(backend.cluster, retry_after)
        else:
            self.health.record(backend.cluster, status[:1] == b"5")

    def _attempt(self, req: pb.ProcessingRequest
                 ) -> tuple[pb.ProcessingResponse, BackendInfo | None]:
        """The rewritten request for this attempt, and the backend it goes to (None when the
        attempt is answered here instead)."""
        attrs = req.attributes.get(_ATTR_NS)
        cluster = attrs.fields["xds.cluster_name"].string_value if attrs else ""
        rid = ""
        for h in req.request_headers.headers.headers:
            if h.key == REQUEST_ID_HEADER:
                rid = (h.raw_value or h.value.encode()).decode()
                break
        st = self.inflight.get(rid)
        if st is None:
            return _error(
                500, "Request state not found for this attempt", "api_error", "internal_error"
            ), None
        if cluster.startswith(HEDGE_PREFIX) and attrs is not None:
            cluster = _host_backend(attrs.fields["xds.upstream_host_metadata"].string_value)
        backend = next((b for b in st.candidates if b.cluster == cluster), None)
        if backend is None:
            backend = self.routing.routes.clusters.get(cluster)
        if backend is None:
            return _error(502, f"No backend for cluster {cluster}", "api_error",
                          "no_backend"), None
        st.attempts += 1
        st.backend = backend
        st.seen.add(backend.cluster)
        built = st.sent_cache.get(cluster)
        if built is None:
            canonical = st.body
            bad = params.unsupported(backend.provider.kind, canonical)
            if bad:
                if backend.provider.options.get("unsupported_params") == "reject":
                    return self._reject(
                        st, 400, f"{backend.provider.kind} backends do not support "
                        f"{', '.join(bad)}", "invalid_request_error", "unsupported_parameter",
                        bad[0], log_it=False), backend
                canonical = params.without(canonical, bad)
                st.dropped.update(bad)
            try:
                built = st.ingress.request(canonical, st.raw, backend)
            except TranslationError as exc:
                return self._reject(st, exc.status, exc.message, "invalid_request_error",
                                    exc.code, exc.param, log_it=False), backend
            st.sent_cache[cluster] = built
        path, body, headers = built
        set_headers = [
            _hv(":path", path),
            _hv(":authority", backend.provider.authority),
            _hv("content-length", str(len(body)).encode()),
            *(_hv(k, v) for k, v in headers),
            *(_hv(k, v.encode()) for k, v in backend.provider.headers),
        ]
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    status=pb.CommonResponse.CONTINUE_AND_REPLACE,
                    header_mutation=pb.HeaderMutation(
                        set_headers=set_headers,
                        remove_headers=self._strip_headers()
                    ),
                    body_mutation=pb.BodyMutation(body=body),
                )
            )
        ), backend

    def _strip_headers(self) -> tuple[str, ...]:
        """Headers each attempt removes: credentials any adapter sets, and every provider's
        static headers (built once per routing table, not per attempt)."""
        routes = self.routing.routes
        if self._strip[0] is not routes:
            self._strip = (routes, (*_STRIP_UPSTREAM, *routes.static_header_names))
        return self._strip[1]

    # -- accounting -------------------------------------------------------------------------
    def _finish(self, st: RequestState, outcome: str = "completed") -> None:
        st.logged = True
        now = time.monotonic()
        backend = st.backend
        usage = st.handler.usage if st.handler else None
        prompt, completion = usage if usage else (0, 0)
        cost = 0.0
        if backend is not None and usage:
            cost = (prompt * backend.price_input + completion * backend.price_output) / 1e6
        label = backend.label if backend else "-"
        latency = now - st.t0
        ttft = (st.t_first - st.t0) if st.t_first is not None else None
        metrics.observe(st.model, label, st.status, latency, ttft, prompt, completion, cost)
        if st.attempts > 1:
            metrics.FAILOVERS.labels(st.model, label).inc(st.attempts - 1)
        log.info(
            "request",
            rid=st.rid,
            model=st.model,
            backend=label,
            status=st.status,
            stream=st.stream,
            attempts=st.attempts,
            outcome=outcome,
            latency_ms=round(latency * 1000, 1),
            ttft_ms=round(ttft * 1000, 1) if ttft is not None else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=round(cost, 8),
        )


class _EnvoyErrorHandler:
    """Turns Envoy's plain-text local replies into the ingress schema's error objects."""

    streaming = False
    rewrites = True
    content_type = b"application/json"
    usage = None

    def __init__(self, status: int, ingress: Ingress) -> None:
        self.status = status
        self.ingress = ingress
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        self._parts.append(chunk)
        return b""

    def finish(self) -> bytes:
        body = b"".join(self._parts)
        if self.status < 400:
            return body
        if body[:1] == b"{":
            return body  # already JSON (our own direct responses)
        text = body.decode("utf-8", "replace")[:300] or f"HTTP {self.status}"
        return self.ingress.local_error(self.status, text)


def _host_backend(text: str) -> str:
    """Backend cluster named by an endpoint's metadata (hedge clusters hold several backends).

    Envoy sends the metadata in protobuf text format; parsed per attempt of hedged models only."""
    meta = base_pb2.Metadata()
    try:
        text_format.Parse(text, meta)
    except text_format.ParseError:
        return ""
    fields = meta.filter_metadata[METADATA_NAMESPACE].fields
    return fields["cluster"].string_value if "cluster" in fields else ""


def _interrupted(st: RequestState) -> str:
    """Why a request's stream ended without its last body chunk."""
    if st.status == 0:
        return "client_disconnected"
    if st.t_first is not None:
        # After the first byte Envoy cannot retry; it resets the client's stream instead.
        return "interrupted_mid_stream"
    return "aborted"


def _warm_adapters(routes: Routes) -> None:
    """Let adapters with credentials to mint (Vertex OAuth) start before the first request."""
    from ext_proc.adapters import ADAPTERS

    seen = set()
    for backend in routes.clusters.values():
        p = backend.provider
        warm = getattr(ADAPTERS.get(p.kind), "warm", None)
        if warm is not None and p.name not in seen:
            seen.add(p.name)
            warm(p)


async def serve(
    address: str, port: int, control_plane: str, metrics_port: int, node_id: str,
    envoy_admin: str | None = None, unix_socket: str | None = None,
) -> None:
    routing = RoutingClient(control_plane, node_id, on_update=_warm_adapters)
    watcher = asyncio.create_task(routing.run())
    health = BackendHealth()
    poller = asyncio.create_task(health.poll_envoy(envoy_admin)) if envoy_admin else None
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    processor = ExternalProcessor(routing, health)
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    bound = server.add_insecure_port(f"{address}:{port}")
    if unix_socket:
        server.add_insecure_port(f"unix:{unix_socket}")
    await server.start()
    http = await metrics.start_http(address, metrics_port, routing, health)
    syslog.info(
        "ext_proc listening",
        address=address,
        port=bound,
        control_plane=control_plane,
        metrics_port=metrics_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    if poller is not None:
        poller.cancel()
    await server.stop(grace=2)
    await http.cleanup()


def main(argv: list[str] | None = None) -> None:
    from control_plane.logs import configure_logging

    parser = argparse.ArgumentParser(prog="switchyard ext-proc")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--control-plane", default="127.0.0.1:18000")
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--node-id", default=f"ext-proc-{os.getpid()}")
    parser.add_argument("--unix-socket", default=None,
                        help="also listen on this Unix socket (Envoy beside ext_proc)")
    parser.add_argument("--envoy-admin", default=None,
                        help="local Envoy admin URL, for outlier/circuit-breaker state")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    import uvloop

    uvloop.run(serve(args.address, args.port, args.control_plane, args.metrics_port,
                     args.node_id, args.envoy_admin, args.unix_socket))


if __name__ == "__main__":
    main()
