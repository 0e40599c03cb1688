"""`python -m bench.run`: bounded, reproducible load benchmark of simulator, Envoy, gateway.

Each target runs alone (only its own processes alive), gets a short warm-up, then `--runs`
measured wrk runs at `--connections` and `--low-runs` runs at concurrency 1; the report shows
medians, so one noisy run on a shared 2-core machine does not move the result. Prints a
Markdown report; `--write` also rewrites bench/RESULTS.md, `--json PATH` writes the medians
(and every run) as JSON for tools such as `python -m bench.guard`. The optional `litellm` target
(bench/litellm.py) installs the LiteLLM proxy into its own venv on first use.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import litellm
from bench.procs import (
    ProcessGroup,
    bounded,
    cpu_model,
    cpu_seconds,
    machine_busy_seconds,
    wait_quiet,
)
from bench.targets import (
    Target,
    envoy_version,
    gateway_config,
    precheck,
    running_gateway,
    start_minimal,
    start_plain_envoy,
    start_sim,
)
from bench.wrk import WrkResult, request_body, run_wrk, wrk_version
from control_plane.config import GatewayConfig

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: bench/failover.py's section of RESULTS.md; `--write` here keeps it.
FAILOVER_BEGIN = "<!-- bench.failover: begin -->"
FAILOVER_END = "<!-- bench.failover: end -->"
TARGETS = ("sim", "envoy", "minimal", "litellm", "gateway", "translated")
DEFAULT_TARGETS = ("sim", "envoy", "gateway")
#: Targets in front of the one simulator started first (the gateway starts its own).
_ON_PLAIN_SIM = {"sim", "envoy", "minimal", "litellm"}
#: Startup + pre-check allowance per target when computing the whole run's deadline.
_STARTUP_S = 90
#: Processes that are the load generator or the backend, not the proxy under test: a target's
#: "proxy CPU" is everything else (Envoy, ext_proc, control plane, LiteLLM).
_NOT_PROXY = ("wrk", "sim")


class BenchError(RuntimeError):
    """The benchmark itself is invalid (errors under load, a process died): exit non-zero."""


@dataclass
class Run:
    wrk: WrkResult
    #: CPU seconds each process used during the run (wrk included).
    cpu: dict[str, float]
    #: CPU seconds used by everything else on the machine during the run (noise).
    other_cpu: float


@dataclass
class TargetResult:
    key: str
    title: str
    runs: list[Run] = field(default_factory=list)
    low: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Measured runs kept although other processes were busy (retries exhausted).
    noisy: int = 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_concurrency = GatewayConfig.model_fields["envoy_concurrency"].default
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="measured runs per target (median)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (concurrency)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (it shares the cores)")
    p.add_argument("--low-runs", type=int, default=1,
                   help="runs at concurrency 1 per target (0 skips the low-load pass)")
    p.add_argument("--low-duration", type=float, default=None,
                   help="seconds per concurrency-1 run (default: --duration)")
    p.add_argument("--envoy-concurrency", type=int, default=default_concurrency,
                   help="Envoy worker threads, same for plain Envoy and the gateway "
                        "(default: the gateway config default)")
    p.add_argument("--body-bytes", type=int, default=1024, help="approximate request body size")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (`minimal`: "
                        "calibration, Envoy + a do-nothing one-phase Python ext_proc; "
                        "`litellm`: the LiteLLM proxy, installed into "
                        f"{litellm.VENV} on first use, skipped if that fails)")
    p.add_argument("--max-error-rate", type=float, default=0.001,
                   help="fail if errors (HTTP >= 400 or socket errors) exceed this fraction")
    p.add_argument("--noise-threshold", type=float, default=0.25,
                   help="redo a run if unrelated processes used more than this many cores")
    p.add_argument("--noisy-retries", type=int, default=2,
                   help="how often to redo a noisy run before keeping it (and saying so)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="seconds to wait, before each run, for other load to drop")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="keep child logs here (default: a temp dir, removed on success)")
    p.add_argument("--write", action="store_true", help=f"rewrite {RESULTS.name}")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the results (medians and every run) as JSON to PATH")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in args.targets if t not in TARGETS]
    if bad or not args.targets:
        p.error(f"--targets: unknown {bad}; choose from {', '.join(TARGETS)}")
    if args.runs < 1 or args.duration <= 0 or args.connections < 1 or args.threads < 1:
        p.error("--runs, --duration, --connections and --threads must be positive")
    if args.low_runs < 0 or args.noisy_retries < 0 or args.warmup < 0:
        p.error("--low-runs, --noisy-retries and --warmup must not be negative")
    if args.low_duration is None:
        args.low_duration = args.duration
    return args


def _deadline_s(args: argparse.Namespace) -> int:
    """Hard limit for the whole benchmark: every run, every retry, every startup."""
    tries = 1 + args.noisy_retries
    per_run = 10 + args.quiet_wait + 1
    per_target = (_STARTUP_S + args.warmup + tries * args.runs * (args.duration + per_run)
                  + tries * args.low_runs * (args.low_duration + per_run))
    extra = litellm.STARTUP_TIMEOUT_S if "litellm" in args.targets else 0
    return int(len(args.targets) * per_target + extra + 60)


def _one_run(target: Target, body_file: Path, connections: int, threads: int,
             duration: float, max_error_rate: float, label: str) -> Run:
    """One wrk run with per-process CPU accounting; raises BenchError on errors."""
    before = {name: cpu_seconds(pid) for name, pid in target.pids.items()}
    busy_before = machine_busy_seconds()
    result = run_wrk(target.url, body_file, connections=connections, threads=threads,
                     duration_s=duration)
    busy = machine_busy_seconds() - busy_before
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in target.pids.items()}
    cpu["wrk"] = result.cpu_s
    other = max(0.0, busy - sum(cpu.values()))
    target.check_alive()
    print(f"  {target.key:8} {label:10} c={connections:<3} {result.rps:9.0f} req/s  "
          f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
          f"errors {result.errors}/{result.requests}  "
          f"other CPU {other / result.duration_s:.2f} cores", file=sys.stderr, flush=True)
    if result.requests == 0 or result.error_rate > max_error_rate:
        raise BenchError(
            f"{target.title}: {result.errors} errors in {result.requests} requests "
            f"({result.non2xx} HTTP >= 400, {result.socket_errors} socket errors/timeouts) "
            f"exceeds --max-error-rate {max_error_rate:g}")
    return Run(result, cpu, other)


def measure(target: Target, args: argparse.Namespace, body: bytes, body_file: Path
            ) -> TargetResult:
    precheck(target, body)
    out = TargetResult(target.key, target.title)
    if args.warmup > 0:
        _one_run(target, body_file, args.connections, args.threads, args.warmup,
                 args.max_error_rate, "warm-up")
    for i in range(args.runs):
        out.runs.append(_quiet_run(target, body_file, args, args.connections, args.threads,
                                   args.duration, f"run {i + 1}/{args.runs}", out))
    for i in range(args.low_runs):
        out.low.append(_quiet_run(target, body_file, args, 1, 1, args.low_duration,
                                  f"c1 {i + 1}/{args.low_runs}", out))
    return out


def _wait_quiet(threshold: float, max_wait: float) -> None:
    """procs.wait_quiet, reporting to stderr (bench.run and bench.failover)."""
    wait_quiet(threshold, max_wait, lambda msg: print(msg, file=sys.stderr, flush=True))


def _quiet_run(target: Target, body_file: Path, args: argparse.Namespace, connections: int,
               threads: int, duration: float, label: str, out: TargetResult) -> Run:
    """A measured run, repeated (up to --noisy-retries) while unrelated processes took more
    than --noise-threshold cores: on 2 shared cores one test suite would skew the median."""
    for attempt in range(args.noisy_retries + 1):
        _wait_quiet(args.noise_threshold, args.quiet_wait)
        run = _one_run(target, body_file, connections, threads, duration,
                       args.max_error_rate, label if attempt == 0 else f"{label} retry")
        if run.other_cpu / run.wrk.duration_s <= args.noise_threshold:
            return run
    out.noisy += 1
    return run


def check_gateway_log(log: Path) -> tuple[str, bool]:
    """Summarise the ext_proc's per-request log lines: statuses and outcomes it recorded."""
    statuses: collections.Counter[int] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    with log.open("rb") as f:
        for line in f:
            if b'"event": "request"' not in line and b'"event":"request"' not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(line)
                statuses[int(rec.get("status", 0))] += 1
                outcomes[str(rec.get("outcome"))] += 1
    total = sum(statuses.values())
    # wrk closes its connections at the end of each run: the few requests in flight then
    # are logged as client_disconnected (status 0). Anything else non-200 is a real error.
    bad = sum(n for s, n in statuses.items() if s not in (0, 200))
    text = (f"ext_proc logged {total} requests; statuses "
            f"{dict(sorted(statuses.items()))}; outcomes {dict(sorted(outcomes.items()))}")
    return text, bad == 0 and total > 0


