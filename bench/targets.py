"""The three things the benchmark measures, each started on free loopback ports.

1. the OpenAI simulator alone (ttft 0, no token pacing): the floor;
2. plain Envoy in front of it (bench/envoy_plain.yaml): what the proxy itself costs;
3. the full gateway via switchyard.launcher.Gateway: Envoy + two ext_proc phases;
4. optional calibration, `minimal`: plain Envoy + a do-nothing one-phase Python ext_proc
   (bench/envoy_minimal.yaml, bench/ext_proc_minimal.py): the floor of "Python ext_proc".

The simulator's request recording is switched off (`record_limit: 0`) on every target, as
sim/common.py recommends for long benchmarks, so it costs the same everywhere.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template

import orjson

from bench.procs import ProcessGroup, free_ports, http_status, wait_until
from bench.wrk import MODEL
from switchyard.launcher import Gateway, envoy_binary

_HERE = Path(__file__).resolve().parent
ENVOY_TEMPLATE = _HERE / "envoy_plain.yaml"
ENVOY_MINIMAL_TEMPLATE = _HERE / "envoy_minimal.yaml"
CHAT_PATH = "/v1/chat/completions"
SIM_PROVIDER = "bench-sim"


@dataclass
class Target:
    """A running target: where to send load and which processes' CPU to account to it."""

    key: str
    title: str
    url: str
    pids: dict[str, int]
    check_alive: Callable[[], None]


#: Targets that are the full gateway (same-schema backend, translated backend).
GATEWAY_TARGETS = ("gateway", "translated")


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True,
                         timeout=30)
    text = (out.stdout + out.stderr).strip().splitlines()
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return text[-1].split("version:", 1)[-1].strip() if text else "unknown"


def _disable_recording(sim_base: str) -> None:
    status, body, _ = http_status(sim_base + "/_sim/options", "PUT",
                                  orjson.dumps({"record_limit": 0}))
    if status != 200:
        raise RuntimeError(f"could not switch off sim recording: {status} {body[:200]!r}")


def precheck(target: Target, body: bytes) -> None:
    """One request before any load: must be a 200 chat completion (fail fast, loudly)."""
    status, raw, headers = http_status(target.url, "POST", body, timeout=10)
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or not reply.get("choices"):
        raise RuntimeError(f"{target.title}: precheck got {status}: {raw[:300]!r}")
    if target.key in GATEWAY_TARGETS and "x-switchyard-backend" not in {
            k.lower() for k in headers}:
        raise RuntimeError(f"{target.title}: reply did not come through the gateway: {headers}")


def start_sim(group: ProcessGroup) -> Target:
    """The simulator on its own (python -m sim), ttft 0 and no token pacing."""
    (port,) = free_ports(1)
    proc = group.spawn("sim", [
        sys.executable, "-m", "sim", "--provider", f"{SIM_PROVIDER}:openai:{port}",
        "--ttft-ms", "0", "--tokens-per-s", "0"])
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(base + "/_sim/health")[0] == 200, "simulator", 30, group)
    _disable_recording(base)
    return Target("sim", "simulator direct", base + CHAT_PATH, {"sim": proc.pid},
                  group.check_alive)


def _start_envoy(group: ProcessGroup, name: str, template: Path, sim: Target,
                 concurrency: int, **extra: int) -> tuple[int, int]:
    """Render `template` on free ports and start Envoy; returns (listen port, pid)."""
    listen_port, admin_port = free_ports(2)
    sim_port = int(sim.url.split(":")[2].split("/")[0])
    config = group.log_dir / f"{name}.yaml"
    config.write_text(Template(template.read_text()).substitute(
        listen_port=listen_port, admin_port=admin_port, sim_port=sim_port, **extra))
    proc = group.spawn(name, [
        envoy_binary(), "-c", str(config), "--concurrency", str(concurrency),
        "--disable-hot-restart", "--log-level", "warn", "--drain-time-s", "1"])
    wait_until(lambda: http_status(f"http://127.0.0.1:{admin_port}/ready")[0] == 200,
               name, 30, group)
    return listen_port, proc.pid


