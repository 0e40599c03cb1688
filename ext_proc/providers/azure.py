"""Azure OpenAI: the OpenAI schema under a per-deployment path with `api-version` and an
`api-key` header, so only the request side differs from OpenAIProvider."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ext_proc.providers.base import Headers
from ext_proc.providers.openai import OpenAIProvider, embeddings_body
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate import openai
from ext_proc.translate.canonical import TranslationError


class AzureOpenAIProvider(OpenAIProvider):
    """`backend.model` is the deployment name; responses are handled exactly as OpenAI's."""

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        path = _path(backend, "chat/completions")
        return path, openai.request_to_backend(req, backend.model), _headers(backend.provider)

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        path = _path(backend, "embeddings")
        return path, embeddings_body(req, backend.model), _headers(backend.provider)


def _path(backend: BackendInfo, operation: str) -> bytes:
    p = backend.provider
    version = p.options.get("api_version")
    if not version:  # config validation requires it; a table without it is a gateway bug
        raise TranslationError(
            f"provider {p.name!r} has no api_version configured", status=500,
            code="missing_api_version")
    deployment = quote(backend.model, safe="")
    return (f"{p.path_prefix}/openai/deployments/{deployment}/{operation}"
            f"?api-version={quote(version, safe='')}").encode()


def _headers(p: ProviderInfo) -> Headers:
    """Azure keys go in `api-key`; no Authorization (that would be read as an Entra token)."""
    headers: Headers = [("content-type", b"application/json")]
    if p.api_key:
        headers.append(("api-key", p.api_key.encode()))
    return headers
