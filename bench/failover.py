"""`python -m bench.failover`: the latency a failover adds, for connect-refused and for 500.

One full gateway, three models over simulated providers (ttft 0, no token pacing):

- `baseline`: [sim-a], no failover;
- `refused`: [dead (nothing listens on its port), sim-b];
- `err500`: [sim-c (answers 500 to everything), sim-b].

The failing providers have `health: {consecutive_failures: 1000000}`, so Envoy never ejects
them. Two measurements:

(a) **cost of one failover**, concurrency 1 (httpx, keep-alive): `--requests` requests per
    model, interleaved. Every `refused` request fails over (Envoy's count of requests failed
    by a connection failure must grow by one per request). For `err500` only requests with
    `x-switchyard-attempts: 2` count; the route phase demotes a backend after 3 consecutive 5xx
    (ext_proc/stats/health.py FAST_DEMOTE_AFTER), so after every 2 measured requests sim-c answers
    one unmeasured request (its fault is switched off for it), which restarts that count.
    A last `err500` pass without that reset shows what the demotion does.
(b) **under load**: wrk, `--connections` connections, `--runs` x `--duration` s per model
    (rounds interleaved across models) after a warm-up, same ~1 KB body as bench/run.py;
    reports the share of requests that still paid a failover (Envoy's per-backend counters).

Every client response must be a 200 from the expected backend, or the benchmark fails.
`--write` puts the report into bench/RESULTS.md between markers, keeping the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from bench.procs import bounded, cpu_seconds, free_ports, http_status, machine_busy_seconds
from bench.run import (
    FAILOVER_BEGIN,
    FAILOVER_END,
    RESULTS,
    BenchError,
    Run,
    _one_run,
    _wait_quiet,
    check_gateway_log,
    machine_facts,
)
from bench.targets import CHAT_PATH, Target
from bench.wrk import MODEL, request_body
from control_plane.config import GatewayConfig
from switchyard.launcher import Gateway

MODELS = ("baseline", "refused", "err500")
#: model -> (provider of the first backend, the provider that must answer).
EXPECTED = {"baseline": ("sim-a", "sim-a"), "refused": ("dead", "sim-b"),
            "err500": ("sim-c", "sim-b")}
#: Envoy counter that grows by one per request whose first try failed (a refused connect
#: fails every request waiting for it; a 500 that Envoy retried), per failing model.
FAIL_COUNTER = {"refused": f"cluster.dead.{MODEL}.upstream_rq_pending_failure_eject",
                "err500": f"cluster.sim-c.{MODEL}.retry.upstream_rq_5xx"}
#: Measured err500 requests between two resets of the route phase's consecutive-5xx count
#: (it demotes a backend at 3; ext_proc/stats/health.py FAST_DEMOTE_AFTER).
_RESET_EVERY = 2
_WARMUP_REQUESTS = 20
_STARTUP_S = 90


# -- the gateway ----------------------------------------------------------------------------

def gateway_config(ports: dict[str, int], concurrency: int) -> str:
    """Three models over three simulated providers and one dead one, on `ports`."""
    never_eject = "health: {consecutive_failures: 1000000, ejection_s: 1}"
    sim = "simulate: {ttft_ms: 0, tokens_per_s: 0}"

    def provider(name: str, extra: str) -> str:
        return (f"  {name}:\n    kind: openai\n"
                f"    base_url: \"http://127.0.0.1:{ports[name]}\"\n"
                f"    api_key: {{value: \"sk-bench-not-a-secret\"}}\n    {extra}\n")

    def model(name: str, *providers: str) -> str:
        backends = ", ".join(f"{{provider: {p}, model: {MODEL}}}" for p in providers)
        return f"  {name}:\n    backends: [{backends}]\n"

    return (
        "# Written by bench/failover.py for one benchmark run.\n"
        f"listen: {{address: 127.0.0.1, port: {ports['listen']}}}\n"
        f"admin: {{address: 127.0.0.1, port: {ports['admin']}}}\n"
        f"control_plane: {{address: 127.0.0.1, port: {ports['xds']}}}\n"
        f"ext_proc: {{address: 127.0.0.1, port: {ports['ext_proc']}, "
        f"metrics_port: {ports['metrics']}}}\n"
        f"envoy_concurrency: {concurrency}\n"
        "providers:\n"
        + provider("sim-a", sim) + provider("sim-b", sim)
        + provider("sim-c", f"{sim}\n    {never_eject}") + provider("dead", never_eject)
        + "models:\n"
        + model("baseline", "sim-a") + model("refused", "dead", "sim-b")
        + model("err500", "sim-c", "sim-b")
    )


@dataclass
class Bench:
    """The running gateway and the knobs the measurements need."""

    gw: Gateway
    ports: dict[str, int]
    bodies: dict[str, bytes]
    log_dir: Path

    @property
    def url(self) -> str:
        return self.gw.url + CHAT_PATH

    def sim_options(self, name: str, **opts: object) -> None:
        status, body, _ = http_status(f"http://127.0.0.1:{self.ports[name]}/_sim/options",
                                      "PUT", orjson.dumps(opts))
        if status != 200:
            raise BenchError(f"{name}: PUT /_sim/options {opts} -> {status} {body[:200]!r}")

    def envoy_counter(self, name: str) -> int:
        status, body, _ = http_status(
            f"http://127.0.0.1:{self.ports['admin']}/stats?filter=^{name}$")
        if status != 200:
            raise BenchError(f"Envoy admin /stats -> {status}")
        lines = body.decode().splitlines()
        return sum(int(ln.rsplit(":", 1)[1]) for ln in lines if ln.split(":", 1)[0] == name)

    def check_alive(self) -> None:
        for name, proc in self.gw.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"gateway {name} exited with code {proc.returncode} "
                                 f"(log: {self.log_dir / (name + '.log')})")

    def target(self, model: str) -> Target:
        pids = {name: proc.pid for name, proc in self.gw.procs.items()}
        return Target(model, model, self.url, pids, self.check_alive)


def _refused(port: int) -> bool:
    """True if nothing accepts connections on `port` (connection refused)."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def running_bench(log_dir: Path, concurrency: int, body: bytes) -> Iterator[Bench]:
    """Start the gateway, switch sim recording off and sim-c's 500s on; stop it on exit."""
    names = ["listen", "admin", "xds", "ext_proc", "metrics", "sim-a", "sim-b", "sim-c",
             "dead"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "gateway.yaml"
    config.write_text(gateway_config(ports, concurrency))
    base = orjson.loads(body)
    bodies = {m: orjson.dumps({**base, "model": m}) for m in MODELS}
    gw = Gateway(config, log_dir=log_dir)
    try:
        gw.start()
        gw.wait_ready(timeout=60)
        bench = Bench(gw, ports, bodies, log_dir)
        if not _refused(ports["dead"]):
            raise BenchError(f"something listens on the 'dead' port {ports['dead']}")
        for name in ("sim-a", "sim-b", "sim-c"):
            bench.sim_options(name, record_limit=0)
        bench.sim_options("sim-c", error_rate=1.0, error_status=500)
        yield bench
    finally:
        gw.stop()


# -- (a) cost of one failover at concurrency 1 ----------------------------------------------

@dataclass
class Sample:
    ms: float
    attempts: int
    backend: str


@dataclass
class ClientResult:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    #: Envoy's failed-first-try counter delta and requests sent (warm-up included) per model.
    first_try_failures: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: err500 without the count reset: samples and the pass's duration.
    natural: list[Sample] = field(default_factory=list)
    natural_s: float = 0.0
    #: Cores other processes kept busy during (a) (noise).
    other_load: float = 0.0


def _post(client: httpx.Client, bench: Bench, model: str, expect_backend: str) -> Sample:
    """One request; fails loudly unless it is a 200 chat completion from `expect_backend`."""
    t0 = time.perf_counter()
    resp = client.post(bench.url, content=bench.bodies[model])
    ms = (time.perf_counter() - t0) * 1000
    backend = resp.headers.get("x-switchyard-backend", "")
    if resp.status_code != 200 or not orjson.loads(resp.content).get("choices"):
        raise BenchError(f"{model}: got {resp.status_code}: {resp.content[:300]!r}")
    if backend.split("/", 1)[0] != expect_backend:
        raise BenchError(f"{model}: answered by {backend!r}, expected {expect_backend}")
    return Sample(ms, int(resp.headers.get("x-switchyard-attempts", "0")), backend)


def _reset_sim_c(client: httpx.Client, bench: Bench) -> None:
    """One err500 request answered by sim-c itself: restarts the consecutive-5xx count."""
    bench.sim_options("sim-c", error_rate=0.0)
    try:
        sample = _post(client, bench, "err500", "sim-c")
        if sample.attempts != 1:
            raise BenchError(f"err500 reset request took {sample.attempts} attempts")
    finally:
        bench.sim_options("sim-c", error_rate=1.0)


def measure_client(bench: Bench, n: int) -> ClientResult:
    """(a): `n` interleaved requests per model at concurrency 1, then the err500 natural pass."""
    out = ClientResult({m: [] for m in MODELS})
    sent = dict.fromkeys(MODELS, 0)
    before = {m: bench.envoy_counter(c) for m, c in FAIL_COUNTER.items()}
    headers = {"content-type": "application/json"}
    with httpx.Client(headers=headers, timeout=10.0) as client:
        since_reset = 0
        for i in range(_WARMUP_REQUESTS + n):
            for model in MODELS:
                if model == "err500" and since_reset == _RESET_EVERY:
                    _reset_sim_c(client, bench)
                    since_reset = 0
                sample = _post(client, bench, model, EXPECTED[model][1])
                sent[model] += 1
                since_reset += model == "err500"
                if i >= _WARMUP_REQUESTS:
                    out.samples[model].append(sample)
        bench.check_alive()
        for model, counter in FAIL_COUNTER.items():
            delta = bench.envoy_counter(counter) - before[model]
            out.first_try_failures[model] = (delta, sent[model])
            if delta < sent[model]:
                raise BenchError(f"{model}: only {delta} of {sent[model]} requests failed "
                                 f"their first try ({counter}); the failover was skipped")
        # Natural pass: sim-c always 500, no reset; starts from a fresh count.
        _reset_sim_c(client, bench)
        t0 = time.monotonic()
        out.natural = [_post(client, bench, "err500", "sim-b") for _ in range(n)]
        out.natural_s = time.monotonic() - t0
    return out


# -- (b) under load -------------------------------------------------------------------------

@dataclass
class LoadRun:
    run: Run
    #: Requests whose first try failed during the run (Envoy counter delta).
    failovers: int


@dataclass
class LoadResult:
    model: str
    runs: list[LoadRun] = field(default_factory=list)
    noisy: int = 0


def _load_run(bench: Bench, model: str, body_file: Path, args: argparse.Namespace,
              duration: float, label: str) -> LoadRun:
    counter = FAIL_COUNTER.get(model)
    before = bench.envoy_counter(counter) if counter else 0
    run = _one_run(bench.target(model), body_file, args.connections, args.threads, duration,
                   args.max_error_rate, label)
    failovers = bench.envoy_counter(counter) - before if counter else 0
    return LoadRun(run, failovers)


def measure_load(bench: Bench, body_files: dict[str, Path], args: argparse.Namespace
                 ) -> list[LoadResult]:
    """(b): a warm-up per model, then `--runs` rounds of one wrk run per model (interleaved,
    so drift hits every model alike), each run redone while the machine was busy."""
    out = {model: LoadResult(model) for model in MODELS}
    if args.warmup > 0:
        for model in MODELS:
            _load_run(bench, model, body_files[model], args, args.warmup, "warm-up")
    for i in range(args.runs):
        for model in MODELS:
            for attempt in range(args.noisy_retries + 1):
                _wait_quiet(args.noise_threshold, args.quiet_wait)
                label = f"run {i + 1}/{args.runs}" + (" retry" if attempt else "")
                lr = _load_run(bench, model, body_files[model], args, args.duration, label)
                if lr.run.other_cpu / lr.run.wrk.duration_s <= args.noise_threshold:
                    break
            else:
                out[model].noisy += 1
            out[model].runs.append(lr)
    return list(out.values())


# -- report ---------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _pcts(samples: list[Sample]) -> tuple[float, float, float]:
    ms = [s.ms for s in samples]
    return percentile(ms, 50), percentile(ms, 90), percentile(ms, 99)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def code_version() -> str:
    """The commit measured, and which top-level folders had uncommitted changes."""
    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout if out.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = sorted({ln[3:].split("/", 1)[0] for ln in git("status", "--porcelain").splitlines()
                    if ln[3:] and not ln[3:].startswith("bench/")})
    return sha + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


def render(args: argparse.Namespace, argv: list[str], started: dt.datetime,
           facts: dict[str, str], client: ClientResult, load: list[LoadResult],
           body_len: int, log_note: str, elapsed_s: float) -> str:
    n = args.requests
    base50, _, base99 = _pcts(client.samples["baseline"])
    lines = [
        FAILOVER_BEGIN,
        "## Failover latency",
        "",
        "Generated by `bench/failover.py`; do not edit by hand, rerun it with `--write` "
        "(it replaces only this section).",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'bench.failover', *argv])}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M:%S UTC')} (took {elapsed_s:.0f} s)",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- One gateway (Envoy `--concurrency {args.envoy_concurrency}`), three models: "
        "`baseline` = [sim-a]; `refused` = [dead, sim-b], nothing listens on dead's port; "
        "`err500` = [sim-c, sim-b], sim-c answers every request 500 (`/_sim/options` "
        "`error_rate: 1.0`). Simulators: ttft 0, no token pacing, recording off. dead and sim-c "
        "have `health: {consecutive_failures: 1000000, ejection_s: 1}`: Envoy never ejects them",
        f"- Request: `POST /v1/chat/completions`, the bench/run.py body ({body_len} bytes, "
        "non-streaming) with `model` set to the model under test",
        "",
        f"### (a) Cost of one failover at concurrency 1 ({n} requests per model)",
        "",
        "| Model | requests counted | p50 ms | p90 ms | p99 ms | Δp50 ms | Δp99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, what in (("baseline", "all"), ("refused", "all (every one failed over)"),
                        ("err500", "`x-switchyard-attempts: 2`")):
        samples = client.samples[model]
        if model == "err500":
            samples = [s for s in samples if s.attempts == 2]
        p50, p90, p99 = _pcts(samples)
        delta = ("-", "-") if model == "baseline" else (f"{p50 - base50:+.2f}",
                                                         f"{p99 - base99:+.2f}")
        lines.append(f"| {model} | {len(samples)} of {n}, {what} | {p50:.2f} | {p90:.2f} | "
                     f"{p99:.2f} | {delta[0]} | {delta[1]} |")
    nat = client.natural
    nat_att = Counter(s.attempts for s in nat)
    nat50, _, nat99 = _pcts(nat)
    fails = "; ".join(f"{m}: {d} failed first tries for {s} requests"
                      for m, (d, s) in client.first_try_failures.items())
    lines += [
        "",
        f"- Failed first tries seen by Envoy during (a), warm-up and resets included: {fails}.",
        f"- Other processes kept {client.other_load:.2f} cores busy during (a).",
        f"- Without the reset (sim-c always 500, {len(nat)} requests back to back in "
        f"{client.natural_s:.1f} s): attempts {dict(sorted(nat_att.items()))}, p50 "
        f"{nat50:.2f} ms, p99 {nat99:.2f} ms over all of them - the route phase demoted sim-c "
        "after its 3rd consecutive 500 and sends it only one request per 2 s demotion "
        "window, so almost no request pays the failover.",
        "",
        f"### (b) Under load: wrk `-t{args.threads} -c{args.connections}`, "
        f"{args.duration:g} s per run, median of {args.runs} (rounds interleaved across models) "
        f"after a {args.warmup:g} s warm-up per model",
        "",
        "| Model | req/s | p50 ms | p99 ms | Δp50 ms | Δp99 ms | failed first tries (share) | "
        "CPU µs/request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    stats = {r.model: (_median([x.run.wrk.rps for x in r.runs]),
                       _median([x.run.wrk.p50_ms for x in r.runs]),
                       _median([x.run.wrk.p99_ms for x in r.runs])) for r in load}
    for r in load:
        rps, p50, p99 = stats[r.model]
        requests = sum(x.run.wrk.requests for x in r.runs)
        errors = sum(x.run.wrk.errors for x in r.runs)
        failed = sum(x.failovers for x in r.runs)
        share = "-" if r.model == "baseline" else f"{failed} ({100 * failed / requests:.1f}%)"
        cpu = _median([sum(x.run.cpu.values()) / max(1, x.run.wrk.requests) * 1e6
                       for x in r.runs])
        if r.model == "baseline" or "baseline" not in stats:
            d50 = d99 = "-"
        else:
            d50 = f"{p50 - stats['baseline'][1]:+.2f}"
            d99 = f"{p99 - stats['baseline'][2]:+.2f}"
        lines.append(f"| {r.model} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {d50} | {d99} | "
                     f"{share} | {cpu:.0f} | {errors}/{requests} |")
    noisy = [f"{r.model}: {r.noisy}" for r in load if r.noisy]
    if noisy:
        lines += ["", f"Runs kept although other processes used more than "
                  f"{args.noise_threshold:g} cores (retries exhausted): {', '.join(noisy)}."]
    lines += [
        "",
        f"- Response check: every request of (a) was a 200 from the expected backend; {log_note}"
        " (everything above, warm-ups included).",
        "",
        "### How to read this",
        "",
        "(a) is the price of one failover. At concurrency 1 on an idle machine, Δp50/Δp99 are "
        "what a request that fails over pays on top of a `baseline` request (same client, "
        "same body, the three models interleaved, so drift hits all alike; the client is "
        "httpx, so absolute numbers are higher than wrk's c=1 numbers above, the deltas are "
        "what counts). **refused**: Envoy's connect to the dead port is refused at once and it "
        "retries on sim-b after its retry back-off (`base_interval` 5 ms, fully jittered: "
        "0-5 ms for the first retry); the translate phase is never called for the refused try "
        "(Envoy runs upstream filters only once it has a connection); at the time of this "
        "run `x-switchyard-attempts` therefore said 1 (it now comes from Envoy's own attempt "
        "count), and the check that every request failed over is "
        "Envoy's `upstream_rq_pending_failure_eject` counter of the dead backend. **err500**: "
        "the failed try is a full round trip - translate phase, sim-c's 500 (which the "
        "translate phase records) - then the back-off and the retry to sim-b with its own "
        "translate phase. p99 over a few hundred requests is "
        "roughly the 3rd-slowest: read it as a rough tail.",
        "",
        "(b) is what steady load sees. \"Failed first tries\" is Envoy's counter for the "
        "failing backend over the measured runs (requests failed by a connection failure; "
        "500s it retried), as a share "
        "of the requests wrk completed (requests still in flight when a run ends count in the "
        "first, not the second, so it can read a little over 100%). **err500**: after 3 "
        "consecutive 500s the route phase orders sim-c last for 2 s (ext_proc/stats/health.py), so "
        "only the few requests at the edge of each demotion window pay the failover (with "
        "Envoy's default health settings, outlier ejection would do the same for longer). "
        "**refused** is different: at the time of this run the route phase never saw a "
        "refused try (no response reaches the translate phase; it now learns of them from "
        "Envoy's attempt count and demotes the backend too), so only Envoy's outlier "
        "ejection could move the dead backend last - and this benchmark switches that off "
        "(`consecutive_failures: 1000000`) - so every request pays the failover: this row is "
        "the cost of a failover on every request under load, in req/s and CPU µs per "
        "request (all processes, wrk included). With the default health settings (5 "
        "consecutive failures, 30 s ejection) Envoy would eject the dead backend after 5 "
        "connect failures and the route phase would order it last from its next admin poll "
        "(every 0.5 s) on.",
        FAILOVER_END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked failover section in `path`, or append it; keep everything else."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(FAILOVER_BEGIN), text.find(FAILOVER_END)
    if start != -1 and end != -1:
        text = text[:start] + section + text[end + len(FAILOVER_END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    default_concurrency = GatewayConfig.model_fields["envoy_concurrency"].default
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300,
                   help="(a): measured requests per model at concurrency 1")
    p.add_argument("--connections", type=int, default=16, help="(b): wrk connections")
    p.add_argument("--runs", type=int, default=3, help="(b): measured wrk runs per model")
    p.add_argument("--duration", type=float, default=10.0, help="(b): seconds per wrk run")
    p.add_argument("--warmup", type=float, default=3.0, help="(b): warm-up seconds per model")
    p.add_argument("--threads", type=int, default=1, help="(b): wrk threads")
    p.add_argument("--envoy-concurrency", type=int, default=default_concurrency,
                   help="Envoy worker threads (default: the gateway config default)")
    p.add_argument("--body-bytes", type=int, default=1024, help="approximate request body size")
    p.add_argument("--max-error-rate", type=float, default=0.0,
                   help="(b): fail if wrk's errors (HTTP >= 400, socket) exceed this fraction")
    p.add_argument("--noise-threshold", type=float, default=0.25,
                   help="redo a wrk run if unrelated processes used more cores than this")
    p.add_argument("--noisy-retries", type=int, default=2, help="how often to redo a noisy run")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="seconds to wait, before each run, for other load to drop")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="keep child logs here (default: a temp dir, removed on success)")
    p.add_argument("--write", action="store_true",
                   help=f"put the report into {RESULTS.name} (replacing only its own section)")
    args = p.parse_args(argv)
    if min(args.requests, args.connections, args.runs, args.threads) < 1 or args.duration <= 0:
        p.error("--requests, --connections, --runs, --threads and --duration must be positive")
    if args.warmup < 0 or args.noisy_retries < 0:
        p.error("--warmup and --noisy-retries must not be negative")
    return args


