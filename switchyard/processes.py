"""Child processes of a gateway or fleet node: spawned with their logs in files and killed with
their parent, stopped in a given order, watched until a signal (or a child's death) ends them.

`switchyard.launcher.Gateway` (`switchyard up`) and `switchyard.fleet.Node` (`switchyard node`)
share this, so both start, log and stop their children the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn (runs in the child between fork and exec): SIGTERM when the parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    """Mixin: needs `procs: dict[str, Popen]`, `_files: list[IO[bytes]]` and `log_dir`."""

    procs: dict[str, subprocess.Popen[bytes]]
    _files: list[IO[bytes]]
    log_dir: Path | None

    def _spawn(self, name: str, args: list[str]) -> None:
        out: int | IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop())
            self._files.append(f)
            out = f
        self.procs[name] = subprocess.Popen(
            args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def _stop_children(self, order: Iterable[str], timeout: float) -> None:
        """SIGTERM in `order` (Envoy first: it stops taking traffic), then wait, then kill."""
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()


def watch(procs: dict[str, subprocess.Popen[bytes]], stopped: Callable[[], bool]) -> int:
    """Block until `stopped()` (exit 0) or a child dies (exit 1, saying which)."""
    while not stopped():
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"error: {name} exited with code {proc.returncode}", file=sys.stderr)
                return 1
        time.sleep(0.2)
    return 0
