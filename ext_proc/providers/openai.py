"""OpenAI-compatible servers (OpenAI, vLLM, TGI, ...): same schema, bodies pass through."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.providers.base import (
    Buffered,
    Headers,
    ResponseHandler,
    Stream,
    alias_of,
    is_sse,
    keep,
    same_schema,
)
from ext_proc.table import BackendInfo
from ext_proc.translate import openai
from ext_proc.translate.canonical import (
    STREAM_TRUNCATED,
    TRUNCATED_MESSAGE,
    client_wants_usage,
    error_event,
    model_renamer,
)


class _RelayStream(Stream):
    """Same-schema stream; a stream that ends without `[DONE]` gets an error event appended:
    a provider dropping a stream must never look like a clean, complete answer."""

    def finish(self) -> bytes:
        out = super().finish()
        relay: openai.StreamRelay = self._t
        if not relay.saw_done and relay.error is None:
            out += error_event(TRUNCATED_MESSAGE, "api_error", STREAM_TRUNCATED)
        return out


class OpenAIProvider:
    """Kinds `openai`, `vllm`, `tgi`: the canonical schema itself, so every parameter goes
    through and bodies pass untouched apart from the model name (and `include_usage`)."""

    api_path = "/v1/chat/completions"

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        return []

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers: Headers = [("content-type", b"application/json")]
        if p.api_key:
            headers.append(("authorization", b"Bearer " + p.api_key.encode()))
        path = (p.path_prefix + self.api_path).encode()
        return path, openai.request_to_backend(req, backend.model), headers

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        alias = alias_of(req, backend)
        if status < 300 and is_sse(content_type):
            return _RelayStream(openai.StreamRelay(client_wants_usage(req),
                                                   model_renamer(backend.model, alias)))
        if status < 300:
            return same_schema(openai.usage_of, alias, backend)
        return Buffered(keep, rewrites=False)

    # Embeddings: same schema too; only the model name changes and only usage is read.
    embeddings_path = "/v1/embeddings"

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        headers: Headers = [("content-type", b"application/json")]
        if p.api_key:
            headers.append(("authorization", b"Bearer " + p.api_key.encode()))
        path = (p.path_prefix + self.embeddings_path).encode()
        return path, embeddings_body(req, backend.model), headers

    def embeddings_response(self, status: int, content_type: str, req: dict[str, Any],
                            backend: BackendInfo) -> ResponseHandler:
        if status < 300:
            return same_schema(openai.usage_of, alias_of(req, backend), backend)
        return Buffered(keep, rewrites=False)


def embeddings_body(req: dict[str, Any], upstream_model: str) -> bytes:
    """The client's embeddings request with the upstream model name (nothing else changes)."""
    return orjson.dumps({**req, "model": upstream_model})
