"""`python -m bench.admission`: what admission control costs per request.

Three gateways side by side (same simulator settings, same request bytes, wrk as the client):

- **open**: no tenants (every caller is the default tenant; no buckets);
- **local**: a tenant with rpm/tpm/max_concurrent, a per-model limit, provider and backend
  limits (five scopes, every bucket touched per request), limits far above the load so nothing
  is shed: the cost of deciding, not of refusing; in-process buckets;
- **redis**: the same limits with `shared_state.redis` (a real `redis-server` on loopback;
  its CPU is counted too).

Runs are interleaved (open, local, redis, open, ...) so machine noise hits all three alike.
Per run: CPU seconds of Envoy + ext_proc (+ redis-server) per request at c=16, and p50 at
c=1. Reports medians and the difference to open (targets from issue 8: <= +15% CPU per
request, <= +0.3 ms p50 at c=1). `--write` replaces this benchmark's section of
bench/RESULTS.md and leaves the rest alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procs import cpu_seconds, die_with_parent, free_ports
from bench.targets import _disable_recording, gateway_config
from bench.wrk import request_body, run_wrk
from switchyard.launcher import Gateway

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN = "<!-- bench.admission: begin -->"
END = "<!-- bench.admission: end -->"
KEY = "sk-bench-tenant-key"
HIGH = 10**9  # limits nobody reaches in a benchmark


def _limits_yaml(redis_url: str | None) -> str:
    shared = f'shared_state: {{redis: {{url: "{redis_url}"}}}}\n' if redis_url else ""
    return shared + f"""tenants:
  bench:
    api_keys: [{{value: "{KEY}"}}]
    priority: interactive
    limits: {{rpm: {HIGH}, tpm: {HIGH}, max_concurrent: 100000}}
    models: {{gpt-4o-mini: {{rpm: {HIGH}, tpm: {HIGH}}}}}
