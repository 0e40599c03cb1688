"""The Ingress protocol: one client-facing API, parsed into the canonical form and answered in
its own schema (errors included, so every rejection reaches the client in the format its SDK
parses)."""

from __future__ import annotations

from typing import Any, Protocol

from ext_proc.providers.base import Headers, ResponseHandler
from ext_proc.table import BackendInfo


class IngressError(Exception):
    """A request the ingress refuses before any backend is tried (answered with `status`)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param


class Ingress(Protocol):
    """One client-facing API: parse into the canonical form, answer in its own schema."""

    name: str

    def error(self, message: str, type_: str, code: str | None, param: str | None
              ) -> bytes:
        """An error response body in this API's schema (`type_`: an OpenAI error type)."""

    def stream_error(self, message: str, type_: str, code: str | None) -> bytes:
        """Exactly one well-formed SSE error event in this API's schema: how a stream that
        fails after its first byte ends (Envoy cannot retry it; a silent end would look
        like a complete answer)."""

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        """(canonical request, model alias, stream) or IngressError."""

    def serves(self, backend: BackendInfo) -> bool:
        """Whether `backend`'s provider kind can serve this API at all."""

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        """(path, body, headers) of one attempt at `backend`; `body` is the canonical request,
        `raw` the client's own (a same-schema backend may take it as is)."""

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        """The handler turning `backend`'s answer into this API's schema."""

    def local_error(self, status: int, text: str) -> bytes:
        """Body for an error Envoy produced itself (no upstream answer), in this schema."""
