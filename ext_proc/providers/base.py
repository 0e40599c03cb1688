"""What every provider module shares: the Provider protocol it implements, the ResponseHandler
protocol of what it returns for a response, the reusable Buffered/Stream handlers, and the
table-driven policy for canonical parameters a provider cannot honour (`unsupported`).

A provider binds one kind's body translator (ext_proc/translate/*) to its HTTP surface: which
path and credentials an attempt needs, and which handler reads the answer back into the
canonical (OpenAI chat) form. Direction of imports: ingress -> providers -> translate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import orjson

from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import Usage, model_renamer

Headers = list[tuple[str, bytes]]


class ResponseHandler(Protocol):
    """Reads one response body (buffered or streamed) and returns what the client gets."""

    @property
    def streaming(self) -> bool:
        """True: body arrives chunk by chunk (SSE, event-stream); False: buffered whole."""

    @property
    def rewrites(self) -> bool:
        """False: the body passes through untouched (we only read it)."""

    @property
    def content_type(self) -> bytes | None: ...

    @property
    def usage(self) -> Usage | None:
        """Token usage read so far (final after `finish()`); None when the answer had none."""

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes | None: ...


class Provider(Protocol):
    """One provider kind's HTTP surface for canonical (OpenAI chat) requests."""

    def request(self, canonical: dict[str, Any], backend: BackendInfo
                ) -> tuple[bytes, bytes, Headers]:
        """(path with query, body, headers to set) for one attempt at `backend`; raises
        TranslationError when the request cannot be expressed (or credentials are missing)."""

    def response(self, status: int, content_type: str, canonical: dict[str, Any],
                 backend: BackendInfo) -> ResponseHandler:
        """The handler that turns this attempt's response into canonical (OpenAI chat) form."""

    def unsupported(self, body: dict[str, Any]) -> list[str]:
        """Canonical parameters of `body` this kind cannot honour (sorted; [] for none).

        With `unsupported_params: drop` (the default) the pipeline removes them from the
        attempt (`providers.without`) and names them in `x-switchyard-dropped-params`; with
        `reject` the attempt fails with a 400 naming the parameter."""


@runtime_checkable
class Warm(Protocol):
    """Optional: a provider kind that prepares credentials when a routing table arrives."""

    def warm(self, provider: ProviderInfo) -> None:
        """Start whatever background work the provider's credentials need (non-blocking)."""


@runtime_checkable
class EmbeddingsProvider(Protocol):
    """Optional: a provider kind that also serves `POST /v1/embeddings` (canonical: OpenAI
    embeddings)."""

    def embeddings_request(self, canonical: dict[str, Any], backend: BackendInfo
                           ) -> tuple[bytes, bytes, Headers]:
        """(path with query, body, headers) of the ONE upstream call for this request; raise
        TranslationError when the request would need several calls (no fan-out in Envoy)."""

    def embeddings_response(self, status: int, content_type: str, canonical: dict[str, Any],
                            backend: BackendInfo) -> ResponseHandler:
        """Handler turning the provider's answer into an OpenAI embeddings list (or error)."""


# ----------------------------------------------------------------- unsupported parameters

#: Canonical parameters no translated (non-OpenAI) schema has a form for.
COMMON_UNSUPPORTED = frozenset({"logprobs", "top_logprobs", "logit_bias", "store",
                                "modalities", "audio", "prediction", "service_tier",
                                "web_search_options"})


def _meaningful(name: str, value: Any) -> bool:
    """A parameter set to its no-op default (n=1, penalties 0, false, null) asks for nothing."""
    if value is None or value is False:
        return False
    if name == "n":
        return value != 1
    if name in ("presence_penalty", "frequency_penalty"):
        return value != 0
    return not (isinstance(value, list | dict) and not value)


def unsupported_of(names: frozenset[str], body: dict[str, Any]) -> list[str]:
    """The parameters among `names` that `body` sets to something meaningful (sorted)."""
    return sorted(k for k in names.intersection(body) if _meaningful(k, body[k]))


