"""Cross-provider failover on Envoy's own retries, re-translated per attempt (real Envoy)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import CLIENT_KEY, free_ports, launch, wait_until

MESSAGES = [{"role": "user", "content": "Please fail over gracefully"}]
EJECTION_S = 5


def _config(p: dict[str, int]) -> str:
    health = f"health: {{consecutive_failures: 3, ejection_s: {EJECTION_S}}}"
    return f"""
listen: {{address: 127.0.0.1, port: {p['listen']}}}
admin: {{address: 127.0.0.1, port: {p['admin']}}}
control_plane: {{address: 127.0.0.1, port: {p['xds']}}}
ext_proc: {{address: 127.0.0.1, port: {p['ext_proc']}, metrics_port: {p['metrics']}}}
envoy_concurrency: 1
providers:
  primary:
    kind: openai
    base_url: "http://127.0.0.1:{p['primary']}"
    api_key: {{value: "sk-primary"}}
    simulate: {{ttft_ms: 0, tokens_per_s: 0}}
    {health}
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{p['claude']}"
    api_key: {{value: "sk-claude"}}
    simulate: {{ttft_ms: 0, tokens_per_s: 0}}
    {health}
  spare:
    kind: openai
    base_url: "http://127.0.0.1:{p['spare']}"
    simulate: {{ttft_ms: 0, tokens_per_s: 0}}
    {health}
  dead:
    kind: openai
    base_url: "http://127.0.0.1:{p['dead']}"
    {health}
models:
  multi:
    backends:
      - {{provider: primary, model: gpt-primary}}
      - {{provider: claude, model: claude-backup}}
      - {{provider: spare, model: gpt-spare}}
    failover: {{per_try_timeout_s: 1.0, first_byte_timeout_s: 1.0}}
  deadfirst:
    backends:
      - {{provider: dead, model: gpt-dead}}
      - {{provider: claude, model: claude-backup}}
      - {{provider: spare, model: gpt-spare}}
  ctx:
    backends:
      - {{provider: primary, model: gpt-small, context_window: 60}}
      - {{provider: claude, model: claude-large, context_window: 100000}}
  hedged:
    backends:
      - {{provider: primary, model: gpt-slow}}
      - {{provider: spare, model: gpt-fast}}
    failover: {{hedge_after_s: 0.3, per_try_timeout_s: 0.3, first_byte_timeout_s: 0.3}}
  firstbyte:
    backends:
      - {{provider: primary, model: gpt-primary}}
      - {{provider: spare, model: gpt-spare}}
    failover: {{first_byte_timeout_s: 0.5}}
  hedgeonly:
    backends:
      - {{provider: primary, model: gpt-slow}}
      - {{provider: spare, model: gpt-fast}}
    failover: {{hedge_after_s: 0.3}}
"""


class FailoverGateway:
    def __init__(self, tmp: Path) -> None:
        names = ["listen", "admin", "xds", "ext_proc", "metrics", "primary", "claude", "spare",
                 "dead"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        path = tmp / "failover.yaml"
        path.write_text(_config(self.ports))
        self.gateway = launch(path)
        self.client = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key=CLIENT_KEY,
                                    max_retries=0, timeout=20)

    def sim(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def requests(self, name: str) -> list[dict[str, Any]]:
        return httpx.get(self.sim(name) + "/_sim/requests").json()

    def options(self, name: str, **opts: Any) -> None:
        httpx.put(self.sim(name) + "/_sim/options", json=opts).raise_for_status()

    def reset(self) -> None:
        for name in ("primary", "claude", "spare"):
            httpx.delete(self.sim(name) + "/_sim/options").raise_for_status()
            httpx.delete(self.sim(name) + "/_sim/requests").raise_for_status()

    def envoy_stat(self, name: str) -> int:
        text = httpx.get(f"http://127.0.0.1:{self.ports['admin']}/stats",
                         params={"filter": name}).text
        return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines()
                   if line.split(":", 1)[0] == name)

    def wait_uneject(self) -> None:
        """Let earlier tests' ejections expire, so each test starts with healthy backends."""
        url = f"http://127.0.0.1:{self.ports['admin']}/clusters?format=json"

        def healthy() -> bool:
            statuses = httpx.get(url).json()["cluster_statuses"]
            return not any(h.get("health_status", {}).get("failed_outlier_check")
                           for c in statuses for h in c.get("host_statuses", []))

        wait_until(healthy, timeout=4 * EJECTION_S + 5, interval=0.2)
        health = f"http://127.0.0.1:{self.ports['metrics']}/healthz"
        wait_until(lambda: httpx.get(health).json()["unhealthy_backends"] == {},
                   timeout=10, interval=0.1)


