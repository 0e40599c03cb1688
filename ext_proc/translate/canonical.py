"""The canonical form's shared pieces: what every translator produces or consumes.

The canonical request/response schema is OpenAI chat completions; this module holds the
pieces that are not one provider's: token usage (with cached input and reasoning tokens, so
cost can price them), errors (`TranslationError`, the OpenAI error body and in-stream error
event), request-field checks (`positive_int`, `number`, `max_tokens_of`, `stop_of`,
`messages_of`, `content_parts`), the `usage` object of a canonical response (`openai_usage`,
read back by `usage_from`), the `chat.completion.chunk` frames of a translated stream
(`ChunkWriter`) and the feed/finish skeleton of a stream translator (`StreamTranslator`,
`SSETranslator`). Translators import this module and `switchyard.framing`, nothing else.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from switchyard.framing.sse import SSEEvent, SSEParser, parse_frame

__all__ = [
    "DONE_FRAME",
    "STATUS_ERRORS",
    "STREAM_TRUNCATED",
    "TRUNCATED_MESSAGE",
    "ChunkWriter",
    "SSETranslator",
    "StreamTranslator",
    "TranslationError",
    "Usage",
    "cache_usage",
    "client_wants_usage",
    "content_parts",
    "context_overflow",
    "count",
    "error_body",
    "error_event",
    "error_object",
    "json_error",
    "max_tokens_of",
    "messages_of",
    "model_renamer",
    "number",
    "openai_usage",
    "positive_int",
    "status_error",
    "stop_of",
    "unsupported_part",
    "upstream_error_message",
    "usage_from",
]


class Usage(NamedTuple):
    """Token usage of one response, as billed.

    `prompt` includes `cached` (input tokens read from a prompt cache, billed at the cached
    price); `completion` includes `reasoning` (thinking tokens, billed as output)."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0


DONE_FRAME = b"data: [DONE]\n\n"
#: The `code` of the error that ends a stream the upstream cut short (before its terminal
#: event), whichever provider and translator: clients and logs can match on one value.
#: (Anthropic-format `event: error` objects have no code field; their type is `api_error`.)
STREAM_TRUNCATED = "upstream_stream_truncated"
TRUNCATED_MESSAGE = "The upstream provider ended the stream before it was complete"


def model_renamer(upstream: str, alias: str) -> Callable[[bytes], bytes] | None:
    """A function showing the client its own model name: every `"model": "<upstream>"` member
    of the JSON in the given bytes (whole frames or a whole body) becomes `"model":"<alias>"`.
    None when there is nothing to rename.

    Inside a JSON string a quote is escaped, so the pattern only matches a real member."""
    if upstream == alias:
        return None
    pattern = re.compile(rb'"model"\s*:\s*' + re.escape(orjson.dumps(upstream)))
    to = b'"model":' + orjson.dumps(alias)

    def rename(data: bytes) -> bytes:
        return pattern.sub(lambda _: to, data) if b'"model"' in data else data

    return rename


class TranslationError(Exception):
    """A request the target schema cannot express; becomes an OpenAI-style 4xx for the client."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> bytes:
        """The OpenAI error body to send the client."""
        return error_body(self.message, code=self.code, param=self.param)


def error_object(
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The inner OpenAI error object (also what goes in a streamed error chunk)."""
    return {"message": message, "type": type_, "param": param, "code": code}


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """OpenAI error JSON; the openai SDK reads message/type/param/code from it."""
    return orjson.dumps({"error": error_object(message, type_, code, param)})


def error_event(
    message: str,
    type_: str = "api_error",
    code: str | None = None,
) -> bytes:
    """An in-stream error frame plus [DONE]: the openai SDK raises APIError on it."""
    return b"data: " + error_body(message, type_, code) + b"\n\n" + DONE_FRAME


def client_wants_usage(req: dict[str, Any]) -> bool:
    """Whether the client itself asked for the streamed usage chunk (read before forwarding)."""
    so = req.get("stream_options")
    return isinstance(so, dict) and bool(so.get("include_usage"))


