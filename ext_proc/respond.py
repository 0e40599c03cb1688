"""Response handling: the answer of the attempt that won, back in the client's schema.

Response headers pick the handler (from the answering backend's provider and the client's
ingress) and how Envoy should hand over the body (buffered, streamed, or not at all); body
chunks go through the handler; the end of the response (or of the stream, however it ended)
becomes a `UsageRecord`. Plain data in and out: `envoy.py` builds the protobuf replies.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import Enum

import orjson
import structlog

from ext_proc.ingress import Ingress
from ext_proc.providers.base import ResponseHandler
from ext_proc.route import Reject
from ext_proc.state import Attempt, RequestState
from ext_proc.stats import BackendHealth
from ext_proc.usage import NO_USAGE, UsageRecord, cost_usd
from switchyard.contract import (
    ANSWERED_BY_HEADER,
    ATTEMPTS_HEADER,
    RESPONSE_ID_HEADER,
    ROUTE_HEADER,
)

log = structlog.get_logger("switchyard.ext_proc")

BAD_UPSTREAM = ("The upstream provider returned a malformed response", "api_error",
                "bad_upstream_response")


class BodyMode(Enum):
    NONE = 0
    BUFFERED = 1
    STREAMED = 2


@dataclass(frozen=True, slots=True)
class HeadersReply:
    set_headers: tuple[tuple[str, bytes], ...]
    remove_headers: tuple[str, ...]
    mode: BodyMode


@dataclass(frozen=True, slots=True)
class BodyReply:
    #: None: pass the chunk on unchanged; b"": send nothing for it.
    body: bytes | None
    set_headers: tuple[tuple[str, bytes], ...] = ()


def on_headers(st: RequestState, headers: dict[str, str], end_of_stream: bool,
               health: BackendHealth) -> HeadersReply:
    """Which attempt answered, which handler reads its body, which headers the client gets."""
    st.status = status = int(headers.get(":status", "0") or 0)
    answered_by = headers.get(ANSWERED_BY_HEADER)
    if answered_by:
        attempt = st.attempt_for(answered_by)
        if attempt is not None:  # with hedging, not necessarily the last attempt started
            st.backend = attempt.backend
        else:  # another worker ran the attempt and could not reach this one
            st.backend = next((b for b in st.candidates if b.cluster == answered_by),
                              st.backend)
    envoy_attempts = headers.get(ATTEMPTS_HEADER, "")
    if envoy_attempts.isdigit():
        st.envoy_attempts = int(envoy_attempts)
        _note_unseen_failures(st, health)
    backend = st.backend
    set_headers: list[tuple[str, bytes]] = [(k, v.encode()) for k, v in st.rate_headers]
    if st.dropped:
        set_headers.append(("x-switchyard-dropped-params", ",".join(sorted(st.dropped)).encode()))
    if st.selection is not None:
        set_headers.append((ROUTE_HEADER, st.selection.explain.encode()))
    set_headers.append((RESPONSE_ID_HEADER, st.rid.encode()))
    if backend is not None:
        set_headers.append(("x-switchyard-backend", backend.label.encode()))
        set_headers.append((ATTEMPTS_HEADER, str(st.attempt_count).encode()))
    handler: ResponseHandler
    if backend is None or "x-envoy-upstream-service-time" not in headers:
        # Envoy's own reply (no healthy upstream, timeout, overflow): the ingress's error.
        handler = EnvoyReply(status, st.ingress)
    else:
        handler = st.ingress.response(status, headers.get("content-type", ""), st.body, backend)
    st.handler = handler
    remove = [ANSWERED_BY_HEADER] if answered_by else []
    if handler.rewrites:
        remove.append("content-length")
        if handler.content_type:
            set_headers.append(("content-type", handler.content_type))
    if end_of_stream:
        mode = BodyMode.NONE
    else:
        mode = BodyMode.STREAMED if handler.streaming else BodyMode.BUFFERED
    return HeadersReply(tuple(set_headers), tuple(remove), mode)


def answering_first_attempt(st: RequestState, headers: dict[str, str]) -> Attempt | None:
    """The route-built first attempt when it is the one that answered (an upstream answer,
    no retry, so no translate phase named another), else None."""
    if (not st.attempts or not st.attempts[0].by_route or st.envoy_attempts != 1
            or ANSWERED_BY_HEADER in headers or "x-envoy-upstream-service-time" not in headers):
        return None
    return st.attempts[0]


def _note_unseen_failures(st: RequestState, health: BackendHealth) -> None:
    """Attempts Envoy made that no phase saw (connection refused or reset before a
    translate-phase stream existed) failed on candidates[k]: count them for health. (A
    route-built first attempt's failure arrives through Envoy's attempt log.)"""
    if st.envoy_attempts <= 1 or st.backend is None:
        return
    seen = {a.backend.cluster for a in st.attempts}
    for c in st.candidates[:st.envoy_attempts - 1]:
        if c.cluster not in seen and c.cluster != st.backend.cluster:
            health.record(c.cluster, True)


def on_body(st: RequestState, chunk: bytes, end_of_stream: bool) -> BodyReply:
    """One response body chunk (the whole body when buffered) for the client."""
    if st.t_first is None:
        st.t_first = time.monotonic()
    handler = st.handler
    if handler is None:
        return BodyReply(None)
    if st.failed:  # an error event already ended the client's stream: nothing after it
        return BodyReply(b"")
    try:
        out = handler.feed(chunk)
        if end_of_stream:
            tail = handler.finish()
            if tail is not None:
                out = tail if not out else out + tail
        if st.response_id is None:  # the id the client sees (after translation)
            seen = chunk if out is None else out
            if seen:
                st.response_id = response_id(seen) or ""
    except Exception as exc:  # a provider sent something we cannot translate
        log.warning("response translation failed", rid=st.rid, error=repr(exc)[:300])
        st.failed = True
        message, type_, code = BAD_UPSTREAM
        if handler.streaming:
            return BodyReply(st.ingress.stream_error(message, type_, code))
        st.status = 502
        return BodyReply(st.ingress.error(message, type_, code, None),
                         ((":status", b"502"), ("content-type", b"application/json")))
    return BodyReply(out)


_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')


def response_id(first_chunk: bytes) -> str | None:
    """The provider's response `id` from the first body chunk (the first `"id"` in it: the
    top-level id of an OpenAI / Anthropic body or first stream event), or None."""
    m = _ID.search(first_chunk, 0, 1024)
    return m.group(1).decode("latin-1") if m else None


def finish(st: RequestState, outcome: str = "completed") -> UsageRecord:
    """The request's usage record (once: later calls for the same request are not made)."""
    st.logged = True
    backend = st.backend
    usage = (st.handler.usage if st.handler else None) or NO_USAGE
    pick = st.pool_pick
    if pick is not None and (backend is None or backend.provider.name != pick[0]):
        pick = None  # failed over away from the pool: its pick did not serve the request
    return UsageRecord(
        rid=st.rid,
        model=st.model,
        backend=backend.label if backend else "-",
        status=st.status,
        stream=st.stream,
        attempts=st.attempt_count,
        outcome=outcome,
        latency_s=time.monotonic() - st.t0,
        ttft_s=(st.t_first - st.t0) if st.t_first is not None else None,
        usage=usage,
        cost_usd=cost_usd(backend, usage) if usage is not NO_USAGE else 0.0,
        route=st.selection.explain if st.selection is not None else None,
        tenant=st.tenant,
        klass=st.klass,
        system=backend.provider.kind if backend else "",
        response_model=backend.model if backend else "",
        operation="embeddings" if st.ingress.name == "embeddings" else "chat",
        endpoint=pick[1] if pick else "",
        pick=pick[2] if pick else "",
    )


