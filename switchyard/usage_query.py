"""`switchyard usage`: cost and volume questions over the usage ledger, answered by DuckDB.

The ledger is a directory of JSONL files (`ext_proc/usage/ledger.py`); DuckDB reads them all
(`read_json` over a glob, the columns typed explicitly so files from older versions, with fewer
fields, still read) and groups them. Only this command imports duckdb: never the gateway.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Ledger columns and their DuckDB types.
COLUMNS: dict[str, str] = {
    "timestamp": "TIMESTAMPTZ", "node": "VARCHAR", "rid": "VARCHAR", "tenant": "VARCHAR",
    "class": "VARCHAR", "model": "VARCHAR", "backend": "VARCHAR", "system": "VARCHAR",
    "response_model": "VARCHAR", "operation": "VARCHAR", "status": "INTEGER",
    "outcome": "VARCHAR", "code": "VARCHAR", "stream": "BOOLEAN", "prompt_tokens": "BIGINT",
    "cached_tokens": "BIGINT", "completion_tokens": "BIGINT", "reasoning_tokens": "BIGINT",
    "cost_usd": "DOUBLE", "latency_ms": "DOUBLE", "ttft_ms": "DOUBLE", "attempts": "INTEGER",
    "route": "VARCHAR", "endpoint": "VARCHAR", "pick": "VARCHAR",
}
#: What `--by` may group on.
GROUPS = ("tenant", "model", "backend", "class", "node", "outcome", "system", "response_model",
          "operation", "status", "endpoint", "pick", "day", "hour")
_DERIVED = {"day": "strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%d')",
            "hour": "strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%d %H:00')"}
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(ValueError):
    pass


def parse_since(text: str, now: float | None = None) -> float:
    """`24h`, `30m`, `7d`, `90s`, `2w` ago, or an ISO date-time: as Unix time."""
    now = time.time() if now is None else now
    m = _SINCE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: want a duration (24h, 30m, 7d) or an ISO "
                         "date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def query(directory: Path, since: float | None = None, by: tuple[str, ...] = ("model",),
          until: float | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Per group: requests, not completed, tokens by kind, cost, latency and TTFT quantiles.
    Returns (column names, rows), costliest group first."""
    import duckdb

    for key in by:
        if key not in GROUPS:
            raise UsageError(f"--by {key!r}: choose from {', '.join(GROUPS)}")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise UsageError(f"no usage ledger files (*.jsonl) in {directory}")
    keys = [f"{_DERIVED.get(k, k)} AS {k}" if k in _DERIVED else f'"{k}"' for k in by]
    where, params = [], []
    if since is not None:
        where.append("timestamp >= to_timestamp(?)")
        params.append(since)
    if until is not None:
        where.append("timestamp < to_timestamp(?)")
        params.append(until)
    columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS.items()) + "}"
    sql = f"""
        SELECT {', '.join([*keys, ''])}
               count(*) AS requests,
               count(*) FILTER (WHERE outcome <> 'completed') AS not_completed,
               coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(cached_tokens), 0) AS cached_tokens,
               coalesce(sum(completion_tokens), 0) AS completion_tokens,
               coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
               coalesce(sum(cost_usd), 0) AS cost_usd,
               round(quantile_cont(latency_ms, 0.5), 1) AS latency_p50_ms,
               round(quantile_cont(latency_ms, 0.95), 1) AS latency_p95_ms,
               round(quantile_cont(ttft_ms, 0.5), 1) AS ttft_p50_ms
        FROM read_json(?, format = 'newline_delimited', columns = {columns},
                       ignore_errors = true)
        {'WHERE ' + ' AND '.join(where) if where else ''}
        {'GROUP BY ALL' if by else ''}
        ORDER BY cost_usd DESC, requests DESC
    """
    con = duckdb.connect()
    try:
        cur = con.execute(sql, [[str(f) for f in files], *params])
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    return names, rows


def _fmt(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if name == "cost_usd":
        return f"{value:.6f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_table(names: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_fmt(v, n) for v, n in zip(row, names, strict=True)] for row in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    numeric = [bool(rows) and isinstance(rows[0][i], int | float) for i in range(len(names))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(names), line(["-" * w for w in widths]), *map(line, cells)])


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "usage", help="cost and volume from the usage ledger (DuckDB)",
        description="Sum the usage ledger (one record per request) by tenant, model, backend, "
                    "...: requests, tokens by kind, cost, latency and TTFT.",
        formatter_class=formatter)
    p.add_argument("--dir", type=Path, default=None,
                   help="ledger directory; default: the config's ledger.dir, else "
                        "$XDG_STATE_HOME/switchyard/usage (where `switchyard up` writes)")
    p.add_argument("--config", type=Path, default=None,
                   help="take the ledger directory from this config's `ledger.dir`")
    p.add_argument("--since", default="24h",
                   help="records since this long ago (30m, 24h, 7d) or an ISO date-time; "
                        "`all` for every record")
    p.add_argument("--until", default=None,
                   help="records before this long ago or ISO date-time; default: now")
    p.add_argument("--by", default="model",
                   help=f"comma-separated grouping, from: {', '.join(GROUPS)}; '' for one "
                        "total")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    return p


def resolve_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    if args.config is not None:
        from control_plane.config import load_config
        from switchyard.launcher import ledger_dir

        found = ledger_dir(load_config(args.config), Path(args.config).resolve(), None)
        if found is not None:
            return found
    from ext_proc.usage.ledger import default_dir

    return default_dir()


def run(args: argparse.Namespace) -> int:
    try:
        since = None if args.since == "all" else parse_since(args.since)
        until = parse_since(args.until) if args.until else None
        by = tuple(k.strip() for k in args.by.split(",") if k.strip())
        names, rows = query(resolve_dir(args), since, by, until)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(names)
        w.writerows(rows)
    else:
        print(render_table(names, rows))
    return 0