def start_plain_envoy(group: ProcessGroup, sim: Target, concurrency: int) -> Target:
    """Static Envoy (no ext_proc) in front of the already running simulator `sim`."""
    port, pid = _start_envoy(group, "envoy_plain", ENVOY_TEMPLATE, sim, concurrency)
    return Target("envoy", "Envoy alone", f"http://127.0.0.1:{port}{CHAT_PATH}",
                  {"sim": sim.pids["sim"], "envoy": pid}, group.check_alive)


def start_minimal(group: ProcessGroup, sim: Target, concurrency: int) -> Target:
    """Static Envoy + the do-nothing one-phase ext_proc, in front of `sim` (calibration)."""
    (ext_port,) = free_ports(1)
    ext = group.spawn("ext_proc_minimal", [
        sys.executable, "-m", "bench.ext_proc_minimal", "--port", str(ext_port)])
    port, pid = _start_envoy(group, "envoy_minimal", ENVOY_MINIMAL_TEMPLATE, sim, concurrency,
                             ext_proc_port=ext_port)
    url = f"http://127.0.0.1:{port}{CHAT_PATH}"
    # Envoy is ready before the Python server may be: wait for a request that gets through.
    wait_until(lambda: http_status(url, "POST", b"{}")[0] not in (0, 500, 503),
               "minimal ext_proc", 30, group)
    return Target("minimal", "Envoy + minimal ext_proc", url,
                  {"sim": sim.pids["sim"], "envoy": pid, "ext_proc": ext.pid},
                  group.check_alive)


def gateway_config(concurrency: int, kind: str = "openai", *, alias: str = MODEL,
                   model: str = MODEL, api_key: str = "sk-bench-not-a-secret",
                   ttft_ms: float = 0, tokens_per_s: float = 0,
                   price: tuple[float, float] = (0.15, 0.60), by: str = "bench/run.py") -> str:
    """A gateway config on free ports: one simulated provider behind one alias (OpenAI with
    alias == upstream model: the bytes pass through; `kind: anthropic`: every request and
    answer translated)."""
    listen, admin, xds, ext_proc, metrics, sim = free_ports(6)
    pin, pout = price
    return f"""\
# Written by {by} for one benchmark run.
listen: {{address: 127.0.0.1, port: {listen}}}
admin: {{address: 127.0.0.1, port: {admin}}}
control_plane: {{address: 127.0.0.1, port: {xds}}}
ext_proc: {{address: 127.0.0.1, port: {ext_proc}, metrics_port: {metrics}}}
envoy_concurrency: {concurrency}
providers:
  {SIM_PROVIDER}:
    kind: {kind}
    base_url: "http://127.0.0.1:{sim}"
    api_key: {{value: "{api_key}"}}
    simulate: {{ttft_ms: {ttft_ms:g}, tokens_per_s: {tokens_per_s:g}}}
models:
  {alias}:
    backends:
      - {{provider: {SIM_PROVIDER}, model: {model}, price: {{input: {pin:g}, output: {pout:g}}}}}
"""


@contextlib.contextmanager
def running_gateway(log_dir: Path, concurrency: int, config_text: str | None = None,
                    key: str = "gateway", label: str = "full gateway"
                    ) -> Iterator[tuple[Target, Gateway]]:
    """The full gateway (sim + control plane + ext_proc + Envoy), stopped on exit.

    `config_text` replaces `gateway_config(concurrency)` (bench/stream.py: an Anthropic
    provider); it must name its simulated provider `SIM_PROVIDER`.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "gateway.yaml"
    config.write_text(config_text or gateway_config(concurrency))
    gw = Gateway(config, log_dir=log_dir)
    try:
        gw.start()
        gw.wait_ready(timeout=60)
        _disable_recording(gw.cfg.providers[SIM_PROVIDER].base_url)

        def check_alive() -> None:
            for name, proc in gw.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway {name} exited with code {proc.returncode} "
                                       f"(log: {log_dir / (name + '.log')})")

        pids = {name: proc.pid for name, proc in gw.procs.items()}
        yield Target(key, label, gw.url + CHAT_PATH, pids, check_alive), gw
    finally:
        gw.stop()