def _deadline_s(args: argparse.Namespace) -> int:
    """Hard limit for the whole benchmark (generous: 50 ms per client request)."""
    per_try = args.quiet_wait + 5 + (_WARMUP_REQUESTS + args.requests) * 5 * 0.05
    client = (1 + args.noisy_retries) * per_try
    per_run = args.duration + args.quiet_wait + 11
    load = len(MODELS) * (args.warmup + 11 + (1 + args.noisy_retries) * args.runs * per_run)
    return int(_STARTUP_S + client + load + 60)


def _quiet_client(bench: Bench, args: argparse.Namespace) -> ClientResult:
    """(a), redone (up to --noisy-retries) while unrelated processes used the cores."""
    pids = [os.getpid(), *(proc.pid for proc in bench.gw.procs.values())]
    for attempt in range(args.noisy_retries + 1):
        _wait_quiet(args.noise_threshold, args.quiet_wait)
        own, busy, t0 = sum(map(cpu_seconds, pids)), machine_busy_seconds(), time.monotonic()
        client = measure_client(bench, args.requests)
        other = machine_busy_seconds() - busy - (sum(map(cpu_seconds, pids)) - own)
        client.other_load = max(0.0, other) / (time.monotonic() - t0)
        print(f"  (a) {'retry ' if attempt else ''}other CPU {client.other_load:.2f} cores",
              file=sys.stderr, flush=True)
        if client.other_load <= args.noise_threshold:
            break
    return client


