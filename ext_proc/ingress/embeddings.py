"""OpenAI embeddings (`POST /v1/embeddings`), for provider kinds that embed
(`EmbeddingsProvider`). Never streamed; errors are OpenAI's, as for chat."""

from __future__ import annotations

from typing import Any

from ext_proc.ingress.base import IngressError
from ext_proc.ingress.openai_chat import OpenAIChat
from ext_proc.providers import PROVIDERS
from ext_proc.providers.base import EmbeddingsProvider, Headers, ResponseHandler
from ext_proc.table import BackendInfo
from ext_proc.translate.canonical import TranslationError


class Embeddings(OpenAIChat):
    name = "embeddings"

    def parse(self, body: Any) -> tuple[dict[str, Any], str, bool]:
        if not isinstance(body, dict):
            raise IngressError(400, "Request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise IngressError(400, "Missing required parameter: 'model'", param="model")
        inp = body.get("input")
        if not isinstance(inp, str | list) or not inp:
            raise IngressError(400, "'input' must be a non-empty string or array",
                               param="input")
        return body, model, False

    def serves(self, backend: BackendInfo) -> bool:
        return backend.provider.kind in _EMBEDS

    def request(self, body: dict[str, Any], raw: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        return _provider(backend).embeddings_request(body, backend)

    def response(self, status: int, content_type: str, body: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        return _provider(backend).embeddings_response(status, content_type, body, backend)


#: Provider kinds that embed (a runtime Protocol check costs microseconds: done once here).
_EMBEDS = frozenset(k for k, p in PROVIDERS.items() if isinstance(p, EmbeddingsProvider))


def _provider(backend: BackendInfo) -> EmbeddingsProvider:
    provider = PROVIDERS[backend.provider.kind]
    if not isinstance(provider, EmbeddingsProvider):  # `serves` filtered it out: a gateway bug
        raise TranslationError(f"provider kind {backend.provider.kind!r} does not embed",
                               status=500, code="embeddings_unsupported")
    return provider
