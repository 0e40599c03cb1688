"""OpenAI chat completions (`POST /v1/chat/completions`): already the canonical form."""

from __future__ import annotations

from typing import Any

from ext_proc.ingress.base import IngressError
from ext_proc.providers import PROVIDERS
from ext_proc.providers.base import Headers, ResponseHandler
from ext_proc.table import BackendInfo
from ext_proc.translate.canonical import error_body

LOCAL_CODES = {502: "upstream_error", 503: "upstream_unavailable", 504: "upstream_timeout"}


class OpenAIChat:
    name = "openai_chat"

    def error(self, message: str, type_: str, code: str | None, param: str | None) -> bytes:
        return error_body(message, type_, code, param)

    def stream_error(self, message: str, type_: str, code: str | None) -> bytes:
        """`data: {"error": {...}}`: the openai SDK raises APIError on it."""
        return b"data: " + error_body(message, type_, code) + b"\n\n"

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        """(canonical request, model alias, stream) or IngressError."""
        problem = _check_chat(body)
        if problem is not None:
            raise IngressError(400, problem[1], code="invalid_request", param=problem[0])
        return body, body["model"], body.get("stream") is True

    def serves(self, backend: BackendInfo) -> bool:
        return True

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        return PROVIDERS[backend.provider.kind].request(body, backend)

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        return PROVIDERS[backend.provider.kind].response(status, content_type, body, backend)

    def local_error(self, status: int, text: str) -> bytes:
        return error_body(f"Gateway error: {text}", "api_error",
                          LOCAL_CODES.get(status, "gateway_error"))


def _check_chat(body: Any) -> tuple[str | None, str] | None:
    """Cheap structural checks of an OpenAI chat request: (param, message) or None if fine."""
    if not isinstance(body, dict):
        return None, "Request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "Missing required parameter: 'model'"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}]", f"messages[{i}] must be an object with a 'role'"
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream", "'stream' must be a boolean"
    return None
