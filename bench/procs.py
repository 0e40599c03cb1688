"""Child processes of the benchmark: start with logs in files, always reap, measure CPU.

Every child gets PR_SET_PDEATHSIG (like switchyard/launcher.py), so even a SIGKILLed
benchmark leaves no simulator or Envoy behind holding ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from switchyard.launcher import free_ports as free_ports

# Shared with the gateway launcher; re-exported for the other bench modules.
from switchyard.processes import die_with_parent as die_with_parent

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a running process (all threads), from /proc/PID/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, for a report's machine facts."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return default


def wait_quiet(threshold: float, max_wait: float, log: Callable[[str], None]) -> float:
    """Before a run, wait (bounded) until the machine's other load is under `threshold` cores;
    returns the load last seen. The benchmark's targets are idle between runs, so whatever
    keeps the CPU busy now is someone else."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        load = machine_busy_seconds() - before
        if load <= threshold or time.monotonic() >= deadline:
            if load > threshold:
                log(f"  (machine still busy: {load:.2f} cores; running anyway)")
            return load


def machine_busy_seconds() -> float:
    """CPU seconds all processes spent in user+system mode since boot, from /proc/stat.

    Compared with the CPU of the benchmark's own processes over a run, this shows how much
    unrelated work (another test suite, a build) shared the cores: the run's noise level.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / _CLK_TCK


def http_status(url: str, method: str = "GET", body: bytes | None = None,
                timeout: float = 2.0) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one request; status 0 when nothing answered."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), dict(exc.headers.items())
    except (OSError, ValueError):
        return 0, b"", {}


class ProcessGroup:
    """Processes the benchmark started itself; `close()` stops them all (idempotent)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def spawn(self, name: str, args: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in close())
        self._files.append(f)
        proc = subprocess.Popen(args, stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent, env=env)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} "
                                   f"(log: {self.log_dir / (name + '.log')})")

    def stop(self, name: str, timeout: float = 5.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for f in self._files:
            f.close()
        self._files.clear()


def wait_until(check: Callable[[], bool], what: str, timeout: float,
               group: ProcessGroup | None = None) -> None:
    """Poll `check()` until true; bounded by `timeout`, fails fast if a child died."""
    deadline = time.monotonic() + timeout
    while not check():
        if group is not None:
            group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:g}s")
        time.sleep(0.05)


@contextlib.contextmanager
def bounded(seconds: int) -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt and SIGALRM into a timeout, so `finally`
    blocks always stop the children."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"benchmark exceeded its {seconds} s deadline")

    # SIGINT too: a background job (`... &`) starts with SIGINT ignored.
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGALRM] = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        for s, handler in old.items():
            signal.signal(s, handler)
