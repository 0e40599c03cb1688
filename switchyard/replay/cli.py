"""The `switchyard replay` subcommand: options, progress line, table / JSON / HTML output.

Only argparse at import time: the CLI builds every subcommand's parser on each start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_SEED = 0
DEFAULT_PRIORITY = "chat"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "replay", help="replay a trace through one or more configs in simulated time",
        description="Drive a trace through the gateway's own selection and admission code "
                    "against simulated backends (prices, latency profiles, qualities, quotas "
                    "and faults from each config), in simulated time, and compare the configs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trace", type=Path, required=True,
                   help="CSV with TIMESTAMP, ContextTokens, GeneratedTokens (the Azure LLM "
                        "inference trace format), the gateway's request log (JSON lines) or "
                        "its usage ledger (a ledger file or directory)")
    p.add_argument("--config", type=Path, action="append", required=True,
                   help="a gateway config to replay; repeat to compare configs")
    p.add_argument("--strategy", action="append", default=None,
                   choices=("none", "ordered", "cost", "latency", "throughput", "quality",
                            "balanced"),
                   help="replay each config once per strategy, overriding the model's "
                        "routing.strategy; `none` drops its routing block (the configured "
                        "order, unhealthy last, as before live selection; its SLO still "
                        "scores the run); repeat to compare; default: the config's own")
    p.add_argument("--model", default=None,
                   help="model alias the trace's requests name; default: the first model "
                        "with `routing:`, else the first model (request logs name their own)")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0,
                   help="TTFT target for SLO attainment when the model has no routing.slo")
    p.add_argument("--priority", default=DEFAULT_PRIORITY,
                   choices=("interactive", "chat", "agent", "batch"),
                   help="admission priority class of the replayed requests")
    p.add_argument("--feedback", type=float, default=0.0,
                   help="share of answered requests that send quality feedback (a draw of "
                        "the serving backend's configured quality), as POST /v1/feedback does")
    p.add_argument("--category", default="chat",
                   choices=("chat", "code", "reasoning", "tools", "long_context", "classify"),
                   help="task category of the trace's requests (traces carry no prompt text; "
                        "prompts over the long-context size stay long_context); `classify` "
                        "runs the live classifier on the synthesised prompts instead")
    p.add_argument("--tenant", default="default",
                   help="tenant the replayed requests belong to (its limits apply)")
    p.add_argument("--start-s", type=float, default=0.0,
                   help="replay from this many seconds into the trace")
    p.add_argument("--duration-s", type=float, default=None,
                   help="replay only this many seconds of the trace; default: all of it")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the simulation's random draws (same seed, same results)")
    p.add_argument("--html", type=Path, default=None,
                   help="write a self-contained HTML report with charts over time here")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON (per-minute series included) instead of "
                        "the table")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    import orjson

    from control_plane.config import ConfigError
    from switchyard.replay.engine import load_run, replay
    from switchyard.replay.report import TRACE_CITATION, html_report, per_minute, summary, table
    from switchyard.replay.trace import TraceError, read_trace, window

    try:
        trace = window(read_trace(args.trace), args.start_s, args.duration_s)
        runs = [load_run(path, strategy, args.model)
                for path in args.config for strategy in (args.strategy or [None])]
    except (ConfigError, TraceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not trace:
        print(f"error: {args.trace}: no requests in the chosen window", file=sys.stderr)
        return 1

    tty = sys.stderr.isatty()
    shown: dict[str, int] = {}

    def progress(label: str, fraction: float) -> None:
        line = f"replay {label}: {fraction * 100:5.1f}% of {len(trace)} requests"
        if tty:
            print("\r" + line, end="\n" if fraction >= 1.0 else "", file=sys.stderr, flush=True)
        elif int(fraction * 4) > shown.get(label, -1):  # a log file: a line per quarter
            shown[label] = int(fraction * 4)
            print(line, file=sys.stderr, flush=True)

    results = replay(runs, trace, seed=args.seed, slo_ttft_ms=args.slo_ttft_ms,
                     priority=args.priority, tenant=args.tenant,
                     feedback=args.feedback,
                     category=args.category, progress=None if args.quiet else progress)
    summaries = [summary(r) for r in results]
    if args.html is not None:
        args.html.write_text(html_report(results, str(args.trace)), encoding="utf-8")
        if not args.quiet:
            print(f"report: {args.html}", file=sys.stderr)
    if args.json:
        out = [{**s, "per_minute": per_minute(r)} for s, r in zip(summaries, results, strict=True)]
        sys.stdout.buffer.write(orjson.dumps({"trace": str(args.trace), "requests": len(trace),
                                              "seed": args.seed, "runs": out},
                                             option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(table(summaries))
        print(f"\n{len(trace)} requests from {args.trace}; selection: "
              f"ext_proc.select.{summaries[0]['selection']}; seed {args.seed}.")
        if "azure" in args.trace.name.lower():
            print(f"Trace: {TRACE_CITATION}")
    return 0
