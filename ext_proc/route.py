"""The route phase's decisions, as plain functions over plain data (no gRPC, no protobuf).

    headers -> ingress_for()         which client API, or a 404
            -> identify()            caller key -> tenant + priority class, or a 401
    body    -> parse()               the canonical request, or a 400 in the ingress's schema
            -> decide()              model lookup -> candidates (context window, health)
                                     -> Forward (ordered backends + retry budget) or Reject
            -> admit()               tenant / provider / backend quotas -> Forward with the
                                     backends that have headroom, Wait (queue), or a 429

`server.py` turns the result into Envoy messages (`envoy.py`); tests call these directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ext_proc.admission import PRIORITY_HEADER, Admit, Queue, Reservation
from ext_proc.admission import Decision as AdmissionDecision
from ext_proc.admission.gate import Gate
from ext_proc.ingress import INGRESS, Ingress, IngressError
from ext_proc.select import (
    ContextTooLong,
    SelectContext,
    Selection,
    Unservable,
    candidates,
    rank,
    split_preset,
)
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, Routes
from switchyard.contract import CHAT_PATH, MAX_PRICE_HEADER, MESSAGES_PATH, SLO_TTFT_HEADER

#: Longest model alias the gateway answers for (config aliases are at most 128 characters;
#: `ALIAS:preset` adds a few) and longest client-derived text echoed in an error.
MAX_ALIAS = 160
MAX_ECHO = 500


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the client now with an error in its own schema; nothing goes upstream."""

    status: int
    message: str
    type: str
    code: str | None
    param: str | None = None
    #: Extra response headers (a 429's retry-after and x-ratelimit-*).
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request body the ingress understood."""

    canonical: dict[str, Any]
    raw: dict[str, Any]
    alias: str
    stream: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream: candidates in failover order and Envoy's retry budget."""

    model: ModelInfo
    candidates: tuple[BackendInfo, ...]
    max_retries: int
    #: Per-try timeout for Envoy (the hedge delay for hedged models).
    try_timeout_ms: int
    #: What admission charged (reconciled when the request ends); None: not admitted yet.
    reservation: Reservation | None = None
    #: `x-ratelimit-*` for the answer.
    rate_headers: tuple[tuple[str, str], ...] = ()
    #: Live selection's choice and explanation (None: decided without a SelectContext).
    selection: Selection | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling and the priority class of this request."""

    tenant: str
    klass: str


@dataclass(frozen=True, slots=True)
class Wait:
    """No candidate has headroom now, but this class may queue until `deadline` (monotonic)."""

    forward: Forward
    tokens: int
    deadline: float


Decision = Forward | Reject


def ingress_for(path: str, end_of_stream: bool) -> Ingress | Reject:
    """The client API a request path names (query string ignored)."""
    ingress = INGRESS.get(path.split("?", 1)[0])
    if ingress is None:
        return Reject(404, "Unknown path or method", "invalid_request_error", "not_found")
    if end_of_stream:
        return Reject(400, "Request body is required", "invalid_request_error", "missing_body")
    return ingress


def identify(ingress: Ingress, headers: Mapping[str, str], gate: Gate) -> Caller | Reject:
    """The caller's tenant from its key (`Authorization: Bearer` or `x-api-key`), decided at
    request headers, before any body is buffered; and its request's priority class (the
    tenant's, or lower via `x-switchyard-priority`)."""
    tenant = gate.identify(headers)
    if tenant is None:
        auth_type = ("authentication_error" if ingress is INGRESS[MESSAGES_PATH]
                     else "invalid_request_error")
        return Reject(401, "Invalid or missing API key: send `Authorization: Bearer KEY` or "
                      "`x-api-key: KEY`", auth_type, "invalid_api_key")
    return Caller(tenant.name, gate.klass(tenant, headers.get(PRIORITY_HEADER)))