"""


def _config(variant: str, concurrency: int, redis_url: str | None) -> str:
    # a control plane status page per gateway would collide on its default port: off
    text = re.sub(r"(control_plane: \{address: [^,]+, port: \d+)\}", r"\1, status_port: 0}",
                  gateway_config(concurrency))
    if variant == "open":
        return text
    # provider and backend limits: every bucket kind is exercised
    text = text.replace('    simulate: {ttft_ms: 0, tokens_per_s: 0}\n',
                        '    simulate: {ttft_ms: 0, tokens_per_s: 0}\n'
                        f'    limits: {{rpm: {HIGH}, tpm: {HIGH}}}\n')
    text = text.replace("price: {input: 0.15, output: 0.60}}",
                        f"price: {{input: 0.15, output: 0.60}}, limits: {{rpm: {HIGH}}}}}")
    return text + _limits_yaml(redis_url if variant == "redis" else None)


@dataclass
class Variant:
    name: str
    gateway: Gateway
    pids: list[int]
    cpu_per_req_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p50_c1_ms: list[float] = field(default_factory=list)
    p99_c1_ms: list[float] = field(default_factory=list)


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                         text=True).stdout.strip() != "PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def _run(v: Variant, body_file: Path, connections: int, duration: float) -> None:
    before = sum(cpu_seconds(pid) for pid in v.pids)
    os.environ["SWITCHYARD_BENCH_KEY"] = KEY
    if v.name == "open":
        os.environ.pop("SWITCHYARD_BENCH_KEY")
    r = run_wrk(v.gateway.url + "/v1/chat/completions", body_file, connections=connections,
                threads=1, duration_s=duration)
    cpu = sum(cpu_seconds(pid) for pid in v.pids) - before
    if r.errors or not r.requests:
        raise RuntimeError(f"{v.name}: {r.errors} errors in {r.requests} requests")
    if connections == 1:
        v.p50_c1_ms.append(r.p50_ms)
        v.p99_c1_ms.append(r.p99_ms)
    else:
        v.cpu_per_req_us.append(cpu / r.requests * 1e6)
        v.rps.append(r.rps)
    print(f"  {v.name:6} c={connections:<3} {r.rps:7.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
          f"CPU/req {cpu / r.requests * 1e6:7.0f} us", file=sys.stderr, flush=True)


def render(vs: dict[str, Variant], args: argparse.Namespace, started: dt.datetime) -> str:
    med = statistics.median
    o = vs["open"]
    lines = [BEGIN, "## Admission control overhead (`python -m bench.admission`)", "",
             f"- Command: `{shlex.join(['python', '-m', 'bench.admission', *args.argv])}`",
             f"- Date: {started:%Y-%m-%d %H:%M:%S} UTC; nproc {os.cpu_count()}; "
             f"load average at start {', '.join(f'{x:.2f}' for x in args.load)}",
             "- The machine is shared: compare rows of one run, not numbers across runs",
             f"- {args.rounds} interleaved rounds (open, local, redis): wrk `-t1 -c16` for "
             f"{args.duration:g} s (CPU of Envoy + ext_proc, + redis-server for redis, per "
             f"request) and `-c1` for {args.low_duration:g} s (p50); medians",
             "- local / redis: one tenant with rpm, tpm, max_concurrent and a per-model limit, "
             "provider and backend limits (five scopes per request), all far above the load, "
             "so every request is admitted: the cost of deciding", "",
             "| Gateway | req/s c=16 | CPU µs/req | ΔCPU/req | p50 ms c=1 | Δp50 c=1 "
             "| p99 ms c=1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, title in (("open", "open (no tenants)"), ("local", "tenants + limits, in-process"),
                        ("redis", "tenants + limits, Redis")):
        v = vs[name]
        cpu, base = med(v.cpu_per_req_us), med(o.cpu_per_req_us)
        p50, base50 = med(v.p50_c1_ms), med(o.p50_c1_ms)
        dcpu = "" if v is o else f"{(cpu - base) / base:+.1%}"
        dp50 = "" if v is o else f"{p50 - base50:+.2f} ms"
        lines.append(f"| {title} | {med(v.rps):.0f} | {cpu:.0f} | {dcpu} | {p50:.2f} | {dp50} "
                     f"| {med(v.p99_c1_ms):.2f} |")
    lines += ["", "Targets (issue 8): ΔCPU/req <= +15%, Δp50 at c=1 <= +0.3 ms.", END]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end != -1:
        text = text[:start] + section + text[end + len(END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per c=16 run")
    p.add_argument("--low-duration", type=float, default=5.0, help="seconds per c=1 run")
    p.add_argument("--envoy-concurrency", type=int, default=2)
    p.add_argument("--write", action="store_true", help="update bench/RESULTS.md's section")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.UTC)
    args.load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    redis, url = _start_redis(work)
    body_file = work / "body.json"
    body = request_body()
    body_file.write_bytes(body)
    vs: dict[str, Variant] = {}
    try:
        for name in ("open", "local", "redis"):
            d = work / name
            d.mkdir()
            (d / "gateway.yaml").write_text(_config(name, args.envoy_concurrency, url))
            gw = Gateway(d / "gateway.yaml", log_dir=d)
            gw.start()
            gw.wait_ready(timeout=60)
            _disable_recording(next(iter(gw.cfg.providers.values())).base_url)
            pids = [gw.procs["envoy"].pid, gw.procs["ext_proc"].pid]
            if name == "redis":
                pids.append(redis.pid)
            vs[name] = Variant(name, gw, pids)
            headers = {"authorization": f"Bearer {KEY}"} if name != "open" else {}
            r = httpx.post(gw.url + "/v1/chat/completions", content=body, timeout=10,
                           headers={"content-type": "application/json", **headers})
            if r.status_code != 200:
                raise RuntimeError(f"{name}: precheck {r.status_code}: {r.text[:200]}")
        for v in vs.values():  # warm-up
            _run(v, body_file, 16, 2.0)
        for v in vs.values():
            v.cpu_per_req_us.clear()
            v.rps.clear()
        for _ in range(args.rounds):
            for v in vs.values():
                _run(v, body_file, 16, args.duration)
            for v in vs.values():
                _run(v, body_file, 1, args.low_duration)
    finally:
        for v in vs.values():
            v.gateway.stop()
        redis.kill()
        redis.wait()
    section = render(vs, args, started)
    print(section)
    if args.write:
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