# ------------------------------------------------------------ request fields


def positive_int(v: Any, param: str) -> int:
    """`v` if it is an integer >= 1 (not a bool), else a 400 naming `param`."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TranslationError(f"{param} must be a positive integer", param=param)
    return v


def number(v: Any, param: str) -> float:
    """`v` if it is an int or float (not a bool), else a 400 naming `param`."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TranslationError(f"{param} must be a number", param=param)
    return v


def max_tokens_of(req: dict[str, Any]) -> int | None:
    """The completion limit: `max_completion_tokens`, else the legacy `max_tokens`, else None."""
    mct = req.get("max_completion_tokens")
    if mct is not None:
        return positive_int(mct, "max_completion_tokens")
    if (mt := req.get("max_tokens")) is not None:
        return positive_int(mt, "max_tokens")
    return None


def stop_of(req: dict[str, Any]) -> list[str] | None:
    """`stop` as a list of strings (a lone string becomes a list of one), None when absent."""
    stop = req.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        if not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop must be a string or a list of strings", param="stop")
        return stop
    if stop is not None:
        raise TranslationError("stop must be a string or a list of strings", param="stop")
    return None


def messages_of(msgs: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """(message, its param) for each of a request's `messages`: a non-empty array of objects.

    Raises (when the iteration reaches the fault) on anything else.
    """
    if not isinstance(msgs, list) or not msgs:
        raise TranslationError("messages must be a non-empty array", param="messages")
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TranslationError("messages must be objects", param=param)
        yield m, param


def content_parts(content: Any, param: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """(type, part, param of the part) for each part of a message's list `content`.

    Raises on a non-list content, a part that is not an object and a `text` part whose `text`
    is not a string, each when the iteration reaches it (parts before it are handled first).
    """
    if not isinstance(content, list):
        raise TranslationError("content must be a string or a list of parts", param=param)
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise TranslationError("content parts must be objects", param=p)
        kind = part.get("type")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise TranslationError("text parts need a string `text`", param=p)
        yield kind, part, p


def unsupported_part(kind: Any, param: str) -> TranslationError:
    """The error for a content part type the backend has no form for."""
    return TranslationError(
        f"content part type {kind!r} is not supported for this backend", param=param
    )


# HTTP status -> (OpenAI type, OpenAI code), as OpenAI itself answers; providers add their own.
STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", None),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


_CONTEXT_OVERFLOW = re.compile(
    r"too long|too many (?:input )?tokens|context (?:length|window)|maximum context"
    r"|exceeds? (?:the )?max(?:imum)? (?:number of )?(?:input )?tokens"
    r"|token count.{0,80}exceed",
    re.IGNORECASE | re.DOTALL,
)


def context_overflow(message: str) -> bool:
    """Whether a provider's 400 message says the prompt is over the context window (each
    provider words it differently; clients expect OpenAI's `context_length_exceeded`)."""
    return _CONTEXT_OVERFLOW.search(message) is not None


def status_error(status: int) -> tuple[str, str | None]:
    """OpenAI (type, code) for an HTTP status no provider table maps (0: an in-stream error)."""
    return ("api_error", None) if status >= 500 or status == 0 else ("invalid_request_error", None)


def json_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of an `{"error": {...}}` JSON body; None when there is none."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else None


def upstream_error_message(status: int, body: bytes) -> str:
    """The message for an error answer whose body is not the provider's error JSON."""
    snippet = body[:2000].decode("utf-8", "replace").strip()[:500]
    return f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")


# ---------------------------------------------------------------------- usage


#: Above any real token count; a larger "count" is garbage (and would overflow a JSON int64
#: once summed).
MAX_COUNT = 2**40


def count(v: Any) -> int:
    """A token count from a provider's answer: a non-negative int (not a bool), else 0, so a
    garbled usage object can neither break cost accounting nor the body built from it."""
    return v if type(v) is int and 0 <= v <= MAX_COUNT else 0


def cache_usage(
    u: Any, input_key: str, output_key: str, read_key: str, write_key: str
) -> Usage:
    """Usage of a usage object whose input count leaves out the prompt cache (Anthropic,
    Bedrock): the canonical prompt count includes cache reads and writes, and `cached` is the
    cache reads. No reasoning count: these providers bill thinking inside their output count."""
    if not isinstance(u, dict):
        return Usage(0, 0)
    cached = count(u.get(read_key))
    prompt = count(u.get(input_key)) + cached + count(u.get(write_key))
    return Usage(prompt, count(u.get(output_key)), cached)


def usage_from(u: Any) -> Usage | None:
    """Usage of a canonical (OpenAI) `usage` object: `prompt_tokens` (incl.
    `prompt_tokens_details.cached_tokens`) and `completion_tokens` (incl.
    `completion_tokens_details.reasoning_tokens`); None when it counts neither."""
    if not isinstance(u, dict):
        return None
    p = u.get("prompt_tokens")
    c = u.get("completion_tokens")
    if not isinstance(p, int) and not isinstance(c, int):
        return None
    return Usage(
        count(p),
        count(c),
        _detail(u, "prompt_tokens_details", "cached_tokens"),
        _detail(u, "completion_tokens_details", "reasoning_tokens"),
    )


def _detail(u: dict[str, Any], details: str, key: str) -> int:
    d = u.get(details)
    return count(d.get(key)) if isinstance(d, dict) else 0


def openai_usage(
    prompt: int, completion: int, cached: int = 0, reasoning: int | None = None
) -> dict[str, Any]:
    """An OpenAI `usage` object; `completion_tokens_details` only when `reasoning` is given."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


class ChunkWriter:
    """The `chat.completion.chunk` SSE frames of one translated stream.

    `created` is fixed when the writer is made, the id by `start()`, which pre-renders the
    envelope (id, object, created, model, and `"usage":null` when the client asked for usage):
    a choice-0 content or reasoning delta (the hot path) is then three byte strings joined, and
    any other chunk renders only its choice. Nothing may be written before `start()`.
    """

    __slots__ = (
        "_close",
        "_content",
        "_include_usage",
        "_open",
        "_reasoning",
        "_role",
        "_suffix",
        "created",
        "id",
        "model",
    )

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.created = int(time.time())
        self.id: str | None = None  # set by start()
        self._include_usage = include_usage
        self._open = b""  # a frame up to and including `"choices":[`
        self._close = b""  # what follows the choices array
        self._content = b""  # a choice-0 delta up to a content string
        self._reasoning = b""  # the same for a reasoning_content string
        self._suffix = b""  # what follows such a string
        self._role = b""

    def start(self, chunk_id: str) -> bytes:
        """Fix the chunk id, pre-render the envelope; returns the choice-0 role chunk."""
        self.id = chunk_id
        head = orjson.dumps(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
            }
        )
        self._open = b"data: " + head[:-1] + b',"choices":['
        self._close = b'],"usage":null}\n\n' if self._include_usage else b"]}\n\n"
        delta_open = self._open + b'{"index":0,"delta":{'
        self._content = delta_open + b'"content":'
        self._reasoning = delta_open + b'"reasoning_content":'
        self._suffix = b'},"logprobs":null,"finish_reason":null}' + self._close
        self._role = delta_open + b'"role":"assistant","content":""' + self._suffix
        return self._role

    def role(self, index: int = 0) -> bytes:
        """The chunk that opens a choice: role assistant, empty content."""
        if index == 0 and type(index) is int:  # a bool index renders as false, not 0
            return self._role
        return self.delta({"role": "assistant", "content": ""}, index=index)

    def content(self, text: str) -> bytes:
        """A choice-0 content delta."""
        return self._content + orjson.dumps(text) + self._suffix

    def reasoning(self, text: str) -> bytes:
        """A choice-0 `reasoning_content` delta."""
        return self._reasoning + orjson.dumps(text) + self._suffix

    def delta(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        """A chunk of one choice with any delta and finish_reason."""
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._open + orjson.dumps(choice) + self._close

    def tool_call(self, index: int, call_id: Any, name: Any) -> bytes:
        """The choice-0 delta that opens tool call `index` (its arguments follow)."""
        call = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self.delta({"tool_calls": [call]})

    def tool_arguments(self, index: int, arguments: str) -> bytes:
        """A choice-0 delta with more argument text for tool call `index`."""
        return self.delta({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})

    def finish(self, reason: str, index: int = 0) -> bytes:
        """The empty delta that carries a choice's finish_reason."""
        return self.delta({}, reason, index)

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The usage-only chunk (no choices) that ends a stream whose client asked for usage."""
        return self._open + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"

    @staticmethod
    def error(error: dict[str, Any]) -> bytes:
        """An in-stream error chunk (an `error_object`) and the [DONE] that follows it."""
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE_FRAME


_E = TypeVar("_E")


class StreamTranslator(Generic[_E]):
    """Skeleton of a stream translator: `feed()` each upstream chunk, then `finish()` once.

    A subclass splits chunks into events (`_events`), turns each event into output frames
    (`_event`), flushes a last unterminated event (`_flush`) and closes a body that ended
    without its terminal event (`_end`, usually an error: never a clean-looking truncation).
    Once `done` is set (end or error), nothing more is sent. `_fail` renders an OpenAI error
    chunk and records it in `error`.
    """

    __slots__ = ("done", "error", "finish_reason", "first_token_at", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.done = False
        self.error: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes produced by this upstream chunk."""
        if self.done:
            return b""
        out: list[bytes] = []
        for ev in self._events(chunk, out):
            self._event(ev, out)
            if self.done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """End of upstream body: flush what is pending, then close the stream or fail it."""
        if self.done:
            return b""
        out: list[bytes] = []
        self._flush(out)
        if not self.done:
            self._end(out)
        return b"".join(out)

    def _token(self) -> None:
        """Note the time of the first token."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def _fail(self, message: str, type_: str, code: str | None) -> bytes:
        self.done = True
        self.error = error_object(message, type_, code)
        return ChunkWriter.error(self.error)

    def _json(self, data: bytes, out: list[bytes], lenient: bool = False) -> dict[str, Any] | None:
        """An event's JSON object, None for other JSON; malformed JSON fails the stream unless
        `lenient` (a last frame cut short is dropped instead)."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            if not lenient:
                out.append(self._fail("malformed event from upstream stream", "api_error", None))
            return None
        return obj if isinstance(obj, dict) else None

    # -- per-schema hooks

    def _events(self, chunk: bytes, out: list[bytes]) -> Iterable[_E]:
        """The complete events in `chunk` (a corrupt one may append a failure to `out`)."""
        raise NotImplementedError

    def _event(self, ev: _E, out: list[bytes], lenient: bool = False) -> None:
        """Append the frames for one event; `lenient`: a last frame that may be cut short."""
        raise NotImplementedError

    def _flush(self, out: list[bytes]) -> None:
        """Handle what is left undecoded at the end of the body."""

    def _end(self, out: list[bytes]) -> None:
        """The body ended before the stream was done: close it, or fail it."""
        raise NotImplementedError


class SSETranslator(StreamTranslator[SSEEvent]):
    """A StreamTranslator of an SSE upstream body."""

    __slots__ = ("_parser",)

    def __init__(self) -> None:
        super().__init__()
        self._parser = SSEParser()

    def _events(self, chunk: bytes, out: list[bytes]) -> Iterable[SSEEvent]:
        return self._parser.feed(chunk)

    def _flush(self, out: list[bytes]) -> None:
        ev = parse_frame(self._parser.take_pending())
        if ev is not None:  # a last frame missing its blank line
            self._event(ev, out, lenient=True)