def run(args: argparse.Namespace, log_dir: Path) -> tuple[ClientResult, list[LoadResult],
                                                            int, str]:
    body = request_body(args.body_bytes)
    with running_bench(log_dir / "gateway", args.envoy_concurrency, body) as bench:
        print(f"failover: (a) {args.requests} requests per model at c=1", file=sys.stderr,
              flush=True)
        client = _quiet_client(bench, args)
        for model, samples in client.samples.items():
            p50, _, p99 = _pcts(samples)
            att = dict(sorted(Counter(s.attempts for s in samples).items()))
            print(f"  {model:8} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  attempts {att}",
                  file=sys.stderr, flush=True)
        body_files = {model: log_dir / f"{model}.json" for model in MODELS}
        for model, path in body_files.items():
            path.write_bytes(bench.bodies[model])
        load = measure_load(bench, body_files, args)
        bench.check_alive()
    note, ok = check_gateway_log(log_dir / "gateway" / "ext_proc.log")
    if not ok:
        raise BenchError(f"gateway log shows errors: {note}")
    return client, load, len(body), note


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    facts = {"commit": code_version(), **machine_facts()}
    machine_busy_seconds()  # fail early if /proc is unreadable
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="switchyard-failover-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = _deadline_s(args)
    print(f"failover: logs in {log_dir}; deadline {deadline} s", file=sys.stderr)
    ok = False
    try:
        with bounded(deadline):
            client, load, body_len, note = run(args, log_dir)
        ok = True
    except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        print(f"failover: FAILED: {exc}\nfailover: logs kept in {log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"failover: interrupted; children stopped; logs in {log_dir}", file=sys.stderr)
        return 130
    finally:
        if ok and args.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    report = render(args, argv, started, facts, client, load, body_len, note,
                    time.monotonic() - t0)
    print(report)
    if args.write:
        write_section(RESULTS, report)
        print(f"failover: wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
