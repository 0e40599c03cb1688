"""The hot replies of the route phase written straight in protobuf wire format.

Building a `ProcessingResponse` through the Python protobuf API costs ~6 µs per header
(`HeaderValueOption(header=HeaderValue(...))`), more than all of a request's routing logic;
the same bytes concatenated from cached pieces cost a fraction of that. The gRPC server sends
`bytes` as they are (`server.serialize`), so the replies here never become message objects.
Only length-delimited fields, varints and the field numbers of Envoy's API (checked against
the generated descriptors at import, and byte-for-byte against the protobuf API in
tests/unit/ext_proc/test_wire.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb


def _num(message: type, field: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[field].number)  # type: ignore[attr-defined]


# Field numbers, from the descriptors (a renumbering in a new xds-protos fails loudly here).
_PR_REQUEST_HEADERS = _num(pb.ProcessingResponse, "request_headers")
_PR_RESPONSE_HEADERS = _num(pb.ProcessingResponse, "response_headers")
_PR_REQUEST_BODY = _num(pb.ProcessingResponse, "request_body")
_PR_RESPONSE_BODY = _num(pb.ProcessingResponse, "response_body")
_PR_DYNAMIC_METADATA = _num(pb.ProcessingResponse, "dynamic_metadata")
_PR_MODE_OVERRIDE = _num(pb.ProcessingResponse, "mode_override")
_WRAP_RESPONSE = _num(pb.BodyResponse, "response")
assert _num(pb.HeadersResponse, "response") == _WRAP_RESPONSE
_CR_HEADER_MUTATION = _num(pb.CommonResponse, "header_mutation")
_CR_BODY_MUTATION = _num(pb.CommonResponse, "body_mutation")
_CR_CLEAR_ROUTE_CACHE = _num(pb.CommonResponse, "clear_route_cache")
_HM_SET = _num(pb.HeaderMutation, "set_headers")
_HM_REMOVE = _num(pb.HeaderMutation, "remove_headers")
_BM_BODY = _num(pb.BodyMutation, "body")
_BM_CLEAR = _num(pb.BodyMutation, "clear_body")
_HVO_HEADER = _num(base_pb2.HeaderValueOption, "header")
_HVO_APPEND_ACTION = _num(base_pb2.HeaderValueOption, "append_action")
_HV_KEY = _num(base_pb2.HeaderValue, "key")
_HV_RAW_VALUE = _num(base_pb2.HeaderValue, "raw_value")

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


_ONE_BYTE = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE[n]
    if n < 16384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Tag bytes of a length-delimited field, by field number (all numbers used here are < 16).
_LD_TAG = [varint(num << 3 | 2) for num in range(16)]


def ld(num: int, payload: bytes) -> bytes:
    """A length-delimited field (submessage, string, bytes)."""
    n = len(payload)
    return _LD_TAG[num] + (_ONE_BYTE[n] if n < 128 else varint(n)) + payload


def _flag(num: int) -> bytes:
    return varint(num << 3) + b"\x01"


_APPEND_OVERWRITE = varint(_HVO_APPEND_ACTION << 3) + varint(_OVERWRITE)
_CLEAR_ROUTE_CACHE = _flag(_CR_CLEAR_ROUTE_CACHE)
_CLEAR_BODY = ld(_CR_BODY_MUTATION, _flag(_BM_CLEAR))


def set_header(key: str, value: bytes) -> bytes:
    """One `HeaderMutation.set_headers` entry (OVERWRITE_IF_EXISTS_OR_ADD, raw_value)."""
    hv = ld(_HV_KEY, key.encode()) + ld(_HV_RAW_VALUE, value)
    return ld(_HM_SET, ld(_HVO_HEADER, hv) + _APPEND_OVERWRITE)


_CACHE: dict[tuple[str, bytes], bytes] = {}


def set_header_cached(key: str, value: bytes) -> bytes:
    """`set_header` for the few (key, value) pairs that repeat (credentials, content type,
    authority, retry budget): built once."""
    k = (key, value)
    out = _CACHE.get(k)
    if out is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        out = _CACHE[k] = set_header(key, value)
    return out


def remove_header(name: str) -> bytes:
    return ld(_HM_REMOVE, name.encode())


def common(mutation: bytes, body: bytes | None = None, clear_body: bool = False,
           clear_route_cache: bool = False) -> bytes:
    """A CommonResponse: the header mutation's entries (`set_header`/`remove_header`
    concatenated), a body replacement, clear_route_cache."""
    out = ld(_CR_HEADER_MUTATION, mutation) if mutation else b""
    if body is not None:
        out += ld(_CR_BODY_MUTATION, ld(_BM_BODY, body))
    elif clear_body:
        out += _CLEAR_BODY
    if clear_route_cache:
        out += _CLEAR_ROUTE_CACHE
    return out


def request_body(common_response: bytes, metadata: bytes = b"") -> bytes:
    """ProcessingResponse.request_body (+ dynamic_metadata: a serialized Struct)."""
    out = ld(_PR_REQUEST_BODY, ld(_WRAP_RESPONSE, common_response))
    if metadata:
        out += ld(_PR_DYNAMIC_METADATA, metadata)
    return out


def response_headers(common_response: bytes, mode: bytes | None = None) -> bytes:
    """ProcessingResponse.response_headers (+ mode_override: a serialized ProcessingMode; b""
    is an override to the defaults, None is none)."""
    out = ld(_PR_RESPONSE_HEADERS, ld(_WRAP_RESPONSE, common_response))
    if mode is not None:
        out += ld(_PR_MODE_OVERRIDE, mode)
    return out


def response_body(common_response: bytes) -> bytes:
    return ld(_PR_RESPONSE_BODY, ld(_WRAP_RESPONSE, common_response))


def request_headers(common_response: bytes) -> bytes:
    return ld(_PR_REQUEST_HEADERS, ld(_WRAP_RESPONSE, common_response))


def mutation(sets: Iterable[bytes], removes: Iterable[str] = ()) -> bytes:
    return b"".join(sets) + b"".join(remove_header(n) for n in removes)
