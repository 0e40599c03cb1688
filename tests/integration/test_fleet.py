"""A fleet on loopback: one control plane, two nodes (`switchyard node`: Envoy + ext_proc each),
one simulator. Both nodes serve, both pick up a hot reload, and their ACKs show in the fleet
API; the status page, loaded in headless Chromium, shows both nodes and a model's live request
count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchyard.fleet import Node
from switchyard.launcher import free_ports
from switchyard.processes import die_with_parent
from tests.integration.conftest import render_config, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[2]


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fleet")
    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic", "status",
             "l1", "a1", "m1", "l2", "a2", "m2"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = tmp / "gateway.yaml"
    text = render_config(ports).replace(
        f"control_plane: {{address: 127.0.0.1, port: {ports['xds']}}}",
        f"control_plane: {{address: 127.0.0.1, port: {ports['xds']}, "
        f"status_port: {ports['status']}}}")
    config.write_text(text)
    py = [sys.executable, "-m", "switchyard.cli"]
    procs = [
        _spawn([*py, "sim", "--config", str(config)], tmp / "sim.log"),
        _spawn([*py, "control-plane", "--config", str(config), "--port", str(ports["xds"]),
                "--status-port", str(ports["status"])], tmp / "control_plane.log"),
    ]
    nodes = [Node(f"127.0.0.1:{ports['xds']}", listen=f"127.0.0.1:{ports[f'l{i}']}",
                  admin=f"127.0.0.1:{ports[f'a{i}']}", metrics=f"127.0.0.1:{ports[f'm{i}']}",
                  node_id=f"node-{i}", concurrency=1, log_dir=tmp / f"node-{i}")
             for i in (1, 2)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(timeout=60)
        yield {"ports": ports, "config": config, "nodes": nodes, "tmp": tmp,
               "api": f"http://127.0.0.1:{ports['status']}"}
    finally:
        for n in nodes:
            n.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def _chat(port: int, model: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_two_nodes_serve_reload_and_ack(fleet: dict[str, Any]) -> None:
    ports, api = fleet["ports"], fleet["api"]
    for port in (ports["l1"], ports["l2"]):
        r = _chat(port, "gpt-sim")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    before = httpx.get(api + "/api/fleet").json()
    assert sorted(n["id"] for n in before["nodes"]) == ["node-1", "node-2"]
    assert {n["listen"] for n in before["nodes"]} == {f"127.0.0.1:{ports['l1']}",
                                                      f"127.0.0.1:{ports['l2']}"}
    # Hot reload: a new model reaches both nodes.
    config: Path = fleet["config"]
    config.write_text(config.read_text() + """
  gpt-new:
    backends:
      - {provider: sim-openai, model: gpt-4o, price: {input: 2.5, output: 10}}
""")
    for port in (ports["l1"], ports["l2"]):
        wait_until(lambda p=port: _chat(p, "gpt-new").status_code == 200, timeout=15,
                   interval=0.2)

    def synced() -> dict[str, Any] | None:
        f = httpx.get(api + "/api/fleet").json()
        ok = f["config"]["version"] != before["config"]["version"] and all(
            n["in_sync"] and n["config_version"] == f["config"]["version"] for n in f["nodes"])
        return f if ok else None

    after = wait_until(synced, timeout=15, interval=0.2)
    for node in after["nodes"]:
        for short, state in node["envoy"]["types"].items():
            assert state["acked"] == after["versions"][short] and not state["nacked"], short
        assert node["ext_proc"]["routing_version"] == after["versions"]["routing_table"]
    assert "gpt-new" in [m["name"] for m in after["models"]]


def test_status_page_in_headless_chromium(fleet: dict[str, Any]) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    ports, api = fleet["ports"], fleet["api"]
    for _ in range(3):
        assert _chat(ports["l1"], "claude-sim").status_code == 200
    assert _chat(ports["l2"], "claude-sim").status_code == 200

    def counted() -> int:
        f = httpx.get(api + "/api/fleet").json()
        return next(m["requests"] for m in f["models"] if m["name"] == "claude-sim") >= 4

    wait_until(counted, timeout=10, interval=0.2)
    want = next(m["requests"] for m in httpx.get(api + "/api/fleet").json()["models"]
                if m["name"] == "claude-sim")
    with tempfile.TemporaryDirectory() as profile:
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=3000"]
        dom = subprocess.run([*flags, "--dump-dom", api + "/"], capture_output=True, text=True,
                             timeout=50).stdout
        shot = fleet["tmp"] / "status.png"
        subprocess.run([*flags, "--window-size=1280,900", f"--screenshot={shot}", api + "/"],
                       capture_output=True, timeout=50)
    assert 'data-node="node-1"' in dom and 'data-node="node-2"' in dom
    row = dom.split('data-model="claude-sim"', 1)[1]
    count = row.split('class="num model-requests">', 1)[1].split("<", 1)[0]
    assert int(count) >= want
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "status-page.png")
