"""`python -m bench.soak [--minutes 30] [--rate 25]`: hours of traffic in minutes; do the
processes stay the same size?

Starts the gateway (simulated providers, free loopback ports) and sends mixed load at a fixed
rate (open loop, bounded in flight): OpenAI chat and Anthropic Messages, buffered and
streamed, a model whose first backend fails a third of its requests (Envoy fails over to the
second), and clients that hang up mid-stream. Every `--sample-s` seconds it reads the resident
memory (VmRSS) and open file descriptors of Envoy, ext_proc and the control plane from
/proc. After the run, the first third is warm-up; each series is *flat* when the mean of the
last third exceeds the mean of the second third by at most `--tolerance` (relative) or the
absolute slack (`--rss-slack-mib`, `--fd-slack`), whichever is larger. Prints a table and exits
1 when a series grew, a process died, or the gateway answered an undocumented 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.sections import write_section
from switchyard.launcher import Gateway, free_ports

WATCHED = ("envoy", "ext_proc", "control_plane")
DOCUMENTED_5XX = frozenset({502, 503, 504})
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def soak_config(ports: dict[str, int]) -> str:
    """The embedded default (two simulated providers) plus a flaky provider for failovers."""
    return f"""\
# Written by bench/soak.py for one run.
listen: {{address: 127.0.0.1, port: {ports['listen']}}}
admin: {{address: 127.0.0.1, port: {ports['admin']}}}
control_plane: {{address: 127.0.0.1, port: {ports['xds']}}}
ext_proc: {{address: 127.0.0.1, port: {ports['ext_proc']}, metrics_port: {ports['metrics']}}}
envoy_concurrency: 1
providers:
  sim-openai:
    kind: openai
    base_url: "http://127.0.0.1:{ports['openai']}"
    api_key: {{value: "sk-soak-openai"}}
    simulate: {{ttft_ms: 20, tokens_per_s: 400}}
  sim-anthropic:
    kind: anthropic
    base_url: "http://127.0.0.1:{ports['anthropic']}"
    api_key: {{value: "sk-soak-anthropic"}}
    simulate: {{ttft_ms: 30, tokens_per_s: 300}}
  sim-flaky:
    kind: openai
    base_url: "http://127.0.0.1:{ports['flaky']}"
    api_key: {{value: "sk-soak-flaky"}}
    simulate: {{ttft_ms: 10, tokens_per_s: 400, error_rate: 0.33, error_status: 503}}
models:
  gpt-sim:
    backends:
      - {{provider: sim-openai, model: gpt-4o-mini, price: {{input: 0.15, output: 0.60}}}}
  claude-sim:
    backends:
      - {{provider: sim-anthropic, model: claude-3-5-haiku-latest,
          price: {{input: 0.8, output: 4.0}}}}
  failover-sim:
    backends:
      - {{provider: sim-flaky, model: gpt-4o-mini, price: {{input: 0.15, output: 0.60}}}}
      - {{provider: sim-anthropic, model: claude-3-5-haiku-latest,
          price: {{input: 0.8, output: 4.0}}}}
