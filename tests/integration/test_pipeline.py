"""The request pipeline's own guarantees, through real Envoy and the simulator: the attempt
that answers is the one translated and labelled (hedging, both orders), an answer that cannot
be translated reaches the client in its own schema, and usage prices cached input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from switchyard.framing.sse import SSEParser
from tests.integration.conftest import CLIENT_KEY, free_ports, launch, wait_until


def _config(p: dict[str, int]) -> str:
    sim = "simulate: {ttft_ms: 0, tokens_per_s: 0}"
    return f"""
listen: {{address: 127.0.0.1, port: {p['listen']}}}
admin: {{address: 127.0.0.1, port: {p['admin']}}}
control_plane: {{address: 127.0.0.1, port: {p['xds']}}}
ext_proc: {{address: 127.0.0.1, port: {p['ext_proc']}, metrics_port: {p['metrics']}}}
envoy_concurrency: 1
limits: {{max_request_bytes: 262144, request_headers_timeout_s: 1, request_receive_timeout_s: 2}}
providers:
  claude: {{kind: anthropic, base_url: "http://127.0.0.1:{p['claude']}", {sim}}}
  spare: {{kind: openai, base_url: "http://127.0.0.1:{p['spare']}", {sim}}}
models:
  hedge-mixed:
    backends:
      - {{provider: claude, model: claude-h}}
      - {{provider: spare, model: gpt-h}}
    failover: {{hedge_after_s: 0.25, per_try_timeout_s: 0.25, first_byte_timeout_s: 0.25}}
  mal-claude:
    backends: [{{provider: claude, model: claude-m}}]
  mal-openai:
    backends: [{{provider: spare, model: gpt-m}}]
  priced:
    backends:
      - {{provider: spare, model: gpt-p, price: {{input: 1.0, output: 2.0, cached_input: 0.1}}}}
