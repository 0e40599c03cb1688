"""AWS Bedrock runtime (Converse / ConverseStream), authenticated with SigV4."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.adapters.base import Buffered, Headers, ResponseHandler, Stream, Usage
from ext_proc.table import BackendInfo
from ext_proc.translate import bedrock, openai

_JSON = b"application/json"
_EVENTSTREAM = bedrock.EVENTSTREAM.encode()


class BedrockAdapter:
    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        opts = p.options
        region = opts.get("region")
        access_key = opts.get("aws_access_key_id")
        secret_key = opts.get("aws_secret_access_key")
        if not region:
            raise openai.TranslationError(
                f"provider {p.name!r} has no AWS region configured", status=500,
                code="missing_region")
        if not access_key or not secret_key:
            raise openai.TranslationError(
                f"provider {p.name!r} has no AWS credentials configured "
                "(aws_access_key_id and aws_secret_access_key)",
                status=500, code="missing_credentials")
        stream = bool(req.get("stream"))
        body = bedrock.request_from_openai(req, backend.model)
        path = p.path_prefix + bedrock.path(backend.model, stream)
        authority = p.authority.decode()
        # The scheme does not enter the signature; host does, so sign exactly the :authority
        # the translate phase sets. Only host and X-Amz-* are signed: Envoy may touch others.
        scheme = "https" if getattr(p, "tls", True) else "http"
        signed = bedrock.sign("POST", f"{scheme}://{authority}{path}", {"host": authority}, body,
                              region, access_key, secret_key,
                              opts.get("aws_session_token"))
        headers: Headers = [
            ("content-type", _JSON),
            ("accept", _EVENTSTREAM if stream else _JSON),
            *((k.lower(), v.encode()) for k, v in signed.items()),
        ]
        return path.encode(), body, headers

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        if status < 300 and content_type.startswith(bedrock.EVENTSTREAM):
            return Stream(bedrock.StreamToOpenAI(backend.model, openai.client_wants_usage(req)))
        if status < 300:
            def convert(body: bytes) -> tuple[bytes | None, Usage]:
                data = orjson.loads(body)
                return bedrock.response_to_openai(data, backend.model), bedrock.usage_of(data)

            return Buffered(convert, rewrites=True)
        # The x-amzn-errortype header is not passed here: the body's `__type` or the status
        # decides the error type (bedrock-runtime maps each type to its own status).
        return Buffered(lambda body: (bedrock.error_to_openai(status, body, None), None),
                        rewrites=True)
