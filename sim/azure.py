"""Azure OpenAI simulator: the OpenAI wire format under per-deployment paths.

What differs from OpenAI, and so what a gateway must get right: the deployment is in the path
(`/openai/deployments/{deployment}/...`), the `api-version` query parameter is required, the
key travels in an `api-key` header, the body's `model` is optional, and auth/404/429 errors
use Azure's own `{"error": {"code": "<status>", "message": ...}}` shape. Completions carry
Azure's content-filter annotations (a stream opens with a `choices: []` filter chunk).
"""

import re
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import BodyHandler, SimError
from sim.openai import OpenAIProvider

# A real Azure answers a missing api-version with a bare 404 and a malformed one with 400.
_API_VERSION: Final = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_AZURE_STYLE: Final = frozenset({401, 404, 429})
_DENIED: Final = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_SAFE: Final = {"filtered": False, "severity": "safe"}
_FILTERS: Final = {k: _SAFE for k in ("hate", "self_harm", "sexual", "violence")}
_PROMPT_FILTERS: Final = [{"prompt_index": 0, "content_filter_results": _FILTERS}]


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI chat completions and embeddings; replies name the deployment as model."""

    kind = "azure_openai"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        base = "/openai/deployments/{deployment}"
        return [
            ("POST", base + "/chat/completions", self.azure_chat),
            ("POST", base + "/embeddings", self.azure_embeddings),
        ]

    def error_body(self, err: SimError) -> bytes:
        if err.status not in _AZURE_STYLE:  # validation errors come in OpenAI's format
            return super().error_body(err)
        code = err.code or str(err.status)
        return orjson.dumps({"error": {"code": code, "message": err.message}})

    async def not_found(self, request: web.Request, body: Any) -> web.StreamResponse:
        return self.error(404, "Resource not found")

    def response_headers(self) -> dict[str, str]:
        rid = self.state.new_id()
        return {"x-request-id": rid, "apim-request-id": rid, "x-ms-region": "Sim Central"}

    def decorate(self, response: dict[str, Any]) -> None:
        response["prompt_filter_results"] = _PROMPT_FILTERS
        for choice in response["choices"]:
            choice["content_filter_results"] = _FILTERS

    def stream_prelude(self) -> list[bytes]:
        chunk = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": _PROMPT_FILTERS,
        }
        return [b"data: " + orjson.dumps(chunk) + b"\n\n"]

    def _check(self, request: web.Request) -> web.Response | None:
        """api-version first (no version, no resource), then the `api-key` header."""
        version = request.query.get("api-version")
        if not version:
            return self.error(404, "Resource not found")
        if not _API_VERSION.fullmatch(version):
            return self.error(400, "API version not supported", code="BadRequest")
        key = request.headers.get("api-key")
        required = self.state.require_key
        if not key or (required is not None and key != required):
            return self.error(401, _DENIED)
        return None

    @staticmethod
    def _with_deployment(request: web.Request, body: Any) -> Any:
        """The deployment decides the model: the body's `model` is optional and ignored."""
        if isinstance(body, dict):
            return {**body, "model": request.match_info["deployment"]}
        return body

    async def azure_chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._check(request)) is not None:
            return denied
        return await self.chat(request, self._with_deployment(request, body))

    async def azure_embeddings(self, request: web.Request, body: Any) -> web.StreamResponse:
        if (denied := self._check(request)) is not None:
            return denied
        return await self.embed(request, self._with_deployment(request, body))