@pytest.fixture(scope="module")
def fo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverGateway]:
    gw = FailoverGateway(tmp_path_factory.mktemp("failover"))
    yield gw
    gw.gateway.stop()


@pytest.fixture(autouse=True)
def _clean(fo: FailoverGateway) -> Iterator[None]:
    fo.reset()
    fo.wait_uneject()
    yield
    fo.reset()


def _one(client: openai.OpenAI, model: str, stream: bool) -> tuple[str, dict[str, str]]:
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model=model, messages=MESSAGES, stream=True, max_tokens=8) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse()
                           if c.choices)
            return text, dict(resp.headers)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=8)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def _run_200(fo: FailoverGateway, model: str, check: Callable[[str, dict[str, str]], None]
             ) -> list[dict[str, str]]:
    """200 requests, half streaming, 8 at a time; every one must succeed for the client."""
    def one(i: int) -> dict[str, str]:
        text, headers = _one(fo.client, model, stream=i % 2 == 1)
        check(text, headers)
        return headers

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(200)))


def _served_by_backup(text: str, headers: dict[str, str]) -> None:
    assert text.startswith("Simulated reply from"), text
    assert headers["x-switchyard-backend"] != "primary/gpt-primary"


def _assert_schemas(fo: FailoverGateway) -> None:
    """Every attempt arrived at its backend in that backend's own schema and credentials."""
    for r in fo.requests("claude"):
        assert r["path"] == "/v1/messages"
        assert r["body"]["model"] == "claude-backup" and "max_tokens" in r["body"]
        assert r["headers"]["x-api-key"] == "sk-claude"
    for r in fo.requests("primary"):
        assert r["path"] == "/v1/chat/completions" and r["body"]["model"] == "gpt-primary"
        assert r["headers"]["authorization"] == "Bearer sk-primary"
    for r in fo.requests("spare"):
        assert r["path"] == "/v1/chat/completions" and r["body"]["model"] == "gpt-spare"
        assert "authorization" not in r["headers"]


def _assert_ejected_and_quiet(fo: FailoverGateway, cluster: str, sim: str) -> None:
    """The failing backend was ejected and got no traffic while ejected."""
    assert fo.envoy_stat(f"cluster.{cluster}.outlier_detection.ejections_enforced_total") >= 1
    wait_until(lambda: fo.envoy_stat(f"cluster.{cluster}.outlier_detection.ejections_active"),
               timeout=5)
    time.sleep(0.6)  # route phase sees the ejection
    before = len(fo.requests(sim))
    for i in range(20):
        _one(fo.client, "multi", stream=i % 2 == 1)
    if fo.envoy_stat(f"cluster.{cluster}.outlier_detection.ejections_active"):
        # Ejected from start to end of the window: not one request may have reached it.
        assert len(fo.requests(sim)) == before


@pytest.mark.parametrize("status", [500, 503])
def test_primary_5xx_fails_over_and_is_ejected(fo: FailoverGateway, status: int) -> None:
    fo.options("primary", error_rate=1.0, error_status=status)
    results = _run_200(fo, "multi", _served_by_backup)
    assert any(h["x-switchyard-attempts"] == "2" for h in results)
    assert {h["x-switchyard-backend"] for h in results} == {"claude/claude-backup"}
    _assert_schemas(fo)
    primary_hits = len(fo.requests("primary"))
    assert 3 <= primary_hits < 60  # ejected after 3 consecutive failures, not hammered
    _assert_ejected_and_quiet(fo, "primary.gpt-primary", "primary")
    # After the ejection ends and the backend recovers, traffic comes back.
    fo.options("primary", error_rate=0.0)
    fo.wait_uneject()
    _, headers = _one(fo.client, "multi", stream=False)
    assert headers["x-switchyard-backend"] == "primary/gpt-primary"


