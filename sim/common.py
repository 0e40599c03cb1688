"""Shared machinery of the provider simulators: options, recording, faults, replies, SSE.

Each provider kind (``sim/openai.py``, ``sim/anthropic.py``, ...) is one ``Provider`` subclass
that only knows its wire format; timing, fault injection and recording live here so every kind
behaves the same under test and benchmark.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import random
import socket
import struct
import time
import types
import typing
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from sim.quota import Quota, cost_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BodyHandler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]

MAX_RECORDS: Final = 10_000
_JSON_HEADERS: Final = {"Content-Type": "application/json"}
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
# Filler words that pad replies to their deterministic length.
_LOREM: Final = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua"
)
_FILLER: Final = tuple(_LOREM.split())
_QUOTED_WORDS: Final = 8


#: Where `endpoint` leaves the parsed body for `faults` (the quota charges its tokens).
SIM_BODY: Final = web.RequestKey("sim_body", object)

#: What a `malformed` simulator sends instead of a JSON body or event.
MALFORMED_JSON = b'{"id": "broken", "choices": [{"index": 0, "delta": {"content": "x'


@dataclass
class SimOptions:
    """Latency and fault knobs; all faults are off by default and changeable at run time."""

    ttft_ms: float = 20.0
    tokens_per_s: float = 200.0
    # Fraction of generation requests answered with `error_status` in the provider's format.
    error_rate: float = 0.0
    error_status: int = 500
    # Answer every generation request 429 with `retry-after: <retry_after_s>`.
    rate_limit: bool = False
    retry_after_s: int = 1
    # Accept the request and never answer until the client goes away.
    hang: bool = False
    # Streams only: abort the TCP connection (RST) after this many SSE events were sent.
    reset_after_chunks: int | None = None
    # Streams only: end the response cleanly (no [DONE] / message_stop) after this many events,
    # like a provider that drops a stream without finishing it.
    truncate_after_chunks: int | None = None
    # Overrides ttft_ms, to make one provider slow without changing the default.
    slow_first_token_ms: float | None = None
    # Answer 200 with a body nobody can parse (broken JSON; for streams one broken event
    # after the first), like a provider or middlebox that garbles its answer.
    malformed: bool = False
    # Fraction of successful generation answers mangled on the way out (`garble`): a bit
    # flip, a cut, garbage bytes or a lost frame separator in the body (streams: in one event,
    # after which the stream may end), sometimes under a wrong Content-Type. Seeded by
    # `garble_seed` so a fuzz run can be repeated; for fuzzing the gateway's response path.
    garble_rate: float = 0.0
    garble_seed: int = 0
    # Usage reports this many prompt tokens as read from a prompt cache, and this many of the
    # completion tokens as reasoning (OpenAI wire format), to test pricing of both.
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # The simulated account's own quota (requests / tokens per minute, smooth refill): over
    # it the provider answers 429 with its rate-limit headers; every answer reports what is
    # left. None: unlimited.
    rpm: float | None = None
    tpm: float | None = None
    # Fixed reply length in tokens; None derives it (24..48) from the prompt.
    reply_tokens: int | None = None
    # vLLM kind: `/metrics` answers 503 (a replica whose metrics endpoint is down).
    metrics_down: bool = False
    # How many requests /_sim/requests keeps; 0 turns recording off (long benchmarks).
    record_limit: int = MAX_RECORDS

    def __post_init__(self) -> None:
        checks = (
            (self.ttft_ms >= 0, "ttft_ms must be >= 0"),
            (0.0 <= self.error_rate <= 1.0, "error_rate must be in [0, 1]"),
            (0.0 <= self.garble_rate <= 1.0, "garble_rate must be in [0, 1]"),
            (400 <= self.error_status <= 599, "error_status must be in [400, 599]"),
            (self.retry_after_s >= 0, "retry_after_s must be >= 0"),
            (
                self.reset_after_chunks is None or self.reset_after_chunks >= 0,
                "reset_after_chunks must be >= 0",
            ),
            (
                self.truncate_after_chunks is None or self.truncate_after_chunks >= 1,
                "truncate_after_chunks must be >= 1",
            ),
            (
                self.slow_first_token_ms is None or self.slow_first_token_ms >= 0,
                "slow_first_token_ms must be >= 0",
            ),
            (self.reply_tokens is None or self.reply_tokens >= 1, "reply_tokens must be >= 1"),
            (self.record_limit >= 0, "record_limit must be >= 0"),
            (self.cached_tokens >= 0, "cached_tokens must be >= 0"),
            (self.reasoning_tokens >= 0, "reasoning_tokens must be >= 0"),
            (self.rpm is None or self.rpm > 0, "rpm must be > 0"),
            (self.tpm is None or self.tpm > 0, "tpm must be > 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def first_token_ms(self) -> float:
        """Delay before the first byte of an answer."""
        return self.ttft_ms if self.slow_first_token_ms is None else self.slow_first_token_ms

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def patched(self, patch: Mapping[str, Any]) -> "SimOptions":
        """Return a copy with `patch` applied; raise ValueError on unknown fields or bad types."""
        hints = typing.get_type_hints(SimOptions)
        changes: dict[str, Any] = {}
        for key, value in patch.items():
            if key not in hints:
                raise ValueError(f"unknown option {key!r}")
            changes[key] = _coerce(key, hints[key], value)
        return dataclasses.replace(self, **changes)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Type-check one JSON value against a SimOptions field annotation."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None:
        ok = optional
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = is_number and isinstance(value, int)
    elif base is float:
        ok = is_number
    else:
        ok = False
    if not ok:
        raise ValueError(f"option {key!r} must be {hint}, got {value!r}")
    return float(value) if base is float and value is not None else value


class _InvalidJSON:
    """Marks a body that is not JSON; the handler answers 400 in its provider's format."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID_JSON"