def overrides(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """A request's tightening of its model's SLO and price cap: (`x-switchyard-slo-ttft-ms`,
    `x-switchyard-max-price` in USD per request); unparsable or non-positive values are
    ignored (a request can only tighten, never loosen)."""
    out: list[float | None] = []
    for name in (SLO_TTFT_HEADER, MAX_PRICE_HEADER):
        value = headers.get(name)
        try:
            x = float(value) if value else None
        except ValueError:
            x = None
        out.append(x if x is not None and x > 0 and x == x else None)
    return out[0], out[1]


def parse(ingress: Ingress, raw: bytes) -> Parsed | Reject:
    """Parse and validate the body once (orjson); the canonical form is shared by all attempts."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Reject(400, f"Request body is not valid JSON: {exc}", "invalid_request_error",
                      "invalid_json")
    try:
        canonical, alias, stream = ingress.parse(body)
    except IngressError as exc:
        return Reject(exc.status, exc.message[:MAX_ECHO], exc.type, exc.code, exc.param)
    if len(alias) > MAX_ALIAS:  # never echo (or log) a huge client string
        return Reject(400, f"The model name is too long ({len(alias)} characters; at most "
                      f"{MAX_ALIAS})", "invalid_request_error", "model_not_found", "model")
    return Parsed(canonical, body, alias, stream)


def decide(ingress: Ingress, req: Parsed, routes: Routes | None, health: BackendHealth,
           ctx: SelectContext | None = None) -> Decision:
    """Where this request may go, in order; or why it may not go anywhere. With `ctx`, live
    selection (`select.rank`: capabilities, SLO, cost/latency/quality, `ALIAS:fast|cheap|best`)
    orders the candidates; without, the configured order with unhealthy backends last."""
    if routes is None:
        return Reject(503, "The gateway has no routing table yet; retry shortly", "api_error",
                      "not_ready", headers=(("retry-after", "1"),))
    model = routes.models.get(req.alias)
    if model is None and ctx is not None:
        base, ctx.preset = split_preset(req.alias)
        model = routes.models.get(base) if ctx.preset else None
    if model is None:
        return Reject(
            404, f"The model `{req.alias}` does not exist or is not served by this gateway",
            "not_found_error" if ingress is INGRESS[MESSAGES_PATH] else "invalid_request_error",
            "model_not_found", "model")
    selection = None
    try:
        if ctx is None:
            cands = candidates(model, req.canonical, health)
        else:
            selection = rank(model, req.canonical, ctx)
            cands = selection.candidates
    except ContextTooLong as exc:
        return Reject(400, str(exc), "invalid_request_error", "context_length_exceeded",
                      "messages")
    except Unservable as exc:
        return Reject(400, exc.message, "invalid_request_error", exc.code, exc.param)
    if ingress is not INGRESS[CHAT_PATH]:
        cands = tuple(c for c in cands if ingress.serves(c))
        if not cands:
            return Reject(400, f"The model `{req.alias}` has no backend that serves this API",
                          "invalid_request_error", "unsupported_api", "model")
    if model.hedge_after_ms:
        try_timeout = model.hedge_after_ms
    else:
        try_timeout = model.first_byte_timeout_ms if req.stream else model.per_try_timeout_ms
    retries = min(model.max_retries, len(cands) - 1) if len(cands) > 1 else model.max_retries
    return Forward(model, cands, retries, try_timeout, selection=selection)


def admit(fwd: Forward, req: Parsed, caller: Caller, gate: Gate) -> Forward | Reject | Wait:
    """Admission control over the ordered candidates: the ones with headroom (spill-over
    keeps the failover order), a wait in the class's queue, or a 429 naming the limit."""
    alias = fwd.model.name  # `gpt:fast` is a preset of `gpt`: its quotas are gpt's
    tokens = gate.estimate(alias, req.canonical)
    d = gate.admit(caller.tenant, caller.klass, alias, fwd.candidates, tokens)
    return admitted(fwd, d, tokens)


def admitted(fwd: Forward, d: AdmissionDecision, tokens: int) -> Forward | Reject | Wait:
    """An admission decision (first try or after waiting) as the route phase's answer."""
    if isinstance(d, Admit):
        cands = tuple(d.candidates)
        retries = min(fwd.model.max_retries, len(cands) - 1) if len(cands) > 1 else \
            fwd.model.max_retries
        return replace(fwd, candidates=cands, max_retries=retries, reservation=d.reservation,
                       rate_headers=d.headers)
    if isinstance(d, Queue):
        return Wait(fwd, tokens, d.deadline)
    return Reject(429, d.refusal.message, "rate_limit_error", "rate_limit_exceeded",
                  headers=d.headers)
