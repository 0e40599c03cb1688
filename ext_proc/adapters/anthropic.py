"""Anthropic Messages API."""

from __future__ import annotations

from typing import Any

from ext_proc.adapters.base import (
    Headers,
    ResponseHandler,
    Stream,
    is_sse,
    translated,
    translated_error,
)
from ext_proc.table import BackendInfo
from ext_proc.translate import anthropic, anthropic_ingress, openai


class AnthropicAdapter:
    api_path = "/v1/messages"

    def _surface(self, backend: BackendInfo) -> tuple[bytes, Headers]:
        p = backend.provider
        headers: Headers = [
            ("content-type", b"application/json"),
            ("anthropic-version", anthropic.API_VERSION.encode()),
        ]
        if p.api_key:
            headers.append(("x-api-key", p.api_key.encode()))
        return (p.path_prefix + self.api_path).encode(), headers

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        path, headers = self._surface(backend)
        return path, anthropic.request_from_openai(req, backend.model), headers

    def passthrough(self, raw: dict[str, Any], backend: BackendInfo
                    ) -> tuple[bytes, bytes, Headers]:
        """A request already in the Messages schema (Anthropic ingress): model renamed only."""
        path, headers = self._surface(backend)
        return path, anthropic_ingress.rename_model(raw, backend.model), headers

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        if status < 300 and is_sse(content_type):
            return Stream(anthropic.StreamToOpenAI(backend.model, openai.client_wants_usage(req),
                                                   json_tool=anthropic.json_tool_name(req)))
        if status < 300:
            return translated(
                lambda data: anthropic.response_to_openai(
                    data, backend.model, json_tool=anthropic.json_tool_name(req)),
                anthropic.usage_of)
        return translated_error(anthropic.error_to_openai, status)
