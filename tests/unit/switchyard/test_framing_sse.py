"""SSE parser: frames must come out the same however the byte stream is cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switchyard.framing.sse import SSEEvent, SSEParser, encode, parse_frame

STREAM = (
    b": keep-alive comment\n\n"
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n\n'
    b"data:no-space\n\n"
    b"data: line one\n"
    b"data: line two\n"
    b"data:\n\n"
    b"event: ping\r\n"
    b"data: crlf \xc3\xa9t\xc3\xa9\r\n\r\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"data: after id\n\n"
    b"data\n\n"
    b"event: only-event-no-data\n\n"
    b"data: [DONE]\n\n"
)

EXPECTED = [
    SSEEvent("message_start", b'{"type":"message_start"}'),
    SSEEvent(None, b"no-space"),
    SSEEvent(None, b"line one\nline two\n"),
    SSEEvent("ping", "crlf été".encode()),
    SSEEvent(None, b"after id"),
    SSEEvent(None, b""),
    SSEEvent(None, b"[DONE]"),
]


def feed_split(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        events.extend(parser.feed(data[prev:cut]))
        prev = cut
    return events


def test_whole_stream() -> None:
    assert SSEParser().feed(STREAM) == EXPECTED


def test_byte_at_a_time() -> None:
    assert feed_split(STREAM, list(range(len(STREAM)))) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_arbitrary_splits(cuts: list[int]) -> None:
    assert feed_split(STREAM, cuts) == EXPECTED


def test_crlf_split_mid_terminator() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"\r") == [SSEEvent(None, b"a")]
    # The "\n" completing that CRLF reads as an empty line: nothing extra is dispatched.
    assert p.feed(b"\ndata: b\r\n\r\n") == [SSEEvent(None, b"b")]


def test_bare_cr_line_endings() -> None:
    assert SSEParser().feed(b"event: e\rdata: x\rdata: y\r\r") == [SSEEvent("e", b"x\ny")]


def test_mixed_endings() -> None:
    assert SSEParser().feed(b"data: a\r\ndata: b\n\r\ndata: c\n\n") == [
        SSEEvent(None, b"a\nb"),
        SSEEvent(None, b"c"),
    ]


def test_partial_frame_stays_pending() -> None:
    p = SSEParser()
    assert p.feed(b"data: partial") == []
    assert p.pending == len(b"data: partial")
    assert p.take_pending() == b"data: partial"
    assert p.pending == 0


def test_feed_frames_returns_raw_bytes() -> None:
    p = SSEParser()
    frames = p.feed_frames(b": c\n\ndata: x\r\n\r\ndata: y")
    assert frames == [(b": c\n\n", None), (b"data: x\r\n\r\n", SSEEvent(None, b"x"))]
    assert p.take_pending() == b"data: y"


def test_parse_frame_without_data_is_none() -> None:
    assert parse_frame(b": just a comment\n\n") is None
    assert parse_frame(b"event: x\n\n") is None


def test_encode() -> None:
    assert encode(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode(b"x", "error") == b"event: error\ndata: x\n\n"
    assert encode(b"a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["message_start", "ping", "error"])),
            st.binary(max_size=40),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_encode_roundtrip(events: list[tuple[str | None, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode(data, event) for event, data in events)
    # CR/CRLF inside data are line breaks on the wire, so they come back as "\n".
    want = [
        SSEEvent(event, data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
        for event, data in events
    ]
    assert feed_split(stream, [c % (len(stream) + 1) for c in cuts]) == want
