"""`python -m bench.stream`: what the gateway adds to translated streams (issue 11, item 4).

The full gateway runs on loopback in front of a simulated **Anthropic** provider; clients speak
the **OpenAI** schema (`POST /v1/chat/completions`, `stream: true`), so every chunk is
translated Anthropic SSE -> OpenAI SSE by the ext_proc. The same simulator is also streamed
from directly (`POST /v1/messages`, Anthropic SSE) at the same settings, as the baseline.

Two measurements:

1. **Added time to first token at low load**: `--ttft-concurrency` streams at a time,
   alternating direct and gateway, `--ttft-samples` each; TTFT is request sent -> first
   content token parsed. Added = gateway percentile - direct percentile.
2. **Inter-chunk delay under load**: N streams (`--streams`) at `--tokens-per-s` each, opened
   over `--ramp` seconds, reopened when they finish, measured for `--window` seconds after a
   `--warmup`. A gap is the time between two consecutive content tokens of one stream as the
   client parsed them; added = gap percentile - the simulator's own spacing (1 / tokens_per_s),
   and - the same percentile streaming directly from the simulator. CPU of every process
   (the client included) over the window, divided by the SSE events delivered in it, gives
   the cost per streamed chunk.

The client is one Python asyncio process (uvloop, a small HTTP/1.1 protocol that timestamps
each read as it arrives, with no task switch in between; it measured ~28-30 µs of CPU per
chunk against aiohttp's ~31-38 at 200 direct streams, most of it the event loop and kernel
per read) that shares the cores with the simulator, Envoy and the ext_proc:
its CPU is measured and reported, and a phase during which the machine (or the one-core
client) was full is marked saturated - its gaps are then queueing behind the CPU, not work
the gateway does per chunk. Bounded: every phase has a fixed length,
the whole run a SIGALRM deadline, and the gateway is stopped on exit, error or signal.
`--write` replaces the `bench.stream` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import uvloop

from bench.procs import bounded, cpu_seconds, http_status, machine_busy_seconds, wait_quiet
from bench.run import machine_facts as run_machine_facts
from bench.sections import write_section
from bench.targets import CHAT_PATH, SIM_PROVIDER, running_gateway
from bench.targets import gateway_config as targets_gateway_config

#: The alias OpenAI clients ask for, and the upstream Anthropic model it maps to.
ALIAS = "claude-bench"
UPSTREAM_MODEL = "claude-3-5-haiku-latest"
API_KEY = "sk-ant-bench-not-a-secret"
PROMPT = "Stream a long answer about switchyards, envoys and translated server-sent events."
SECTION = "stream"
#: Process names as the report prints them, in order.
PROCS = ("client", "sim", "envoy", "ext_proc", "control_plane")


# -- SSE parsing and statistics (pure; unit-tested) ------------------------------------------

class SseSplitter:
    """Splits a byte stream into complete SSE events (separated by a blank line), across reads.

    Normalises CRLF so either framing works; incomplete tails wait for the next `feed`.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")
        return [e for e in events if e.strip()]


def sse_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (the first data line; these streams send one)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def openai_token(event: bytes) -> bool:
    """True for an OpenAI chat.completion.chunk that carries content text."""
    data = sse_data(event)
    if not data or data == b"[DONE]":
        return False
    choices = orjson.loads(data).get("choices") or ()
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def anthropic_token(event: bytes) -> bool:
    """True for an Anthropic content_block_delta that carries text."""
    data = sse_data(event)
    if not data:
        return False
    obj = orjson.loads(data)
    return bool(obj.get("type") == "content_block_delta"
                and (obj.get("delta") or {}).get("type") == "text_delta")


def quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Linearly interpolated quantiles (numpy's default) of unsorted `values`; NaN if empty."""
    if not values:
        return [math.nan for _ in qs]
    s = sorted(values)
    out = []
    for q in qs:
        pos = (len(s) - 1) * q
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


class ResponseParser:
    """Incremental HTTP/1.1 response parser: status line and headers, then the body with any
    chunked framing removed. `feed` returns the body bytes a read completed."""

    __slots__ = ("_buf", "_left", "_mode", "done", "headers", "status")

    def __init__(self) -> None:
        self._buf = b""
        self._mode = "head"  # head, size, data, crlf, trailer, length, close
        self._left = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.done = False

    @property
    def until_close(self) -> bool:
        """The body ends when the server closes the connection (no length, not chunked)."""
        return self._mode == "close"

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        while not self.done:
            mode = self._mode
            if mode in ("data", "length"):
                take = min(self._left, len(buf) - pos)
                if take <= 0:
                    break
                out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._mode = "crlf" if mode == "data" else mode
                    self.done = mode == "length"
            elif mode == "size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                self._mode, self._left = ("data", size) if size else ("trailer", 0)
            elif mode == "crlf":
                if len(buf) - pos < 2:
                    break
                pos += 2
                self._mode = "size"
            elif mode == "trailer":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                self.done = end == pos  # a blank line ends the (usually empty) trailers
                pos = end + 2
            elif mode == "close":
                out.append(buf[pos:])
                pos = len(buf)
                break
            else:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                status_line, *fields = buf[pos:end].decode("latin-1").split("\r\n")
                self.status = int(status_line.split(" ", 2)[1])
                for line in fields:
                    name, _, value = line.partition(":")
                    self.headers[name.strip().lower()] = value.strip()
                pos = end + 4
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    self._mode = "size"
                elif "content-length" in self.headers:
                    self._mode, self._left = "length", int(self.headers["content-length"])
                    self.done = not self._left
                else:
                    self._mode = "close"
        self._buf = buf[pos:]
        return b"".join(out)


# -- the client ------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamTarget:
    """Where one kind of stream goes (a prebuilt HTTP/1.1 request) and how its content
    events are recognised."""

    key: str
    host: str
    port: int
    request: bytes
    is_token: Callable[[bytes], bool]


def http_request(url: str, headers: dict[str, str], body: bytes) -> tuple[str, int, bytes]:
    """(host, port, request bytes) of a keep-alive POST of `body` to `url`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


EventSink = Callable[[float, list[bytes]], None]


class SseConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that streams SSE answers, one at a time.

    Each read is timestamped first thing in `data_received` and its complete events go to a
    callback there: no StreamReader, no task switch between arrival and timestamp. The client
    shares the cores with what it measures, so every µs per event counts.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: ResponseParser | None = None
        self._splitter = SseSplitter()
        self._sink: EventSink | None = None
        self._done: asyncio.Future[ResponseParser] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        parser, sink = self._parser, self._sink
        if parser is None or sink is None:
            return  # nothing asked: a late byte after an abandoned answer
        try:
            body = parser.feed(data)
            if body and (events := self._splitter.feed(body)):
                sink(now, events)
        except ValueError as exc:  # bad framing, or an event the sink could not parse
            self._finish(exc)
            self.close()
            return
        if parser.done:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self._parser
        if parser is not None and parser.until_close and parser.status:
            parser.done = True
            self._finish(None)
        else:
            self._finish(ConnectionError(f"connection lost: {exc}"))

    def _finish(self, exc: Exception | None) -> None:
        fut, parser = self._done, self._parser
        self._done = self._parser = self._sink = None
        if fut is None or fut.done() or parser is None:
            return
        if exc is None:
            fut.set_result(parser)
        else:
            fut.set_exception(exc)

    async def request(self, raw: bytes, sink: EventSink) -> ResponseParser:
        """Send one request; `sink(read_time, events)` sees its events as they arrive."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self._parser, self._splitter, self._sink = ResponseParser(), SseSplitter(), sink
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """One worker's connection to a target, reopened when the server closed it."""

    def __init__(self, target: StreamTarget) -> None:
        self.target = target
        self._conn: SseConnection | None = None

    async def connection(self) -> SseConnection:
        if self._conn is None or self._conn.closed:
            _, self._conn = await asyncio.get_running_loop().create_connection(
                SseConnection, self.target.host, self.target.port)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Recorder:
    """What the streams of one phase saw. Gaps and chunks count only inside [start, end)
    (always with `always`); TTFT counts for every stream."""

    start: float = math.inf
    end: float = math.inf
    always: bool = False
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    opened: int = 0
    completed: int = 0
    active: int = 0
    #: Completed streams whose token count was not `reply_tokens`.
    short: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def inside(self, t: float) -> bool:
        return self.always or self.start <= t < self.end


async def stream_once(client: Client, rec: Recorder, reply_tokens: int,
                      timeout: float) -> bool:
    """One stream, each event timestamped when its read arrived; False if it failed."""
    is_token = client.target.is_token
    tokens = 0
    last = 0.0
    t0 = time.perf_counter()

    def sink(now: float, events: list[bytes]) -> None:
        nonlocal tokens, last
        inside = rec.inside(now)
        if inside:
            rec.chunks += len(events)
        for event in events:
            if not is_token(event):
                continue
            tokens += 1
            if tokens == 1:
                rec.ttft.append(now - t0)
            elif inside and rec.inside(last):
                rec.gaps.append(now - last)
            last = now

    rec.opened += 1
    rec.active += 1
    try:
        conn = await client.connection()
        t0 = time.perf_counter()
        resp = await asyncio.wait_for(conn.request(client.target.request, sink), timeout)
        if resp.headers.get("connection", "").lower() == "close":
            client.close()
        if resp.status != 200:
            rec.errors[f"HTTP {resp.status}"] += 1
            return False
        rec.completed += 1
        if tokens != reply_tokens:
            rec.short += 1
        return True
    except (OSError, TimeoutError, ValueError) as exc:
        client.close()
        rec.errors[type(exc).__name__] += 1
        return False
    finally:
        rec.active -= 1


async def _worker(target: StreamTarget, rec: Recorder, reply_tokens: int, delay: float,
                  timeout: float) -> None:
    """Keeps one stream open: opens it after `delay`, reopens it when it ends."""
    client = Client(target)
    try:
        await asyncio.sleep(delay)
        while True:
            if not await stream_once(client, rec, reply_tokens, timeout):
                await asyncio.sleep(0.2)  # no tight loop on a failing target
    finally:
        client.close()


@dataclass
class LoadResult:
    """One load phase: N streams to one target, measured over a window."""

    key: str
    streams: int
    window_s: float
    rec: Recorder
    cpu: dict[str, float]
    other_cpu: float

    @property
    def busy_cores(self) -> float:
        return sum(self.cpu.values()) / self.window_s

    def saturated(self, nproc: int) -> str:
        """Why this phase's gaps are queueing behind a full CPU ("" if they are not)."""
        if (self.busy_cores + self.other_cpu / self.window_s) >= 0.9 * nproc:
            return "machine"
        if self.cpu.get("client", 0.0) / self.window_s >= 0.85:
            return "client"  # one Python thread: its loop is full before the machine is
        return ""


def _snapshot(pids: dict[str, int]) -> tuple[dict[str, float], float]:
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["client"] = cpu_seconds(os.getpid())
    return cpu, machine_busy_seconds()


def _log(msg: str) -> None:
    print(f"bench.stream: {msg}", file=sys.stderr, flush=True)


def stream_timeout(args: argparse.Namespace, reply_tokens: int) -> float:
    """Longest a stream may take before it counts as failed: twice its paced length + 30 s."""
    return 30.0 + 2 * (args.ttft_ms / 1e3 + reply_tokens / args.tokens_per_s)


async def load_phase(target: StreamTarget, streams: int, args: argparse.Namespace,
                     pids: dict[str, int], check_alive: Callable[[], None]) -> LoadResult:
    rec = Recorder()
    timeout = stream_timeout(args, args.reply_tokens)
    tasks = [asyncio.create_task(_worker(target, rec, args.reply_tokens,
                                         args.ramp * i / streams, timeout))
             for i in range(streams)]
    try:
        t0 = time.perf_counter()
        await asyncio.sleep(args.ramp + args.warmup)
        check_alive()
        _log(f"  {target.key} x{streams}: {rec.active} open after ramp+warm-up "
             f"({time.perf_counter() - t0:.1f} s), errors {dict(rec.errors)}")
        before, busy_before = _snapshot(pids)
        rec.start = time.perf_counter()
        rec.end = rec.start + args.window
        while (left := rec.end - time.perf_counter()) > 0:
            await asyncio.sleep(min(5.0, left))
            _log(f"  {target.key} x{streams}: {rec.active} open, {rec.chunks} chunks, "
                 f"{len(rec.gaps)} gaps, errors {dict(rec.errors)}")
        after, busy_after = _snapshot(pids)
        window = time.perf_counter() - rec.start
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    check_alive()
    cpu = {name: after[name] - before[name] for name in after}
    other = max(0.0, (busy_after - busy_before) - sum(cpu.values()))
    return LoadResult(target.key, streams, window, rec, cpu, other)


async def ttft_phase(direct: StreamTarget, gateway: StreamTarget, concurrency: int,
                     samples: int, reply_tokens: int, timeout: float
                     ) -> tuple[Recorder, Recorder]:
    """`concurrency` workers, each alternating direct and gateway streams on its own two
    keep-alive connections (order flipped every round so neither side always goes first)."""
    recs = {direct.key: Recorder(always=True), gateway.key: Recorder(always=True)}
    rounds = max(1, samples // concurrency)

    async def worker(w: int) -> None:
        clients = (Client(direct), Client(gateway))
        try:
            for i in range(rounds):
                for c in (clients if (i + w) % 2 == 0 else clients[::-1]):
                    await stream_once(c, recs[c.target.key], reply_tokens, timeout)
        finally:
            for c in clients:
                c.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return recs[direct.key], recs[gateway.key]


# -- setup -----------------------------------------------------------------------------------

def gateway_config(envoy_concurrency: int, ttft_ms: float, tokens_per_s: float) -> str:
    """One simulated Anthropic provider behind an alias OpenAI clients ask for."""
    return targets_gateway_config(envoy_concurrency, "anthropic", alias=ALIAS,
                                  model=UPSTREAM_MODEL, api_key=API_KEY, ttft_ms=ttft_ms,
                                  tokens_per_s=tokens_per_s, price=(0.8, 4.0),
                                  by="bench/stream.py")


def targets(gateway_url: str, sim_base: str, reply_tokens: int) -> tuple[StreamTarget,
                                                                          StreamTarget]:
    """(direct Anthropic stream to the simulator, OpenAI stream through the gateway)."""
    messages = [{"role": "user", "content": PROMPT}]
    max_tokens = reply_tokens + 64
    json_headers = {"content-type": "application/json"}
    direct = StreamTarget("direct", *http_request(
        sim_base + "/v1/messages",
        {**json_headers, "x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        orjson.dumps({"model": UPSTREAM_MODEL, "max_tokens": max_tokens, "stream": True,
                      "messages": messages})), anthropic_token)
    gateway = StreamTarget("gateway", *http_request(
        gateway_url + CHAT_PATH, {**json_headers, "authorization": "Bearer none"},
        orjson.dumps({"model": ALIAS, "max_tokens": max_tokens, "stream": True,
                      "messages": messages})), openai_token)
    return direct, gateway


def set_sim(sim_base: str, **options: float | int) -> None:
    status, body, _ = http_status(sim_base + "/_sim/options", "PUT", orjson.dumps(options))
    if status != 200:
        raise RuntimeError(f"simulator options {options}: {status} {body[:200]!r}")


async def precheck(direct: StreamTarget, gateway: StreamTarget, reply_tokens: int) -> None:
    """One stream each way, fully parsed: same text, and the gateway's is translated."""
    texts = {}
    for t in (direct, gateway):
        events: list[bytes] = []

        def collect(_now: float, evs: list[bytes], out: list[bytes] = events) -> None:
            out.extend(evs)

        client = Client(t)
        try:
            conn = await client.connection()
            resp = await asyncio.wait_for(conn.request(t.request, collect), 30)
        finally:
            client.close()
        if resp.status != 200:
            raise RuntimeError(f"precheck {t.key}: HTTP {resp.status}: {events[:3]!r}")
        if t is gateway and "x-switchyard-backend" not in resp.headers:
            raise RuntimeError(f"precheck: not through the gateway: {resp.headers}")
        parts = []
        for event in events:
            if not t.is_token(event):
                continue
            obj = orjson.loads(sse_data(event) or b"{}")
            parts.append(obj["choices"][0]["delta"]["content"] if t is gateway
                         else obj["delta"]["text"])
        if len(parts) != reply_tokens:
            raise RuntimeError(f"precheck {t.key}: {len(parts)} tokens, want {reply_tokens}")
        texts[t.key] = "".join(parts)
    if texts["direct"] != texts["gateway"]:
        raise RuntimeError(f"precheck: texts differ: {texts}")


def code_version() -> str:
    """HEAD, and whether the gateway's code differed from it (the checkout is shared: what
    ran is the working tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ext_proc",
                                "control_plane", "switchyard", "sim"], cwd=root, text=True,
                               capture_output=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}" + (f" + {len(dirty)} uncommitted files in ext_proc/, "
                                     "control_plane/, switchyard/, sim/" if dirty else "")


def machine_facts() -> dict[str, str]:
    return run_machine_facts({"code": code_version()})


def _wait_quiet(threshold: float, max_wait: float) -> float:
    """Before a phase, wait (bounded) until other processes use under `threshold` cores."""
    return wait_quiet(threshold, max_wait, _log)


# -- run -------------------------------------------------------------------------------------

@dataclass
class Results:
    ttft: list[tuple[int, Recorder, Recorder]] = field(default_factory=list)
    load: list[LoadResult] = field(default_factory=list)


async def measure(args: argparse.Namespace, gateway_url: str, sim_base: str,
                  pids: dict[str, int], check_alive: Callable[[], None]) -> Results:
    out = Results()
    short_direct, short_gw = targets(gateway_url, sim_base, args.ttft_reply_tokens)
    set_sim(sim_base, ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s,
            reply_tokens=args.ttft_reply_tokens, record_limit=0)
    await precheck(short_direct, short_gw, args.ttft_reply_tokens)
    timeout = stream_timeout(args, args.ttft_reply_tokens)
    # Warm both paths (connections, first-use code) before anything counts.
    await ttft_phase(short_direct, short_gw, 2, 20, args.ttft_reply_tokens, timeout)
    for c in args.ttft_concurrency:
        await asyncio.to_thread(_wait_quiet, args.noise_threshold, args.quiet_wait)
        _log(f"TTFT at concurrency {c}: {args.ttft_samples} streams each way")
        d, g = await ttft_phase(short_direct, short_gw, c, args.ttft_samples,
                                args.ttft_reply_tokens, timeout)
        check_alive()
        out.ttft.append((c, d, g))
        (d50,), (g50,) = quantiles(d.ttft, [0.5]), quantiles(g.ttft, [0.5])
        _log(f"  direct p50 {d50 * 1e3:.2f} ms, gateway p50 {g50 * 1e3:.2f} ms, "
             f"errors {dict(d.errors)} / {dict(g.errors)}")
    set_sim(sim_base, reply_tokens=args.reply_tokens)
    long_direct, long_gw = targets(gateway_url, sim_base, args.reply_tokens)
    for n in args.streams:
        for target in ((long_direct, long_gw) if args.direct else (long_gw,)):
            await asyncio.to_thread(_wait_quiet, args.noise_threshold, args.quiet_wait)
            _log(f"load: {n} streams to {target.key} at {args.tokens_per_s:g} tokens/s")
            result = await load_phase(target, n, args, pids, check_alive)
            out.load.append(result)
            p50, p99 = quantiles(result.rec.gaps, [0.5, 0.99])
            _log(f"  gap p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms, "
                 f"{result.rec.chunks / result.window_s:.0f} chunks/s, "
                 f"{result.busy_cores:.2f} cores busy")
    return out


# -- report ----------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1e3:.2f}"


def _added(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1e3:+.2f}"


def _verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "**not met**"


def render(args: argparse.Namespace, argv: list[str], started: dt.datetime,
           facts: dict[str, str], res: Results, elapsed_s: float) -> str:
    nominal = 1.0 / args.tokens_per_s
    nproc = int(facts["nproc"])
    lines = [
        "## Streaming (`python -m bench.stream`)",
        "",
        "Generated by `bench/stream.py --write`; rerun it to refresh. Full gateway on loopback "
        "in front of a simulated **Anthropic** provider, **OpenAI** streaming clients "
        "(`POST /v1/chat/completions`, `stream: true`): every chunk is translated Anthropic SSE "
        "-> OpenAI SSE by the ext_proc. Baseline (\"direct\"): the same simulator streamed "
        "directly (`POST /v1/messages`) at the same settings.",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'bench.stream', *argv])}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S UTC')} (took {elapsed_s:.0f} s)",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- Simulator: ttft {args.ttft_ms:g} ms, {args.tokens_per_s:g} tokens/s "
        f"(one content event per token, nominal gap {nominal * 1e3:g} ms); "
        f"{args.ttft_reply_tokens} tokens per stream in the TTFT pass, {args.reply_tokens} "
        "under load (streams reopened when they end); request recording off",
        f"- Envoy `--concurrency {args.envoy_concurrency}`; client: one Python process "
        "(uvloop, an asyncio.Protocol HTTP/1.1 client with keep-alive, incremental SSE parsing, "
        "orjson per event; each read timestamped on arrival) "
        f"**sharing the {nproc} cores** with simulator, Envoy and ext_proc",
        "",
        "### Added time to first token at low load",
        "",
        "TTFT = request sent -> first content token parsed by the client. Direct and gateway "
        "streams alternate; added = gateway percentile - direct percentile.",
        "",
        "| concurrency | streams each way | direct p50 / p99 ms | gateway p50 / p99 ms "
        "| added p50 ms | added p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for c, d, g in res.ttft:
        d50, d99 = quantiles(d.ttft, [0.5, 0.99])
        g50, g99 = quantiles(g.ttft, [0.5, 0.99])
        errors = sum(d.errors.values()) + sum(g.errors.values()) + d.short + g.short
        lines.append(f"| {c} | {len(g.ttft)} | {_ms(d50)} / {_ms(d99)} | {_ms(g50)} / "
                     f"{_ms(g99)} | {_added(g50 - d50)} | {_added(g99 - d99)} | {errors} |")
        verdicts.append(f"added TTFT p50 at concurrency {c}: {_added(g50 - d50)} ms "
                        f"(target <= 1 ms: {_verdict((g50 - d50) * 1e3, 1.0)})")
    by = {(r.key, r.streams): r for r in res.load}
    lines += [
        "",
        f"### Inter-chunk delay under load ({args.tokens_per_s:g} tokens/s per stream)",
        "",
        f"Gap = time between two consecutive content tokens of one stream as the client "
        f"parsed them, over a {args.window:g} s window after a {args.ramp:g} s ramp and a "
        f"{args.warmup:g} s warm-up. \"added\" = gap percentile - the simulator's nominal "
        f"{nominal * 1e3:g} ms; \"vs direct\" = gateway percentile - direct percentile at the "
        "same concurrency. TTFT: every stream of the phase (most open during the ramp). "
        "Saturated: the machine (this phase + other load >= 90% of the cores) or the "
        "one-thread client (>= 0.85 core) was full, so gaps include queueing for CPU.",
        "",
        "| target | streams | chunks/s | gap p50 ms | p99 ms | p99.9 ms | max ms "
        "| added p50 | added p99 | added p99 vs direct | TTFT p50 / p99 ms | cores busy "
        "(client) | errors / short |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.load:
        p50, p99, p999 = quantiles(r.rec.gaps, [0.5, 0.99, 0.999])
        mx = max(r.rec.gaps) if r.rec.gaps else math.nan
        t50, t99 = quantiles(r.rec.ttft, [0.5, 0.99])
        vs = "-"
        if r.key == "gateway" and ("direct", r.streams) in by:
            (dp99,) = quantiles(by[("direct", r.streams)].rec.gaps, [0.99])
            vs = _added(p99 - dp99)
        why = r.saturated(nproc)
        sat = f" **saturated: {why}**" if why else ""
        lines.append(
            f"| {r.key} | {r.streams} | {r.rec.chunks / r.window_s:.0f} | {_ms(p50)} | "
            f"{_ms(p99)} | {_ms(p999)} | {_ms(mx)} | {_added(p50 - nominal)} | "
            f"{_added(p99 - nominal)} | {vs} | {_ms(t50)} / {_ms(t99)} | "
            f"{r.busy_cores:.2f} ({r.cpu['client'] / r.window_s:.2f}){sat} | "
            f"{sum(r.rec.errors.values())} / {r.rec.short} |")
        if r.key == "gateway":
            verdicts.append(f"added inter-chunk p99 at {r.streams} streams: "
                            f"{_added(p99 - nominal)} ms (target <= 5 ms: "
                            f"{_verdict((p99 - nominal) * 1e3, 5.0)})")
    lines += [
        "",
        "### CPU per streamed chunk",
        "",
        "CPU time of each process over the window / SSE events the client received in it "
        "(µs); \"other load\": cores used by unrelated processes meanwhile (the machine is "
        "shared).",
        "",
        "| target | streams | " + " | ".join(PROCS) + " | total | cores busy | other load |",
        "|---|---:|" + "---:|" * (len(PROCS) + 3),
    ]
    for r in res.load:
        chunks = max(1, r.rec.chunks)
        cells = " | ".join(f"{r.cpu[p] / chunks * 1e6:.0f}" if p in r.cpu else "-"
                           for p in PROCS)
        total = sum(r.cpu.values()) / chunks * 1e6
        lines.append(f"| {r.key} | {r.streams} | {cells} | {total:.0f} | "
                     f"{r.busy_cores:.2f} | {r.other_cpu / r.window_s:.2f} |")
    failed = [f"{r.key} x{r.streams}: " + ", ".join(f"{k} x{n}" for k, n in r.rec.errors.items())
              for r in res.load if r.rec.errors]
    if failed:
        lines += ["", "Failed streams (each reopened after 0.2 s): " + "; ".join(failed) + "."]
    lines += ["", "### Targets (issue 11, item 4)", "", *(f"- {v}" for v in verdicts)]
    lines += capacity(res, args.tokens_per_s, nproc)
    lines += [
        "",
        "The client is a Python process on the same cores: at high concurrency its own "
        "parsing and event-loop delay are part of every gap it sees (the direct rows show how "
        "much), and a saturated phase measures queueing behind a full CPU. "
        "`py-spy top --pid <ext_proc pid>` during a run shows where the ext_proc's CPU goes.",
    ]
    return "\n".join(lines).rstrip() + "\n"


def capacity(res: Results, tokens_per_s: float, nproc: int) -> list[str]:
    """What each concurrency would need at the per-chunk CPU of the least loaded gateway
    phase (saturated phases look cheaper per chunk: reads then carry several events)."""
    gw = sorted((r for r in res.load if r.key == "gateway" and r.rec.chunks),
                key=lambda r: r.streams)
    if not gw:
        return []
    calm = [r for r in gw if not r.saturated(nproc)]
    base = (calm or gw)[0]
    caveat = "" if calm else (" - itself saturated, so reads carried several events and this "
                              "understates the cost per chunk")
    per = {p: base.cpu.get(p, 0.0) / base.rec.chunks for p in ("envoy", "ext_proc")}
    out = ["", f"Demand at the per-chunk CPU of the {base.streams}-stream gateway phase "
           f"(Envoy {per['envoy'] * 1e6:.0f} µs + ext_proc {per['ext_proc'] * 1e6:.0f} µs per "
           f"chunk{caveat}; simulator and client not included) vs {nproc} cores:", ""]
    for r in gw:
        rate = r.streams * tokens_per_s
        out.append(f"- {r.streams} streams x {tokens_per_s:g} tokens/s = {rate:,.0f} chunks/s: "
                   f"Envoy {rate * per['envoy']:.2f} + ext_proc {rate * per['ext_proc']:.2f} "
                   "cores (one ext_proc process can use at most one)")
    return out


# -- main ------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=_int_list, default=[50, 100, 500],
                   help="concurrent streams of each load phase (comma-separated)")
    p.add_argument("--tokens-per-s", type=float, default=50.0, help="simulator token rate")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="simulator time to first token")
    p.add_argument("--reply-tokens", type=int, default=1500,
                   help="tokens per stream under load (1500 at 50/s: 30 s, longer than the "
                        "ramp + warm-up + window, so few streams reopen)")
    p.add_argument("--window", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which streams open")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after the ramp")
    p.add_argument("--ttft-concurrency", type=_int_list, default=[1, 4],
                   help="concurrency of the low-load TTFT passes (comma-separated)")
    p.add_argument("--ttft-samples", type=int, default=150,
                   help="streams each way per TTFT pass")
    p.add_argument("--ttft-reply-tokens", type=int, default=4,
                   help="tokens per stream in the TTFT pass (short: only the first counts)")
    p.add_argument("--no-direct", dest="direct", action="store_false",
                   help="skip the direct-to-simulator load phases")
    p.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy worker threads")
    p.add_argument("--noise-threshold", type=float, default=0.25,
                   help="before each phase wait until other processes use fewer cores")
    p.add_argument("--quiet-wait", type=float, default=15.0,
                   help="at most this many seconds of waiting for other load to drop")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="keep gateway logs here (default: a temp dir, removed on success)")
    p.add_argument("--write", action="store_true", help="replace this section of RESULTS.md")
    args = p.parse_args(argv)
    if args.tokens_per_s <= 0 or args.window <= 0 or args.reply_tokens < 2:
        p.error("--tokens-per-s and --window must be positive, --reply-tokens >= 2")
    if args.ramp < 0 or args.warmup < 0 or args.ttft_samples < 1 or args.ttft_reply_tokens < 1:
        p.error("--ramp/--warmup must not be negative, --ttft-* must be positive")
    return args


def deadline_s(args: argparse.Namespace) -> int:
    """Hard limit for the whole run: startup, TTFT passes, every load phase, quiet waits."""
    per_stream = args.ttft_ms / 1e3 + args.ttft_reply_tokens / args.tokens_per_s + 1.0
    ttft = sum(2 * args.ttft_samples / c * per_stream + args.quiet_wait + 1
               for c in args.ttft_concurrency)
    phases = len(args.streams) * (2 if args.direct else 1)
    load = phases * (args.ramp + args.warmup + args.window + args.quiet_wait + 30)
    return int(120 + ttft + load)


def _raise_fd_limit() -> None:
    """Hundreds of streams need hundreds of sockets here and in the children (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    _raise_fd_limit()
    facts = machine_facts()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="switchyard-bench-stream-"))
    deadline = deadline_s(args)
    _log(f"logs in {log_dir}; deadline {deadline} s")
    ok = False
    try:
        with bounded(deadline), running_gateway(
                log_dir, args.envoy_concurrency,
                gateway_config(args.envoy_concurrency, args.ttft_ms, args.tokens_per_s),
        ) as (target, gw):
            sim_base = gw.cfg.providers[SIM_PROVIDER].base_url
            gateway_url = target.url.removesuffix(CHAT_PATH)
            pids = {n: p for n, p in target.pids.items() if n in PROCS}
            res = uvloop.run(measure(args, gateway_url, sim_base, pids, target.check_alive))
        ok = True
    except (RuntimeError, OSError) as exc:
        _log(f"FAILED: {exc}; logs kept in {log_dir}")
        return 1
    except KeyboardInterrupt:
        _log(f"interrupted; gateway stopped; logs in {log_dir}")
        return 130
    finally:
        if ok and args.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    report = render(args, argv, started, facts, res, time.monotonic() - t0)
    print(report)
    if args.write:
        write_section(SECTION, report)
        _log("wrote the bench.stream section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