# -- report ---------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return f"{v:.2f}"


def _delta(a: float, b: float) -> str:
    return f"{a - b:+.2f}"


def _stats(runs: list[Run]) -> tuple[float, float, float]:
    return (_median([r.wrk.rps for r in runs]), _median([r.wrk.p50_ms for r in runs]),
            _median([r.wrk.p99_ms for r in runs]))


def _cpu_per_request(runs: list[Run]) -> float:
    """Median over runs of all processes' CPU µs per request (wrk included)."""
    return _median([sum(x.cpu.values()) / max(1, x.wrk.requests) * 1e6 for x in runs])


def _proc_cpu(run: Run, proc: str) -> float:
    """CPU seconds of `proc` in `run`, its numbered helper processes (`litellm_1`) included."""
    return sum(v for k, v in run.cpu.items() if k == proc or re.fullmatch(rf"{proc}_\d+", k))


def _proxy_cpu_per_request(runs: list[Run]) -> float:
    """Median over runs of the proxy's own CPU µs per request: neither wrk nor the simulator,
    which every target has, so this is what the proxy under test costs."""
    return _median([sum(v for k, v in x.cpu.items() if k not in _NOT_PROXY)
                    / max(1, x.wrk.requests) * 1e6 for x in runs])


def _columns(results: list[TargetResult]) -> list[str]:
    """CPU table columns: the usual processes, plus LiteLLM's when it was measured."""
    procs = ["wrk", "sim", "envoy", "ext_proc", "control_plane"]
    if any("litellm" in x.cpu for r in results for x in r.runs):
        procs.append("litellm")
    return procs


