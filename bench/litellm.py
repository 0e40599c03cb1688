"""The optional `litellm` bench target: the LiteLLM proxy, in its own venv, before the simulator.

Issue 11 asks for the gateway side by side with the LiteLLM proxy under the same load. LiteLLM
is not a dependency of Switchyard (it pins many packages of its own), so the bench installs it
once into a separate venv (`python -m venv` + `pip install 'litellm[proxy]'`) and reuses it on
later runs. When that fails (no network, no index) the target is skipped with a message; the
rest of the run goes on. `python -m bench.litellm` only installs (or reports the install).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import ProcessGroup, free_ports, http_status, wait_until
from bench.targets import CHAT_PATH, Target
from bench.wrk import MODEL

#: Where the venv lives; override with SWITCHYARD_BENCH_LITELLM_VENV.
VENV = Path(os.environ.get("SWITCHYARD_BENCH_LITELLM_VENV")
            or Path.home() / ".cache" / "switchyard-bench" / "litellm-venv")
#: What gets installed; override (e.g. a pinned version) with SWITCHYARD_BENCH_LITELLM_SPEC.
SPEC = os.environ.get("SWITCHYARD_BENCH_LITELLM_SPEC") or "litellm[proxy]"
#: Written after a successful install: its presence means "reuse this venv".
_MARKER = ".switchyard-bench-installed"
INSTALL_TIMEOUT_S = 900
#: LiteLLM imports a lot at startup (and fetches its model cost map); a slow shared machine
#: needs a while.
STARTUP_TIMEOUT_S = 180
API_KEY = "sk-bench-not-a-secret"


def _log(msg: str) -> None:
    print(f"bench: litellm: {msg}", file=sys.stderr, flush=True)


def litellm_binary(venv: Path = VENV) -> Path:
    return venv / "bin" / "litellm"


def installed_version(venv: Path = VENV) -> str | None:
    """The version in a completed install of `venv`, or None when there is none."""
    marker = venv / _MARKER
    if not marker.is_file() or not litellm_binary(venv).exists():
        return None
    return marker.read_text().strip() or "unknown"


def ensure_installed(venv: Path = VENV, spec: str = SPEC,
                     timeout_s: float = INSTALL_TIMEOUT_S) -> str | None:
    """The installed LiteLLM version, installing it first when needed; None (with a message
    on stderr) when it cannot be installed, so the caller skips the target."""
    version = installed_version(venv)
    if version is not None:
        _log(f"reusing {venv} (litellm {version})")
        return version
    _log(f"installing {spec!r} into {venv} (once; a minute or more)")
    deadline = time.monotonic() + timeout_s
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
         "--disable-pip-version-check", spec],
    ]
    venv.parent.mkdir(parents=True, exist_ok=True)
    for cmd in steps:
        _log("$ " + " ".join(cmd))
        try:
            # pip's own output goes to stderr as it comes: that is the progress report.
            proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr,
                                  stdin=subprocess.DEVNULL,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except (OSError, subprocess.TimeoutExpired) as exc:
            _log(f"install failed ({exc}); skipping the litellm target")
            return None
        if proc.returncode != 0:
            _log(f"install failed (exit {proc.returncode}; no network or no package index?); "
                 "skipping the litellm target")
            return None
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, timeout=60)
    version = out.stdout.strip()
    if out.returncode != 0 or not version or not litellm_binary(venv).exists():
        _log(f"installed, but litellm is not usable: {out.stderr.strip()[-500:]}; "
             "skipping the litellm target")
        return None
    (venv / _MARKER).write_text(version + "\n")
    _log(f"installed litellm {version}")
    return version


def litellm_config(sim_port: int) -> str:
    """One model, the bench's model name, on the simulator's OpenAI-compatible API.

    LiteLLM's defaults stay as they are except one: recent releases refuse to start without a
    master key. The other targets take requests without a caller key, so LiteLLM is started
    the same way (its documented local switch) and every target gets identical bytes."""
    return f"""\
# Written by bench/litellm.py for one benchmark run.
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{sim_port}/v1
      api_key: {API_KEY}
general_settings:
  dangerously_permit_weak_or_unset_master_key: true
"""


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (from /proc): LiteLLM's CPU is its whole process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return sorted(out)


def start_litellm(group: ProcessGroup, sim: Target, venv: Path = VENV) -> Target:
    """`litellm --config ... --port P --num_workers 1` on 127.0.0.1 in front of `sim`."""
    (port,) = free_ports(1)
    sim_port = int(sim.url.split(":")[2].split("/")[0])
    config = group.log_dir / "litellm.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(litellm_config(sim_port))
    env_bin = str(litellm_binary(venv).parent)
    proc = group.spawn("litellm", [
        str(litellm_binary(venv)), "--config", str(config), "--host", "127.0.0.1",
        "--port", str(port), "--num_workers", "1"], env={
            **os.environ, "PATH": env_bin + os.pathsep + os.environ.get("PATH", ""),
            "VIRTUAL_ENV": str(venv)})
    base = f"http://127.0.0.1:{port}"
    _log(f"started (pid {proc.pid}, port {port}); waiting for /health/readiness")
    wait_until(lambda: http_status(base + "/health/readiness")[0] == 200, "litellm",
               STARTUP_TIMEOUT_S, group)
    pids = {"sim": sim.pids["sim"], "litellm": proc.pid}
    # Count any worker/helper processes it forked too (uvicorn with one worker has none).
    for i, child in enumerate(descendants(proc.pid)):
        pids[f"litellm_{i + 1}"] = child
    return Target("litellm", "LiteLLM proxy", base + CHAT_PATH, pids, group.check_alive)


def main() -> int:
    """Install (or report) the bench's LiteLLM venv."""
    version = ensure_installed()
    if version is None:
        return 1
    print(f"litellm {version} in {VENV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
