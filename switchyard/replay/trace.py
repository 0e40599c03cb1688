"""Trace readers for `switchyard replay`: one `TraceRequest` per request, arrival times in
seconds from the trace's first request.

Two formats, told apart by their first line:

* CSV with `TIMESTAMP`, `ContextTokens`, `GeneratedTokens` (any column order, names matched
  without case): the Azure LLM inference trace format (Patel et al., "Splitwise: Efficient
  generative LLM inference using phase splitting", ISCA 2024; CC-BY 4.0). `TIMESTAMP` is an
  ISO date-time (`2023-11-16 18:15:46.6805900`, more than six fractional digits allowed) or a
  number of seconds.
* The gateway's own request log: JSON lines, those with `"event": "request"` (written by
  `ext_proc.usage.account`), using `timestamp` (when the request ended), `latency_ms`,
  `prompt_tokens`, `completion_tokens` and `model`. Rejected requests (no tokens) and other
  log lines are skipped; the arrival is the end time less the latency.
* The usage ledger (`ext_proc/usage/ledger.py`): the same JSON lines with the same field
  names (its rejected requests say `"outcome": "rejected"` and are skipped), as one file or
  as the ledger's directory (every `*.jsonl` in it, several nodes' files merged by time).

Prompts are not in either trace (privacy): the replay synthesises prompts of the given sizes.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson


class TraceError(ValueError):
    """A trace file the readers do not understand (names the file and line)."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    #: Seconds after the trace's first request.
    t: float
    prompt_tokens: int
    output_tokens: int
    #: The model alias the request named (request logs only).
    model: str | None = None


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _seconds(text: str) -> float:
    """An ISO date-time (any number of fractional digits; naive = UTC) or plain seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _relative(rows: Iterable[tuple[float, int, int, str | None]]) -> list[TraceRequest]:
    ordered = sorted(rows, key=lambda r: r[0])
    if not ordered:
        return []
    t0 = ordered[0][0]
    return [TraceRequest(t - t0, p, o, m) for t, p, o, m in ordered]


def read_csv(lines: Iterable[str], name: str = "<trace>") -> list[TraceRequest]:
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return []
    cols = {}
    for want in ("timestamp", "contexttokens", "generatedtokens"):
        if want not in header:
            raise TraceError(f"{name}:1: CSV trace needs the columns TIMESTAMP, ContextTokens, "
                             f"GeneratedTokens (missing {want!r})")
        cols[want] = header.index(want)
    ti, ci, gi = cols["timestamp"], cols["contexttokens"], cols["generatedtokens"]
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        try:
            rows.append((_seconds(row[ti]), max(0, int(row[ci])), max(0, int(row[gi])), None))
        except (IndexError, ValueError) as exc:
            raise TraceError(f"{name}:{lineno}: bad trace row {row!r}: {exc}") from None
    return _relative(rows)


def read_request_log(lines: Iterable[str], name: str = "<trace>") -> list[TraceRequest]:
    rows = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line.startswith("{"):
            continue  # other output interleaved with the log (a console line, a traceback)
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TraceError(f"{name}:{lineno}: not a JSON log line: {exc}") from None
        if (not isinstance(rec, dict) or rec.get("event") != "request"
                or rec.get("outcome") == "rejected"):
            continue
        prompt, completion = rec.get("prompt_tokens"), rec.get("completion_tokens")
        stamp = rec.get("timestamp")
        if not isinstance(prompt, int) or not isinstance(completion, int) or not stamp:
            continue  # rejected before any backend: no tokens to replay
        try:
            end = _seconds(str(stamp))
        except ValueError as exc:
            raise TraceError(f"{name}:{lineno}: bad timestamp {stamp!r}: {exc}") from None
        latency = rec.get("latency_ms")
        start = end - (latency / 1000 if isinstance(latency, int | float) else 0.0)
        model = rec.get("model")
        rows.append((start, prompt, completion, model if isinstance(model, str) else None))
    return _relative(rows)


def _first_line(lines: Iterator[str]) -> str:
    for line in lines:
        if line.strip():
            return line
    return ""


def read_trace(path: str | Path) -> list[TraceRequest]:
    """Read a CSV trace, a request log or a usage ledger (file or directory)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise TraceError(f"{path}: no usage ledger files (*.jsonl) in this directory")
        lines: list[str] = []
        for f in files:
            lines.extend(f.read_text(encoding="utf-8").splitlines())
        return read_request_log(lines, str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: trace is not UTF-8 text") from None
    first = _first_line(iter(io.StringIO(text)))
    if first.lstrip().startswith("{"):
        return read_request_log(io.StringIO(text), str(path))
    return read_csv(io.StringIO(text), str(path))


def window(trace: list[TraceRequest], start_s: float = 0.0, duration_s: float | None = None
           ) -> list[TraceRequest]:
    """The requests arriving in [start_s, start_s + duration_s), times shifted to start at 0."""
    end = float("inf") if duration_s is None else start_s + duration_s
    return [TraceRequest(r.t - start_s, r.prompt_tokens, r.output_tokens, r.model)
            for r in trace if start_s <= r.t < end]