"""


class Pipeline:
    def __init__(self, tmp: Path) -> None:
        names = ["listen", "admin", "xds", "ext_proc", "metrics", "claude", "spare"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        path = tmp / "pipeline.yaml"
        path.write_text(_config(self.ports))
        self.log_dir = tmp / "logs"
        self.gateway = launch(path)
        self.url = self.gateway.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=CLIENT_KEY,
                                    max_retries=0, timeout=20)

    def options(self, name: str, **opts: Any) -> None:
        url = f"http://127.0.0.1:{self.ports[name]}/_sim/options"
        httpx.delete(url).raise_for_status()
        if opts:
            httpx.put(url, json=opts).raise_for_status()

    def request_logs(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.log_dir.glob("*.log")):
            for line in p.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"event":"request"' in line.replace(" ", ""):
                    out.append(orjson.loads(line))
        return out


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path_factory.mktemp("pipeline"))
    yield p
    p.gateway.stop()


def _chat(pipe: Pipeline, model: str, stream: bool) -> tuple[str, httpx.Headers]:
    msgs = [{"role": "user", "content": "hedge me"}]
    if not stream:
        raw = pipe.client.chat.completions.with_raw_response.create(model=model, messages=msgs)
        return raw.parse().choices[0].message.content or "", raw.headers
    with pipe.client.chat.completions.with_streaming_response.create(
            model=model, messages=msgs, stream=True) as resp:
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        return text, resp.headers


@pytest.mark.parametrize("stream", [False, True])
def test_hedge_first_attempt_wins_and_is_translated_by_its_backend(pipe: Pipeline,
                                                                   stream: bool) -> None:
    # The first attempt (Anthropic) answers after 0.7 s; the hedge (OpenAI) started at 0.25 s
    # would take 3 s. The client must get the Anthropic answer, translated as Anthropic.
    pipe.options("claude", slow_first_token_ms=700)
    pipe.options("spare", slow_first_token_ms=3000)
    text, headers = _chat(pipe, "hedge-mixed", stream)
    assert headers["x-switchyard-backend"] == "claude/claude-h"
    assert text.startswith("Simulated reply from claude"), text
    assert "x-switchyard-answered-by" not in headers


@pytest.mark.parametrize("stream", [False, True])
def test_hedge_second_attempt_wins(pipe: Pipeline, stream: bool) -> None:
    pipe.options("claude", slow_first_token_ms=3000)
    pipe.options("spare")
    text, headers = _chat(pipe, "hedge-mixed", stream)
    assert headers["x-switchyard-backend"] == "spare/gpt-h"
    assert text.startswith("Simulated reply from spare"), text


def _sse(body: bytes) -> list[tuple[str | None, bytes]]:
    return [(e.event, e.data) for e in SSEParser().feed(body)]


def test_untranslatable_answer_openai_client(pipe: Pipeline) -> None:
    pipe.options("claude", malformed=True)
    try:
        with pytest.raises(openai.APIStatusError) as exc:
            pipe.client.chat.completions.create(
                model="mal-claude", messages=[{"role": "user", "content": "x"}])
        assert exc.value.status_code == 502
        assert exc.value.code == "bad_upstream_response"
        r = httpx.post(pipe.url + "/v1/chat/completions", timeout=20, json={
            "model": "mal-claude", "stream": True,
            "messages": [{"role": "user", "content": "x"}]})
        events = _sse(r.content)
        if events and events[-1][1] == b"[DONE]":  # the OpenAI stream terminator may follow
            events.pop()
        assert events, r.content
        last = orjson.loads(events[-1][1])
        assert events[-1][0] is None and last["error"]["type"] == "api_error", r.content
        assert r.content.count(b'"error"') == 1  # one error event, and no content after it
    finally:
        pipe.options("claude")


def test_same_schema_answer_that_is_not_json_openai_client(pipe: Pipeline) -> None:
    """OpenAI answers an OpenAI client (relayed, not translated) with a body that is not JSON:
    the client gets the documented 502 in its own schema, which its SDK parses."""
    pipe.options("spare", malformed=True)
    try:
        with pytest.raises(openai.APIStatusError) as exc:
            pipe.client.chat.completions.create(
                model="mal-openai", messages=[{"role": "user", "content": "x"}])
        assert exc.value.status_code == 502
        assert exc.value.code == "bad_upstream_response"
    finally:
        pipe.options("spare")


def test_untranslatable_answer_anthropic_client(pipe: Pipeline) -> None:
    pipe.options("spare", malformed=True)
    body = {"model": "mal-openai", "max_tokens": 50,
            "messages": [{"role": "user", "content": "x"}]}
    try:
        r = httpx.post(pipe.url + "/v1/messages", json=body, timeout=20)
        assert r.status_code == 502
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "api_error", err
        r = httpx.post(pipe.url + "/v1/messages", json={**body, "stream": True}, timeout=20)
        events = _sse(r.content)
        assert events[-1][0] == "error", r.content
        assert orjson.loads(events[-1][1])["type"] == "error"
        assert [e for e, _ in events].count("error") == 1
        assert b"message_stop" not in r.content
    finally:
        pipe.options("spare")


def test_cached_and_reasoning_tokens_are_priced_and_reported(pipe: Pipeline) -> None:
    pipe.options("spare", cached_tokens=4, reasoning_tokens=3)
    try:
        resp = pipe.client.chat.completions.create(
            model="priced", messages=[{"role": "user", "content": "one two three four five"}])
    finally:
        pipe.options("spare")
    assert resp.usage is not None
    prompt, completion = resp.usage.prompt_tokens, resp.usage.completion_tokens

    def line() -> dict[str, Any] | None:
        lines = [x for x in pipe.request_logs() if x.get("model") == "priced"]
        return lines[-1] if lines else None

    rec = wait_until(line)
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (prompt, completion)
    assert (rec["cached_tokens"], rec["reasoning_tokens"]) == (4, 3)
    expected = ((prompt - 4) * 1.0 + 4 * 0.1 + completion * 2.0) / 1e6
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-6)
    metrics = httpx.get(f"http://127.0.0.1:{pipe.ports['metrics']}/metrics").text
    assert 'switchyard_tokens_total{backend="spare/gpt-p",kind="cached",model="priced"} 4.0' \
        in metrics


def _anthropic(pipe: Pipeline) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=pipe.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def test_anthropic_passthrough_stream_cut_short_raises(pipe: Pipeline) -> None:
    """Anthropic client, Anthropic backend (same schema, passed through), the provider ends
    the stream early: the client gets an `event: error` (the SDK raises), not a stream that
    just stops with stop_reason None."""
    pipe.options("claude", truncate_after_chunks=3)
    body = {"model": "mal-claude", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "cut me short"}]}
    try:
        kwargs = {k: v for k, v in body.items() if k != "stream"}
        with (pytest.raises(anthropic.APIStatusError) as exc,
              _anthropic(pipe).messages.stream(**kwargs) as stream):  # type: ignore[arg-type]
            for _ in stream:
                pass
        assert "ended the stream before it was complete" in str(exc.value)
        r = httpx.post(pipe.url + "/v1/messages", json=body, timeout=20)
        events = _sse(r.content)
        assert events[0][0] == "message_start", r.content
        assert events[-1][0] == "error" and [e for e, _ in events].count("error") == 1
        assert orjson.loads(events[-1][1])["error"]["type"] == "api_error"
        assert b"message_stop" not in r.content
    finally:
        pipe.options("claude")


def test_truncation_code_is_the_same_for_every_backend(pipe: Pipeline) -> None:
    """OpenAI client: a stream cut short ends with one error whose code is
    `upstream_stream_truncated`, whether the backend is relayed (OpenAI) or translated
    (Anthropic)."""
    for model, sim in (("mal-openai", "spare"), ("mal-claude", "claude")):
        pipe.options(sim, truncate_after_chunks=3)
        try:
            r = httpx.post(pipe.url + "/v1/chat/completions", timeout=20, json={
                "model": model, "stream": True,
                "messages": [{"role": "user", "content": "cut me short"}]})
        finally:
            pipe.options(sim)
        errors = [orjson.loads(d)["error"] for _, d in _sse(r.content)
                  if d != b"[DONE]" and b'"error"' in d]
        assert len(errors) == 1, r.content
        assert errors[0]["code"] == "upstream_stream_truncated", (model, errors)


@pytest.mark.parametrize("model", ["mal-openai", "mal-claude"])
def test_responses_name_the_alias(pipe: Pipeline, model: str) -> None:
    """Every answer's `model` is the alias the client asked for, not the upstream model
    (clients look up cost by it): both ingresses, buffered and streamed."""
    msgs = [{"role": "user", "content": "who am I talking to"}]
    done = pipe.client.chat.completions.create(model=model, messages=msgs)  # type: ignore[arg-type]
    assert done.model == model
    chunks = list(pipe.client.chat.completions.create(
        model=model, messages=msgs, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    assert chunks and {c.model for c in chunks} == {model}
    client = _anthropic(pipe)
    msg = client.messages.create(model=model, max_tokens=20, messages=msgs)  # type: ignore[arg-type]
    assert msg.model == model
    with client.messages.stream(model=model, max_tokens=20, messages=msgs) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.model == model


def test_output_format_reaches_a_non_anthropic_backend(pipe: Pipeline) -> None:
    """`output_format` (the structured-outputs beta's top-level form) on /v1/messages to an
    OpenAI backend becomes its json_schema response_format, like output_config.format."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    sim = f"http://127.0.0.1:{pipe.ports['spare']}/_sim/requests"
    httpx.delete(sim).raise_for_status()
    r = httpx.post(pipe.url + "/v1/messages", timeout=20, json={
        "model": "mal-openai", "max_tokens": 30,
        "messages": [{"role": "user", "content": "a number please"}],
        "output_format": {"type": "json_schema", "schema": schema}})
    assert r.status_code == 200, r.text
    sent = httpx.get(sim).json()[-1]["body"]
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema}}



