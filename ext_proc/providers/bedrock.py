"""AWS Bedrock runtime (Converse / ConverseStream), authenticated with SigV4."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.auth.sigv4 import BEDROCK, sign
from ext_proc.providers.base import (
    COMMON_UNSUPPORTED,
    Buffered,
    Headers,
    ResponseHandler,
    Stream,
    alias_of,
    translated,
    translated_error,
    unsupported_of,
)
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate import bedrock
from ext_proc.translate.canonical import TranslationError, Usage, client_wants_usage

_JSON = b"application/json"
_EVENTSTREAM = bedrock.EVENTSTREAM.encode()


class BedrockProvider:
    UNSUPPORTED = COMMON_UNSUPPORTED | {"seed", "presence_penalty", "frequency_penalty", "n",
                                        "response_format"}

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        return unsupported_of(self.UNSUPPORTED, body)

    def request(self, req: dict[str, Any], backend: BackendInfo) -> tuple[bytes, bytes, Headers]:
        p = backend.provider
        creds = _credentials(p)  # a configuration error outranks a bad request
        stream = bool(req.get("stream"))
        body = bedrock.request_from_openai(req, backend.model)
        path = p.path_prefix + bedrock.path(backend.model, stream)
        headers: Headers = [
            ("content-type", _JSON),
            ("accept", _EVENTSTREAM if stream else _JSON),
            *_sigv4(p, path, body, creds),
        ]
        return path.encode(), body, headers

    def response(self, status: int, content_type: str, req: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        alias = alias_of(req, backend)
        if status < 300 and content_type.startswith(bedrock.EVENTSTREAM):
            return Stream(bedrock.StreamToOpenAI(alias, client_wants_usage(req)))
        if status < 300:
            return translated(lambda data: bedrock.response_to_openai(data, alias),
                              bedrock.usage_of)
        # The x-amzn-errortype header is not passed here: the body's `__type` or the status
        # decides the error type (bedrock-runtime maps each type to its own status).
        return translated_error(bedrock.error_to_openai, status)

    # Embeddings: InvokeModel with a Titan or Cohere body. Envoy makes one upstream call per
    # attempt, so a request needing several InvokeModel calls is refused, not fanned out.

    def embeddings_request(self, req: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        encoding = req.get("encoding_format")
        if encoding is not None and encoding not in _ENCODINGS:
            raise TranslationError(
                f"Invalid value: {encoding!r}. Supported values are: 'float' and 'base64'.",
                param="encoding_format", code="invalid_value")
        calls = bedrock.embeddings_request(req, backend.model)
        if len(calls) != 1:
            limit = _inputs_per_call(calls[0][1])
            given = len(req["input"]) if isinstance(req.get("input"), list) else 1
            raise TranslationError(
                f"'input' has {given} items, but this backend ({backend.model}) embeds at most "
                f"{limit} per request: send batches of at most {limit}",
                param="input", code="too_many_inputs")
        call_path, body = calls[0]
        p = backend.provider
        path = p.path_prefix + call_path
        return path.encode(), body, [("content-type", _JSON), ("accept", _JSON),
                                     *_sigv4(p, path, body)]

    def embeddings_response(self, status: int, content_type: str, req: dict[str, Any],
                            backend: BackendInfo) -> ResponseHandler:
        if status >= 300:
            return translated_error(bedrock.error_to_openai, status)
        encoding = req.get("encoding_format") or "float"

        def convert(body: bytes) -> tuple[bytes | None, Usage | None]:
            # Titan counts tokens in the body; Cohere only in a header we are not given.
            data = orjson.loads(body)
            count = data.get("inputTextTokenCount") if isinstance(data, dict) else None
            tokens = count if isinstance(count, int) and not isinstance(count, bool) else None
            out = bedrock.embeddings_response([body], alias_of(req, backend), encoding, tokens)
            return out, Usage(tokens, 0) if tokens is not None else None

        return Buffered(convert, rewrites=True)


_ENCODINGS = ("float", "base64")


def _inputs_per_call(body: bytes) -> int:
    """How many inputs one InvokeModel body carries (Titan: 1, Cohere: its batch size)."""
    data = orjson.loads(body)
    texts = data.get("texts") if isinstance(data, dict) else None
    return len(texts) if isinstance(texts, list) else 1


def _credentials(p: ProviderInfo) -> tuple[str, str, str]:
    """(region, access key, secret key) of the provider; a 500 when any is not configured."""
    opts = p.options
    region = opts.get("region")
    access_key = opts.get("aws_access_key_id")
    secret_key = opts.get("aws_secret_access_key")
    if not region:
        raise TranslationError(
            f"provider {p.name!r} has no AWS region configured", status=500,
            code="missing_region")
    if not access_key or not secret_key:
        raise TranslationError(
            f"provider {p.name!r} has no AWS credentials configured "
            "(aws_access_key_id and aws_secret_access_key)",
            status=500, code="missing_credentials")
    return region, access_key, secret_key


def _sigv4(p: ProviderInfo, path: str, body: bytes,
           creds: tuple[str, str, str] | None = None) -> Headers:
    """SigV4 headers for a POST of `body` to `path` at the provider's exact :authority.

    The scheme does not enter the signature; host does, so sign exactly the :authority the
    translate phase sets. Only host and X-Amz-* are signed: Envoy may touch the others.
    """
    region, access_key, secret_key = creds or _credentials(p)
    authority = p.authority.decode()
    scheme = "https" if getattr(p, "tls", True) else "http"
    signed = sign("POST", f"{scheme}://{authority}{path}", {"host": authority}, body,
                  region, access_key, secret_key, p.options.get("aws_session_token"), BEDROCK)
    return [(k.lower(), v.encode()) for k, v in signed.items()]
