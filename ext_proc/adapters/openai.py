"""OpenAI-compatible servers (OpenAI, vLLM, TGI, ...): same schema, bodies pass through."""

from __future__ import annotations

from typing import Any

from ext_proc.adapters.base import (
    Buffered,
    Headers,
    ResponseHandler,
    Stream,
    is_sse,
    json_usage,
    keep,
)
from ext_proc.table import BackendInfo
from ext_proc.translate import openai


class OpenAIAdapter:
    api_path = "/v1/chat/completions"

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers: Headers = [("content-type", b"application/json")]
        if p.api_key:
            headers.append(("authorization", b"Bearer " + p.api_key.encode()))
        path = (p.path_prefix + self.api_path).encode()
        return path, openai.request_to_backend(req, backend.model), headers

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        if status < 300 and is_sse(content_type):
            return Stream(openai.StreamRelay(openai.client_wants_usage(req)))
        if status < 300:
            return Buffered(json_usage(openai.usage_of), rewrites=False)
        return Buffered(keep, rewrites=False)
