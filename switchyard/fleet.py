"""A fleet node: Envoy + ext_proc on one machine, fed by a remote control plane.

`switchyard node --control-plane HOST:PORT` runs one; N of them share one control plane (and
one Redis, when the config sets `shared_state.redis`). The node needs no config file: Envoy
gets listeners, routes and clusters over ADS, ext_proc the routing table (with limits and the
Redis URL) over the RoutingTable stream. Node-local settings are flags: the listener address
(`--listen`, sent to the control plane in Envoy's node metadata, so nodes sharing a host or a
config bind their own), Envoy admin, ext_proc metrics, the usage ledger directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import IO

from control_plane.compile import EXT_PROC_CLUSTER, XDS_CLUSTER
from control_plane.compile.names import FLEET_CLUSTER, LISTENER_NAME
from control_plane.config import ExtProcSettings, Limits
from switchyard.launcher import BOOTSTRAP_TEMPLATE, envoy_binary
from switchyard.processes import Children, work_dir

_LIMITS = Limits()


def host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return default_host, int(text)
    return host or default_host, int(port)


@dataclass
class Node(Children):
    control_plane: str
    listen: str = ""
    admin: str = "127.0.0.1:9901"
    metrics: str = "127.0.0.1:9464"
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    concurrency: int = 2
    usage_dir: Path | None = None
    log_dir: Path | None = None
    log_level: str = "info"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: work_dir("node"))

    @property
    def status_url(self) -> str:
        host, port = host_port(self.metrics)
        return f"http://{host}:{port}"

    def start(self) -> None:
        sock = self.workdir / "ext_proc.sock"
        m_host, m_port = host_port(self.metrics)
        a_host, a_port = host_port(self.admin)
        cp_host, cp_port = host_port(self.control_plane)
        self._spawn("ext_proc", [
            sys.executable, "-m", "ext_proc.server", "--address", m_host, "--port", "0",
            "--unix-socket", str(sock), "--control-plane", f"{cp_host}:{cp_port}",
            "--metrics-port", str(m_port), "--node-id", self.node_id,
            "--envoy-admin", f"http://{a_host}:{a_port}", "--log-level", self.log_level,
            *(["--usage-dir", str(self.usage_dir)] if self.usage_dir else [])])
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
            ext_proc_lb_endpoints=f'[{{endpoint: {{address: {{pipe: {{path: "{sock}"}}}}}}}}]',
            ext_proc_cluster=EXT_PROC_CLUSTER,
            xds_cluster=XDS_CLUSTER, fleet_cluster=FLEET_CLUSTER, node_id=self.node_id,
            listen=(":".join(map(str, host_port(self.listen))) if self.listen else ""),
            status_url=self.status_url, admin_address=a_host, admin_port=a_port,
            xds_address=socket.gethostbyname(cp_host), xds_port=cp_port,
            # Node-local protections: the config's defaults (the node has no config file).
            max_connections=_LIMITS.max_connections, listener_name=LISTENER_NAME,
            max_heap_bytes=_LIMITS.max_heap_mb * 1024 * 1024,
            ext_proc_max_streams=ExtProcSettings().max_streams))
        self._spawn("envoy", [
            envoy_binary(), "-c", str(bootstrap), "--concurrency", str(self.concurrency),
            "--disable-hot-restart", "--log-level", "warn", "--drain-time-s", "5"])

    def _ok(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        a_host, a_port = host_port(self.admin)
        checks = {"envoy": f"http://{a_host}:{a_port}/ready",
                  "ext_proc": f"{self.status_url}/healthz"}
        if self.listen:
            host, port = host_port(self.listen)
            checks["listener"] = f"http://{host}:{port}/v1/models"
        deadline = time.monotonic() + timeout
        while checks:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"node {self.node_id}: {name} exited with code "
                                       f"{proc.returncode} during startup")
            checks = {k: u for k, u in checks.items() if not self._ok(u)}
            if checks and time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node_id} not ready after {timeout}s: waiting "
                                   f"for {', '.join(checks)}")
            if checks:
                time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_children(["envoy", "ext_proc"], timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