INVALID_JSON: Final = _InvalidJSON()


def parse_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return INVALID_JSON


# method, path, query string, raw headers, raw body, time.time()
_Record = tuple[str, str, str, tuple[tuple[bytes, bytes], ...], bytes, float]


class SimState:
    """Everything one simulated provider shares between requests."""

    def __init__(self, kind: str, name: str, options: SimOptions, require_key: str | None) -> None:
        self.kind = kind
        self.name = name
        self.initial_options = options
        self.options = options
        self.require_key = require_key
        self._records: deque[_Record] = deque(maxlen=options.record_limit)
        self.closing = False
        self.hanging = 0
        self.quota = Quota(options.rpm, options.tpm)
        #: Draws of the `garble_rate` fault (reseeded when `garble_seed` changes).
        self.garbler = random.Random(options.garble_seed)
        #: vLLM kind: the engine model's settings (sim.vllm_engine.EngineConfig); None: the
        #: fixed ttft_ms / tokens_per_s timing.
        self.engine_cfg: Any = None
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def set_options(self, options: SimOptions) -> None:
        """Swap options atomically; in-flight requests keep the snapshot they started with."""
        if options.record_limit != self._records.maxlen:
            self._records = deque(self._records, maxlen=options.record_limit)
        if (options.rpm, options.tpm) != (self.options.rpm, self.options.tpm):
            self.quota = Quota(options.rpm, options.tpm)
        if options.garble_seed != self.options.garble_seed:
            self.garbler = random.Random(options.garble_seed)
        self.options = options

    def new_id(self) -> str:
        """Unique, cheap id suffix (no per-request randomness)."""
        return f"sim{self._id_prefix}{next(self._ids):010x}"

    def record(self, request: web.Request, raw: bytes) -> None:
        """Keep the raw request; dicts are built only when read (cheap, and no GC pressure)."""
        if self._records.maxlen:
            self._records.append(
                (
                    request.method,
                    request.path,
                    request.query_string,
                    request.raw_headers,
                    raw,
                    time.time(),
                )
            )

    def clear_records(self) -> None:
        self._records.clear()

    def requests(self) -> list[dict[str, Any]]:
        """The recorded requests, oldest first, as served by `GET /_sim/requests`."""
        out = []
        for method, path, query_string, raw_headers, raw, at in self._records:
            body = parse_body(raw) if raw else None
            if body is INVALID_JSON:
                body = raw.decode("utf-8", "replace")
            out.append(
                {
                    "method": method,
                    "path": path,
                    "query": dict(parse_qsl(query_string, keep_blank_values=True)),
                    "headers": {
                        k.decode("latin-1").lower(): v.decode("utf-8", "replace")
                        for k, v in raw_headers
                    },
                    "body": body,
                    "time": at,
                }
            )
        return out


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """JSON answer without aiohttp's content-type parsing (hot path)."""
    all_headers = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
    return web.Response(body=orjson.dumps(obj), status=status, headers=all_headers)