def summary(results: list[TargetResult]) -> dict[str, dict[str, object]]:
    """Per target: the medians the report shows, as plain numbers (for `--json`)."""
    out: dict[str, dict[str, object]] = {}
    procs = _columns(results)
    for r in results:
        rps, p50, p99 = _stats(r.runs)
        entry: dict[str, object] = {
            "title": r.title, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "cpu_us_per_request": _cpu_per_request(r.runs),
            "proxy_cpu_us_per_request": _proxy_cpu_per_request(r.runs),
            "cpu_us_per_request_by_process": {
                p: _median([_proc_cpu(x, p) / max(1, x.wrk.requests) * 1e6 for x in r.runs])
                for p in procs if any(_proc_cpu(x, p) for x in r.runs)},
            "noisy_runs": r.noisy,
            "runs": [{"rps": x.wrk.rps, "requests": x.wrk.requests, "errors": x.wrk.errors,
                      "duration_s": x.wrk.duration_s, "p50_ms": x.wrk.p50_ms,
                      "p99_ms": x.wrk.p99_ms, "cpu_s": x.cpu, "other_cpu_s": x.other_cpu}
                     for x in r.runs],
        }
        if r.low:
            lrps, l50, l99 = _stats(r.low)
            entry["c1"] = {"rps": lrps, "p50_ms": l50, "p99_ms": l99,
                           "cpu_us_per_request": _cpu_per_request(r.low)}
        out[r.key] = entry
    return out


def machine_facts(tools: dict[str, str] | None = None) -> dict[str, str]:
    """The machine a report was measured on; `tools`: what else it names (default: wrk's
    version; bench.stream names the code instead)."""
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU model": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Envoy": envoy_version(),
        **({"wrk": wrk_version()} if tools is None else tools),
        "load average at start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


