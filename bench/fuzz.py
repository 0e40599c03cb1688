"""`python -m bench.fuzz`: hostile input for the gateway, in process and through a running one.

Part (a), in process (`fuzz_in_process`, also run by a unit test on a small count): seeded,
generated and mutated inputs go through the code a request meets, exactly as the pipeline
calls it:

* **client requests** (OpenAI chat completions, Anthropic Messages, embeddings; streaming or
  not) through `route.parse` (the ingress parsers), selection's features and token estimate,
  and each provider kind's translator (`ingress.request`, as `attempt.prepare` calls it);
* **provider answers** of every kind (OpenAI, Azure, Anthropic, Bedrock, Gemini; JSON, SSE,
  AWS event-stream), first harvested from the simulator (real wire bytes, on loopback), then
  mutated (broken SSE, truncated or corrupt event-stream frames, wrong content types, bad
  JSON, wrong types for every field) and fed, cut at random places, to the response handler
  each client API would use (`ingress.response` -> feed/finish -> usage -> cost).

A *crash* is an exception that is not the designed error path: request parsing may only
answer a `Reject`, translation may only raise `TranslationError`, a streaming handler may
not raise at all (it ends the stream with an error event itself), and a buffered handler may
raise only `TranslationError` or a `ValueError` (`orjson.JSONDecodeError`, or the
translator's own "not a JSON object" / "no embeddings": respond.py answers the documented
502). A translated answer must also reach the client well formed
(JSON bodies, SSE frames whose data is JSON); a same-schema JSON success is relayed as it came
but must be a JSON object (anything else is the 502), and same-schema streams pass bytes
through on purpose and are not checked.

Part (b) starts a gateway on free loopback ports (every provider kind simulated), sends it
mutated client requests and valid ones while the simulators garble their answers
(`garble_rate`), and checks that Envoy, ext_proc, the control plane and the simulator stay
up and that the gateway never answers a 5xx of its own other than the documented 502
(untranslatable answer), 503 (no backend / not ready) and 504 (timeout).

Each input has its own RNG seeded from (`--seed`, its index): `--replay N` runs input N alone
and prints it, to turn a finding into a unit test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from bench.sections import write_section
from ext_proc import route
from ext_proc.admission.estimate import Estimator
from ext_proc.ingress import INGRESS, Ingress
from ext_proc.providers import PROVIDERS, without
from ext_proc.respond import response_id
from ext_proc.select.features import features_of
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo, Routes
from ext_proc.translate.canonical import TranslationError
from ext_proc.usage import cost_usd
from switchyard.contract import CHAT_PATH, EMBEDDINGS_PATH, MESSAGES_PATH
from switchyard.framing.eventstream import EventStreamDecoder, EventStreamError, encode
from switchyard.framing.sse import SSEParser, parse_frame

# ------------------------------------------------------------------------------ backends

#: Provider kinds whose answers are fuzzed (vllm/tgi are OpenAI's code; vertex is Gemini's
#: wire format behind OAuth).
KINDS = ("openai", "azure_openai", "anthropic", "bedrock", "gemini")
UPSTREAM = {"openai": "gpt-4o-mini", "azure_openai": "my-gpt4o-deployment",
            "anthropic": "claude-3-5-haiku-latest",
            "bedrock": "anthropic.claude-3-haiku-20240307-v1:0", "gemini": "gemini-2.0-flash"}
EMBED_UPSTREAM = {"openai": "text-embedding-3-small", "azure_openai": "my-embedding-deployment",
                  "bedrock": "amazon.titan-embed-text-v2:0", "gemini": "text-embedding-004"}
_OPTIONS = {"azure_openai": {"api_version": "2024-10-21"},
            "bedrock": {"region": "us-east-1", "aws_access_key_id": "AKIDFUZZ",
                        "aws_secret_access_key": "fuzz-secret"}}
ALIAS = "fuzz"


def backend(kind: str, port: int = 1, model: str | None = None) -> BackendInfo:
    """A backend of `kind` at 127.0.0.1:`port` (credentials for kinds that need them)."""
    provider = ProviderInfo(name=f"p-{kind}", kind=kind, authority=f"127.0.0.1:{port}".encode(),
                            path_prefix="", api_key="fuzz-key", headers=(),
                            options=dict(_OPTIONS.get(kind, {})))
    m = model or UPSTREAM[kind]
    return BackendInfo(cluster=f"c-{kind}-{m}", provider=provider, model=m, price_input=1.0,
                       price_output=2.0, context_window=200_000, label=f"p-{kind}/{m}")


BACKENDS = {k: backend(k) for k in KINDS}
EMBED_BACKENDS = {k: backend(k, model=m) for k, m in EMBED_UPSTREAM.items()}
ROUTES = Routes(version="fuzz", models={ALIAS: ModelInfo(
    name=ALIAS, backends=tuple(BACKENDS.values()), max_retries=4, per_try_timeout_ms=1000,
    first_byte_timeout_ms=1000, hedge_after_ms=0)}, clusters={})
EMBED_ROUTES = Routes(version="fuzz", models={ALIAS: ModelInfo(
    name=ALIAS, backends=tuple(EMBED_BACKENDS.values()), max_retries=3,
    per_try_timeout_ms=1000, first_byte_timeout_ms=1000, hedge_after_ms=0)}, clusters={})

# --------------------------------------------------------------------------- seed corpus

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5"
       "CYII=")
_PARAMS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
_TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look up",
                                           "parameters": _PARAMS}}
CHAT_SEEDS: list[dict[str, Any]] = [
    {"model": ALIAS, "messages": [{"role": "system", "content": "Be terse."},
                                  {"role": "user", "content": "Tell me about gateways"}],
     "max_tokens": 40, "temperature": 0.3},
    {"model": ALIAS, "stream": True, "stream_options": {"include_usage": True},
     "messages": [{"role": "user", "content": "stream a story"}], "top_p": 0.9,
     "stop": ["\n\n", "END"]},
    {"model": ALIAS, "tools": [_TOOL], "tool_choice": {"type": "function",
                                                        "function": {"name": "lookup"}},
     "parallel_tool_calls": False,
     "messages": [{"role": "user", "content": "find x"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "result x"},
                  {"role": "user", "content": "and y?"}]},
    {"model": ALIAS, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                            "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}],
     "max_completion_tokens": 64, "seed": 7, "n": 1, "user": "u-1"},
    {"model": ALIAS, "response_format": {"type": "json_schema", "json_schema": {
        "name": "out", "schema": _PARAMS, "strict": True}},
     "messages": [{"role": "developer", "content": "json only"},
                  {"role": "user", "content": "give json"}],
     "reasoning_effort": "low", "presence_penalty": 0.5, "frequency_penalty": 0.1,
     "logprobs": True, "top_logprobs": 2, "metadata": {"k": "v"}, "stream": True},
    {"model": ALIAS, "messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_object"}, "tools": [_TOOL], "tool_choice": "required"},
]
_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
MESSAGES_SEEDS: list[dict[str, Any]] = [
    {"model": ALIAS, "max_tokens": 64, "system": "You are terse.",
     "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.5},
    {"model": ALIAS, "max_tokens": 128, "stream": True,
     "system": [{"type": "text", "text": "sys one"}, {"type": "text", "text": "sys two"}],
     "tools": [{"name": "weather", "description": "Weather", "input_schema": _SCHEMA}],
     "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
     "messages": [
         {"role": "user", "content": "weather in Paris?"},
         {"role": "assistant", "content": [
             {"type": "thinking", "thinking": "hmm", "signature": "sig"},
             {"type": "text", "text": "Checking."},
             {"type": "tool_use", "id": "toolu_1", "name": "weather",
              "input": {"city": "Paris"}}]},
         {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "toolu_1",
              "content": [{"type": "text", "text": "sunny"}]},
             {"type": "text", "text": "thanks"}]}]},
    {"model": ALIAS, "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
     "stop_sequences": ["STOP"], "top_k": 5, "metadata": {"user_id": "u-2"},
     "messages": [{"role": "user", "content": [
         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                      "data": PNG}},
         {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
         {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                         "data": "JVBERi0xLjQK"}, "title": "doc"},
         {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                         "data": "plain doc"}},
         {"type": "text", "text": "describe"}]}]},
    {"model": ALIAS, "max_tokens": 32, "stream": True,
     "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": _SCHEMA}},
     "messages": [{"role": "user", "content": "json please"}]},
    {"model": ALIAS, "max_tokens": 16, "output_format": {"type": "json_schema",
                                                         "schema": _SCHEMA},
     "tool_choice": {"type": "tool", "name": "weather"},
     "tools": [{"name": "weather", "input_schema": _SCHEMA, "strict": True}],
     "messages": [{"role": "user", "content": "go"}]},
]
EMBED_SEEDS: list[dict[str, Any]] = [
    {"model": ALIAS, "input": "hello world"},
    {"model": ALIAS, "input": ["a", "b", "c"], "encoding_format": "base64", "dimensions": 256},
    {"model": ALIAS, "input": [[1, 2, 3]], "encoding_format": "float", "user": "u"},
]
SEEDS = {CHAT_PATH: CHAT_SEEDS, MESSAGES_PATH: MESSAGES_SEEDS, EMBEDDINGS_PATH: EMBED_SEEDS}

# ------------------------------------------------------------------------------- mutator

_WEIRD_STRINGS = ("", " ", "\x00", "null", "[]", "{}", "\u202e\u200b\ufeff", "é" * 3,
                  "😀" * 4, "\ud7ff\ue000", "a\r\nb", "data: [DONE]\n\n", "\\", '"', "%s%n",
                  "-1", "1e999", "__proto__", "user", "assistant", "tool", "function", "text",
                  "image", "tool_use", "tool_result", "base64", "json_schema", "auto")
_WEIRD_NUMBERS = (0, -1, 1, 2**31, 2**63, 2**64 - 1, -(2**63), 0.5, -0.0, 1e308, 3.14)
_KEYS = ("type", "role", "content", "text", "model", "messages", "tools", "id", "name",
         "input", "arguments", "usage", "choices", "delta", "index", "stop_reason",
         "finish_reason", "candidates", "parts", "output", "message", "error", "source",
         "data", "function", "tool_calls", "contentBlockIndex", "metadata", "stream")


class Mutator:
    """Seeded structural and byte-level mutations (one RNG per input, for replay)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- values
    def scalar(self) -> Any:
        r = self.rng
        pick = r.randrange(7)
        if pick == 0:
            return r.choice(_WEIRD_STRINGS)
        if pick == 1:
            return r.choice(_WEIRD_NUMBERS)
        if pick == 2:
            return r.choice((True, False, None))
        if pick == 3:
            return "".join(chr(r.randrange(0x20, 0x2FFF)) for _ in range(r.randrange(1, 12)))
        if pick == 4:
            return r.choice(_KEYS)
        if pick == 5:
            return r.randrange(-5, 100)
        return r.random() * r.choice((1, 1000, -1))

    def value(self, depth: int = 0) -> Any:
        """A random JSON value of any type."""
        r = self.rng
        pick = r.randrange(6) if depth < 3 else 0
        if pick <= 2:
            return self.scalar()
        if pick == 3:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        if pick == 4:
            return {r.choice(_KEYS): self.value(depth + 1) for _ in range(r.randrange(4))}
        return self.huge() if r.random() < 0.3 else self.nested(r.randrange(2, 60))

    def huge(self) -> Any:
        r = self.rng
        n = r.choice((1_000, 20_000, 200_000))
        return r.choice(("x" * n, "😀" * (n // 4), ["a"] * (n // 10), {f"k{i}": i for i in
                                                                       range(n // 100)}))

    def nested(self, depth: int) -> Any:
        v: Any = self.scalar()
        for _ in range(depth):
            v = [v] if self.rng.random() < 0.5 else {self.rng.choice(_KEYS): v}
        return v

    def paths(self, obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        yield prefix
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from self.paths(v, (*prefix, k))
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:20]):
                yield from self.paths(v, (*prefix, i))

    def structure(self, obj: Any, ops: int = 1) -> Any:
        """`obj` (a fresh copy: it is changed in place) with `ops` mutations at random nodes:
        type swaps, deletions, duplicates, new keys, huge or deeply nested values."""
        r = self.rng
        for _ in range(ops):
            paths = list(self.paths(obj))
            path = r.choice(paths)
            if not path:
                if r.random() < 0.2:
                    obj = self.value()
                continue
            parent = obj
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            op = r.randrange(8)
            if op == 0:  # delete
                del parent[key]
            elif op == 1:  # a value of another type
                parent[key] = self.value()
            elif op == 2:
                parent[key] = self.scalar()
            elif op == 3 and isinstance(parent[key], list | dict):  # empty container
                parent[key] = type(parent[key])()
            elif op == 4 and isinstance(parent, list):  # duplicate an element
                parent.insert(key, orjson.loads(orjson.dumps(parent[key])))
            elif op == 5 and isinstance(parent, dict):  # an extra key
                parent[r.choice(_KEYS)] = self.value()
            elif op == 6:
                parent[key] = self.nested(r.randrange(2, 40))
            else:
                parent[key] = r.choice((None, "", 0, [], {}, True))
        return obj

    def dumps(self, obj: Any) -> bytes:
        """JSON of `obj`; objects sometimes carry duplicate keys (before or after the real
        one: parsers keep the last)."""
        r = self.rng
        if r.random() < 0.85:
            return orjson.dumps(obj)
        return self._dumps_dupes(obj, 0)

    def _dumps_dupes(self, obj: Any, depth: int) -> bytes:
        if isinstance(obj, dict) and depth < 30:
            parts = []
            for k, v in obj.items():
                key = orjson.dumps(str(k))
                if self.rng.random() < 0.2:
                    parts.append(key + b":" + orjson.dumps(self.scalar()))
                parts.append(key + b":" + self._dumps_dupes(v, depth + 1))
                if self.rng.random() < 0.05:
                    parts.append(key + b":" + orjson.dumps(self.scalar()))
            return b"{" + b",".join(parts) + b"}"
        if isinstance(obj, list) and depth < 30:
            return b"[" + b",".join(self._dumps_dupes(v, depth + 1) for v in obj) + b"]"
        return orjson.dumps(obj)

    def raw(self, data: bytes) -> bytes:
        """A byte-level mutation: bit flips, a cut, inserted or deleted bytes, a bracket bomb,
        invalid UTF-8 or a lone surrogate escape."""
        r = self.rng
        if not data:
            return r.randbytes(r.randrange(1, 16))
        i = r.randrange(len(data))
        op = r.randrange(8)
        if op == 0:
            b = bytearray(data)
            for _ in range(r.randrange(1, 4)):
                j = r.randrange(len(b))
                b[j] ^= 1 << r.randrange(8)
            return bytes(b)
        if op == 1:
            return data[:i]
        if op == 2:
            return data[:i] + r.randbytes(r.randrange(1, 32)) + data[i:]
        if op == 3:
            return data[:i] + data[i + r.randrange(1, 64):]
        if op == 4:
            n = r.choice((100, 1000, 100_000))
            return data[:i] + b"[" * n + b"]" * r.choice((0, n)) + data[i:]
        if op == 5:
            return data[:i] + b"\xff\xfe\xc3\x28" + data[i:]
        if op == 6:
            return data[:i] + b'"\\ud800"' + data[i:]
        return data[:i] + data[i:i + r.randrange(1, 200)] + data[i:]


# --------------------------------------------------------------------------------- results


@dataclass
class Finding:
    """One distinct crash (or malformed output): where, what, and the first input."""

    what: str
    where: str
    count: int
    index: int
    detail: str


@dataclass
class Report:
    inputs: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    @property
    def crashes(self) -> int:
        return sum(f.count for f in self.findings.values())

    def add(self, what: str, where: str, index: int, detail: str) -> None:
        key = (what, where)
        f = self.findings.get(key)
        if f is None:
            self.findings[key] = Finding(what, where, 1, index, detail[:600])
        else:
            f.count += 1


def _where(exc: BaseException) -> str:
    """The innermost frame of our own code that raised (file:line function)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ext_proc/" in f.filename or "/switchyard/" in f.filename]
    f = (ours or frames)[-1]
    short = f.filename.split("/main/", 1)[-1]
    return f"{short}:{f.lineno} {f.name}"


# -------------------------------------------------------------------------- request cases

_ESTIMATOR = Estimator()
_HEALTH = BackendHealth()


def request_case(path: str, raw: bytes) -> str:
    """One client body through parse -> decide -> features/estimate -> every backend's
    translation, as the route and translate phases run them. Returns the outcome; raises on
    a crash."""
    ingress = INGRESS[path]
    parsed = route.parse(ingress, raw)
    if isinstance(parsed, route.Reject):
        body = ingress.error(parsed.message, parsed.type, parsed.code, parsed.param)
        orjson.loads(body)  # the 400 itself must be well formed
        return f"reject {parsed.status}"
    routes = EMBED_ROUTES if path == EMBEDDINGS_PATH else ROUTES
    req = replace(parsed, alias=ALIAS)
    decision = route.decide(ingress, req, routes, _HEALTH)
    if isinstance(decision, route.Reject):
        return f"reject {decision.status}"
    canonical = req.canonical
    if path != EMBEDDINGS_PATH:
        features_of(canonical)
    _ESTIMATOR.estimate(ALIAS, canonical)
    ok = 0
    for b in decision.candidates:
        attempt = canonical
        bad = PROVIDERS[b.provider.kind].unsupported(attempt)
        if bad:
            attempt = without(attempt, bad)
        try:
            ingress.request(attempt, req.raw, b)
            ok += 1
        except TranslationError:
            pass
    return "translated" if ok else "untranslatable"


def gen_request(m: Mutator) -> tuple[str, bytes]:
    """(path, body): a seed request of a random client API, mutated."""
    r = m.rng
    path = r.choices((CHAT_PATH, MESSAGES_PATH, EMBEDDINGS_PATH), (45, 45, 10))[0]
    obj = orjson.loads(orjson.dumps(r.choice(SEEDS[path])))
    if r.random() < 0.5:
        obj["stream"] = r.random() < 0.5
    pick = r.random()
    if pick < 0.08:
        return path, m.raw(orjson.dumps(obj))
    if pick < 0.12:
        return path, m.dumps(m.value())
    obj = m.structure(obj, r.choice((1, 1, 1, 2, 3, 6)))
    data = m.dumps(obj)
    if r.random() < 0.05:
        data = m.raw(data)
    return path, data


# ------------------------------------------------------------------------- response cases


@dataclass(frozen=True)
class Sample:
    """One real provider answer (harvested from the simulator) and the request it answers."""

    kind: str
    status: int
    content_type: str
    body: bytes
    canonical: dict[str, Any]
    embeddings: bool = False


def _sse_frames(body: bytes) -> list[bytes]:
    parser = SSEParser()
    frames = [raw for raw, _ in parser.feed_frames(body)]
    rest = parser.take_pending()
    return frames + ([rest] if rest else [])


def _eventstream_frames(body: bytes) -> list[tuple[dict[str, str], bytes]] | None:
    try:
        msgs = EventStreamDecoder().feed(body)
    except EventStreamError:
        return None
    return [({k: v for k, v in msg.headers.items() if isinstance(v, str)}, msg.payload)
            for msg in msgs]


_CONTENT_TYPES = ("application/json", "text/event-stream", "text/event-stream; charset=utf-8",
                  "application/vnd.amazon.eventstream", "text/html", "text/plain", "",
                  "application/json; charset=utf-8")


def mutate_sample(m: Mutator, s: Sample) -> tuple[int, str, bytes]:
    """A provider answer gone wrong: (status, content type, body)."""
    r = m.rng
    status, ctype, body = s.status, s.content_type, s.body
    if r.random() < 0.1:
        ctype = r.choice(_CONTENT_TYPES)
    if r.random() < 0.05:
        status = r.choice((200, 201, 204, 400, 401, 404, 413, 429, 500, 502, 503, 529))
    pick = r.random()
    if pick < 0.15:
        return status, ctype, m.raw(body)
    if ctype.startswith("text/event-stream") and b"\n\n" in body:
        frames = _sse_frames(body)
        for _ in range(r.choice((1, 1, 2, 4))):
            frames = _mutate_sse(m, frames)
        body = b"".join(frames)
        if r.random() < 0.05:
            body = body.replace(b"\n", b"\r\n")
        return status, ctype, body
    if ctype.startswith("application/vnd.amazon.eventstream"):
        events = _eventstream_frames(body)
        if events is not None:
            return status, ctype, _mutate_eventstream(m, events)
        return status, ctype, m.raw(body)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, ctype, m.raw(body)
    obj = m.structure(obj, r.choice((1, 1, 2, 3, 5)))
    return status, ctype, m.dumps(obj)


def _mutate_sse(m: Mutator, frames: list[bytes]) -> list[bytes]:
    r = m.rng
    if not frames:
        return [m.raw(b"")]
    i = r.randrange(len(frames))
    op = r.randrange(9)
    frames = list(frames)
    if op <= 3:  # a frame's JSON, structurally
        ev = parse_frame(frames[i])
        if ev is not None:
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                obj = None
            if obj is not None:
                data = m.dumps(m.structure(obj, r.choice((1, 1, 2))))
                head = f"event: {ev.event}\n".encode() if ev.event else b""
                frames[i] = head + b"data: " + data + b"\n\n"
                return frames
        frames[i] = m.raw(frames[i])
    elif op == 4:
        del frames[i]
    elif op == 5:
        frames.insert(i, frames[i])
    elif op == 6:  # cut the stream (mid-frame)
        cut = frames[i][:r.randrange(len(frames[i]) + 1)]
        frames = [*frames[:i], cut]
    elif op == 7:
        frames.insert(i, r.choice((b"data: not json\n\n", b": comment\n\n", b"event: ping\n\n",
                                   b"data: {\"a\":\ndata: 1}\n\n", b"event: error\ndata: {}\n\n",
                                   b"data: [DONE]\n\n", b"retry: 5\n\n", b"\n\n",
                                   b"data: " + m.dumps(m.value()) + b"\n\n")))
    else:
        frames[i] = m.raw(frames[i])
    return frames


def _mutate_eventstream(m: Mutator, events: list[tuple[dict[str, str], bytes]]) -> bytes:
    r = m.rng
    frames = [encode(h, p) for h, p in events]
    if not events:
        return m.raw(b"")
    i = r.randrange(len(events))
    op = r.randrange(7)
    if op <= 2:  # payload JSON, re-encoded with valid CRCs
        headers, payload = events[i]
        try:
            obj = orjson.loads(payload)
            payload = m.dumps(m.structure(obj, r.choice((1, 2))))
        except orjson.JSONDecodeError:
            payload = m.raw(payload)
        frames[i] = encode(headers, payload)
    elif op == 3:  # unknown event or message type
        headers = dict(events[i][0])
        key = r.choice((":event-type", ":message-type", ":exception-type"))
        headers[key] = r.choice(("bogus", "exception", "error", "messageStop", ""))
        frames[i] = encode(headers, events[i][1])
    elif op == 4:  # truncated frame (and nothing after it)
        frames = [*frames[:i], frames[i][:r.randrange(len(frames[i]))]]
    elif op == 5:  # corrupt bytes inside a frame (CRC mismatch)
        frames[i] = m.raw(frames[i])
    else:
        del frames[i]
    return b"".join(frames)


_WELL_FORMED_DONE = b"[DONE]"
_STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")


def _check_output(out: bytes, streaming: bool, ingress: Ingress) -> str | None:
    """Why a translated answer is not well formed for the client, or None."""
    if not streaming:
        try:
            orjson.loads(out)
        except orjson.JSONDecodeError as exc:
            return f"buffered body is not JSON: {exc}"
        return None
    parser = SSEParser()
    events = parser.feed(out)
    if parser.take_pending().strip():
        return "stream ends inside a frame"
    for ev in events:
        if ev.data == _WELL_FORMED_DONE and ingress.name != "anthropic_messages":
            continue
        try:
            orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return f"event data is not JSON: {ev.data[:80]!r}"
        if ingress.name == "anthropic_messages" and not ev.event:
            return "Messages event without an event name"
    return None


def response_case(m: Mutator, samples: list[Sample], show: bool = False
                  ) -> tuple[str, str | None]:
    """One mutated provider answer through the handler a client API would use. Returns
    (outcome, malformed-output reason); raises on a crash."""
    r = m.rng
    if r.random() < 0.4:  # streams are a minority of the harvest; they get their share here
        s = r.choice([x for x in samples if x.content_type.startswith(_STREAM_TYPES)])
    else:
        s = r.choice(samples)
    status, ctype, body = mutate_sample(m, s)
    if show:
        print(f"provider answer (kind {s.kind}, embeddings {s.embeddings}): {status} {ctype!r} "
              f"{body[:2000]!r}")
    if s.embeddings:
        path = EMBEDDINGS_PATH
        b = EMBED_BACKENDS[s.kind]
    else:
        path = r.choice((CHAT_PATH, MESSAGES_PATH))
        b = BACKENDS[s.kind]
    ingress = INGRESS[path]
    handler = ingress.response(status, ctype, s.canonical, b)
    # Same-schema answers are relayed as they came (on purpose): translations are checked, and
    # a relayed JSON success only for being a JSON object.
    relay = (s.kind == "anthropic") if path == MESSAGES_PATH else (
        s.kind in ("openai", "azure_openai"))
    parts: list[bytes] = []
    try:
        if handler.streaming:
            pos = 0
            while pos < len(body):
                step = r.choice((1, 7, 64, 512, len(body)))
                out = handler.feed(body[pos:pos + step])
                pos += step
                if out:
                    parts.append(out)
            tail = handler.finish()
        else:  # Envoy buffers: one chunk, then the end
            out = handler.feed(body)
            if out:
                parts.append(out)
            tail = handler.finish()
    except (TranslationError, ValueError):  # ValueError: orjson's, or the translator's own
        if handler.streaming:
            raise
        return "error (502)", None
    if tail:
        parts.append(tail)
    usage = handler.usage
    if usage is not None:
        cost_usd(b, usage)
    result = b"".join(parts)
    response_id(result or body)
    if relay and not handler.streaming and status < 300:
        # Relayed as it came, but never garbage: a body that is not a JSON object ended in
        # the 502 above, so what is relayed must parse.
        try:
            ok = isinstance(orjson.loads(result or body), dict)
        except orjson.JSONDecodeError:
            ok = False
        return "relayed", None if ok else "relayed success body is not a JSON object"
    if relay or not handler.rewrites or not result:
        return "relayed", None
    return "translated", _check_output(result, handler.streaming, ingress)


# -------------------------------------------------------------------- harvest (simulator)


def _harvest_requests() -> list[tuple[dict[str, Any], bool]]:
    """(canonical request, embeddings?) pairs whose answers seed the response fuzz."""
    chat = [CHAT_SEEDS[0], CHAT_SEEDS[2], CHAT_SEEDS[5]]
    out: list[tuple[dict[str, Any], bool]] = []
    for req in chat:
        for stream in (False, True):
            body = {k: v for k, v in req.items() if k not in ("stream", "stream_options")}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            out.append((body, False))
    out.append((EMBED_SEEDS[0], True))
    out.append((EMBED_SEEDS[1] | {"encoding_format": "float", "input": ["a"]}, True))
    return out


async def _harvest(log: Callable[[str], None]) -> list[Sample]:
    import aiohttp

    from sim.common import SimOptions
    from sim.server import LOOPBACK, start_sim

    fast = SimOptions(ttft_ms=0, tokens_per_s=0, record_limit=0)
    runners = {k: await start_sim(k, f"fuzz-{k}", LOOPBACK, 0, fast) for k in KINDS}
    samples: list[Sample] = []
    try:
        async with aiohttp.ClientSession() as http:
            for kind, runner in runners.items():
                for errors in (False, True):
                    opts = fast.patched({"error_rate": 1.0, "error_status": 503} if errors
                                        else {})
                    runner.state.set_options(opts)
                    for canonical, embeds in _harvest_requests():
                        if embeds and kind not in EMBED_BACKENDS:
                            continue
                        if errors and (embeds or canonical.get("stream")):
                            continue
                        b = backend(kind, runner.port, EMBED_UPSTREAM[kind] if embeds else None)
                        provider: Any = PROVIDERS[kind]
                        try:
                            path, body, headers = (provider.embeddings_request(canonical, b)
                                                   if embeds else provider.request(canonical, b))
                        except TranslationError:
                            continue
                        async with http.post(runner.base_url + path.decode(), data=body,
                                             headers=[(k, v.decode()) for k, v in headers
                                                      if k != "host"]) as resp:
                            data = await resp.read()
                            samples.append(Sample(kind, resp.status,
                                                  resp.headers.get("content-type", ""), data,
                                                  canonical, embeds))
                # a 400 in each provider's own format
                b = backend(kind, runner.port)
                path, _, headers = PROVIDERS[kind].request(CHAT_SEEDS[0], b)
                async with http.post(runner.base_url + path.decode(), data=b"{not json",
                                     headers=[(k, v.decode()) for k, v in headers]) as resp:
                    samples.append(Sample(kind, resp.status,
                                          resp.headers.get("content-type", ""),
                                          await resp.read(), CHAT_SEEDS[0]))
    finally:
        for runner in runners.values():
            await runner.cleanup()
    log(f"harvested {len(samples)} provider answers from the simulator "
        f"({', '.join(f'{k}: {sum(s.kind == k for s in samples)}' for k in KINDS)})")
    return samples


def harvest(log: Callable[[str], None] = print) -> list[Sample]:
    """Real provider answers of every kind (the simulator on loopback, in this process)."""
    return asyncio.run(_harvest(log))


# ------------------------------------------------------------------------ in-process loop


def _case(seed: int, index: int, samples: list[Sample], report: Report) -> None:
    m = Mutator(random.Random(seed * 1_000_003 + index))
    if m.rng.random() < 0.5:
        path, raw = gen_request(m)
        kind = f"request {path.rsplit('/', 1)[-1]}"
        report.inputs[kind] += 1
        try:
            report.outcomes[f"{kind}: {request_case(path, raw)}"] += 1
        except Exception as exc:
            report.add(f"crash {kind}: {type(exc).__name__}", _where(exc), index,
                       f"{exc!r}; input {raw[:300]!r}")
        return
    report.inputs["provider answer"] += 1
    try:
        outcome, bad = response_case(m, samples)
    except Exception as exc:
        report.add(f"crash response: {type(exc).__name__}", _where(exc), index, repr(exc))
        return
    report.outcomes[f"provider answer: {outcome}"] += 1
    if bad is not None:
        report.add("malformed output", bad.split(":")[0], index, bad)


def fuzz_in_process(n: int, seed: int = 0, samples: list[Sample] | None = None,
                    time_limit_s: float | None = None, progress: bool = False,
                    log: Callable[[str], None] = print) -> Report:
    """Run `n` in-process inputs (or until `time_limit_s`); the report counts findings."""
    samples = samples if samples is not None else harvest(log)
    report = Report()
    t0 = time.monotonic()
    deadline = t0 + time_limit_s if time_limit_s else None
    next_tick = t0 + 5
    for i in range(n):
        _case(seed, i, samples, report)
        if (i & 255) == 0:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                log(f"time limit reached after {i} inputs")
                break
            if progress and now >= next_tick:
                next_tick = now + 5
                log(f"  in-process: {i:,}/{n:,} inputs, {report.crashes} findings, "
                    f"{i / (now - t0):,.0f}/s")
    report.seconds = time.monotonic() - t0
    return report


def replay(index: int, seed: int, samples: list[Sample]) -> None:
    """Run input `index` alone and show it with the full traceback."""
    m = Mutator(random.Random(seed * 1_000_003 + index))
    if m.rng.random() < 0.5:
        path, raw = gen_request(m)
        print(f"request {path}: {raw[:2000]!r}")
        print("outcome:", request_case(path, raw))
        return
    print("outcome:", response_case(m, samples, show=True))


# ------------------------------------------------------------------------ gateway (part b)

#: 5xx statuses the gateway itself may answer (README / docs/decisions.md).
DOCUMENTED_5XX = frozenset({502, 503, 504})
GATEWAY_KINDS = ("openai", "anthropic", "bedrock", "gemini", "azure_openai")


def gateway_config(ports: dict[str, int]) -> str:
    """Every provider kind simulated; one model per kind and one failing over across two."""
    creds = {"openai": 'api_key: {value: "sk-fuzz"}',
             "anthropic": 'api_key: {value: "sk-ant-fuzz"}',
             "azure_openai": 'api_key: {value: "az-fuzz"}, api_version: "2024-10-21"',
             "bedrock": ('region: us-east-1, aws_access_key_id: {value: AKIDFUZZ}, '
                         'aws_secret_access_key: {value: "fuzz-secret"}'),
             "gemini": 'api_key: {value: "g-fuzz"}'}
    providers = "\n".join(
        f'  fz-{k}: {{kind: {k}, base_url: "http://127.0.0.1:{ports[k]}", {creds[k]}, '
        f"simulate: {{ttft_ms: 0, tokens_per_s: 0}}}}" for k in GATEWAY_KINDS)
    models = "\n".join(
        f"  m-{k}:\n    backends:\n      - {{provider: fz-{k}, model: {UPSTREAM[k]}}}"
        for k in GATEWAY_KINDS)
    embeds = "\n".join(
        f"      - {{provider: fz-{k}, model: {EMBED_UPSTREAM[k]}}}"
        for k in ("openai", "bedrock", "gemini"))
    return f"""\
# Written by bench/fuzz.py for one run.
listen: {{address: 127.0.0.1, port: {ports['listen']}}}
admin: {{address: 127.0.0.1, port: {ports['admin']}}}
control_plane: {{address: 127.0.0.1, port: {ports['xds']}}}
ext_proc: {{address: 127.0.0.1, port: {ports['ext_proc']}, metrics_port: {ports['metrics']}}}
envoy_concurrency: 1
providers:
{providers}
models:
{models}
  m-failover:
    backends:
      - {{provider: fz-bedrock, model: {UPSTREAM['bedrock']}}}
      - {{provider: fz-openai, model: {UPSTREAM['openai']}}}
  m-embed:
    backends:
{embeds}
"""


#: What Envoy's local-reply mapper says when the ext_proc stream failed (listener.py).
RESTARTING = b"a component is restarting"
MODELS = (*(f"m-{k}" for k in GATEWAY_KINDS), "m-failover")


@dataclass
class GatewayReport:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    dead: list[str] = field(default_factory=list)
    ext_proc_failures: int = 0
    #: Handler exceptions of the designed kinds (each answered 502 / an error event).
    designed_failures: int = 0
    work_dir: str = ""
    #: Exceptions ext_proc logged (a failed gRPC stream, a handler error).
    logged_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def undocumented_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 and s not in DOCUMENTED_5XX)


def _gateway_input(m: Mutator, garbled: bool) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request to the running gateway."""
    r = m.rng
    path = r.choices((CHAT_PATH, MESSAGES_PATH, EMBEDDINGS_PATH), (45, 45, 10))[0]
    obj = orjson.loads(orjson.dumps(r.choice(SEEDS[path])))
    obj["model"] = "m-embed" if path == EMBEDDINGS_PATH else r.choice(MODELS)
    if path != EMBEDDINGS_PATH:
        obj["stream"] = r.random() < 0.5
        if path == CHAT_PATH and obj["stream"]:
            obj["stream_options"] = {"include_usage": True}
    headers = {"content-type": "application/json", "authorization": "Bearer fuzz"}
    if garbled:  # valid requests: the answers are what is broken
        return path, orjson.dumps(obj), headers
    if r.random() < 0.05:
        headers["content-type"] = r.choice(("text/plain", "application/x-www-form-urlencoded",
                                            ""))
    if r.random() < 0.1:
        return path, m.raw(orjson.dumps(obj)), headers
    return path, m.dumps(m.structure(obj, r.choice((1, 1, 2, 3)))), headers


def _schema_ok(path: str, status: int, ctype: str, body: bytes) -> str | None:
    """Why a gateway answer is not what the client's SDK can read, or None."""
    if status < 400 or not body:
        return None if status < 400 else "error without a body"
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error body is not JSON: {body[:120]!r}"
    if path == MESSAGES_PATH:
        ok = isinstance(obj, dict) and obj.get("type") == "error" and isinstance(
            obj.get("error"), dict)
    else:
        ok = isinstance(obj, dict) and isinstance(obj.get("error"), dict)
    return None if ok else f"error not in the {path} schema: {body[:160]!r}"


async def _drive(url: str, n: int, seed: int, garbled: bool, report: GatewayReport,
                 check_alive: Callable[[], list[str]], concurrency: int, deadline: float,
                 progress: Callable[[int], None]) -> None:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def worker() -> None:
            while time.monotonic() < deadline and not report.dead:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                m = Mutator(random.Random((seed + 7_919) * 1_000_003 + i * 2 + garbled))
                path, body, headers = _gateway_input(m, garbled)
                try:
                    resp = await http.post(path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    report.transport_errors[type(exc).__name__] += 1
                    continue
                report.sent += 1
                report.statuses[resp.status_code] += 1
                problem = _schema_ok(path, resp.status_code,
                                     resp.headers.get("content-type", ""), resp.content)
                if resp.status_code >= 500 and resp.status_code not in DOCUMENTED_5XX:
                    problem = f"undocumented {resp.status_code}: {resp.content[:160]!r}"
                elif resp.status_code == 503 and RESTARTING in resp.content:
                    # Envoy's mapped 500: the ext_proc stream failed (nothing restarted here).
                    report.ext_proc_failures += 1
                    problem = f"ext_proc stream failed: {resp.content[:120]!r}"
                if problem is not None and len(report.bad) < 50:
                    report.bad.append(f"{path} {resp.status_code}: {problem}; "
                                      f"input {body[:200]!r}")
                if report.sent % 200 == 0:
                    report.dead.extend(check_alive())
                    progress(report.sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def fuzz_gateway(n: int, seed: int, time_limit_s: float, log: Callable[[str], None] = print,
                 concurrency: int = 8) -> GatewayReport:
    """Part (b): half mutated client requests, half valid ones against garbling providers."""
    import httpx

    from switchyard.launcher import Gateway, free_ports

    report = GatewayReport()
    names = ["listen", "admin", "xds", "ext_proc", "metrics", *GATEWAY_KINDS]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    work = Path(tempfile.mkdtemp(prefix="switchyard-fuzz-"))
    config = work / "gateway.yaml"
    config.write_text(gateway_config(ports))
    gw = Gateway(config, log_dir=work / "logs", log_level="warning")
    t0 = time.monotonic()
    gw.start()
    try:
        gw.wait_ready(timeout=90)
        pids = {name: proc.pid for name, proc in gw.procs.items()}

        def check_alive() -> list[str]:
            return [f"{name} (pid {pids[name]}) exited with {proc.returncode}"
                    for name, proc in gw.procs.items() if proc.poll() is not None]

        deadline = time.monotonic() + time_limit_s
        half = n // 2

        def progress(done: int) -> None:
            log(f"  gateway: {done:,} answers, statuses {dict(report.statuses)}")

        log(f"gateway up on {gw.url} (logs {work / 'logs'}); {half:,} mutated requests")
        asyncio.run(_drive(gw.url, half, seed, False, report, check_alive, concurrency,
                           deadline, progress))
        for k in GATEWAY_KINDS:
            httpx.put(f"http://127.0.0.1:{ports[k]}/_sim/options", timeout=5,
                      json={"garble_rate": 0.5, "garble_seed": seed}).raise_for_status()
        log(f"providers garble half their answers; {n - half:,} valid requests")
        asyncio.run(_drive(gw.url, n - half, seed, True, report, check_alive, concurrency,
                           deadline, progress))
        report.dead.extend(check_alive())
        # Still serving after all that: a clean request gets a 200.
        for k in GATEWAY_KINDS:
            httpx.put(f"http://127.0.0.1:{ports[k]}/_sim/options", timeout=5,
                      json={"garble_rate": 0.0}).raise_for_status()
        final = httpx.post(gw.url + CHAT_PATH, timeout=20, json={
            "model": "m-openai", "messages": [{"role": "user", "content": "still there?"}]})
        if final.status_code != 200:
            report.dead.append(f"final request answered {final.status_code}")
    finally:
        gw.stop()
        report.seconds = time.monotonic() - t0
    report.logged_errors, report.designed_failures = scan_ext_proc_log(
        work / "logs" / "ext_proc.log")
    report.work_dir = str(work)
    if not (report.dead or report.bad or report.logged_errors):
        shutil.rmtree(work, ignore_errors=True)
    return report


#: Exceptions a response handler raises on purpose (respond.py answers them with a 502).
DESIGNED = ("JSONDecodeError(", "ValueError(", "TranslationError(", "EventStreamError(")


def scan_ext_proc_log(path: Path) -> tuple[list[str], int]:
    """(lines that show an undesigned failure, count of designed "response translation
    failed" warnings) in ext_proc's JSON log: an error-level line, a traceback, or a handler
    exception of an undesigned type."""
    bad: list[str] = []
    designed = 0
    if not path.exists():
        return bad, designed
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            if "Traceback" in line or "Error" in line:
                bad.append(line[:300])
            continue
        if rec.get("event") == "response translation failed":
            if str(rec.get("error", "")).startswith(DESIGNED):
                designed += 1
            else:
                bad.append(line[:300])
        elif rec.get("level") in ("error", "critical") or "exception" in rec:
            bad.append(line[:300])
    return bad, designed


# ---------------------------------------------------------------------------------- CLI


def print_report(report: Report, seed: int) -> None:
    print(f"\nin process: {report.total:,} inputs in {report.seconds:.1f} s "
          f"({report.total / max(report.seconds, 1e-9):,.0f}/s), seed {seed}")
    for kind, n in sorted(report.inputs.items()):
        print(f"  {kind:<28} {n:>9,}")
    print("  outcomes:")
    for outcome, n in sorted(report.outcomes.items()):
        print(f"    {outcome:<44} {n:>9,}")
    print(f"  findings: {report.crashes}")
    for f in sorted(report.findings.values(), key=lambda f: -f.count):
        print(f"    {f.count:>6} x {f.what} at {f.where} (first: input {f.index}; "
              f"`--replay {f.index}`)\n           {f.detail[:300]}")


def print_gateway(report: GatewayReport) -> None:
    print(f"\ngateway: {report.sent:,} answers in {report.seconds:.1f} s; statuses "
          + ", ".join(f"{s}: {n}" for s, n in sorted(report.statuses.items())))
    print(f"  undocumented 5xx: {report.undocumented_5xx}; ext_proc stream failures (503 "
          f"from Envoy's mapper): {report.ext_proc_failures}; processes died: "
          f"{len(report.dead)}; transport errors: {dict(report.transport_errors) or 0}")
    print(f"  untranslatable answers (designed ValueError/JSONDecodeError, answered 502 or "
          f"an error event): {report.designed_failures}; other ext_proc errors logged: "
          f"{len(report.logged_errors)}")
    for line in report.logged_errors[:20]:
        print(f"    LOG {line}")
    if report.work_dir and (report.dead or report.bad or report.logged_errors):
        print(f"  logs kept in {report.work_dir}")
    for d in report.dead:
        print(f"    DEAD {d}")
    for b in report.bad[:20]:
        print(f"    BAD {b}")


def markdown(argv: list[str], report: Report, g: GatewayReport | None, failed: bool) -> str:
    """The RESULTS.md section of a run."""
    cmd = " ".join(["python -m bench.fuzz", *argv])
    lines = [f"## Fuzz (`{cmd}`)", "",
             "Generated by `bench/fuzz.py --write`; rerun it to refresh. "
             f"Result: **{'FAIL' if failed else 'no crash, no undocumented 5xx'}**.", "",
             f"In process: {report.total:,} inputs in {report.seconds:.0f} s "
             f"({report.total / max(report.seconds, 1e-9):,.0f}/s); findings "
             f"(crashes or malformed translations): **{report.crashes}**.", "",
             "| inputs | count |", "|---|---:|"]
    lines += [f"| {k} | {n:,} |" for k, n in sorted(report.inputs.items())]
    lines += ["", "| outcome | count |", "|---|---:|"]
    lines += [f"| {k} | {n:,} |" for k, n in sorted(report.outcomes.items())]
    for f in sorted(report.findings.values(), key=lambda f: -f.count):
        lines.append(f"- {f.count} x {f.what} at `{f.where}` (input {f.index})")
    if g is not None:
        lines += ["", f"Through a running gateway (every provider kind simulated; half "
                  f"mutated client requests, half valid ones while the simulators garble half "
                  f"their answers): {g.sent:,} answers in {g.seconds:.0f} s; statuses "
                  + ", ".join(f"{s}: {n:,}" for s, n in sorted(g.statuses.items()))
                  + f". Undocumented 5xx: **{g.undocumented_5xx}**; ext_proc stream "
                  f"failures: **{g.ext_proc_failures}**; processes died: "
                  f"**{len(g.dead)}**; undesigned ext_proc errors logged: "
                  f"**{len(g.logged_errors)}**; untranslatable answers handled as designed "
                  f"(502 or an error event): {g.designed_failures:,}."]
    lines += ["", f"Total inputs: {report.total + (g.sent if g else 0):,}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=100_000,
                   help="in-process inputs (default %(default)s)")
    p.add_argument("--gateway-inputs", type=int, default=4_000,
                   help="requests through a running gateway; 0 skips it (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=240.0,
                   help="seconds each part may run at most (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight to the gateway (default %(default)s)")
    p.add_argument("--replay", type=int, default=None, metavar="N",
                   help="run in-process input N alone and print it")
    p.add_argument("--write", action="store_true",
                   help="put the report into bench/RESULTS.md (section bench.fuzz)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    samples = harvest()
    if args.replay is not None:
        replay(args.replay, args.seed, samples)
        return 0
    report = fuzz_in_process(args.inputs, args.seed, samples, args.time_limit, progress=True)
    print_report(report, args.seed)
    failed = report.crashes > 0
    g: GatewayReport | None = None
    if args.gateway_inputs > 0:
        g = fuzz_gateway(args.gateway_inputs, args.seed, args.time_limit,
                         concurrency=args.concurrency)
        print_gateway(g)
        failed = (failed or bool(g.dead) or g.undocumented_5xx > 0 or bool(g.bad)
                  or bool(g.logged_errors))
    total = report.total + (g.sent if g else 0)
    print(f"\ntotal inputs: {total:,}; {'FAIL' if failed else 'ok'}")
    if args.write:
        write_section("fuzz", markdown([a for a in argv if a != "--write"], report, g, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
