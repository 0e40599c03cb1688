"""The wire-format replies (ext_proc/wire.py) parse to exactly the messages the protobuf API
would build: the route phase's body reply, response headers and body replies."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from ext_proc import envoy, wire
from ext_proc.attempt import Upstream
from ext_proc.respond import BodyMode, BodyReply, HeadersReply
from ext_proc.route import Forward
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_P = ProviderInfo(name="p", kind="openai", authority=b"api.example.com", path_prefix="",
                  api_key="", headers=(), options={})


def _hv(k: str, v: bytes) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v),
                                      append_action=_OVERWRITE)


@given(st.text(min_size=1, max_size=300), st.binary(max_size=20_000))
def test_a_header_entry_is_what_protobuf_writes(key: str, value: bytes) -> None:
    built = pb.HeaderMutation(set_headers=[_hv(key, value)], remove_headers=[key])
    raw = wire.mutation([wire.set_header(key, value)], [key])
    assert pb.HeaderMutation.FromString(raw) == built
    if value:  # (protobuf leaves an empty raw_value out; it parses the same)
        assert raw == built.SerializeToString()


@given(st.integers(min_value=0, max_value=2**40))
def test_varint_round_trips(n: int) -> None:
    raw = wire.ld(1, b"x" * (n % 70_000))
    assert base_pb2.HeaderValue.FromString(raw).key == "x" * (n % 70_000)
    assert int.from_bytes(wire.varint(n)[:1], "little") & 0x7F == n & 0x7F


def _forward() -> tuple[Forward, Upstream]:
    b = BackendInfo(cluster="p.m", provider=_P, model="m", price_input=1, price_output=2,
                    context_window=0, label="p/m")
    model = ModelInfo(name="m", backends=(b,), max_retries=0, per_try_timeout_ms=1000,
                      first_byte_timeout_ms=1000, hedge_after_ms=0, routing=None)
    fwd = Forward(model=model, candidates=(b,), max_retries=0, try_timeout_ms=1500)
    up = Upstream(path=b"/v1/chat/completions", authority=b"api.example.com",
                  body=b'{"model":"m"}', set_headers=(("authorization", b"Bearer k"),),
                  remove_headers=("user-agent", "x-forwarded-proto", "cookie"))
    return fwd, up


def test_forward_reply_is_the_message_it_stands_for() -> None:
    fwd, up = _forward()
    order = envoy.OrderMetadata()
    got = pb.ProcessingResponse.FromString(
        envoy.forward(fwd, "alias", "rid-1", order, None, up))
    want = pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(
                set_headers=[_hv("x-switchyard-model", b"alias"),
                             _hv("x-switchyard-rid", b"rid-1"),
                             _hv("x-envoy-max-retries", b"0"),
                             _hv("x-envoy-upstream-rq-per-try-timeout-ms", b"1500"),
                             _hv(":path", b"/v1/chat/completions"),
                             _hv(":authority", b"api.example.com"),
                             _hv("content-length", b"13"),
                             _hv("authorization", b"Bearer k")],
                # x-forwarded-proto stays for Envoy's route match (removed upstream).
                remove_headers=["user-agent", "cookie", "x-gateway-destination-endpoint"]),
            body_mutation=pb.BodyMutation(body=b'{"model":"m"}'),
            clear_route_cache=True)),
        dynamic_metadata=order.of(fwd.candidates))
    assert got == want


def test_response_replies_are_the_messages_they_stand_for() -> None:
    r = HeadersReply(set_headers=(("x-a", b"1"),), remove_headers=("content-length",),
                     mode=BodyMode.BUFFERED)
    got = pb.ProcessingResponse.FromString(envoy.response_headers(r))
    assert got.response_headers.response.header_mutation == pb.HeaderMutation(
        set_headers=[_hv("x-a", b"1")], remove_headers=["content-length"])
    assert got.mode_override.response_body_mode == got.mode_override.BUFFERED
    none = pb.ProcessingResponse.FromString(envoy.response_headers(
        HeadersReply((), (), BodyMode.NONE)))
    assert none.HasField("mode_override") and none.HasField("response_headers")
    body = pb.ProcessingResponse.FromString(envoy.response_body(BodyReply(b"{}", (("x", b"y"),))))
    assert body.response_body.response.body_mutation.body == b"{}"
    assert list(body.response_body.response.header_mutation.set_headers) == [_hv("x", b"y")]
    cleared = pb.ProcessingResponse.FromString(envoy.response_body(BodyReply(b"")))
    assert cleared.response_body.response.body_mutation.clear_body
