"""`python -m bench.profile`: where the gateway's ext_proc spends its CPU under load.

Starts a benchmark gateway, drives it with wrk, and samples the ext_proc process with py-spy
(a dev tool: `pip install py-spy`), then prints the top functions by self and inclusive time
and the split between threads. `--native` also samples C frames (grpc core, uvloop, libc),
which is where most of the time goes; it pauses the process per sample, so the load it
reports is lower. `--syscalls S` counts syscalls per request with strace for S seconds.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.procs import die_with_parent, http_status
from bench.targets import precheck, running_gateway
from bench.wrk import LUA_SCRIPT, request_body, wrk_binary
from control_plane.config import GatewayConfig

_SKIP = re.compile(r"^(_run_module_as_main|_run_code|<module>|main|run|Runner\.run) ")
_LINE = re.compile(r":\d+\)$")
#: Frames of the gateway's own request-path code (vs grpc, asyncio, logging libraries).
_OWN = ("ext_proc/", "control_plane/")


def summarize(raw: Path, top: int) -> str:
    """Markdown tables from py-spy's raw (collapsed) output recorded with --threads."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = own_code = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames[0].startswith("thread "):
            threads[frames[0].split(": ", 1)[-1]] += n
            frames = frames[1:]
        if not frames:
            continue
        frames = [_LINE.sub(")", f) for f in frames]  # per function, not per line
        self_time[frames[-1]] += n
        for f in set(frames):
            if not _SKIP.match(f):
                inclusive[f] += n
        if any(own in f and not _SKIP.match(f) for f in frames for own in _OWN):
            own_code += n
    if total == 0:
        return "no samples (was the process idle, or py-spy not permitted to attach?)\n"

    def table(title: str, counts: collections.Counter[str]) -> list[str]:
        rows = [f"### {title}", "", "| % of samples | function |", "|---:|---|"]
        rows += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in counts.most_common(top)]
        return [*rows, ""]

    out = [f"{total} samples (idle ones excluded; with --native, threads waiting in epoll still "
           "count). Without --native, time in "
           "C code (grpc core, uvloop, protobuf) shows as self time of the Python frame that "
           "called it: `Runner.run` is the event loop, `Thread.run` grpc's poller thread.", "",
           f"Samples with gateway code (ext_proc/, control_plane/) on the stack: "
           f"**{100 * own_code / total:.1f}%** (including grpc's own work when awaited from "
           "there, e.g. `async for` over the request stream); the rest is grpc/asyncio "
           "machinery.", ""]
    out += table("Threads", threads)
    out += table("Self time (leaf frame)", self_time)
    out += table("Inclusive time", inclusive)
    return "\n".join(out)


def _rq_total(admin: str) -> int:
    with urllib.request.urlopen(f"{admin}/stats?filter=^http.switchyard.downstream_rq_total$",
                                timeout=5) as resp:
        text = resp.read().decode()
    return int(text.split(":")[-1]) if ":" in text else 0


def _syscalls(pids: dict[str, int], seconds: float, out_dir: Path, admin: str) -> str:
    if not shutil.which("strace"):
        return "strace not installed: skipped syscall counts\n"
    before = _rq_total(admin)
    procs = {name: subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(out_dir / f"strace_{name}.txt"), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        for name, pid in pids.items()}
    time.sleep(seconds)
    for p in procs.values():
        p.send_signal(2)
    for p in procs.values():
        p.wait(30)
    requests = max(1, _rq_total(admin) - before)
    lines = [f"### Syscalls per request (strace -c -f, {requests} requests; strace slows the "
             "processes, counts stay valid)", "", "| process | syscall | calls/request |",
             "|---|---|---:|"]
    for name in pids:
        text = (out_dir / f"strace_{name}.txt").read_text().splitlines()
        rows = [ln.split() for ln in text
                if re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+", ln) and ln.split()[-1] != "total"]
        total = 0
        for cols in rows:
            calls, syscall = int(cols[3]), cols[-1]
            total += calls
            if calls / requests >= 1:
                lines.append(f"| {name} | {syscall} | {calls / requests:.1f} |")
        lines.append(f"| {name} | **all** | **{total / requests:.1f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sampling")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="sample C frames too (slower)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--syscalls", type=float, default=0.0,
                   help="also count syscalls of ext_proc and Envoy for this many seconds")
    p.add_argument("--envoy-concurrency", type=int,
                   default=GatewayConfig.model_fields["envoy_concurrency"].default)
    p.add_argument("--out", type=Path, default=None, help="keep raw profiles and logs here")
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy (dev tool)", file=sys.stderr)
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="switchyard-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    body = request_body()
    body_file = out / "body.json"
    body_file.write_bytes(body)
    load_s = args.warmup + args.duration + args.syscalls + 5
    with running_gateway(out / "gateway", args.envoy_concurrency) as (target, gw):
        precheck(target, body)
        admin = f"http://{gw.cfg.admin.address}:{gw.cfg.admin.port}"
        wrk = subprocess.Popen(
            [wrk_binary(), "-t1", f"-c{args.connections}", f"-d{load_s:g}s", "-s",
             str(LUA_SCRIPT), target.url],
            env={**os.environ, "SWITCHYARD_BENCH_BODY": str(body_file)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=die_with_parent)
        try:
            time.sleep(args.warmup)
            raw = out / "ext_proc.raw"
            cmd = [py_spy, "record", "-p", str(target.pids["ext_proc"]), "-d",
                   f"{args.duration:g}", "-r", str(args.rate), "-f", "raw", "-o", str(raw),
                   "--threads"]
            cmd += ["--native"] if args.native else ["--nonblocking"]
            before = _rq_total(admin)
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.duration + 60)
            served = _rq_total(admin) - before
            syscalls = (_syscalls({"ext_proc": target.pids["ext_proc"],
                                   "envoy": target.pids["envoy"]}, args.syscalls, out, admin)
                        if args.syscalls > 0 else "")
            wrk_out, _ = wrk.communicate(timeout=load_s + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        status = http_status(target.url, "POST", body)[0]
    report = [
        f"# ext_proc profile ({'native' if args.native else 'Python frames'}, "
        f"{args.duration:g} s at c={args.connections})", "",
        f"{served} requests served while sampling ({served / args.duration:.0f} req/s); "
        f"wrk: {' '.join(ln.strip() for ln in wrk_out.splitlines() if 'Requests/sec' in ln)}; "
        f"final request status {status}", "",
        summarize(raw, args.top), syscalls,
    ]
    text = "\n".join(report)
    (out / "profile.md").write_text(text)
    print(text)
    print(f"profile: raw data and logs in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
