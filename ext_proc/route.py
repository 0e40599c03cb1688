"""The route phase's decisions, as plain functions over plain data (no gRPC, no protobuf).

    path  -> ingress_for()           which client API, or a 404
    body  -> parse()                 the canonical request, or a 400 in the ingress's schema
          -> decide()                model lookup -> (auth, admission: later) -> candidates
                                     -> Forward (ordered backends + retry budget) or Reject

`server.py` turns the result into Envoy messages (`envoy.py`); tests call these directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.ingress import INGRESS, Ingress, IngressError
from ext_proc.select import ContextTooLong, candidates
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, Routes
from switchyard.contract import CHAT_PATH, MESSAGES_PATH


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the client now with an error in its own schema; nothing goes upstream."""

    status: int
    message: str
    type: str
    code: str | None
    param: str | None = None


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


Decision = Forward | Reject


def ingress_for(path: str, end_of_stream: bool) -> Ingress | Reject:
    """The client API a request path names (query string ignored)."""
    ingress = INGRESS.get(path.split("?", 1)[0])
    if ingress is None:
        return Reject(404, "Unknown path or method", "invalid_request_error", "not_found")
    if end_of_stream:
        return Reject(400, "Request body is required", "invalid_request_error", "missing_body")
    return ingress


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
        return Reject(exc.status, exc.message, exc.type, exc.code, exc.param)
    return Parsed(canonical, body, alias, stream)


def decide(ingress: Ingress, req: Parsed, routes: Routes | None, health: BackendHealth
           ) -> Decision:
    """Where this request may go, in order; or why it may not go anywhere."""
    if routes is None:
        return Reject(503, "The gateway has no routing table yet; retry shortly", "api_error",
                      "not_ready")
    model = routes.models.get(req.alias)
    if model is None:
        return Reject(
            404, f"The model `{req.alias}` does not exist or is not served by this gateway",
            "not_found_error" if ingress is INGRESS[MESSAGES_PATH] else "invalid_request_error",
            "model_not_found", "model")
    try:
        cands = candidates(model, req.canonical, health)
    except ContextTooLong as exc:
        return Reject(400, str(exc), "invalid_request_error", "context_length_exceeded",
                      "messages")
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
    return Forward(model, cands, retries, try_timeout)
