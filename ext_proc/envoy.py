"""Envoy's ext_proc protobuf messages in and out; the only module besides server.py that
knows protobuf. Decisions (`route`, `attempt`, `respond`) are plain data; this turns them
into `ProcessingResponse`s, and Envoy's messages into plain values.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2, text_format

from ext_proc import wire
from ext_proc.admission.priorities import PRIORITY_HEADER
from ext_proc.attempt import Upstream
from ext_proc.ingress import Ingress
from ext_proc.respond import BodyMode, BodyReply, HeadersReply
from ext_proc.route import Forward, Reject
from ext_proc.table import BackendInfo
from switchyard.contract import (
    ANSWERED_BY_HEADER,
    DESTINATION_ENDPOINT_HEADER,
    FIRST_BACKEND_KEY,
    FIRST_PROVIDER_KEY,
    HEDGE_PREFIX,
    INTERNAL_HEADER_PREFIX,
    MAX_PRICE_HEADER,
    METADATA_NAMESPACE,
    MODEL_HEADER,
    PRIORITY_GROUPS_KEY,
    REQUEST_ID_HEADER,
    SLO_TTFT_HEADER,
)

ATTR_NS = "envoy.filters.http.ext_proc"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
EMPTY = pb.ProcessingResponse()
_NO_ENDPOINT = (DESTINATION_ENDPOINT_HEADER,)
_MODES = {
    BodyMode.NONE: processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.NONE),
    BodyMode.BUFFERED: processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED),
    BodyMode.STREAMED: processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED),
}
_MODES_WIRE = {mode: m.SerializeToString() for mode, m in _MODES.items()}


def hv(key: str, value: bytes) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value), append_action=_OVERWRITE
    )


def _hvs(pairs: Iterable[tuple[str, bytes]]) -> list[base_pb2.HeaderValueOption]:
    return [hv(k, v) for k, v in pairs]


# -- Envoy -> plain values -------------------------------------------------------------------
def headers(msg: pb.HttpHeaders) -> dict[str, str]:
    return {
        h.key: (h.raw_value.decode("latin-1") if h.raw_value else h.value)
        for h in msg.headers.headers
    }


#: Request headers the route phase reads (caller identity, requested priority class).
_WANTED = frozenset({"authorization", "x-api-key", PRIORITY_HEADER, SLO_TTFT_HEADER,
                     MAX_PRICE_HEADER})


def request_line(msg: pb.HttpHeaders
                 ) -> tuple[str, list[str], dict[str, str], list[str]]:
    """(path, client-sent internal headers to strip, the few headers decisions read, every
    header name) of a route-phase request."""
    path = ""
    internal = []
    wanted: dict[str, str] = {}
    names = []
    for h in msg.headers.headers:
        key = h.key
        names.append(key)
        if key == ":path":
            path = (h.raw_value or h.value.encode()).decode("latin-1")
            continue
        if key in _WANTED:
            wanted[key] = (h.raw_value or h.value.encode()).decode("latin-1")
        if key.startswith(INTERNAL_HEADER_PREFIX):
            internal.append(key)
    return path, internal, wanted, names


def attempt_target(req: pb.ProcessingRequest) -> tuple[str, str, list[str]]:
    """(request id, backend cluster, names of the request's headers) of a translate-phase
    attempt.

    A hedged model's attempts go to its priority cluster; the backend is named by the picked
    endpoint's metadata, which Envoy sends as protobuf text format."""
    attrs = req.attributes.get(ATTR_NS)
    cluster = attrs.fields["xds.cluster_name"].string_value if attrs else ""
    rid = ""
    names = []
    for h in req.request_headers.headers.headers:
        names.append(h.key)
        if h.key == REQUEST_ID_HEADER:
            rid = (h.raw_value or h.value.encode()).decode()
    if cluster.startswith(HEDGE_PREFIX) and attrs is not None:
        cluster = host_backend(attrs.fields["xds.upstream_host_metadata"].string_value)
    return rid, cluster, names


def host_backend(text: str) -> str:
    """Backend cluster named by an endpoint's metadata (hedge clusters hold several backends)."""
    meta = base_pb2.Metadata()
    try:
        text_format.Parse(text, meta)
    except text_format.ParseError:
        return ""
    fields = meta.filter_metadata[METADATA_NAMESPACE].fields
    return fields["cluster"].string_value if "cluster" in fields else ""


def status_and_retry_after(msg: pb.HttpHeaders) -> tuple[bytes, str | None]:
    status = b""
    retry_after = None
    for h in msg.headers.headers:
        if h.key == ":status":
            status = h.raw_value or h.value.encode()
        elif h.key == "retry-after":
            retry_after = (h.raw_value or h.value.encode()).decode("latin-1")
    return status, retry_after


# -- plain decisions -> Envoy ----------------------------------------------------------------
def immediate(status: int, body: bytes, details: str,
              extra: tuple[tuple[str, bytes], ...] = ()) -> pb.ProcessingResponse:
    hs = [hv("content-type", b"application/json"), *_hvs(extra)]
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type]
            headers=pb.HeaderMutation(set_headers=hs),
            body=body,
            details=details,
        )
    )


def reject(ingress: Ingress, r: Reject) -> pb.ProcessingResponse:
    """An immediate error reply in the client's own (ingress) error schema."""
    return immediate(r.status, ingress.error(r.message, r.type, r.code, r.param),
                     r.code or r.type, tuple((k, v.encode()) for k, v in r.headers))


def extend_timeout(seconds: float) -> pb.ProcessingResponse:
    """Tell Envoy to wait longer for the real reply (a request queued for headroom)."""
    resp = pb.ProcessingResponse()
    resp.override_message_timeout.FromMilliseconds(max(1, int(seconds * 1000)))
    return resp


