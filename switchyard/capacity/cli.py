"""`switchyard plan` and `switchyard profile` argument parsing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("plan", help="size a GPU pool for a trace and compare its cost with "
                       "hosted backends", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trace", type=Path, required=True,
                   help="Azure LLM inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens) "
                        "or the gateway's request log")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--pool", default=None, help="the pool provider (default: the first)")
    p.add_argument("--profile", type=Path, default=None,
                   help="GPU profile JSON from `switchyard profile` (default: simulate.engine)")
    p.add_argument("--slo-ttft-ms", type=float, default=500.0)
    p.add_argument("--slo-tpot-ms", type=float, default=50.0)
    p.add_argument("--window-s", type=float, default=600.0,
                   help="busiest window of the trace replayed through the simulator")
    p.add_argument("--html", type=Path, default=None, help="write an HTML report here")
    p.add_argument("--png", type=Path, default=None, help="write the main chart here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_cmd_plan)
    q = sub.add_parser("profile", help="measure an endpoint (vLLM or simulated) into a GPU "
                       "profile", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("url", help="the endpoint's base URL, e.g. http://127.0.0.1:8000")
    q.add_argument("--model", default="model")
    q.add_argument("--out", type=Path, default=None, help="write the profile JSON here")
    q.set_defaults(func=_cmd_profile)


def _cmd_plan(args: argparse.Namespace) -> int:
    from control_plane.config import ConfigError, load_config
    from switchyard.capacity.plan import make_plan
    from switchyard.capacity.report import main_chart_png, table, write_html
    from switchyard.replay.trace import TraceError, read_trace

    try:
        cfg = load_config(args.config)
        trace = read_trace(args.trace)
        plan = make_plan(cfg, trace, pool=args.pool, slo_ttft_ms=args.slo_ttft_ms,
                         slo_tpot_ms=args.slo_tpot_ms, profile_json=args.profile,
                         window_s=args.window_s)
    except (ConfigError, TraceError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        print(table(plan))
    if args.html or args.png:
        png = main_chart_png(plan)
        if args.png:
            args.png.write_bytes(png)
        if args.html:
            write_html(plan, args.html, png)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from switchyard.capacity.profile import measure

    prof = measure(args.url, args.model)
    text = json.dumps(prof, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