HOW_TO_READ = """\
## How to read this

Every number is the **median over the measured runs** (a warm-up run per target is thrown
away); each target runs alone, with only its own processes alive, and a run during which
unrelated processes used more than {noise:g} cores (another test suite, a build) is redone.
Throughput (req/s) is what the whole machine sustained with {connections} keep-alive
connections from wrk; p50/p99 are wrk's per-request latencies at that load. The load
generator, the simulator, Envoy and the ext_proc **share {nproc} cores**, so at
c={connections} every target is CPU-bound and the "added latency" there is mostly queueing
behind a saturated CPU, not work done per request: the **c=1 columns are the per-request
latency the gateway adds** on an otherwise idle machine. The CPU table shows where the
cycles go: CPU time of each process during the measured runs divided by the requests
served (wrk included), and how many cores all of them kept busy. CPU µs per request is the
number to compare across changes: it is far less noisy than req/s on a shared machine, and
`{nproc} x 10^6 / total` bounds the throughput.

The simulator is a single Python (aiohttp + uvloop) process: "simulator direct" and "Envoy
alone" are capped by it (it can use one core at most), not by Envoy. For orientation (from
the design notes, their own setup): a *minimal* one-phase Python ext_proc measured **~5-7k
req/s** where **Envoy alone did ~43k req/s** on this 2-core machine, i.e. one gRPC ext_proc
round trip through Python already costs several times what Envoy spends proxying a request.
The optional `--targets ...,minimal` calibration target measures exactly that do-nothing
one-phase processor here, behind the same simulator. The gateway does much more: **every
gateway request costs one ext_proc gRPC stream of four messages** - the route phase
(listener filter: request headers, the buffered request body, whose reply also carries the
first attempt's translated request, response headers and the buffered response body; a
second, translate-phase stream only when Envoy retries) - plus JSON parsing and rewriting,
one structured log line and Prometheus metrics per request.
Expect its throughput to be a fraction of "Envoy alone"; `python -m bench.profile` shows
where the ext_proc's CPU goes.
"""


def _litellm_section(gw: TargetResult, lite: TargetResult, args: argparse.Namespace
                     ) -> list[str]:
    """Issue 11's side-by-side goal: gateway req/s >= 20x LiteLLM's, CPU/request <= 1/20."""
    g_rps, l_rps = _stats(gw.runs)[0], _stats(lite.runs)[0]
    g_cpu, l_cpu = _proxy_cpu_per_request(gw.runs), _proxy_cpu_per_request(lite.runs)
    g_all, l_all = _cpu_per_request(gw.runs), _cpu_per_request(lite.runs)

    def ok(met: bool) -> str:
        return "yes" if met else "**no**"

    rows = [
        "", f"## Full gateway vs LiteLLM proxy (c={args.connections}, same simulator and load)",
        "",
        "| | full gateway | LiteLLM proxy | gateway advantage | goal (issue 11) | met |",
        "|---|---:|---:|---:|---:|---|",
        f"| req/s | {g_rps:.0f} | {l_rps:.0f} | {g_rps / l_rps:.1f}x | >= 20x | "
        f"{ok(g_rps >= 20 * l_rps)} |",
        f"| proxy CPU µs per request (no wrk, no simulator) | {g_cpu:.0f} | {l_cpu:.0f} | "
        f"{l_cpu / g_cpu:.1f}x less | >= 20x less | {ok(l_cpu >= 20 * g_cpu)} |",
        f"| CPU µs per request, all processes | {g_all:.0f} | {l_all:.0f} | "
        f"{l_all / g_all:.1f}x less | | |",
    ]
    if args.low_runs:
        _, g50, g99 = _stats(gw.low)
        _, l50, l99 = _stats(lite.low)
        rows.append(f"| p50 / p99 ms at c=1 | {g50:.2f} / {g99:.2f} | {l50:.2f} / {l99:.2f} "
                    "| | | |")
    rows += ["", f"LiteLLM {getattr(args, 'litellm_version', '?')} from `{litellm.SPEC}` in its "
             "own venv, `litellm --config ... --num_workers 1`, default settings otherwise; "
             "one model on the simulator's OpenAI-compatible API (bench/litellm.py)."]
    return rows