def strip_internal(names: list[str]) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=names))))


class OrderMetadata:
    """Dynamic metadata for the priority_group specifier (attempt k -> candidate k) and the
    quota safety net's descriptors.

    Cached per distinct order: there are only a few per model."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, ...], struct_pb2.Struct] = {}
        self._wire: dict[tuple[str, ...], bytes] = {}

    def of(self, cands: tuple[BackendInfo, ...]) -> struct_pb2.Struct:
        key = tuple(c.cluster for c in cands)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            cached = struct_pb2.Struct()
            cached.update({METADATA_NAMESPACE: {
                PRIORITY_GROUPS_KEY: [
                    {"name": c, "clusters": [{"cluster_name": c, "weight": 1}]} for c in key],
                # Descriptors of Envoy's quota safety net (local rate limit per provider and
                # backend): the first candidate.
                FIRST_BACKEND_KEY: key[0],
                FIRST_PROVIDER_KEY: cands[0].provider.name}})
            self._cache[key] = cached
        return cached

    def wire_of(self, cands: tuple[BackendInfo, ...]) -> bytes:
        """`of`, serialized (cached alike)."""
        key = tuple(c.cluster for c in cands)
        raw = self._wire.get(key)
        if raw is None:
            if len(self._wire) > 4096:
                self._wire.clear()
            raw = self._wire[key] = self.of(cands).SerializeToString(deterministic=True)
        return raw


def forward(f: Forward, alias: str, rid: str, order: OrderMetadata,
            endpoint: str | None = None, first: Upstream | None = None) -> bytes:
    """The body reply that routes the request: model + request id headers, Envoy's retry
    budget and per-try timeout, the candidate order, and `clear_route_cache`; for a GPU pool,
    the picked endpoint and its fallbacks (`IP:PORT,...`) for override_host load balancing
    (a client's own copy of that header is always replaced or removed).

    `first`: the first attempt's request, built here so that Envoy sends it without a
    translate-phase stream (path, authority, the provider's headers and body; every other
    header the client sent removed). A retry's translate phase replaces all of it.
    Written in wire format (`wire.py`): it is the costliest reply to build otherwise."""
    sets = [wire.set_header_cached(MODEL_HEADER, alias.encode()),
            wire.set_header(REQUEST_ID_HEADER, rid.encode()),
            wire.set_header_cached("x-envoy-max-retries", str(f.max_retries).encode()),
            wire.set_header_cached("x-envoy-upstream-rq-per-try-timeout-ms",
                                   str(f.try_timeout_ms).encode())]
    if endpoint:
        sets.append(wire.set_header(DESTINATION_ENDPOINT_HEADER, endpoint.encode()))
    remove: Iterable[str] = () if endpoint else _NO_ENDPOINT
    body = None
    if first is not None:
        sets += (wire.set_header_cached(":path", first.path),
                 wire.set_header_cached(":authority", first.authority),
                 wire.set_header("content-length", str(len(first.body)).encode()),
                 *(wire.set_header_cached(k, v) for k, v in first.set_headers))
        remove = [n for n in first.remove_headers if n not in _KEEP_FOR_ENVOY]
        if not endpoint:
            remove.append(DESTINATION_ENDPOINT_HEADER)
        body = first.body
    return wire.request_body(
        wire.common(wire.mutation(sets, remove), body=body, clear_route_cache=True),
        order.wire_of(f.candidates))


#: Headers `forward` always sets (a removal of the same name would win over the set), and
#: the scheme Envoy's route match needs; the clusters' upstream header_mutation filter
#: removes what of these a provider must not see.
_KEEP_FOR_ENVOY = frozenset({MODEL_HEADER, REQUEST_ID_HEADER, "x-envoy-max-retries",
                             "x-envoy-upstream-rq-per-try-timeout-ms",
                             DESTINATION_ENDPOINT_HEADER, "x-forwarded-proto"})


def upstream(u: Upstream) -> pb.ProcessingResponse:
    """The translate phase's reply: the attempt's request replaced whole."""
    set_headers = [
        hv(":path", u.path),
        hv(":authority", u.authority),
        hv("content-length", str(len(u.body)).encode()),
        *_hvs(u.set_headers),
    ]
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                status=pb.CommonResponse.CONTINUE_AND_REPLACE,
                header_mutation=pb.HeaderMutation(
                    set_headers=set_headers, remove_headers=u.remove_headers),
                body_mutation=pb.BodyMutation(body=u.body),
            )
        )
    )


_ANSWERED_BY: dict[str, pb.ProcessingResponse] = {}


def answered_by(cluster: str) -> pb.ProcessingResponse:
    """The translate phase's reply to its attempt's response headers: name the backend that
    answered, for the route phase (cached per cluster)."""
    resp = _ANSWERED_BY.get(cluster)
    if resp is None:
        if len(_ANSWERED_BY) > 4096:
            _ANSWERED_BY.clear()
        resp = pb.ProcessingResponse(response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=pb.HeaderMutation(
                set_headers=[hv(ANSWERED_BY_HEADER, cluster.encode())]))))
        _ANSWERED_BY[cluster] = resp
    return resp


def response_headers(r: HeadersReply) -> bytes:
    return wire.response_headers(
        wire.common(wire.mutation((wire.set_header(k, v) for k, v in r.set_headers),
                                  r.remove_headers)),
        _MODES_WIRE[r.mode])


def response_body(r: BodyReply) -> bytes | pb.ProcessingResponse:
    if r.body is None:
        return CONTINUE_BODY
    sets = wire.mutation(wire.set_header(k, v) for k, v in r.set_headers)
    if r.body:
        return wire.response_body(wire.common(sets, body=r.body))
    return wire.response_body(wire.common(sets, clear_body=True))