# --- replies -------------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """Plain text of a message content: a string, or the text of a list of blocks/parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif "content" in block:  # Anthropic tool_result
                    parts.append(content_text(block["content"]))
            elif isinstance(block, str):
                parts.append(block)
        return " ".join(parts)
    return ""


def count_words(text: str) -> int:
    return len(text.split())


@dataclass(slots=True)
class Completion:
    """A deterministic answer: tokens are whitespace-separated words."""

    words: list[str]
    truncated: bool
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.words)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def deltas(self) -> Iterable[str]:
        """Streamed pieces whose concatenation is `text`."""
        for i, word in enumerate(self.words):
            yield word if i == 0 else " " + word


def make_completion(
    name: str,
    last_user_text: str,
    prompt_tokens: int,
    max_tokens: int | None,
    reply_tokens: int | None,
) -> Completion:
    """Reply derived only from the prompt, so tests can predict it."""
    quoted = last_user_text.split(maxsplit=_QUOTED_WORDS)[:_QUOTED_WORDS] or ["(no", "text)"]
    words = ["Simulated", "reply", "from", *name.split(), "to:", *quoted]
    if reply_tokens is None:
        reply_tokens = 24 + zlib.crc32(last_user_text.encode("utf-8", "replace")) % 25
    if len(words) >= reply_tokens:
        del words[reply_tokens:]
    else:
        need = reply_tokens - len(words)
        words.extend(_FILLER[i % len(_FILLER)] for i in range(need))
    truncated = max_tokens is not None and max_tokens < len(words)
    if truncated:
        del words[typing.cast(int, max_tokens) :]
    return Completion(words, truncated, prompt_tokens)


# --- garbling (fault `garble_rate`) ------------------------------------------------------

#: Content types a garbled answer may claim instead of its own.
WRONG_CONTENT_TYPES: Final = ("text/html; charset=utf-8", "text/plain", "application/json",
                              "text/event-stream", "application/octet-stream")


def garble(data: bytes, rng: random.Random) -> bytes:
    """One corruption of `data`: a flipped bit, a cut, inserted garbage, a lost frame
    separator (SSE blank line) or invalid UTF-8; what a broken provider or middlebox sends."""
    if not data:
        return rng.randbytes(rng.randint(1, 8))
    i = rng.randrange(len(data))
    op = rng.randrange(5)
    if op == 0:
        return data[:i] + bytes((data[i] ^ (1 << rng.randrange(8)),)) + data[i + 1:]
    if op == 1:
        return data[:i]
    if op == 2:
        return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    if op == 3 and b"\n\n" in data:
        return data.replace(b"\n\n", b"\n", 1)
    return data[:i] + b"\xff\xfe\xc3" + data[i:]


# --- connections ---------------------------------------------------------------------------


class StreamAborted(Exception):
    """The stream was cut on purpose (fault or shutdown); the handler just returns."""


