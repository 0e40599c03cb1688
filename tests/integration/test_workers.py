"""Two ext_proc workers behind one real Envoy, sharing state through a real redis-server:
both serve route phases, the fleet status page counts both, and a failover whose retry Envoy
sends to the worker that did not route the request is still built (by the owner) and
answered."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import RedisServer
from tests.integration.conftest import CLIENT_KEY, free_ports, launch

pytestmark = pytest.mark.timeout(120)
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Please fail over across workers"}]


def _pair() -> int:
    """A free port whose successor is free too (worker 1 listens on port + 1)."""
    for _ in range(100):
        port = free_ports(1)[0]
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _config(p: dict[str, int], redis_url: str) -> str:
    # Envoy never ejects the failing backend here, so every request keeps failing over (the
    # route phase still demotes it for 2 s after 3 failures in a row).
    health = "health: {consecutive_failures: 1000}"
    return f"""
listen: {{address: 127.0.0.1, port: {p['listen']}}}
admin: {{address: 127.0.0.1, port: {p['admin']}}}
control_plane: {{address: 127.0.0.1, port: {p['xds']}, status_port: {p['status']}}}
ext_proc: {{address: 127.0.0.1, port: {p['ext_proc']}, metrics_port: {p['metrics']}, workers: 2}}
shared_state: {{redis: {{url: "{redis_url}"}}}}
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
models:
  multi:
    backends:
      - {{provider: primary, model: gpt-primary}}
      - {{provider: claude, model: claude-backup}}
"""


def _counter(metrics: str, name: str, label: str = "") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(name + "{") and label in line)


def test_two_workers_serve_and_retries_cross_workers(tmp_path: Path,
                                                     redis_server: RedisServer) -> None:
    ports = {"ext_proc": _pair(), "metrics": _pair()}
    names = ["listen", "admin", "xds", "primary", "claude", "status"]
    taken = {*ports.values(), *(p + 1 for p in ports.values())}
    ports.update(zip(names, (p for p in free_ports(len(names) + 4) if p not in taken),
                     strict=False))
    path = tmp_path / "workers.yaml"
    path.write_text(_config(ports, redis_server.url))
    gw = launch(path)
    try:
        assert set(gw.procs) >= {"ext_proc-0", "ext_proc-1"}
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                               timeout=20)
        metrics = [f"http://127.0.0.1:{ports['metrics'] + i}/metrics" for i in (0, 1)]
        for _ in range(20):
            raw = client.chat.completions.with_raw_response.create(
                model="multi", messages=MESSAGES, max_tokens=8)
            assert raw.headers["x-switchyard-backend"] == "primary/gpt-primary"
        served = [_counter(httpx.get(m).text, "switchyard_requests_total") for m in metrics]
        assert all(n > 0 for n in served) and sum(served) == 20, served
        # The fleet status page polls both workers of the node and sums them.
        fleet = httpx.get(f"http://127.0.0.1:{ports['status']}/api/fleet").json()
        (node,) = fleet["nodes"]
        assert node["ext_proc_workers"] == 2 and node["requests"] == 20, node
        assert sum(m["requests"] for m in fleet["models"]) == 20

        sim = f"http://127.0.0.1:{ports['primary']}"
        httpx.put(sim + "/_sim/options", json={"error_rate": 1.0, "error_status": 500}
                  ).raise_for_status()
        built = 0.0
        for i in range(80):  # until retries have crossed workers a few times
            raw = client.chat.completions.with_raw_response.create(
                model="multi", messages=MESSAGES, max_tokens=8)
            text = raw.parse().choices[0].message.content or ""
            assert text.startswith("Simulated reply from"), text
            assert raw.headers["x-switchyard-backend"] == "claude/claude-backup"
            if i % 5 == 4:
                built = sum(_counter(httpx.get(m).text, "switchyard_worker_remote_attempts_total",
                                     'result="built"') for m in metrics)
                if built >= 3:
                    break
        assert built >= 3
        assert not any(_counter(httpx.get(m).text, "switchyard_worker_remote_attempts_total",
                                'result="unavailable"') for m in metrics)
        claude = httpx.get(f"http://127.0.0.1:{ports['claude']}/_sim/requests").json()
        assert claude and all(r["path"] == "/v1/messages" and r["body"]["model"] ==
                              "claude-backup" and r["headers"]["x-api-key"] == "sk-claude"
                              for r in claude)
    finally:
        gw.stop()
