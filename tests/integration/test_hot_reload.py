"""Hot reload: config edits take effect without restart; bad edits keep the last good config."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import (
    CLIENT_KEY,
    RunningGateway,
    render_config,
    start_gateway,
    wait_until,
)

BASE_MODELS = """
  gpt-sim:
    backends:
      - {provider: sim-openai, model: gpt-4o-mini}
  claude-sim:
    backends:
      - {provider: sim-anthropic, model: claude-3-5-haiku-latest}
"""
NEW_MODEL = """
  gpt-new:
    backends:
      - {provider: sim-openai, model: gpt-4.1-nano}
"""
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def reload_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = start_gateway(tmp_path_factory.mktemp("reload"), models=BASE_MODELS)
    yield running
    running.gateway.stop()


@pytest.fixture
def client(reload_gw: RunningGateway) -> Iterator[openai.OpenAI]:
    yield openai.OpenAI(base_url=reload_gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    _write(reload_gw, BASE_MODELS)  # leave the base config behind for the next test


def _write(gw: RunningGateway, models: str, **render: object) -> None:
    text = render_config(gw.ports, models=models, **render)  # type: ignore[arg-type]
    tmp = gw.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(gw.config_path)  # atomic, like most editors


def _routable(client: openai.OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
    except openai.NotFoundError:
        return False
    return True


def test_added_model_routable_within_2s(reload_gw: RunningGateway,
                                         client: openai.OpenAI) -> None:
    assert not _routable(client, "gpt-new")
    created = {m.id: m.created for m in client.models.list()}
    pid = reload_gw.gateway.procs["envoy"].pid
    _write(reload_gw, BASE_MODELS + NEW_MODEL)
    wait_until(lambda: _routable(client, "gpt-new"), timeout=2.0)
    after = {m.id: m.created for m in client.models.list()}
    assert "gpt-new" in after
    # A reload keeps the models it did not add at their first load time.
    assert {k: v for k, v in after.items() if k != "gpt-new"} == created
    assert after["gpt-new"] >= max(created.values()) > 0
    assert client.models.retrieve("gpt-new").created == after["gpt-new"]
    assert reload_gw.sim_requests("openai")[-1]["body"]["model"] == "gpt-4.1-nano"
    assert reload_gw.gateway.procs["envoy"].pid == pid  # no restart
    assert reload_gw.gateway.procs["envoy"].poll() is None


def test_removed_model_answers_404(reload_gw: RunningGateway, client: openai.OpenAI) -> None:
    _write(reload_gw, BASE_MODELS + NEW_MODEL)
    wait_until(lambda: _routable(client, "gpt-new"), timeout=2.0)
    _write(reload_gw, BASE_MODELS)
    wait_until(lambda: not _routable(client, "gpt-new"), timeout=2.0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-new", messages=MESSAGES)
    assert "gpt-new" not in {m.id for m in client.models.list()}


def test_invalid_edit_is_logged_and_last_good_keeps_serving(
        reload_gw: RunningGateway, client: openai.OpenAI) -> None:
    bad = BASE_MODELS + """
  broken:
    backends:
      - {provider: no-such-provider, model: x}
"""
    _write(reload_gw, bad)
    log = Path(reload_gw.log_dir / "control_plane.log")
    line = wait_until(lambda: next((ln for ln in log.read_text().splitlines()
                                    if "invalid config rejected" in ln
                                    and "no-such-provider" in ln), None), timeout=3.0)
    # file:line and the field are named
    lineno = next(i + 1 for i, text in enumerate(reload_gw.config_path.read_text().splitlines())
                  if "no-such-provider" in text)
    assert f"{reload_gw.config_path}:{lineno}" in line
    assert "models.broken.backends[0].provider" in line
    assert _routable(client, "gpt-sim") and _routable(client, "claude-sim")
    assert not _routable(client, "broken")

    _write(reload_gw, BASE_MODELS + "\n  bad: [unclosed\n")
    wait_until(lambda: log.read_text().count("invalid config rejected") >= 2, timeout=3.0)
    assert _routable(client, "gpt-sim")


@pytest.mark.parametrize("model", ["claude-sim", "gpt-sim"])
def test_stream_in_flight_survives_reload(reload_gw: RunningGateway, client: openai.OpenAI,
                                          model: str) -> None:
    # Slow tokens so the stream is still running while two reloads happen, the second of
    # which removes the streaming model (and its Envoy cluster) entirely.
    reload_gw.sim_options("openai", tokens_per_s=25)
    reload_gw.sim_options("anthropic", tokens_per_s=25)
    try:
        stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                max_tokens=40)
        chunks = []
        started = threading.Event()

        def consume() -> None:
            for chunk in stream:
                chunks.append(chunk)
                started.set()

        t = threading.Thread(target=consume)
        t.start()
        assert started.wait(5)
        _write(reload_gw, BASE_MODELS + NEW_MODEL)
        wait_until(lambda: _routable(client, "gpt-new"), timeout=2.0)
        other = "gpt-sim" if model == "claude-sim" else "claude-sim"
        _write(reload_gw, BASE_MODELS.replace(_model_block(model), "") + NEW_MODEL)
        wait_until(lambda: not _routable(client, model), timeout=2.0)
        assert _routable(client, other)
        t.join(10)
        assert not t.is_alive()
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 40
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        reload_gw.sim_options("openai", tokens_per_s=0)
        reload_gw.sim_options("anthropic", tokens_per_s=0)


def _model_block(model: str) -> str:
    lines = BASE_MODELS.splitlines(keepends=True)
    start = next(i for i, ln in enumerate(lines) if ln.strip() == f"{model}:")
    return "".join(lines[start:start + 3])


def test_envoy_nack_is_logged_and_last_accepted_config_keeps_serving(
        reload_gw: RunningGateway, client: openai.OpenAI) -> None:
    """A config our validator accepts but Envoy rejects (the new listener port is taken):
    Envoy NACKs, the control plane logs Envoy's error, and the old listener keeps serving."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        ports = dict(reload_gw.ports, listen=taken)
        text = render_config(ports, models=BASE_MODELS + NEW_MODEL)
        tmp = reload_gw.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(reload_gw.config_path)
        log = Path(reload_gw.log_dir / "control_plane.log")
        line = wait_until(lambda: next((ln for ln in log.read_text().splitlines()
                                        if "NACK" in ln and "Listener" in ln), None), timeout=5)
        assert "address already in use" in line.lower() or "bind" in line.lower()
        # The listener Envoy accepted last still answers on the old port.
        assert _routable(client, "gpt-sim")
    finally:
        blocker.close()
