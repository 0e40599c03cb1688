"""bench.stream's pure helpers: HTTP/1.1 responses and SSE events split across reads, token
recognition for both schemas, and the quantiles its report subtracts (no gateway, no timing)."""

from __future__ import annotations

import math

import pytest

from bench.stream import (
    ResponseParser,
    SseSplitter,
    anthropic_token,
    openai_token,
    quantiles,
    sse_data,
)

OPENAI_TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}'
OPENAI_ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
ANTHROPIC_TOKEN = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                   b'"delta":{"type":"text_delta","text":" x"}}')
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}'


def test_splitter_joins_events_across_reads() -> None:
    s = SseSplitter()
    raw = OPENAI_ROLE + b"\n\n" + OPENAI_TOKEN + b"\n\ndata: [DONE]\n\n"
    cut1, cut2 = 10, len(OPENAI_ROLE) + 1  # inside an event, then inside the separator
    events = s.feed(raw[:cut1]) + s.feed(raw[cut1:cut2]) + s.feed(raw[cut2:])
    assert events == [OPENAI_ROLE, OPENAI_TOKEN, b"data: [DONE]"]
    assert s.feed(b"") == []


def test_splitter_accepts_crlf_framing() -> None:
    assert SseSplitter().feed(b"data: a\r\n\r\ndata: b\r\n\r\n") == [b"data: a", b"data: b"]


def test_sse_data_and_token_recognition() -> None:
    assert sse_data(ANTHROPIC_PING) == b'{"type": "ping"}'
    assert sse_data(b"event: x") is None
    assert openai_token(OPENAI_TOKEN)
    assert not openai_token(OPENAI_ROLE)
    assert not openai_token(b"data: [DONE]")
    assert anthropic_token(ANTHROPIC_TOKEN)
    assert not anthropic_token(ANTHROPIC_PING)


def test_quantiles_interpolate_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert quantiles(values, [0.0, 0.5, 1.0]) == [1.0, 3.0, 5.0]
    assert quantiles(values, [0.99]) == [pytest.approx(4.96)]
    assert quantiles([7.0], [0.5, 0.99]) == [7.0, 7.0]
    assert all(math.isnan(v) for v in quantiles([], [0.5, 0.99]))


def _feed_bytewise(parser: ResponseParser, raw: bytes) -> bytes:
    return b"".join(parser.feed(raw[i:i + 1]) for i in range(len(raw)))


def test_response_parser_dechunks_across_every_split() -> None:
    body = b"data: one\n\ndata: two\n\n"
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           b"Transfer-Encoding: chunked\r\nX-Switchyard-Backend: sim\r\n\r\n"
           b"4\r\n" + body[:4] + b"\r\n" + b"12;ext=1\r\n" + body[4:] + b"\r\n0\r\n\r\n")
    whole = ResponseParser()
    assert whole.feed(raw) == body and whole.done
    assert whole.status == 200 and whole.headers["x-switchyard-backend"] == "sim"
    bytewise = ResponseParser()
    assert _feed_bytewise(bytewise, raw) == body and bytewise.done


def test_response_parser_content_length_and_until_close() -> None:
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbu") == b"bu"
    assert not p.done and p.feed(b"sy") == b"sy" and p.done and p.status == 503
    q = ResponseParser()
    assert q.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") == b"abc"
    assert q.until_close and not q.done


def test_render_reports_targets_saturation_and_demand() -> None:
    import datetime as dt
    from collections import Counter

    from bench.stream import LoadResult, Recorder, Results, parse_args, render

    args = parse_args(["--streams", "50,500"])
    d = Recorder(ttft=[0.0210, 0.0220], gaps=[0.020] * 99 + [0.030], chunks=1000)
    g = Recorder(ttft=[0.0215, 0.0230], gaps=[0.020] * 99 + [0.024], chunks=1000)
    busy = Recorder(gaps=[0.0, 0.5], chunks=1000, errors=Counter({"HTTP 504": 3}))
    cpu = {"client": 0.2, "sim": 0.2, "envoy": 0.1, "ext_proc": 0.2, "control_plane": 0.0}
    res = Results(ttft=[(1, d, g)], load=[
        LoadResult("direct", 50, 1.0, d, cpu, 0.0),
        LoadResult("gateway", 50, 1.0, g, cpu, 0.0),
        LoadResult("gateway", 500, 1.0, busy, {**cpu, "ext_proc": 1.5}, 0.0)])
    text = render(args, ["--streams", "50,500"], dt.datetime(2026, 1, 1), {"nproc": "2"}, res,
                  1.0)
    assert "added TTFT p50 at concurrency 1: +0.75 ms (target <= 1 ms: met)" in text
    assert "added inter-chunk p99 at 50 streams: +0.04 ms (target <= 5 ms: met)" in text
    assert "**saturated: machine**" in text and "HTTP 504 x3" in text
    assert "500 streams x 50 tokens/s = 25,000 chunks/s: Envoy 2.50 + ext_proc 5.00" in text
