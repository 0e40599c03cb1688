"""AWS event-stream framing: round trips, any split, corruption, and botocore's decoder."""

from __future__ import annotations

import struct
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.framing.eventstream import EventStreamDecoder, EventStreamError, Message, encode

EVENT: dict[str, str] = {":event-type": "contentBlockDelta", ":content-type": "application/json",
         ":message-type": "event"}
MESSAGES = [
    (EVENT, b'{"contentBlockIndex":0,"delta":{"text":"H\xc3\xa9llo"}}'),
    ({}, b""),
    ({":message-type": "exception", ":exception-type": "throttlingException"},
     b'{"message":"slow down"}'),
    ({"x": "\u4e16\u754c"}, b"\x00\x01\x02" * 50),
]
STREAM = b"".join(encode(h, p) for h, p in MESSAGES)


def decode_all(data: bytes, cuts: list[int]) -> list[Message]:
    dec = EventStreamDecoder()
    out: list[Message] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(dec.feed(data[prev:cut]))
        prev = cut
    assert dec.pending == 0
    return out


def test_round_trip() -> None:
    got = decode_all(STREAM, [])
    assert [(m.headers, m.payload) for m in got] == MESSAGES


def test_layout_matches_the_spec() -> None:
    frame = encode({"a": "bc"}, b"xyz")
    total, hlen, pcrc = struct.unpack("!III", frame[:12])
    assert total == len(frame) == 12 + hlen + 3 + 4
    assert frame[12:12 + hlen] == b"\x01a\x07\x00\x02bc"
    assert pcrc == zlib.crc32(frame[:8])
    assert frame[-4:] == struct.pack("!I", zlib.crc32(frame[:-4]))


def test_split_at_every_byte_boundary() -> None:
    want = decode_all(STREAM, [])
    for cut in range(len(STREAM) + 1):
        assert decode_all(STREAM, [cut]) == want
    assert decode_all(STREAM, list(range(len(STREAM)))) == want


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_split(cuts: list[int]) -> None:
    assert decode_all(STREAM, cuts) == decode_all(STREAM, [])


def test_returned_headers_are_the_callers_own() -> None:
    frame = encode(EVENT, b"{}")
    (first,) = EventStreamDecoder().feed(frame)
    first.headers[":event-type"] = "changed"
    (second,) = EventStreamDecoder().feed(frame)
    assert second.headers == EVENT


def test_partial_message_is_held() -> None:
    dec = EventStreamDecoder()
    frame = encode(EVENT, b"{}")
    assert dec.feed(frame[:-1]) == []
    assert dec.pending == len(frame) - 1
    assert [tuple(m) for m in dec.feed(frame[-1:])] == [(EVENT, b"{}")]
    assert dec.pending == 0


@pytest.mark.parametrize("pos", [0, 5, 9, 14, 30, -3])
def test_corruption_detected(pos: int) -> None:
    frame = bytearray(encode(EVENT, b'{"text":"hello"}'))
    frame[pos] ^= 0x40
    with pytest.raises(EventStreamError, match=r"CRC|length"):
        EventStreamDecoder().feed(bytes(frame))


def test_prelude_corruption_detected_before_waiting_for_the_body() -> None:
    frame = bytearray(encode(EVENT, b"x" * 100))
    frame[2] ^= 0x01  # total length now wrong: must not wait for bytes that never come
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame[:12]))


def test_absurd_lengths_rejected() -> None:
    prelude = struct.pack("!II", 10, 0)
    with pytest.raises(EventStreamError, match="lengths"):
        EventStreamDecoder().feed(prelude + struct.pack("!I", zlib.crc32(prelude)))
    prelude = struct.pack("!II", 1 << 30, 0)
    with pytest.raises(EventStreamError, match="too large"):
        EventStreamDecoder().feed(prelude + struct.pack("!I", zlib.crc32(prelude)))


def _raw_frame(headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack("!II", 16 + len(headers) + len(payload), len(headers))
    head = prelude + struct.pack("!I", zlib.crc32(prelude)) + headers + payload
    return head + struct.pack("!I", zlib.crc32(head))


def test_all_header_types_decoded() -> None:
    uuid = bytes(range(16))
    headers = (
        b"\x01t\x00" + b"\x01f\x01" + b"\x01b\x02\xff" + b"\x01s\x03\x01\x00"
        + b"\x01i\x04\x00\x00\x01\x00" + b"\x01l\x05" + (2**40).to_bytes(8, "big")
        + b"\x02ba\x06\x00\x02\x00\xff" + b"\x03str\x07\x00\x02ok"
        + b"\x02ts\x08" + (1700000000000).to_bytes(8, "big") + b"\x01u\x09" + uuid
    )
    (msg,) = EventStreamDecoder().feed(_raw_frame(headers, b"p"))
    assert msg.headers == {"t": True, "f": False, "b": -1, "s": 256, "i": 256, "l": 2**40,
                           "ba": b"\x00\xff", "str": "ok", "ts": 1700000000000, "u": uuid}
    assert msg.payload == b"p"
    buf = EventStreamBuffer()  # botocore agrees on every type
    buf.add_data(_raw_frame(headers, b"p"))
    (ref,) = list(buf)
    assert {k: v for k, v in ref.headers.items() if k != "u"} == {
        k: v for k, v in msg.headers.items() if k != "u"}


@pytest.mark.parametrize("headers", [b"\x01x\x0a", b"\x01x\x07\x00\x09ab", b"\x05ab"])
def test_malformed_headers_rejected(headers: bytes) -> None:
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(_raw_frame(headers, b""))


def test_encode_rejects_oversized_header() -> None:
    with pytest.raises(EventStreamError):
        encode({"x" * 256: "v"}, b"")


_names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.dictionaries(_names, st.text(max_size=40), max_size=4),
                       st.binary(max_size=300)), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_cross_check_with_botocore(msgs: list[tuple[dict[str, str], bytes]],
                                   cuts: list[int]) -> None:
    data = b"".join(encode(h, p) for h, p in msgs)
    cuts = [c % (len(data) + 1) for c in cuts]
    ours = decode_all(data, cuts)
    buf = EventStreamBuffer()
    theirs = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        buf.add_data(data[prev:cut])
        theirs.extend(buf)
        prev = cut
    assert [(m.headers, m.payload) for m in ours] == [(dict(h), p) for h, p in msgs]
    assert [(dict(m.headers), m.payload) for m in theirs] == [(dict(h), p) for h, p in msgs]