def test_provider_receives_only_allow_listed_headers(pipe: Pipeline) -> None:
    """Client identity, cookies, arbitrary x-* headers and Envoy's x-envoy-* never reach a
    provider; `rejected_header_mutations` stays 0 (no mutation Envoy refuses)."""
    url = f"http://127.0.0.1:{pipe.ports['spare']}/_sim/requests"
    httpx.delete(url)
    r = httpx.post(pipe.url + "/v1/chat/completions", timeout=20, headers={
        "user-agent": "secret-client/1.0", "x-forwarded-for": "10.9.8.7", "cookie": "s=1",
        "x-request-id": "client-rid", "x-custom": "leak", "x-api-key": "sk-client",
        "x-envoy-max-retries": "7"},
        json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    seen = httpx.get(url).json()[-1]["headers"]
    framing = {"content-length", "transfer-encoding"}  # Envoy's own HTTP/1.1 framing
    assert set(seen) <= {"host", "content-type", "authorization", "x-switchyard-rid",
                         *framing}, seen
    stats = httpx.get(f"http://127.0.0.1:{pipe.ports['admin']}/stats",
                      params={"filter": "rejected_header_mutations"}).text
    assert all(line.rsplit(":", 1)[1].strip() == "0" for line in stats.splitlines() if line), stats


def test_wrong_method_on_an_api_path_is_405(pipe: Pipeline) -> None:
    r = httpx.get(pipe.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(pipe.url + "/v1/nope").status_code == 404


def test_too_large_body_answers_in_the_callers_schema(pipe: Pipeline) -> None:
    big = {"model": "mal-claude", "max_tokens": 5,
           "messages": [{"role": "user", "content": "x" * 300_000}]}
    r = httpx.post(pipe.url + "/v1/messages", json=big, timeout=20)
    assert r.status_code == 413
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "Request body too large"}}
    r = httpx.post(pipe.url + "/v1/chat/completions", json=big, timeout=20)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def _slow(pipe: Pipeline, data: bytes, wait_s: float) -> tuple[bytes, float]:
    import socket

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", pipe.ports["listen"]), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out, time.monotonic() - t0


def test_slow_clients_are_cut_off_within_the_configured_timeouts(pipe: Pipeline) -> None:
    """Headers that never finish, and a body shorter than its Content-Length, do not hold the
    connection for the idle timeout (10 min): the configured 1 s / 2 s limits apply."""
    _, took = _slow(pipe, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", 8)
    assert took < 4, took
    _, took = _slow(pipe, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\"",
                    8)
    assert took < 5, took