class StreamTruncated(Exception):
    """The stream is ended cleanly but early, on purpose (fault)."""


async def reset_connection(request: web.Request) -> None:
    """Flush what was written, then close with RST like a crashed upstream."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(100):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class Pacer:
    """Spaces tokens at a fixed rate against an absolute schedule (no drift)."""

    __slots__ = ("_interval", "_n", "_start")

    def __init__(self, tokens_per_s: float) -> None:
        self._interval = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self._start = asyncio.get_running_loop().time()
        self._n = 0

    async def next(self) -> None:
        self._n += 1
        if not self._interval:
            if self._n % 32 == 0:  # let other requests run during long undelayed streams
                await asyncio.sleep(0)
            return
        delay = self._start + self._n * self._interval - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)


# --- providers -----------------------------------------------------------------------------


class SimError(NamedTuple):
    """What `Provider.error` was asked for: each provider renders it in its own format."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] | None = None


class Provider(ABC):
    """One provider kind: its routes, auth and error format; the rest is shared."""

    kind: ClassVar[str]
    # Content-Type of error answers (`error_headers` may add more; the caller's headers win).
    error_content_type: ClassVar[str] = "application/json"

    def __init__(self, state: SimState) -> None:
        self.state = state

    @abstractmethod
    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        """(method, path, handler) of the provider's API."""

    @abstractmethod
    def error_body(self, err: SimError) -> bytes:
        """The body of an error in the provider's own wire format (see `error`)."""

    def error_headers(self, err: SimError) -> dict[str, str]:
        """The headers of an error answer, before the caller's own."""
        return {"Content-Type": self.error_content_type}

    def error(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An error in the provider's own wire format: `error_body` with `error_headers`."""
        err = SimError(status, message, param, code, headers)
        return self.error_response(err, self.error_body(err))

    def error_response(self, err: SimError, body: bytes) -> web.Response:
        """The answer for `err` with a ready body; the caller's headers win over ours."""
        all_headers = {**self.error_headers(err), **(err.headers or {})}
        return web.Response(body=body, status=err.status, headers=all_headers)

    async def not_found(self, request: web.Request, body: Any) -> web.StreamResponse:
        return self.error(404, f"Invalid URL ({request.method} {request.path})")

    def endpoint(self, handler: BodyHandler) -> Handler:
        """Read, parse and record the body once, then call `handler(request, body)`."""
        state = self.state

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            state.record(request, raw)
            body = parse_body(raw) if raw else INVALID_JSON
            request[SIM_BODY] = body
            return await handler(request, body)

        return handle

    async def faults(self, request: web.Request) -> web.StreamResponse | None:
        """The fault answer for this request, or None to serve it normally."""
        opts = self.state.options
        if opts.hang:
            return await self._hang(request)
        if opts.rate_limit:
            return self.error(
                429,
                "Rate limit exceeded (simulated). Please retry after "
                f"{opts.retry_after_s} seconds.",
                headers={"retry-after": str(opts.retry_after_s)},
            )
        quota = self.state.quota
        if quota.active:
            wait = quota.take(cost_of(request.get(SIM_BODY)))
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                return self.error(
                    429, f"Rate limit reached for requests (simulated quota). Please try again "
                    f"in {wait:.3f}s.", code="rate_limit_exceeded",
                    headers={**quota.headers(self.state.kind), "retry-after": retry})
        if opts.error_rate > 0 and (opts.error_rate >= 1 or random.random() < opts.error_rate):
            return self.error(
                opts.error_status, f"The server had an error (simulated {opts.error_status})."
            )
        return None

    def quota_headers(self) -> dict[str, str]:
        """Remaining-quota headers of a successful answer (none without a quota)."""
        quota = self.state.quota
        return quota.headers(self.state.kind) if quota.active else {}

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Hold the request until the client disconnects or the simulator shuts down."""
        state = self.state
        state.hanging += 1
        try:
            while not state.closing and not client_gone(request):
                await asyncio.sleep(0.02)
        finally:
            state.hanging -= 1
        await reset_connection(request)
        return web.Response(status=499)

    async def reply(self, request: web.Request, obj: Any) -> web.StreamResponse:
        """Non-streaming answer after the first-token delay (no sleep when it is 0)."""
        delay = self.state.options.first_token_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if self.state.options.malformed:
            return web.Response(body=MALFORMED_JSON, content_type="application/json",
                                headers=self.response_headers())
        garbled = self.garbled(obj)
        if garbled is not None:
            return garbled
        return json_response(obj, headers={**self.response_headers(), **self.quota_headers()})

    def garbled(self, obj: Any) -> web.Response | None:
        """The `garble_rate` fault for a JSON answer: its bytes corrupted (sometimes under a
        wrong Content-Type), or None to answer normally."""
        state = self.state
        rng = state.garbler
        if not state.options.garble_rate or rng.random() >= state.options.garble_rate:
            return None
        body = garble(orjson.dumps(obj), rng)
        content_type = (rng.choice(WRONG_CONTENT_TYPES) if rng.random() < 0.25
                        else "application/json")
        return web.Response(body=body, headers={**self.response_headers(),
                                                "Content-Type": content_type})

    def response_headers(self) -> dict[str, str]:
        """Headers every answer carries (request ids and the like)."""
        return {}

    def completion(self, last_user: str, prompt_tokens: int, max_tokens: int | None) -> Completion:
        return make_completion(
            self.state.name, last_user, prompt_tokens, max_tokens, self.state.options.reply_tokens
        )

    async def stream(
        self,
        request: web.Request,
        preamble: Iterable[bytes],
        tokens: Iterable[bytes],
        epilogue: Iterable[bytes],
    ) -> web.StreamResponse:
        """Send SSE events: preamble and first token after TTFT, then tokens at tokens_per_s.

        Each item is one event ("chunk") for `reset_after_chunks`.
        """
        opts = self.state.options
        state = self.state
        if opts.first_token_ms > 0:
            await asyncio.sleep(opts.first_token_ms / 1000.0)
        headers = {**SSE_HEADERS, **self.response_headers(), **self.quota_headers()}
        rng = state.garbler
        # garble_rate: which event gets corrupted (-1: none) and whether the stream ends there.
        garble_at, garble_ends = -1, False
        if opts.garble_rate and rng.random() < opts.garble_rate:
            garble_at, garble_ends = rng.randrange(8), rng.random() < 0.5
            if rng.random() < 0.25:
                headers["Content-Type"] = rng.choice(WRONG_CONTENT_TYPES)
        resp = web.StreamResponse(headers=headers)
        limit = opts.reset_after_chunks
        truncate = opts.truncate_after_chunks
        sent = 0

        async def send(chunk: bytes) -> None:
            nonlocal sent
            if state.closing:
                raise StreamAborted
            if sent == garble_at:
                await resp.write(garble(chunk, rng))
                sent += 1
                if garble_ends:
                    raise StreamTruncated
                return
            await resp.write(chunk)
            sent += 1
            if sent == limit:
                await reset_connection(request)
                raise StreamAborted
            if sent == truncate:
                raise StreamTruncated

        try:
            await resp.prepare(request)
            if limit == 0:
                await reset_connection(request)
                raise StreamAborted
            for chunk in preamble:
                await send(chunk)
            if opts.malformed:
                await send(b"data: " + MALFORMED_JSON + b"\n\n")
                raise StreamTruncated
            pacer = Pacer(opts.tokens_per_s)
            for i, chunk in enumerate(tokens):
                if i:
                    await pacer.next()
                await send(chunk)
            for chunk in epilogue:
                await send(chunk)
            await resp.write_eof()
        except StreamTruncated:
            await resp.write_eof()
        except (StreamAborted, ConnectionError):
            if not client_gone(request):
                await reset_connection(request)
        return resp