def test_client_errors_are_not_retried(fo: FailoverGateway) -> None:
    fo.options("primary", error_rate=1.0, error_status=400)
    with pytest.raises(openai.BadRequestError):
        fo.client.chat.completions.create(model="multi", messages=MESSAGES)
    assert len(fo.requests("primary")) == 1
    assert fo.requests("claude") == [] and fo.requests("spare") == []


def test_failover_metrics(fo: FailoverGateway) -> None:
    fo.options("primary", error_rate=1.0, error_status=500)
    for _ in range(10):
        _one(fo.client, "multi", stream=False)
    time.sleep(0.7)
    text = httpx.get(f"http://127.0.0.1:{fo.ports['metrics']}/metrics").text
    assert 'switchyard_attempts_total{backend="primary/gpt-primary",status="500"}' in text
    assert 'switchyard_failovers_total{backend="claude/claude-backup",model="multi"}' in text
    assert 'switchyard_backend_ejections_total{cluster="primary.gpt-primary"}' in text


def test_connection_refused_fails_over_and_is_ejected(fo: FailoverGateway) -> None:
    results = _run_200(fo, "deadfirst", _served_by_backup)
    assert {h["x-switchyard-backend"] for h in results} == {"claude/claude-backup"}
    # Envoy's attempt count includes refused connections (no translate phase ran for them).
    assert any(h["x-switchyard-attempts"] == "2" for h in results)
    _assert_schemas(fo)
    assert fo.envoy_stat("cluster.dead.gpt-dead.outlier_detection.ejections_enforced_total") >= 1
    active = "cluster.dead.gpt-dead.outlier_detection.ejections_active"
    wait_until(lambda: fo.envoy_stat(active), timeout=5)
    time.sleep(0.6)
    attempts_before = fo.envoy_stat("cluster.dead.gpt-dead.upstream_cx_connect_fail")
    attempts = []
    for i in range(20):
        _, headers = _one(fo.client, "deadfirst", stream=i % 2 == 1)
        attempts.append(headers["x-switchyard-attempts"])
    if fo.envoy_stat(active):  # ejected throughout: the ejected backend was skipped
        assert attempts == ["1"] * 20
        assert fo.envoy_stat("cluster.dead.gpt-dead.upstream_cx_connect_fail") == attempts_before


def test_429_moves_on_and_honours_retry_after(fo: FailoverGateway) -> None:
    fo.options("primary", rate_limit=True, retry_after_s=4)
    results = _run_200(fo, "multi", _served_by_backup)
    assert {h["x-switchyard-backend"] for h in results} == {"claude/claude-backup"}
    _assert_schemas(fo)
    # retry-after puts the backend in cool-down: after the first few 429s, requests go to the
    # next backend first instead of hammering the rate-limited one.
    assert len(fo.requests("primary")) <= 10
    assert sum(h["x-switchyard-attempts"] == "1" for h in results) >= 190


def test_no_first_byte_moves_on(fo: FailoverGateway) -> None:
    fo.options("primary", hang=True)
    results = _run_200(fo, "multi", _served_by_backup)
    assert {h["x-switchyard-backend"] for h in results} == {"claude/claude-backup"}
    _assert_schemas(fo)
    assert len(fo.requests("primary")) < 60
    _assert_ejected_and_quiet(fo, "primary.gpt-primary", "primary")


def test_stream_dropped_after_first_byte_gives_error_event(fo: FailoverGateway) -> None:
    """A provider that ends a stream early (no [DONE]): the client gets an error event, which
    the openai SDK raises, and the stream ends properly (no hang, no silent clean end)."""
    fo.options("primary", truncate_after_chunks=3)
    chunks = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in fo.client.chat.completions.create(model="multi", messages=MESSAGES,
                                                       stream=True, max_tokens=20):
            chunks.append(chunk)
    assert "ended the stream before it was complete" in str(exc.value)
    assert len(chunks) >= 1  # the first bytes did arrive: Envoy could no longer retry
    raw = httpx.post(fo.gateway.url + "/v1/chat/completions", timeout=10, json={
        "model": "multi", "messages": MESSAGES, "stream": True, "max_tokens": 20}).text
    assert raw.rstrip().endswith("data: [DONE]")
    assert '"code":"upstream_stream_truncated"' in raw


