"""Child processes of a gateway or fleet node: spawned with their logs in files and killed with
their parent, stopped in a given order, watched until a signal (or a child's death) ends them.

`switchyard.launcher.Gateway` (`switchyard up`) and `switchyard.fleet.Node` (`switchyard node`)
share this, so both start, log, restart and stop their children the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn (runs in the child between fork and exec): SIGTERM when the parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def work_dir(kind: str) -> Path:
    """A fresh private directory for this process's children (sockets, generated configs),
    named after its pid; directories of processes that died without cleaning up (kill -9)
    are removed first."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob("switchyard-*-pid*"):
        pid = old.name.rsplit("-pid", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"switchyard-{kind}-pid{os.getpid()}-"))


class Children:
    """Mixin: needs `procs: dict[str, Popen]`, `_files: list[IO[bytes]]` and `log_dir`."""

    procs: dict[str, subprocess.Popen[bytes]]
    _files: list[IO[bytes]]
    log_dir: Path | None

    def _spawn(self, name: str, args: list[str]) -> None:
        self._specs()[name] = args
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


    def _specs(self) -> dict[str, list[str]]:
        specs: dict[str, list[str]] | None = getattr(self, "_spawned", None)
        if specs is None:
            specs = {}
            self._spawned = specs
        return specs

    def respawn(self, name: str) -> None:
        """Start a dead child again with the arguments it was first started with."""
        args = self._specs()[name]
        if "--unix-socket" in args:  # a dead ext_proc leaves its socket file behind
            with contextlib.suppress(OSError):
                Path(args[args.index("--unix-socket") + 1]).unlink()
        self._spawn(name, args)

    def supervise(self, stopped: Callable[[], bool]) -> int:
        """Keep every child alive until `stopped()` (exit 0): a dead child is restarted with
        backoff and one log line; a child that keeps dying (crash loop) ends it (exit 1).

        Envoy keeps its last config and ext_proc its last routing table while the control
        plane is away, and a dead simulator is only a provider outage, so a restart of one
        child never takes the others down."""
        deaths: dict[str, list[float]] = {}
        while not stopped():
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in deaths.get(name, []) if now - t < CRASH_WINDOW_S] + [now]
                deaths[name] = recent
                if len(recent) > MAX_RESTARTS:
                    print(f"error: {name} exited {len(recent)} times within {CRASH_WINDOW_S:.0f}"
                          f" s (last exit code {code}); giving up", file=sys.stderr)
                    return 1
                delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (len(recent) - 1))
                print(f"switchyard: {name} exited with code {code}; restarting in {delay:.1f} s "
                      f"({len(recent)} of {MAX_RESTARTS} within {CRASH_WINDOW_S:.0f} s)",
                      file=sys.stderr, flush=True)
                time.sleep(delay)
                if stopped():
                    break
                self.respawn(name)
            time.sleep(0.1)
        return 0


#: Restart backoff of a dead child (doubling) and when a crash loop makes `up` give up.
RESTART_FIRST_S = 0.1
RESTART_MAX_S = 2.0
MAX_RESTARTS = 5
CRASH_WINDOW_S = 60.0


def replica_id() -> str:
    """A name for this process among the fleet's replicas in shared state (host, pid and a
    random suffix, so a restarted process on a reused pid is a new replica)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
