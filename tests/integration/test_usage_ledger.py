"""The usage ledger through a real gateway: one record per request (answered, streamed,
rejected), nothing lost when the gateway stops, and `switchyard usage` figures equal the sums
of the ledger's records; the GenAI semantic-convention metrics appear after traffic."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.conftest import start_gateway

SWITCHYARD = [sys.executable, "-m", "switchyard.cli"]


def test_ledger_records_every_request_and_usage_sums_them(tmp_path: Path) -> None:
    running = start_gateway(tmp_path)
    answers = []
    try:
        url = running.url + "/v1/chat/completions"
        for i in range(4):
            model = "gpt-sim" if i % 2 else "claude-sim"
            r = httpx.post(url, timeout=10, json={
                "model": model, "messages": [{"role": "user", "content": f"hello {i}"}]})
            assert r.status_code == 200
            answers.append((model, r.json()["usage"]))
        with httpx.stream("POST", url, timeout=10, json={
                "model": "gpt-sim", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "stream please"}]}) as s:
            assert s.status_code == 200
            s.read()
        bad = httpx.post(url, timeout=10, json={"model": "nope", "messages": []})
        assert bad.status_code in (400, 404)
        # The same traffic under the OpenTelemetry GenAI metric names.
        metrics = httpx.get(f"http://127.0.0.1:{running.ports['metrics']}/metrics").text
        for line in (
            'gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model='
            '"claude-sim",gen_ai_response_model="claude-3-5-haiku-latest",gen_ai_system='
            '"anthropic",gen_ai_token_type="input"} 2.0',
            'gen_ai_server_request_duration_count{error_type="",gen_ai_operation_name="chat",'
            'gen_ai_request_model="gpt-sim",gen_ai_response_model="gpt-4o-mini",'
            'gen_ai_system="openai"} 3.0',
            "gen_ai_server_time_to_first_token_bucket{",
        ):
            assert line in metrics, line
    finally:
        running.gateway.stop()  # SIGTERM: ext_proc writes what is still buffered
    ledger = tmp_path / "logs" / "usage"
    records = [orjson.loads(line) for f in sorted(ledger.glob("*.jsonl"))
               for line in f.read_bytes().splitlines()]
    assert len(records) == 6
    done = [r for r in records if r["outcome"] == "completed"]
    assert len(done) == 5 and all(r["attempts"] == 1 and r["latency_ms"] > 0 for r in done)
    assert next(r for r in records if r["outcome"] == "rejected")["model"] in ("nope", "")
    by_model: dict[str, list[dict]] = {}
    for r in done:
        by_model.setdefault(r["model"], []).append(r)
    # The ledger's tokens are what the client was told.
    for model, usage in answers:
        assert any(r["prompt_tokens"] == usage["prompt_tokens"]
                   and r["completion_tokens"] == usage["completion_tokens"]
                   for r in by_model[model])
    assert {r["backend"] for r in by_model["claude-sim"]} == {
        "sim-anthropic/claude-3-5-haiku-latest"}
    assert all(r["system"] == "anthropic" and r["cost_usd"] > 0 for r in by_model["claude-sim"])
    out = subprocess.run([*SWITCHYARD, "usage", "--dir", str(ledger), "--by", "model",
                          "--since", "1h", "--csv"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(out.stdout))}
    for model, mine in by_model.items():
        row = rows[model]
        assert int(row["requests"]) == len(mine)
        for k in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            assert int(row[k]) == sum(r[k] for r in mine)
        assert float(row["cost_usd"]) == pytest.approx(sum(r["cost_usd"] for r in mine))
    table = subprocess.run([*SWITCHYARD, "usage", "--dir", str(ledger), "--by",
                            "tenant,model,backend"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "claude-sim" in table.stdout and "default" in table.stdout
