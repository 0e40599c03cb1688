"""The `switchyard` command itself: `up` serves and leaves no orphans; `validate` reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_ports, render_config, wait_until

SWITCHYARD = [sys.executable, "-m", "switchyard.cli"]


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc), so the test sees grandchildren too."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and ") Z " not in stat.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_then_stops_every_child(tmp_path: Path, sig: signal.Signals) -> None:
    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = tmp_path / "gateway.yaml"
    config.write_text(render_config(ports))
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen([*SWITCHYARD, "up", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{ports['listen']}"
        # `up` promises a working gateway once it prints its banner (not before).
        banner = f"Switchyard is up: {url}/v1"
        wait_until(lambda: banner in (tmp_path / "up.log").read_text(), timeout=60,
                   interval=0.2)
        r = httpx.post(url + "/v1/chat/completions", timeout=10, json={
            "model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        children = _children(proc.pid)
        assert len(children) >= 4  # sim, control plane, ext_proc, envoy
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _alive(p)], "orphaned child processes"
        log.flush()
        assert "Switchyard stopped" in (tmp_path / "up.log").read_text().splitlines()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_validate_reports_routes_and_errors(tmp_path: Path) -> None:
    ok = subprocess.run([*SWITCHYARD, "validate", "config/gateway.yaml"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "gpt-sim -> sim-openai.gpt-4o-mini" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  p: {kind: openai, base_url: 'http://x'}\nmodels:\n"
                   "  m:\n    backends:\n      - {provider: q, model: x}\n")
    res = subprocess.run([*SWITCHYARD, "validate", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    assert f"{bad}:6: models.m.backends[0].provider: unknown provider 'q'" in res.stderr


def test_up_names_a_taken_port_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    import socket
    import tempfile

    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = tmp_path / "gateway.yaml"
    config.write_text(render_config(ports))
    before = set(Path(tempfile.gettempdir()).glob("switchyard-*"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["listen"]))
        busy.listen()
        t0 = time.monotonic()
        out = subprocess.run([*SWITCHYARD, "up", "--config", str(config)], capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 1
    assert time.monotonic() - t0 < 15  # at once, not after the ready timeout
    assert f"port {ports['listen']} (listen.port) is in use" in out.stderr
    assert set(Path(tempfile.gettempdir()).glob("switchyard-*")) <= before  # no work dir left