def test_reset_after_first_byte_is_an_error_not_a_clean_end(fo: FailoverGateway) -> None:
    """A TCP reset after the first byte: Envoy resets the client's stream (it cannot append
    bytes after an upstream reset); the client sees an error, never a silent clean end or a
    hang, and the usage log marks the request."""
    fo.options("primary", reset_after_chunks=3, tokens_per_s=50)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in fo.client.chat.completions.create(model="multi", messages=MESSAGES,
                                                   stream=True, max_tokens=20):
            pass
    log = Path(fo.gateway.log_dir or ".") / "ext_proc.log"
    wait_until(lambda: '"outcome":"interrupted_mid_stream"' in log.read_text(), timeout=3)


def test_context_window_overflow_skips_to_larger_model(fo: FailoverGateway) -> None:
    _, small = _one(fo.client, "ctx", stream=False)
    assert small["x-switchyard-backend"] == "primary/gpt-small"
    long = [{"role": "user", "content": "word " * 400}]
    raw = fo.client.chat.completions.with_raw_response.create(model="ctx", messages=long,
                                                              max_tokens=10)
    assert raw.headers["x-switchyard-backend"] == "claude/claude-large"
    assert raw.headers["x-switchyard-attempts"] == "1"
    huge = [{"role": "user", "content": "word " * 100_000}]
    with pytest.raises(openai.BadRequestError) as exc:
        fo.client.chat.completions.create(model="ctx", messages=huge)
    assert exc.value.code == "context_length_exceeded"


def test_hedged_model_answers_from_fast_backend(fo: FailoverGateway) -> None:
    fo.options("primary", slow_first_token_ms=5000)
    for stream in (False, True):
        t0 = time.monotonic()
        text, headers = _one(fo.client, "hedged", stream=stream)
        elapsed = time.monotonic() - t0
        assert headers["x-switchyard-backend"] == "spare/gpt-fast"
        assert text.startswith("Simulated reply from spare")
        assert elapsed < 4.5, elapsed  # the slow backend alone takes 5 s
    assert len(fo.requests("primary")) >= 2  # the slow first attempt was really made


# Envoy's ext_proc filter counts header mutations it refused (a mutation_rules violation).
REJECTED_MUTATIONS = "http.switchyard.ext_proc.rejected_header_mutations"


def test_stream_without_first_byte_moves_on_within_first_byte_timeout(
        fo: FailoverGateway) -> None:
    """`firstbyte` keeps the default 120 s per-try timeout; only the per-request header the
    route phase sets (x-envoy-upstream-rq-per-try-timeout-ms = first_byte_timeout_s) can move
    a streamed request off a backend that never answers within the client's 10 s."""
    fo.options("primary", hang=True)
    client = fo.client.with_options(timeout=10)
    rejected = fo.envoy_stat(REJECTED_MUTATIONS)
    for _ in range(3):
        t0 = time.monotonic()
        text, headers = _one(client, "firstbyte", stream=True)
        assert headers["x-switchyard-backend"] == "spare/gpt-spare"
        assert headers["x-switchyard-attempts"] == "2"
        assert text.startswith("Simulated reply from spare")
        assert time.monotonic() - t0 >= 0.5  # the first try really waited its timeout
    assert len(fo.requests("primary")) >= 1
    assert fo.envoy_stat(REJECTED_MUTATIONS) == rejected == 0


def test_hedge_after_alone_hedges(fo: FailoverGateway) -> None:
    """`hedgeonly` sets hedge_after_s but no per_try_timeout_s (route default 120 s): the
    hedge delay reaches Envoy only as the route phase's per-request per-try timeout."""
    fo.options("primary", slow_first_token_ms=5000)
    for stream in (False, True):
        t0 = time.monotonic()
        text, headers = _one(fo.client, "hedgeonly", stream=stream)
        elapsed = time.monotonic() - t0
        assert headers["x-switchyard-backend"] == "spare/gpt-fast"
        assert text.startswith("Simulated reply from spare")
        assert elapsed < 4.5, elapsed  # the slow backend alone takes 5 s
    assert len(fo.requests("primary")) >= 2
    assert fo.envoy_stat(REJECTED_MUTATIONS) == 0