def without(body: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of `body` without the parameters `names` (the body itself is not changed)."""
    out = dict(body)
    for name in names:
        out.pop(name, None)
    return out


# ----------------------------------------------------------------------- response handlers


class Buffered:
    """Whole-body handler: `convert` returns (new body or None to keep it, usage)."""

    streaming = False

    def __init__(self, convert: Callable[[bytes], tuple[bytes | None, Usage | None]],
                 rewrites: bool, content_type: bytes | None = b"application/json") -> None:
        self._convert = convert
        self.rewrites = rewrites
        self.content_type = content_type if rewrites else None
        self.usage: Usage | None = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes | None:
        self._parts.append(chunk)
        return b"" if self.rewrites else None

    def finish(self) -> bytes | None:
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        out, self.usage = self._convert(body)
        return out


class Stream:
    """Streaming handler wrapping a translator object with feed/finish/usage."""

    streaming = True
    rewrites = True
    content_type = b"text/event-stream"

    def __init__(self, translator: Any) -> None:
        self._t = translator

    @property
    def usage(self) -> Usage | None:
        u: Usage | None = self._t.usage
        return u

    def feed(self, chunk: bytes) -> bytes:
        out: bytes = self._t.feed(chunk)
        return out

    def finish(self) -> bytes:
        out: bytes = self._t.finish()
        return out


def translated(to_openai: Callable[[dict[str, Any]], bytes],
               usage_of: Callable[[dict[str, Any]], Usage | None]) -> Buffered:
    """Whole-body handler for a successful JSON answer in another schema: the OpenAI body
    `to_openai` makes of it, and its usage."""

    def convert(body: bytes) -> tuple[bytes | None, Usage | None]:
        data = orjson.loads(body)
        if not isinstance(data, dict):  # a malformed answer: respond.py's 502
            raise ValueError("upstream answer is not a JSON object")
        return to_openai(data), usage_of(data)

    return Buffered(convert, rewrites=True)


def translated_error(to_openai: Callable[[int, bytes], bytes], status: int) -> Buffered:
    """Whole-body handler turning an error answer into the OpenAI error body (no usage)."""
    return Buffered(lambda body: (to_openai(status, body), None), rewrites=True)


def json_usage(usage_of: Callable[[dict[str, Any]], Usage | None]
               ) -> Callable[[bytes], tuple[bytes | None, Usage | None]]:
    """A converter that keeps the body and only reads its usage. The body is parsed for the
    usage anyway, so a successful answer that is not a JSON object raises ValueError
    (respond.py answers the documented 502) instead of reaching the client as garbage."""

    def convert(body: bytes) -> tuple[bytes | None, Usage | None]:
        data = orjson.loads(body)  # orjson.JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError("upstream answer is not a JSON object")
        return None, usage_of(data)

    return convert


def keep(body: bytes) -> tuple[bytes | None, Usage | None]:
    return None, None


def alias_of(canonical: dict[str, Any], backend: BackendInfo) -> str:
    """The model name the client asked for (the alias), which every answer reports: clients
    look up cost and capabilities by it. The upstream's name if the request has none."""
    model = canonical.get("model")
    return model if isinstance(model, str) and model else backend.model


def same_schema(usage_of: Callable[[dict[str, Any]], Usage | None], alias: str,
                backend: BackendInfo) -> Buffered:
    """A successful same-schema JSON answer: usage read, the upstream's `model` shown as the
    client's alias (the body is otherwise left as it came)."""
    rename = model_renamer(backend.model, alias)
    if rename is None:
        return Buffered(json_usage(usage_of), rewrites=False)
    read = json_usage(usage_of)

    def convert(body: bytes) -> tuple[bytes | None, Usage | None]:
        return rename(body), read(body)[1]

    return Buffered(convert, rewrites=True)


def is_sse(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")