def render(args: argparse.Namespace, argv: list[str], started: dt.datetime,
           facts: dict[str, str], results: list[TargetResult], body_len: int,
           elapsed_s: float) -> str:
    by_key = {r.key: r for r in results}
    lines = [
        "# Switchyard load benchmark",
        "",
        "Generated by `bench/run.py`; do not edit by hand, rerun it with `--write`.",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'bench.run', *argv])}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S UTC')} (took {elapsed_s:.0f} s)",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- Load: wrk `-t{args.threads} -c{args.connections}`, {args.duration:g} s per run, "
        f"{args.runs} runs (median) after a {args.warmup:g} s warm-up; concurrency-1 pass: "
        f"{args.low_runs} x {args.low_duration:g} s",
        f"- Request: `POST /v1/chat/completions`, non-streaming OpenAI chat body of {body_len} "
        "bytes (bench/wrk.py `request_body`), identical bytes for every target",
        f"- Envoy `--concurrency {args.envoy_concurrency}` for both Envoy alone and the gateway; "
        "simulator with ttft 0, no token pacing, request recording off",
        "",
        f"## Throughput and latency at c={args.connections} (median of {args.runs})",
        "",
        "| Target | req/s | p50 ms | p99 ms | req/s per run | errors |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        rps, p50, p99 = _stats(r.runs)
        per_run = ", ".join(f"{x.wrk.rps:.0f}" for x in r.runs)
        errors = sum(x.wrk.errors for x in r.runs)
        total = sum(x.wrk.requests for x in r.runs)
        lines.append(f"| {r.title} | {rps:.0f} | {_ms(p50)} | {_ms(p99)} | {per_run} | "
                     f"{errors}/{total} |")
    noisy = [f"{r.title}: {r.noisy}" for r in results if r.noisy]
    if noisy:
        lines += ["", f"Runs kept although other processes used more than "
                  f"{args.noise_threshold:g} cores (retries exhausted): {', '.join(noisy)}."]
    if args.low_runs:
        lines += ["", f"## Low load: c=1 (median of {args.low_runs})", "",
                  "| Target | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
        for r in results:
            rps, p50, p99 = _stats(r.low)
            lines.append(f"| {r.title} | {rps:.0f} | {_ms(p50)} | {_ms(p99)} |")
    pairs = [("gateway", "envoy"), ("gateway", "sim"), ("envoy", "sim"), ("minimal", "envoy"),
             ("gateway", "minimal"), ("translated", "minimal"), ("translated", "envoy"),
             ("litellm", "envoy"), ("litellm", "sim")]
    pairs = [(a, b) for a, b in pairs if a in by_key and b in by_key]
    if pairs:
        head = f"| Comparison | Δp50 ms c={args.connections} | Δp99 ms c={args.connections} |"
        sep = "|---|---:|---:|"
        if args.low_runs:
            head += " Δp50 ms c=1 | Δp99 ms c=1 |"
            sep += "---:|---:|"
        lines += ["", "## Added latency (median latency difference)", "", head, sep]
        for a, b in pairs:
            ra, rb = by_key[a], by_key[b]
            _, a50, a99 = _stats(ra.runs)
            _, b50, b99 = _stats(rb.runs)
            row = f"| {ra.title} vs {rb.title} | {_delta(a50, b50)} | {_delta(a99, b99)} |"
            if args.low_runs:
                _, l50a, l99a = _stats(ra.low)
                _, l50b, l99b = _stats(rb.low)
                row += f" {_delta(l50a, l50b)} | {_delta(l99a, l99b)} |"
            lines.append(row)
    procs = _columns(results)
    head = "| Target | " + " | ".join(procs) + " | total | cores busy | other load (cores) |"
    sep = "|---|" + "---:|" * (len(procs) + 3)
    if args.low_runs:
        head += " total c=1 |"
        sep += "---:|"
    lines += ["", f"## CPU per request at c={args.connections} (µs, median of {args.runs})", "",
              head, sep]
    for r in results:
        per = {p: _median([_proc_cpu(x, p) / max(1, x.wrk.requests) * 1e6 for x in r.runs])
               for p in procs if any(_proc_cpu(x, p) for x in r.runs)}
        cells = " | ".join(f"{per[p]:.0f}" if p in per else "-" for p in procs)
        busy = _median([sum(x.cpu.values()) / x.wrk.duration_s for x in r.runs])
        other = _median([x.other_cpu / x.wrk.duration_s for x in r.runs])
        row = (f"| {r.title} | {cells} | {_cpu_per_request(r.runs):.0f} | {busy:.2f} | "
               f"{other:.2f} |")
        if args.low_runs:
            row += f" {_cpu_per_request(r.low):.0f} |"
        lines.append(row)
    if "gateway" in by_key and "litellm" in by_key:
        lines += _litellm_section(by_key["gateway"], by_key["litellm"], args)
    notes = [n for r in results for n in r.notes] + list(getattr(args, "skipped", []))
    if notes:
        lines += ["", "## Response check", "", *(f"- {n}" for n in notes)]
    lines += ["", HOW_TO_READ.format(connections=args.connections, nproc=facts["nproc"],
                                     noise=args.noise_threshold),
              "## Reproduce", "",
              "```sh",
              "apt-get install -y wrk      # benchmark-only dependency",
              shlex.join(["python", "-m", "bench.run", *argv]),
              "python -m bench.profile --duration 10            # py-spy on the ext_proc "
              "(pip install py-spy)",
              "```"]
    return "\n".join(lines).rstrip() + "\n"


# -- main -----------------------------------------------------------------------------------

def run(args: argparse.Namespace, log_dir: Path) -> tuple[list[TargetResult], int]:
    body = request_body(args.body_bytes)
    body_file = log_dir / "body.json"
    body_file.write_bytes(body)
    results: list[TargetResult] = []
    group = ProcessGroup(log_dir / "plain")
    try:
        if _ON_PLAIN_SIM & set(args.targets):
            sim = start_sim(group)
            if "sim" in args.targets:
                results.append(measure(sim, args, body, body_file))
            if "envoy" in args.targets:
                envoy = start_plain_envoy(group, sim, args.envoy_concurrency)
                results.append(measure(envoy, args, body, body_file))
                group.stop("envoy_plain")  # the next target runs alone
            if "minimal" in args.targets:
                minimal = start_minimal(group, sim, args.envoy_concurrency)
                results.append(measure(minimal, args, body, body_file))
                group.stop("envoy_minimal")
                group.stop("ext_proc_minimal")
            if "litellm" in args.targets:
                proxy = litellm.start_litellm(group, sim)
                results.append(measure(proxy, args, body, body_file))
                group.stop("litellm")
        group.close()
        for key, kind, label in (("gateway", "openai", "full gateway"),
                                 ("translated", "anthropic",
                                  "full gateway, Anthropic backend (translated)")):
            if key not in args.targets:
                continue
            gw_logs = log_dir / key
            with running_gateway(gw_logs, args.envoy_concurrency,
                                 gateway_config(args.envoy_concurrency, kind), key,
                                 label) as (target, _gw):
                result = measure(target, args, body, body_file)
            text, ok = check_gateway_log(gw_logs / "ext_proc.log")
            runs = result.runs + result.low
            wrk_total = sum(r.wrk.requests for r in runs)
            wrk_errors = sum(r.wrk.errors for r in runs)
            result.notes.append(f"{label}: wrk saw {wrk_total} completed requests in the "
                                f"measured runs, {wrk_errors} of them errors; {text} "
                                "(includes warm-up and pre-check).")
            if not ok:
                raise BenchError(f"gateway log shows errors: {text}")
            results.append(result)
    finally:
        group.close()
    return results, len(body)


def _kept_sections(path: Path) -> str:
    """Sections other benchmarks (and the change log) wrote into `path`, between
    `<!-- bench.NAME: begin -->` and `<!-- bench.NAME: end -->`: kept on rewrite."""
    text = path.read_text() if path.exists() else ""
    kept = []
    for m in re.finditer(r"<!-- bench\.([a-z_]+): begin -->", text):
        end_marker = f"<!-- bench.{m.group(1)}: end -->"
        end = text.find(end_marker, m.end())
        if end > 0:
            kept.append(text[m.start():end + len(end_marker)])
    return "".join("\n" + k + "\n" for k in kept)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    facts = machine_facts()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    args.skipped = []
    if "litellm" in args.targets:
        args.litellm_version = litellm.ensure_installed()
        if args.litellm_version is None:
            args.targets.remove("litellm")
            args.skipped.append(f"LiteLLM proxy: skipped, `{litellm.SPEC}` could not be "
                                f"installed into {litellm.VENV} (see the messages above).")
            if not args.targets:
                print("bench: nothing left to measure", file=sys.stderr)
                return 1
    print(f"bench: logs in {log_dir}; deadline {_deadline_s(args)} s", file=sys.stderr)
    ok = False
    try:
        with bounded(_deadline_s(args)):
            results, body_len = run(args, log_dir)
        ok = True
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench: FAILED: {exc}\nbench: logs kept in {log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bench: interrupted; children stopped; logs in {log_dir}", file=sys.stderr)
        return 130
    finally:
        if ok and args.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    report = render(args, argv, started, facts, results, body_len, time.monotonic() - t0)
    print(report)
    if args.write:
        RESULTS.write_text(report + _kept_sections(RESULTS))
        print(f"bench: wrote {RESULTS}", file=sys.stderr)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps({
            "command": shlex.join(["python", "-m", "bench.run", *argv]),
            "date": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "machine": facts,
            "load": {"connections": args.connections, "threads": args.threads,
                     "duration_s": args.duration, "runs": args.runs, "body_bytes": body_len,
                     "envoy_concurrency": args.envoy_concurrency},
            "skipped": args.skipped,
            "targets": summary(results),
        }, option=orjson.OPT_INDENT_2))
        print(f"bench: wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