def rejected(st: RequestState, r: Reject) -> UsageRecord:
    """The usage record of a request answered by the route phase itself."""
    st.logged = True
    st.status = r.status
    return UsageRecord(rid=st.rid, model=st.model, backend="-", status=r.status,
                       stream=st.stream, attempts=0, outcome="rejected",
                       latency_s=time.monotonic() - st.t0, ttft_s=None, usage=NO_USAGE,
                       cost_usd=0.0, code=r.code or r.type, tenant=st.tenant, klass=st.klass,
                       operation="embeddings" if st.ingress.name == "embeddings" else "chat")


def interrupted(st: RequestState) -> str:
    """Why a request's response ended without its last body chunk."""
    if st.status == 0:
        return "client_disconnected"
    if st.t_first is not None:
        # After the first byte Envoy cannot retry; it resets the client's stream instead.
        return "interrupted_mid_stream"
    return "aborted"


class EnvoyReply:
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
            return self._in_schema(body)
        text = body.decode("utf-8", "replace")[:300] or f"HTTP {self.status}"
        return self.ingress.local_error(self.status, text)

    def _in_schema(self, body: bytes) -> bytes:
        """Envoy's JSON replies (the 413 mapper, direct responses) are in the OpenAI error
        schema: an Anthropic client gets the same error in its own schema."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        err = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(err, dict) or "type" in obj:  # not OpenAI's shape (already ours)
            return body
        return self.ingress.error(str(err.get("message") or f"HTTP {self.status}"),
                                  str(err.get("type") or "api_error"), err.get("code"),
                                  err.get("param"))
