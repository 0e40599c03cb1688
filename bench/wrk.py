"""Runs `wrk` with bench/post.lua and parses its summary; also builds the request body.

wrk (C, epoll) is used instead of a Python client so the load generator costs as little CPU as
possible: on a 2-core machine it shares the cores with every process it measures.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.procs import die_with_parent

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"
#: The alias the gateway serves; also the upstream model, so all targets get identical bytes.
MODEL = "gpt-4o-mini"
_MARKER = "BENCH_JSON "


def request_body(size: int = 1024) -> bytes:
    """A deterministic OpenAI chat request padded to about `size` bytes (non-streaming)."""
    words = ("switchyard", "benchmark", "routes", "every", "request", "through", "envoy", "and")
    base = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one line."},
            {"role": "user", "content": ""},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "stream": False,
    }
    filler: list[str] = []
    while len(orjson.dumps(base)) < size:
        filler.append(words[len(filler) % len(words)])
        base["messages"][1]["content"] = " ".join(filler)  # type: ignore[index]
    return orjson.dumps(base)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk not found: apt-get install -y wrk (benchmark-only dependency)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; `cpu_s` is wrk's own user+system CPU time."""

    connections: int
    duration_s: float
    requests: int
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests)


def run_wrk(url: str, body_file: Path, *, connections: int, threads: int, duration_s: float,
            timeout_s: float = 5.0) -> WrkResult:
    """One bounded wrk run; raises if wrk fails, hangs or prints no summary."""
    threads = max(1, min(threads, connections))
    args = [wrk_binary(), "-t", str(threads), "-c", str(connections),
            "-d", f"{duration_s:g}s", "--timeout", f"{timeout_s:g}s", "-s", str(LUA_SCRIPT), url]
    env = {**os.environ, "SWITCHYARD_BENCH_BODY": str(body_file)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(args, capture_output=True, text=True, env=env,
                          timeout=duration_s + timeout_s + 30, preexec_fn=die_with_parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()}\n"
                           f"{proc.stdout.strip()}")
    data = orjson.loads(line[len(_MARKER):])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(
        connections=connections,
        duration_s=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        non2xx=int(data["status"]),
        socket_errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu_s=cpu,
    )
