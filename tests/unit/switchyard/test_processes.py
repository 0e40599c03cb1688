"""Work directories: one per process, named after its pid; a dead process's is removed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from switchyard.processes import work_dir


def test_stale_work_dirs_of_dead_processes_are_removed() -> None:
    tmp = Path(tempfile.gettempdir())
    dead = tmp / "switchyard-gateway-pid999999999-stale"
    alive = tmp / f"switchyard-gateway-pid{os.getpid()}-mine"
    dead.mkdir(exist_ok=True)
    alive.mkdir(exist_ok=True)
    try:
        fresh = work_dir("gateway")
        assert not dead.exists()  # its process is gone (kill -9 of `up`): cleaned
        assert alive.exists()  # a live process's directory is never touched
        assert fresh.is_dir() and f"-pid{os.getpid()}-" in fresh.name
        shutil.rmtree(fresh)
    finally:
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)