"""


# ------------------------------------------------------------------------------ sampling


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Series:
    """One metric of one process over the run."""

    name: str
    unit: str
    slack: float
    values: list[float] = field(default_factory=list)

    def thirds(self) -> tuple[float, float, float]:
        """(first value after warm-up, mean of the second third, mean of the last third)."""
        n = len(self.values)
        a, b = n // 3, 2 * n // 3
        second, last = self.values[a:b] or self.values, self.values[b:] or self.values
        return self.values[a] if n else 0.0, sum(second) / len(second), sum(last) / len(last)

    def flat(self, tolerance: float) -> bool:
        _, second, last = self.thirds()
        return last - second <= max(tolerance * second, self.slack)


# ---------------------------------------------------------------------------------- load

_PROMPTS = ("Tell me about lighthouses", "Summarise the history of trains in one paragraph",
            "Write a haiku about load balancers", "What is an ext_proc filter?",
            "List three uses of Envoy", "Explain failover to a child")


@dataclass
class Load:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    undocumented: list[str] = field(default_factory=list)
    in_flight: int = 0
    skipped: int = 0


def _request(rng: random.Random) -> tuple[str, str, dict[str, object], bool]:
    """(kind, path, body, disconnect early) of one request of the mix."""
    prompt = f"{rng.choice(_PROMPTS)} #{rng.randrange(10**6)}"
    pick = rng.random()
    stream = rng.random() < 0.5
    disconnect = False
    if pick < 0.08:
        stream, disconnect = True, True
    api = CHAT if rng.random() < 0.55 else MESSAGES
    if pick < 0.08 or pick > 0.85:
        model = "failover-sim" if pick > 0.85 else rng.choice(("gpt-sim", "claude-sim"))
    else:
        model = rng.choice(("gpt-sim", "claude-sim"))
    if api == CHAT:
        body: dict[str, object] = {"model": model, "max_tokens": rng.choice((16, 48, 96)),
                                   "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
    else:
        body = {"model": model, "max_tokens": rng.choice((16, 48, 96)), "stream": stream,
                "messages": [{"role": "user", "content": prompt}]}
    kind = ("disconnect" if disconnect else
            f"{'chat' if api == CHAT else 'messages'} {'stream' if stream else 'buffered'}"
            + (" failover" if model == "failover-sim" else ""))
    return kind, api, body, disconnect


async def _one(http: httpx.AsyncClient, rng: random.Random, load: Load) -> None:
    kind, path, body, disconnect = _request(rng)
    load.kinds[kind] += 1
    load.in_flight += 1
    try:
        if disconnect:
            async with http.stream("POST", path, json=body) as resp:
                async for _ in resp.aiter_raw():
                    break  # hang up after the first bytes of the stream
            load.statuses[f"{resp.status_code} (hung up)"] += 1
            return
        resp = await http.post(path, json=body)
        load.statuses[str(resp.status_code)] += 1
        if (resp.status_code >= 500 and resp.status_code not in DOCUMENTED_5XX
                and len(load.undocumented) < 20):
            load.undocumented.append(f"{resp.status_code} {kind}: {resp.content[:200]!r}")
    except httpx.HTTPError as exc:
        load.transport_errors[type(exc).__name__] += 1
    finally:
        load.in_flight -= 1
        load.sent += 1


async def run_load(url: str, seconds: float, rate: float, sample_s: float,
                   sample: Callable[[], None], progress: Callable[[float], None],
                   seed: int, load: Load, max_in_flight: int = 128) -> None:
    """Open-loop load at `rate` req/s for `seconds` (counted into `load`), calling
    `sample()` every `sample_s` seconds."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=32)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"authorization": "Bearer soak"}) as http:
        t0 = time.monotonic()
        next_sample = t0
        next_progress = t0 + 60
        i = 0
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_sample:
                sample()
                next_sample += sample_s
            if now >= next_progress:
                progress(now - t0)
                next_progress += 60
            due = t0 + i / rate
            if now < due:
                await asyncio.sleep(min(due - now, 0.05))
                continue
            i += 1
            if load.in_flight >= max_in_flight:
                load.skipped += 1  # the gateway is behind: never pile up without bound
                continue
            task = asyncio.create_task(_one(http, rng, load))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()


# ----------------------------------------------------------------------------------- main


