"""`python -m bench.guard`: fail when the gateway's CPU per request grew > 15% over the baseline.

Raw CPU µs per request depends on the machine (and on how busy a shared one is), so the guard
compares a ratio measured within one `bench.run` invocation: the full gateway's own CPU per
request (Envoy + ext_proc + control plane; not wrk, not the simulator) divided by Envoy
alone's CPU per request (all its processes: wrk + simulator + Envoy) - a yardstick of this
machine's speed for the same bytes. The committed bench/baseline.json holds that ratio plus the
raw numbers, the machine and the date; `--update` rewrites it after an intended change.

    python -m bench.guard                      # runs bench.run (envoy,gateway; 3 x 5 s), checks
    python -m bench.guard --json results.json  # checks a `bench.run --json` output instead
    python -m bench.guard --update             # measures and rewrites bench/baseline.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

BASELINE = Path(__file__).resolve().parent / "baseline.json"
#: The allowed growth of the normalized ratio over the baseline (issue 11: 15%).
THRESHOLD = 0.15
METRIC = ("full gateway proxy CPU µs/request (Envoy + ext_proc + control plane) / "
          "Envoy alone CPU µs/request (wrk + simulator + Envoy), same bench.run invocation")


class GuardError(RuntimeError):
    """The input cannot be judged (a target missing, bench.run failed): exit 2, not 1."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    baseline: float
    current: float
    #: current / baseline - 1 (0.10 means 10% more CPU per request than the baseline).
    growth: float
    threshold: float

    def message(self) -> str:
        word = "OK" if self.ok else "REGRESSION"
        return (f"bench.guard: {word}: normalized gateway CPU per request {self.current:.3f} "
                f"vs baseline {self.baseline:.3f} ({self.growth:+.1%}; allowed "
                f"+{self.threshold:.0%})")


def compare(baseline: float, current: float, threshold: float = THRESHOLD) -> Verdict:
    """Pure comparison: a regression is growth strictly above `threshold`; improvements and
    growth within it pass."""
    if baseline <= 0 or current <= 0:
        raise GuardError(f"ratios must be positive (baseline {baseline}, current {current})")
    growth = current / baseline - 1.0
    # The epsilon keeps "exactly +15%" on the passing side despite float rounding.
    return Verdict(growth <= threshold + 1e-9, baseline, current, growth, threshold)


def normalized(results: dict[str, Any]) -> float:
    """The guarded ratio from a `bench.run --json` document (see the module docstring)."""
    targets = results.get("targets", {})
    missing = [k for k in ("envoy", "gateway") if k not in targets]
    if missing:
        raise GuardError(f"results lack target(s) {missing}: run bench.run with "
                         "--targets envoy,gateway")
    gateway = float(targets["gateway"]["proxy_cpu_us_per_request"])
    envoy = float(targets["envoy"]["cpu_us_per_request"])
    if envoy <= 0 or gateway <= 0:
        raise GuardError(f"non-positive CPU per request (gateway {gateway}, envoy {envoy})")
    return gateway / envoy


def baseline_document(results: dict[str, Any]) -> dict[str, Any]:
    """What bench/baseline.json holds: the ratio, the raw numbers, the machine, the date."""
    targets = results["targets"]

    def raw(key: str) -> dict[str, Any]:
        t = targets[key]
        return {k: t[k] for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request",
                                  "proxy_cpu_us_per_request", "cpu_us_per_request_by_process",
                                  "noisy_runs")}

    return {
        "metric": METRIC,
        "normalized_cpu_per_request": round(normalized(results), 4),
        "threshold": THRESHOLD,
        "envoy": raw("envoy"),
        "gateway": raw("gateway"),
        "machine": results.get("machine", {}),
        "date": results.get("date"),
        "command": results.get("command"),
        "load": results.get("load", {}),
    }


def run_bench(runs: int, duration: float, extra: list[str]) -> dict[str, Any]:
    """One `bench.run` for envoy + gateway (short, no c=1 pass), its JSON document."""
    with tempfile.TemporaryDirectory(prefix="switchyard-guard-") as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, "-m", "bench.run", "--targets", "envoy,gateway",
               "--runs", str(runs), "--duration", f"{duration:g}", "--low-runs", "0",
               "--json", str(out), *extra]
        print("bench.guard: $ python " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
        # bench.run's report goes to our stderr: stdout stays the verdict.
        proc = subprocess.run(cmd, stdout=sys.stderr, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not out.exists():
            raise GuardError(f"bench.run failed (exit {proc.returncode})")
        doc: dict[str, Any] = orjson.loads(out.read_bytes())
        return doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.guard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="judge this `bench.run --json` output instead of running bench.run")
    p.add_argument("--baseline", type=Path, default=BASELINE, help="baseline file")
    p.add_argument("--update", action="store_true",
                   help="rewrite the baseline from this measurement instead of judging it")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="allowed growth over the baseline (fraction)")
    p.add_argument("--runs", type=int, default=3, help="bench.run --runs")
    p.add_argument("--duration", type=float, default=5.0, help="bench.run --duration")
    p.add_argument("bench_args", nargs="*", metavar="-- BENCH_ARG",
                   help="further bench.run options, after `--`")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = (orjson.loads(args.json.read_bytes()) if args.json is not None
                   else run_bench(args.runs, args.duration, args.bench_args))
        current = normalized(results)
        noisy = {k: t.get("noisy_runs", 0) for k, t in results["targets"].items()
                 if t.get("noisy_runs")}
        if noisy:
            print(f"bench.guard: warning: runs kept although the machine was busy: {noisy}",
                  file=sys.stderr)
        if args.update:
            doc = baseline_document(results)
            args.baseline.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
            print(f"bench.guard: wrote {args.baseline}: normalized {current:.3f} "
                  f"({dt.datetime.now(dt.UTC):%Y-%m-%d})")
            return 0
        if not args.baseline.exists():
            raise GuardError(f"no baseline at {args.baseline}: create it with --update")
        base = orjson.loads(args.baseline.read_bytes())
        verdict = compare(float(base["normalized_cpu_per_request"]), current, args.threshold)
    except (GuardError, OSError, KeyError, ValueError, orjson.JSONDecodeError) as exc:
        print(f"bench.guard: cannot judge: {exc}", file=sys.stderr)
        return 2
    print(verdict.message())
    machine = base.get("machine", {})
    print(f"bench.guard: baseline from {base.get('date')} on {machine.get('CPU model')} "
          f"({machine.get('nproc')} cores)", file=sys.stderr)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
