"""The usage ledger: records, buffering and rotation; `switchyard usage` over it (DuckDB);
`switchyard replay` reading it."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from ext_proc.translate.canonical import Usage
from ext_proc.usage.ledger import FIELDS, Ledger, iso_utc
from ext_proc.usage.record import UsageRecord
from switchyard.replay.trace import read_trace
from switchyard.usage_query import UsageError, parse_since, query


def rec(i: int, model: str = "gpt", tenant: str = "a", cost: float = 0.001,
        outcome: str = "completed") -> UsageRecord:
    return UsageRecord(rid=f"r{i}", model=model, backend=f"p/{model}-up", status=200,
                       stream=False, attempts=1, outcome=outcome, latency_s=0.01 * (i + 1),
                       ttft_s=0.002, usage=Usage(100 + i, 10 + i, i, 1), cost_usd=cost,
                       tenant=tenant, klass="batch", system="openai",
                       response_model=f"{model}-up")


def read(d: Path) -> list[dict]:
    return [orjson.loads(line) for f in sorted(d.glob("*.jsonl"))
            for line in f.read_bytes().splitlines()]


def test_record_has_every_field_and_buffering_writes_on_flush(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "node/1")
    ledger.append(rec(0))
    assert not list(tmp_path.glob("*.jsonl"))  # buffered, not yet written
    ledger.flush()
    [r] = read(tmp_path)
    assert tuple(r) == FIELDS
    assert (r["tenant"], r["class"], r["model"], r["backend"], r["prompt_tokens"],
            r["cached_tokens"], r["completion_tokens"], r["reasoning_tokens"],
            r["attempts"], r["outcome"]) == ("a", "batch", "gpt", "p/gpt-up", 100, 0, 10, 1,
                                             1, "completed")
    assert r["latency_ms"] == 10.0 and r["ttft_ms"] == 2.0 and r["node"] == "node/1"
    assert ledger.path is not None and "/" not in ledger.path.name.removeprefix("usage-")


def test_full_buffer_is_written_at_once_and_files_rotate_by_size(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "n", max_buffered=10, max_file_mb=2000 / 1024 / 1024)
    for i in range(35):
        ledger.append(rec(i))
    assert len(read(tmp_path)) == 30  # three full buffers written, five waiting
    ledger.close()
    assert len(read(tmp_path)) == 35
    assert len(list(tmp_path.glob("*.jsonl"))) > 1


async def test_flush_task_bounds_the_window(tmp_path: Path) -> None:
    import asyncio

    ledger = Ledger(tmp_path, "n", flush_interval_s=0.05)
    task = asyncio.create_task(ledger.run())
    ledger.append(rec(0))
    await asyncio.sleep(0.2)
    assert len(read(tmp_path)) == 1
    ledger.append(rec(1))
    task.cancel()  # cancelling (shutdown) writes what is left
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(read(tmp_path)) == 2


def test_iso_utc() -> None:
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"
    assert iso_utc(86400 + 59.5) == "1970-01-02T00:00:59.500Z"


def test_usage_query_sums_the_records(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "n")
    for i in range(6):
        ledger.append(rec(i, model="gpt" if i % 2 else "claude", tenant="a" if i < 3 else "b",
                          cost=0.001 * (i + 1)))
    ledger.append(rec(9, outcome="rejected", cost=0.0))
    ledger.close()
    names, rows = query(tmp_path, by=("tenant", "model"))
    got = {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in rows}
    records = read(tmp_path)
    for (tenant, model), row in got.items():
        mine = [r for r in records if r["tenant"] == tenant and r["model"] == model]
        assert row["requests"] == len(mine)
        for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens"):
            assert row[k] == sum(r[k] for r in mine)
        assert row["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine), rel=1e-12)
        assert row["not_completed"] == sum(r["outcome"] != "completed" for r in mine)
    # Costliest first; one total row with no grouping.
    assert rows[0][names.index("cost_usd")] == max(r[names.index("cost_usd")] for r in rows)
    names, [total] = query(tmp_path, by=())
    assert total[names.index("requests")] == 7
    # --since in the future: nothing; the window filters on the record's time.
    _, rows = query(tmp_path, since=time.time() + 60, by=())
    assert rows[0][0] == 0


def test_usage_query_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no usage ledger files"):
        query(tmp_path)
    with pytest.raises(UsageError, match="choose from"):
        Ledger(tmp_path, "n").close()
        (tmp_path / "x.jsonl").write_text("")
        query(tmp_path, by=("colour",))
    with pytest.raises(UsageError):
        parse_since("yesterday")
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("1970-01-01T00:01:00Z") == 60


def test_replay_reads_a_ledger_directory_and_skips_rejected(tmp_path: Path) -> None:
    for node in ("n1", "n2"):
        ledger = Ledger(tmp_path, node)
        for i in range(3):
            ledger.append(rec(i))
        ledger.append(rec(7, outcome="rejected"))
        ledger.close()
    trace = read_trace(tmp_path)
    assert len(trace) == 6
    assert trace[0].t == 0 and all(t.model == "gpt" for t in trace)
    assert sorted(t.prompt_tokens for t in trace) == [100, 100, 101, 101, 102, 102]
    one = next(tmp_path.glob("*.jsonl"))
    assert len(read_trace(one)) == 3
