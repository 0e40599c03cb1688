"""GoogleTokenSource and the Vertex adapter's credentials, against the simulator's /token.

A generated service-account JSON (fresh RSA key) points its `token_uri` at the Vertex
simulator, so google-auth runs its real JWT-bearer flow over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import pytest_asyncio
from google.auth import exceptions as gexc
from structlog.testing import capture_logs

from ext_proc import auth
from ext_proc.auth.google import CLOUD_PLATFORM, GoogleTokenSource, token_source_for
from ext_proc.providers import PROVIDERS
from ext_proc.providers.gemini import VertexProvider
from ext_proc.table import BackendInfo, ProviderInfo
from ext_proc.translate.canonical import TranslationError, Usage, usage_from
from sim.common import SimOptions
from sim.gemini import fake_service_account
from sim.server import SimRunner, start_sim

FAST = SimOptions(ttft_ms=0, tokens_per_s=0)


@pytest_asyncio.fixture(scope="module")
async def vertex_sim() -> AsyncIterator[SimRunner]:
    runner = await start_sim("vertex", "vtx-sim", "127.0.0.1", 0, FAST, require_key="nope")
    yield runner
    await runner.cleanup()


@pytest.fixture
def sa_file(vertex_sim: SimRunner, tmp_path: Path) -> Path:
    vertex_sim.state.clear_records()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(fake_service_account(vertex_sim.base_url + "/token")))
    return path


@pytest.fixture
def sources() -> Iterator[list[GoogleTokenSource]]:
    """Sources made by a test; stopped afterwards so no thread outlives it."""
    made: list[GoogleTokenSource] = []
    yield made
    for src in made:
        src.stop()
    auth.reset_token_sources()


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll without blocking the loop (the simulator answers on this same loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def _claims(jwt: str) -> dict[str, Any]:
    body = jwt.split(".")[1]
    out: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return out


async def test_token_fetched_in_background(
    vertex_sim: SimRunner, sa_file: Path, sources: list[GoogleTokenSource]
) -> None:
    src = GoogleTokenSource(str(sa_file))
    sources.append(src)
    assert src.get() is None  # nothing before start(), and get() does not fetch
    src.start()
    src.start()  # idempotent
    token = await wait_for(src.get)
    assert token.startswith("sim-token-")
    assert src.refreshes == 1 and src.failures == 0
    (rec,) = [r for r in vertex_sim.state.requests() if r["path"] == "/token"]
    assert rec["method"] == "POST"
    assert rec["headers"]["content-type"] == "application/x-www-form-urlencoded"
    form = dict(parse_qsl(rec["body"]))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = _claims(form["assertion"])
    sa = json.loads(sa_file.read_text())
    assert claims["iss"] == sa["client_email"]
    assert claims["aud"].endswith("/token")  # google-auth signs for Google's token endpoint
    assert claims["scope"] == CLOUD_PLATFORM


async def test_refreshed_before_expiry(sa_file: Path, sources: list[GoogleTokenSource]) -> None:
    # 3600 s tokens with a 3599.7 s margin: renewed every 0.3 s, long before they expire.
    src = GoogleTokenSource(str(sa_file), refresh_margin_s=3599.7, min_backoff_s=0.05)
    sources.append(src)
    src.start()
    first = await wait_for(src.get)
    seen = {first}
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        token = src.get()
        assert token is not None  # the old token keeps serving while a new one is minted
        seen.add(token)
        await asyncio.sleep(0.02)
    assert len(seen) >= 3
    assert src.failures == 0


class FakeCredentials:
    """google-auth credentials stand-in: blocks, fails or succeeds as a test scripts it."""

    def __init__(self, lifetime_s: float = 3600.0, fail_times: int = 0) -> None:
        self.token: str | None = None
        self.expiry: datetime | None = None
        self.lifetime_s = lifetime_s
        self.fail_times = fail_times
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.in_refresh = threading.Event()

    def refresh(self, request: Any) -> None:
        self.calls += 1
        self.in_refresh.set()
        self.gate.wait(10)
        self.in_refresh.clear()
        if self.calls <= self.fail_times:
            raise gexc.RefreshError(
                "invalid_grant: Invalid JWT Signature.",
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
            )
        self.token = f"fake-token-{self.calls}"
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=self.lifetime_s)


async def test_get_never_blocks(sources: list[GoogleTokenSource]) -> None:
    creds = FakeCredentials(lifetime_s=2.0)
    creds.gate.clear()  # the token endpoint "hangs"
    src = GoogleTokenSource(None, credentials=creds, refresh_margin_s=1.0, min_backoff_s=0.05)
    sources.append(src)
    src.start()
    await wait_for(creds.in_refresh.is_set)
    started = time.perf_counter()
    for _ in range(1000):
        assert src.get() is None
    # 1000 reads while a refresh is stuck (blocking reads would wait for the stuck refresh;
    # the bound only separates "returned at once" from that, whatever the machine's load).
    assert time.perf_counter() - started < 1.0
    creds.gate.set()
    assert await wait_for(src.get) == "fake-token-1"
    # The next refresh (at 1 s of a 2 s lifetime) hangs too: the cached token is still served.
    creds.gate.clear()
    await wait_for(lambda: creds.calls == 2 and creds.in_refresh.is_set())
    started = time.perf_counter()
    assert src.get() == "fake-token-1"
    assert time.perf_counter() - started < 1.0
    creds.gate.set()
    assert await wait_for(lambda: src.get() == "fake-token-2")


async def test_errors_retried_with_backoff_and_logged_without_secrets(
    sources: list[GoogleTokenSource],
) -> None:
    creds = FakeCredentials(fail_times=2)
    src = GoogleTokenSource(None, credentials=creds, min_backoff_s=0.05, max_backoff_s=0.2)
    sources.append(src)
    with capture_logs() as logs:
        src.start()
        assert await wait_for(src.get) == "fake-token-3"
    assert src.failures == 2 and src.refreshes == 1
    failed = [e for e in logs if e["event"] == "google token refresh failed"]
    assert len(failed) == 2
    assert failed[0]["reason"] == "invalid_grant: Invalid JWT Signature."
    assert failed[0]["retry_in_s"] < failed[1]["retry_in_s"]  # exponential backoff
    assert all("fake-token" not in str(e) for e in logs)


async def test_unreachable_token_uri_keeps_retrying_without_leaking_the_key(
    tmp_path: Path, sources: list[GoogleTokenSource]
) -> None:
    sa = fake_service_account("http://127.0.0.1:9/token")  # discard port: refused
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(sa))
    src = GoogleTokenSource(str(path), min_backoff_s=0.05, max_backoff_s=0.1)
    sources.append(src)
    with capture_logs() as logs:
        src.start()
        await wait_for(lambda: src.failures >= 2)
    assert src.get() is None
    text = repr(logs)
    assert "PRIVATE KEY" not in text and sa["private_key"][40:80] not in text
    assert logs[0]["credentials"] == str(path)


async def test_application_default_credentials(
    sa_file: Path, sources: list[GoogleTokenSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file))
    src = GoogleTokenSource(None)
    sources.append(src)
    src.start()
    assert (await wait_for(src.get)).startswith("sim-token-")


def test_token_source_for_is_one_per_file(sources: list[GoogleTokenSource]) -> None:
    a = token_source_for("/x/a.json")
    assert token_source_for("/x/a.json") is a
    assert token_source_for("/x/b.json") is not a
    assert token_source_for(None) is token_source_for("")
    assert "/x/a.json" in repr(a)


# ------------------------------------------------------------------ the Vertex adapter


def vertex_backend(cred_file: str, prefix: str = "") -> BackendInfo:
    provider = ProviderInfo(
        name="vertex-main",
        kind="vertex",
        authority=b"us-central1-aiplatform.googleapis.com",
        path_prefix=prefix,
        api_key="",
        headers=(),
        options={"project": "proj-1", "location": "us-central1", "credentials_file": cred_file},
    )
    return BackendInfo(
        cluster="c-vertex",
        provider=provider,
        model="gemini-2.5-flash",
        price_input=0.0,
        price_output=0.0,
        context_window=1_000_000,
        label="vertex-main/gemini-2.5-flash",
    )


REQ = {"model": "flash", "messages": [{"role": "user", "content": "hello vertex"}]}


async def test_vertex_adapter_before_token_is_503(
    sa_file: Path, sources: list[GoogleTokenSource]
) -> None:
    adapter = PROVIDERS["vertex"]
    assert isinstance(adapter, VertexProvider)
    backend = vertex_backend(str(sa_file))
    with pytest.raises(TranslationError) as err:
        adapter.request(REQ, backend)
    assert err.value.status == 503
    assert err.value.code == "credentials_not_ready"
    assert "vertex-main" in err.value.message
    assert str(sa_file) not in err.value.message
    # request() also started the source, so the token arrives without warm().
    assert await wait_for(token_source_for(str(sa_file)).get)


async def test_vertex_adapter_end_to_end(
    vertex_sim: SimRunner, sa_file: Path, sources: list[GoogleTokenSource]
) -> None:
    adapter = VertexProvider()
    backend = vertex_backend(str(sa_file))
    adapter.warm(backend.provider)
    token = await wait_for(token_source_for(str(sa_file)).get)

    path, body, headers = adapter.request(REQ, backend)
    assert path == (
        b"/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash"
        b":generateContent"
    )
    assert ("authorization", b"Bearer " + token.encode()) in headers
    async with httpx.AsyncClient(base_url=vertex_sim.base_url) as http:
        resp = await http.post(
            path.decode(), content=body, headers=dict((k, v.decode()) for k, v in headers)
        )
        assert resp.status_code == 200, resp.text
        handler = adapter.response(resp.status_code, resp.headers["content-type"], REQ, backend)
        assert handler.feed(resp.content) == b""
        out = orjson.loads(handler.finish() or b"")
        assert out["choices"][0]["message"]["content"].startswith(
            "Simulated reply from vtx-sim to: hello vertex"
        )
        assert handler.usage == usage_from(out["usage"])

        # streamed
        sreq = {**REQ, "stream": True, "stream_options": {"include_usage": True}}
        path, body, headers = adapter.request(sreq, backend)
        assert path.endswith(b":streamGenerateContent?alt=sse")
        resp = await http.post(
            path.decode(), content=body, headers=dict((k, v.decode()) for k, v in headers)
        )
        handler = adapter.response(resp.status_code, resp.headers["content-type"], sreq, backend)
        assert handler.streaming
        out_bytes = (handler.feed(resp.content) or b"") + (handler.finish() or b"")
        assert out_bytes.endswith(b"data: [DONE]\n\n")
        assert handler.usage is not None and handler.usage[1] > 0

        # a token the sim never issued is refused, in Google's format, and maps to OpenAI's
        resp = await http.post(
            path.decode(), content=body, headers={"authorization": "Bearer forged"}
        )
        assert resp.status_code == 401
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
        handler = adapter.response(401, resp.headers["content-type"], sreq, backend)
        handler.feed(resp.content)
        err = orjson.loads(handler.finish() or b"")["error"]
        assert err["type"] == "authentication_error"


async def test_vertex_embeddings_through_adapter(
    vertex_sim: SimRunner, sa_file: Path, sources: list[GoogleTokenSource]
) -> None:
    adapter = VertexProvider()
    backend = vertex_backend(str(sa_file))
    adapter.warm(backend.provider)
    await wait_for(token_source_for(str(sa_file)).get)
    req = {"model": "emb", "input": ["one two", "three"], "dimensions": 16}
    path, body, headers = adapter.embeddings_request(req, backend)
    assert path.endswith(b"/publishers/google/models/gemini-2.5-flash:predict")
    async with httpx.AsyncClient(base_url=vertex_sim.base_url) as http:
        resp = await http.post(
            path.decode(), content=body, headers=dict((k, v.decode()) for k, v in headers)
        )
    assert resp.status_code == 200, resp.text
    handler = adapter.embeddings_response(200, "application/json", req, backend)
    handler.feed(resp.content)
    out = orjson.loads(handler.finish() or b"")
    assert [len(d["embedding"]) for d in out["data"]] == [16, 16]
    assert handler.usage == Usage(3, 0)
