"""AWS `application/vnd.amazon.eventstream` binary framing (Bedrock ConverseStream, ...).

One message on the wire::

    total length u32 | headers length u32 | prelude CRC u32     (the 12-byte prelude)
    headers: repeated (name length u8, name, value type u8, value)
    payload
    message CRC u32                                             (over everything before it)

All integers are big-endian; the CRCs are CRC-32 (zlib). Envoy cuts the body anywhere, so the
decoder keeps an incomplete message until the rest arrives. A CRC mismatch is an error, never
a skipped message: after corruption the frame boundaries themselves are no longer trustworthy.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

__all__ = ["EventStreamDecoder", "EventStreamError", "HeaderValue", "Message", "encode"]

HeaderValue = str | bytes | int | bool

_PRELUDE = struct.Struct("!III")
_U32 = struct.Struct("!I")
_PRELUDE_LEN = 12
_MIN_MESSAGE = _PRELUDE_LEN + 4  # no headers, empty payload
# Same ceilings as the AWS SDKs: a length beyond them means a corrupt or hostile stream.
_MAX_HEADERS = 128 * 1024
_MAX_PAYLOAD = 24 * 1024 * 1024
_STRING = 7


class EventStreamError(ValueError):
    """The byte stream is not valid event-stream framing (bad CRC, length or header)."""


class Message(NamedTuple):
    headers: dict[str, HeaderValue]
    payload: bytes


_INT_SIZES = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8}  # int8/16/32/64, timestamp (int64 ms)
# A stream repeats a handful of identical header blocks (one per event type): parse each once.
_HEADER_CACHE: dict[bytes, dict[str, HeaderValue]] = {}
_HEADER_CACHE_MAX = 256
_HEADER_CACHE_BLOCK = 512  # bytes; bounds the cache at 128 KiB whatever a stream sends


def _parse_headers(block: bytes) -> dict[str, HeaderValue]:
    cached = _HEADER_CACHE.get(block)
    if cached is not None:
        return dict(cached)  # a copy: callers may mutate theirs
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(block)
    while pos < end:
        name_len = block[pos]
        pos += 1
        name = block[pos : pos + name_len].decode("utf-8")
        pos += name_len
        if pos >= end:
            raise EventStreamError(f"event-stream header {name!r} is truncated")
        vtype = block[pos]
        pos += 1
        value: HeaderValue
        if vtype == _STRING or vtype == 6:  # string / byte array: u16 length prefix
            n = (block[pos] << 8) | block[pos + 1]
            raw = block[pos + 2 : pos + 2 + n]
            pos += 2 + n
            value = raw.decode("utf-8") if vtype == _STRING else raw
        elif vtype == 0 or vtype == 1:
            value = vtype == 0
        elif vtype in _INT_SIZES:
            size = _INT_SIZES[vtype]
            value = int.from_bytes(block[pos : pos + size], "big", signed=True)
            pos += size
        elif vtype == 9:  # uuid
            value = block[pos : pos + 16]
            pos += 16
        else:
            raise EventStreamError(f"unknown event-stream header type {vtype} for {name!r}")
        if pos > end:
            raise EventStreamError(f"event-stream header {name!r} overruns the header block")
        headers[name] = value
    if end <= _HEADER_CACHE_BLOCK and len(_HEADER_CACHE) < _HEADER_CACHE_MAX:
        _HEADER_CACHE[block] = dict(headers)
    return headers


class EventStreamDecoder:
    """Feed raw body chunks, get complete messages back; partial messages wait for more bytes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a complete message (non-zero at end = truncated)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        out: list[Message] = []
        view: memoryview | None = None
        while size - pos >= _PRELUDE_LEN:
            total, hlen, prelude_crc = _PRELUDE.unpack_from(buf, pos)
            if zlib.crc32(buf[pos : pos + 8]) != prelude_crc:
                raise EventStreamError("event-stream prelude CRC mismatch")
            if hlen > _MAX_HEADERS or total < _MIN_MESSAGE + hlen:
                raise EventStreamError(
                    f"event-stream message lengths are invalid (total {total}, headers {hlen})"
                )
            if total - _MIN_MESSAGE - hlen > _MAX_PAYLOAD:
                raise EventStreamError(f"event-stream payload too large ({total} bytes)")
            end = pos + total
            if end > size:
                break
            if view is None:
                view = memoryview(buf)
            (msg_crc,) = _U32.unpack_from(buf, end - 4)
            if zlib.crc32(view[pos : end - 4]) != msg_crc:
                raise EventStreamError("event-stream message CRC mismatch")
            hstart = pos + _PRELUDE_LEN
            try:
                headers = _parse_headers(buf[hstart : hstart + hlen]) if hlen else {}
            except (IndexError, UnicodeDecodeError) as exc:
                raise EventStreamError(f"malformed event-stream headers: {exc}") from None
            out.append(Message(headers, buf[hstart + hlen : end - 4]))
            pos = end
        self._buf = buf[pos:] if pos else buf
        return out


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One message with string-typed headers (all that Bedrock's events use)."""
    parts: list[bytes] = []
    for name, value in headers.items():
        n = name.encode("utf-8")
        v = value.encode("utf-8")
        if len(n) > 255 or len(v) > 0xFFFF:
            raise EventStreamError(f"event-stream header {name!r} is too long")
        parts.append(bytes((len(n),)) + n + bytes((_STRING,)) + len(v).to_bytes(2, "big") + v)
    hdr = b"".join(parts)
    prelude = struct.pack("!II", _MIN_MESSAGE + len(hdr) + len(payload), len(hdr))
    head = prelude + _U32.pack(zlib.crc32(prelude)) + hdr + payload
    return head + _U32.pack(zlib.crc32(head))
