"""Google Gemini API (AI Studio, `x-goog-api-key`) and Vertex AI (OAuth bearer token).

Same wire format, different path and credentials. Vertex tokens come from a background
GoogleTokenSource: the request path only reads the cached token, and an attempt made before
the first token is in fails fast with a 503 (Envoy may retry it on another backend).
"""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.auth.google import token_source_for
from ext_proc.providers.base import (
    COMMON_UNSUPPORTED,
    Buffered,
    Headers,
    ResponseHandler,
    Stream,
    alias_of,
    is_sse,
    translated,
    translated_error,
    unsupported_of,
)
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate import gemini
from ext_proc.translate.canonical import TranslationError, Usage, client_wants_usage

#: Gemini has logprobs (responseLogprobs/logprobs), so only the rest of the common set.
UNSUPPORTED = COMMON_UNSUPPORTED - {"logprobs", "top_logprobs"}

_JSON: Headers = [("content-type", b"application/json")]


def _response(
    status: int, content_type: str, req: dict[str, Any], backend: BackendInfo
) -> ResponseHandler:
    alias = alias_of(req, backend)
    if status < 300 and is_sse(content_type):
        return Stream(gemini.StreamToOpenAI(alias, client_wants_usage(req)))
    if status < 300:
        return translated(lambda data: gemini.response_to_openai(data, alias), gemini.usage_of)
    return translated_error(gemini.error_to_openai, status)


def _embeddings_handler(
    status: int, req: dict[str, Any], backend: BackendInfo, vertex: bool
) -> ResponseHandler:
    if status >= 300:
        return translated_error(gemini.error_to_openai, status)
    fmt = req.get("encoding_format")
    fmt = fmt if fmt == "base64" else "float"

    def convert(body: bytes) -> tuple[bytes | None, Usage | None]:
        out = gemini.embeddings_response(body, alias_of(req, backend), vertex,
                                         encoding_format=fmt)
        return out, gemini.embeddings_usage_of(orjson.loads(body), vertex)

    return Buffered(convert, rewrites=True)


class GeminiProvider:
    """AI Studio: `/v1beta/models/{model}:generateContent`, API key in `x-goog-api-key`."""

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        return unsupported_of(UNSUPPORTED, body)

    def _headers(self, p: ProviderInfo) -> Headers:
        return [*_JSON, ("x-goog-api-key", p.api_key.encode())] if p.api_key else _JSON

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        path = p.path_prefix + gemini.gemini_path(backend.model, bool(req.get("stream")))
        return path.encode(), gemini.request_from_openai(req), self._headers(p)

    def response(
        self, status: int, content_type: str, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        return _response(status, content_type, req, backend)

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        """(path, body, headers) for an OpenAI `/v1/embeddings` request."""
        p = backend.provider
        path, body = gemini.embeddings_request(req, backend.model, vertex=False)
        return (p.path_prefix + path).encode(), body, self._headers(p)

    def embeddings_response(
        self, status: int, content_type: str, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        return _embeddings_handler(status, req, backend, vertex=False)


class VertexProvider:
    """Vertex AI: publisher-model paths under the project/location, OAuth bearer token."""

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        return unsupported_of(UNSUPPORTED, body)

    def warm(self, provider: ProviderInfo) -> None:
        """Start minting tokens for this provider (call when a routing table arrives)."""
        token_source_for(provider.options.get("credentials_file")).start()

    def _headers(self, p: ProviderInfo) -> Headers:
        source = token_source_for(p.options.get("credentials_file"))
        token = source.get()
        if token is None:
            source.start()  # in case warm() was not called; idempotent and non-blocking
            raise TranslationError(
                f"credentials for provider {p.name!r} are not ready yet (no OAuth token)",
                status=503,
                code="credentials_not_ready",
            )
        return [*_JSON, ("authorization", b"Bearer " + token.encode())]

    @staticmethod
    def _where(p: ProviderInfo) -> tuple[str, str]:
        return p.options.get("project", ""), p.options.get("location", "")

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers = self._headers(p)
        project, location = self._where(p)
        path = p.path_prefix + gemini.vertex_path(
            project, location, backend.model, bool(req.get("stream"))
        )
        return path.encode(), gemini.request_from_openai(req), headers

    def response(
        self, status: int, content_type: str, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        if status == 401:  # token revoked or expired early: renew without waiting for expiry
            token_source_for(backend.provider.options.get("credentials_file")).refresh_soon()
        return _response(status, content_type, req, backend)

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        """(path, body, headers) for an OpenAI `/v1/embeddings` request."""
        p = backend.provider
        headers = self._headers(p)
        project, location = self._where(p)
        path, body = gemini.embeddings_request(
            req, backend.model, vertex=True, project=project, location=location
        )
        return (p.path_prefix + path).encode(), body, headers

    def embeddings_response(
        self, status: int, content_type: str, req: dict[str, Any], backend: BackendInfo
    ) -> ResponseHandler:
        return _embeddings_handler(status, req, backend, vertex=True)
