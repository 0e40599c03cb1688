"""`python -m bench.workers`: the full gateway with 1 and with 2 (or more) ext_proc workers
at the same load, side by side: req/s and CPU per request.

Every gateway shares state through one redis-server started here (a database each), as
`ext_proc.workers > 1` requires, so the gateways differ only in their worker count. They all
run at once (an idle gateway costs almost nothing) and their wrk runs are interleaved, so a
burst of unrelated load on a shared machine hits each about equally. Throughput can only
rise with workers when the machine has cores to spare beyond Envoy, the simulator and wrk:
the report prints the core count and how busy the machine was, so read it with that.
`--write` rewrites the `bench.workers` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import (
    cpu_model,
    cpu_seconds,
    die_with_parent,
    free_ports,
    machine_busy_seconds,
)
from bench.sections import write_section
from bench.targets import CHAT_PATH, SIM_PROVIDER, Target, _disable_recording, precheck
from bench.wrk import MODEL, request_body, run_wrk
from switchyard.launcher import Gateway


def _ports_with_successors(count: int) -> int:
    """A free port p with p+1 .. p+count-1 free too (worker i listens on port + i)."""
    for _ in range(200):
        p = free_ports(1)[0]
        socks = [socket.socket() for _ in range(count)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", p + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return p
    raise RuntimeError(f"no {count} adjacent free ports")


def config(workers: int, redis_url: str, envoy_concurrency: int) -> str:
    """The bench gateway (bench.targets' one provider and model) with `workers` workers."""
    ext_proc = _ports_with_successors(workers)
    metrics = _ports_with_successors(workers)
    taken = set(range(ext_proc, ext_proc + workers)) | set(range(metrics, metrics + workers))
    listen, admin, xds, sim = [p for p in free_ports(4 + 2 * workers) if p not in taken][:4]
    return f"""\
# Written by bench/workers.py for one benchmark run.
listen: {{address: 127.0.0.1, port: {listen}}}
admin: {{address: 127.0.0.1, port: {admin}}}
control_plane: {{address: 127.0.0.1, port: {xds}, status_port: 0}}
ext_proc: {{address: 127.0.0.1, port: {ext_proc}, metrics_port: {metrics}, workers: {workers}}}
shared_state: {{redis: {{url: "{redis_url}"}}}}
envoy_concurrency: {envoy_concurrency}
providers:
  {SIM_PROVIDER}:
    kind: openai
    base_url: "http://127.0.0.1:{sim}"
    api_key: {{value: "sk-bench-not-a-secret"}}
    simulate: {{ttft_ms: 0, tokens_per_s: 0}}
models:
  {MODEL}:
    backends:
      - {{provider: {SIM_PROVIDER}, model: {MODEL}, price: {{input: 0.15, output: 0.60}}}}
"""


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on a free loopback port: (base URL, pid)."""
    if shutil.which("redis-server") is None:
        raise SystemExit("bench.workers needs redis-server (apt-get install -y redis-server)")
    port = free_ports(1)[0]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}", proc.pid
    finally:
        proc.kill()
        proc.wait(5)


@dataclass
class Side:
    """One gateway under test and its measured runs."""

    workers: int
    gateway: Gateway
    target: Target
    rps: list[float] = field(default_factory=list)
    #: CPU per request (us): the proxy's processes (Envoy, ext_proc workers, control plane,
    #: Redis), and the ext_proc workers alone.
    proxy_us: list[float] = field(default_factory=list)
    ext_proc_us: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)


def _proxy(name: str) -> bool:
    return name not in ("sim", "wrk")


def one_run(side: Side, body_file: Path, args: argparse.Namespace, redis_pid: int,
            label: str, duration: float) -> None:
    pids = {**side.target.pids, "redis": redis_pid}
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    busy0 = machine_busy_seconds()
    r = run_wrk(side.target.url, body_file, connections=args.connections, threads=args.threads,
                duration_s=duration)
    busy = machine_busy_seconds() - busy0
    cpu = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
    side.target.check_alive()
    if r.requests == 0 or r.error_rate > 0.001:
        raise RuntimeError(f"{side.workers} workers: {r.errors} errors in {r.requests} requests")
    other = max(0.0, busy - sum(cpu.values()) - r.cpu_s) / r.duration_s
    if label != "warm-up":
        side.rps.append(r.rps)
        side.proxy_us.append(sum(v for n, v in cpu.items() if _proxy(n)) / r.requests * 1e6)
        side.ext_proc_us.append(sum(v for n, v in cpu.items() if n.startswith("ext_proc"))
                                / r.requests * 1e6)
        side.p50_ms.append(r.p50_ms)
        side.other_cores.append(other)
    print(f"  workers={side.workers} {label:8} {r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
          f"ext_proc {sum(v for n, v in cpu.items() if n.startswith('ext_proc')):.2f} s CPU  "
          f"other load {other:.2f} cores", file=sys.stderr, flush=True)


def render(sides: list[Side], args: argparse.Namespace, argv: list[str]) -> str:
    med = statistics.median
    base = med(sides[0].rps)
    lines = [
        "## ext_proc workers (`python -m bench.workers`)",
        "",
        f"Command: `python -m bench.workers {' '.join(argv)}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu_model('unknown CPU')}), shared; "
        f"{args.runs} interleaved "
        f"runs of {args.duration:g} s per worker count at {args.connections} connections, "
        f"Envoy `--concurrency {args.envoy_concurrency}`, ~1 KB non-streaming, one simulated "
        "OpenAI backend, every gateway with `shared_state.redis` (one redis-server, a "
        "database each). Medians.",
        "",
        "| workers | req/s | vs 1 worker | p50 ms | proxy CPU/req (us) | ext_proc CPU/req (us) "
        "| other load (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sides:
        lines.append(f"| {s.workers} | {med(s.rps):,.0f} | {med(s.rps) / base:.2f}x | "
                     f"{med(s.p50_ms):.2f} | {med(s.proxy_us):,.0f} | {med(s.ext_proc_us):,.0f} "
                     f"| {med(s.other_cores):.2f} |")
    lines += ["", "Proxy CPU: Envoy + every ext_proc worker + control plane + Redis (the "
              "simulator and wrk are the backend and the load, not the proxy). Other load: "
              "CPU of processes outside the benchmark during the run."]
    cores = os.cpu_count() or 1
    top = sides[-1]
    cpu_ratio = med(top.proxy_us) / med(sides[0].proxy_us)
    if cores < 2 * top.workers + 2:  # wrk, simulator and Envoy need cores of their own
        lines += ["", (
            f"**Read with care:** this machine has {cores} cores, shared with other work. wrk, "
            "the simulator, Envoy and the workers compete for them, so the machine is "
            "saturated with one worker already, and a second worker mostly wins a larger share "
            "of it from other processes (compare the other-load column) rather than using "
            "idle cores. The issue's target (>= 1.6x from 1 to 2 workers when Envoy has CPU "
            "to spare) cannot be demonstrated here; run this on a machine with spare cores "
            f"(`--workers 1,2,4,8`). What it does show: CPU per request with {top.workers} "
            f"workers is {cpu_ratio:.2f}x that of one worker, i.e. more workers add no "
            "per-request cost (only retries that land on another worker take the internal "
            "hop).")]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (first: base)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per worker count")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per gateway")
    ap.add_argument("--envoy-concurrency", type=int, default=2)
    ap.add_argument("--write", action="store_true",
                    help="rewrite the bench.workers section of bench/RESULTS.md")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-workers-"))
    body = request_body(1024)
    body_file = work / "body.json"
    body_file.write_bytes(body)
    sides: list[Side] = []
    try:
        with redis_server(work) as (redis_url, redis_pid), contextlib.ExitStack() as stack:
            for db, n in enumerate(counts):
                logs = work / f"workers-{n}"
                logs.mkdir()
                (logs / "gateway.yaml").write_text(
                    config(n, f"{redis_url}/{db}", args.envoy_concurrency))
                gw = Gateway(logs / "gateway.yaml", log_dir=logs)
                stack.callback(gw.stop)
                gw.start()
                gw.wait_ready(timeout=90)
                _disable_recording(gw.cfg.providers[SIM_PROVIDER].base_url)

                def alive(gw: Gateway = gw) -> None:
                    for name, proc in gw.procs.items():
                        if proc.poll() is not None:
                            raise RuntimeError(f"{name} exited with code {proc.returncode}")

                target = Target(f"w{n}", f"{n} workers", gw.url + CHAT_PATH,
                                {k: p.pid for k, p in gw.procs.items()}, alive)
                precheck(target, body)
                sides.append(Side(n, gw, target))
            for s in sides:
                if args.warmup > 0:
                    one_run(s, body_file, args, redis_pid, "warm-up", args.warmup)
            for i in range(args.runs):
                for s in sides if i % 2 == 0 else reversed(sides):
                    one_run(s, body_file, args, redis_pid, f"run {i + 1}", args.duration)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(sides, args, argv)
    print(report)
    if args.write:
        write_section("workers", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