def report_lines(series: list[Series], load: Load, minutes: float, rate: float,
                 tolerance: float, dead: list[str], samples: int) -> tuple[list[str], bool]:
    """The Markdown report and whether the run passed."""
    ok = not dead and not load.undocumented
    lines = [f"{minutes:g} min at {rate:g} req/s: {load.sent:,} requests "
             f"({load.skipped} skipped as over the in-flight cap), {samples} samples; "
             f"warm-up = first third, flat = last third's mean within "
             f"{tolerance:.0%} (or the slack) of the second third's.", "",
             "| process | metric | after warm-up | 2nd third mean | last third mean | "
             "change | flat |", "|---|---|---:|---:|---:|---:|---|"]
    for s in series:
        first, second, last = s.thirds()
        flat = s.flat(tolerance)
        ok = ok and flat
        pct = (last - second) / second * 100 if second else 0.0
        fmt = "{:.1f}" if s.unit == "MiB" else "{:.0f}"
        lines.append(f"| {s.name} | {s.unit} | {fmt.format(first)} | {fmt.format(second)} | "
                     f"{fmt.format(last)} | {pct:+.1f}% | {'yes' if flat else '**no**'} |")
    lines += ["", "Requests by kind: " + ", ".join(
        f"{k} {n:,}" for k, n in sorted(load.kinds.items())) + ".",
        "Statuses: " + ", ".join(f"{k}: {n:,}" for k, n in sorted(load.statuses.items()))
        + (f"; transport errors: {dict(load.transport_errors)}" if load.transport_errors
           else "") + "."]
    lines += [f"Undocumented 5xx: {len(load.undocumented)}; processes died: "
              f"{', '.join(dead) if dead else 'none'}."]
    lines += [f"- {u}" for u in load.undocumented[:10]]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="duration (default %(default)s)")
    p.add_argument("--rate", type=float, default=25.0,
                   help="requests per second (default %(default)s; 2 shared cores)")
    p.add_argument("--sample-s", type=float, default=5.0,
                   help="seconds between RSS/fd samples (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="allowed relative growth, last third vs second (default %(default)s)")
    p.add_argument("--rss-slack-mib", type=float, default=4.0,
                   help="allowed absolute RSS growth (default %(default)s MiB)")
    p.add_argument("--fd-slack", type=float, default=4.0,
                   help="allowed absolute fd growth (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true",
                   help="put the report into bench/RESULTS.md (section bench.soak)")
    args = p.parse_args(argv)

    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic", "flaky"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    work = Path(tempfile.mkdtemp(prefix="switchyard-soak-"))
    config = work / "gateway.yaml"
    config.write_text(soak_config(ports))
    gw = Gateway(config, log_dir=work / "logs", log_level="warning")
    print(f"soak: {args.minutes:g} min at {args.rate:g} req/s; logs in {work / 'logs'}",
          flush=True)
    gw.start()
    series: list[Series] = []
    dead: list[str] = []
    load = Load()
    samples = 0
    try:
        gw.wait_ready(timeout=90)
        pids = {name: gw.procs[name].pid for name in WATCHED}
        for name in WATCHED:
            series.append(Series(f"{name} RSS", "MiB", args.rss_slack_mib))
            series.append(Series(f"{name} fds", "fds", args.fd_slack))

        def sample() -> None:
            nonlocal samples
            samples += 1
            for k, name in enumerate(WATCHED):
                proc = gw.procs[name]
                if proc.poll() is not None and not any(name in d for d in dead):
                    dead.append(f"{name} (exit {proc.returncode})")
                series[2 * k].values.append(rss_mib(pids[name]))
                series[2 * k + 1].values.append(open_fds(pids[name]))

        def progress(elapsed: float) -> None:
            now = ", ".join(f"{s.name} {s.values[-1]:.0f}" for s in series if s.values)
            print(f"  {elapsed / 60:4.1f} min: {load.sent:,} answered, statuses "
                  f"{dict(load.statuses)}; {now}", flush=True)

        asyncio.run(run_load(gw.url, args.minutes * 60, args.rate, args.sample_s,
                             sample, progress, args.seed, load))
        sample()
    finally:
        gw.stop()
    lines, ok = report_lines(series, load, args.minutes, args.rate, args.tolerance, dead,
                             samples)
    print("\n" + "\n".join(lines))
    print(f"\nsoak: {'ok' if ok else 'FAIL'}")
    if args.write:
        header = [f"## Soak (`python -m bench.soak --minutes {args.minutes:g} --rate "
                  f"{args.rate:g}`)", "",
                  "Generated by `bench/soak.py --write`; rerun it to refresh. "
                  f"Result: **{'flat' if ok else 'NOT flat'}**.", ""]
        write_section("soak", "\n".join(header + lines))
    if ok:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
