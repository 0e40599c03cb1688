"""GenAI semantic-convention metrics: what one finished request records, and the Grafana
dashboard only queries metric names the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from ext_proc.translate.canonical import Usage
from ext_proc.usage import account
from ext_proc.usage.record import UsageRecord

DASHBOARD = Path(__file__).resolve().parents[4] / "deploy/grafana/dashboards/switchyard-genai.json"


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_one_request_under_genai_names() -> None:
    labels = {"gen_ai_system": "aws.bedrock", "gen_ai_request_model": "genai-test",
              "gen_ai_response_model": "anthropic.claude", "gen_ai_operation_name": "chat"}
    before = _value("gen_ai_client_token_usage_sum", {**labels, "gen_ai_token_type": "input"})
    account(UsageRecord(rid="x", model="genai-test", backend="b/anthropic.claude", status=200,
                        stream=True, attempts=1, outcome="completed", latency_s=0.5,
                        ttft_s=0.1, usage=Usage(300, 40), cost_usd=0.0, system="bedrock",
                        response_model="anthropic.claude"))
    assert _value("gen_ai_client_token_usage_sum",
                  {**labels, "gen_ai_token_type": "input"}) == before + 300
    assert _value("gen_ai_client_token_usage_sum", {**labels, "gen_ai_token_type": "output"}) >= 40
    assert _value("gen_ai_server_time_to_first_token_count", labels) >= 1
    assert _value("gen_ai_server_request_duration_count", {**labels, "error_type": ""}) >= 1


def test_dashboard_queries_exported_metrics() -> None:
    exported = generate_latest().decode()
    dash = json.loads(DASHBOARD.read_text())
    names = {m for p in dash["panels"] for t in p["targets"]
             for m in re.findall(r"\b((?:gen_ai|switchyard)_[a-z_]+)\{", t["expr"])}
    assert {"gen_ai_server_request_duration_count", "gen_ai_client_token_usage_sum",
            "gen_ai_server_time_to_first_token_bucket"} <= names
    for name in names:
        assert f"\n{name}" in exported or f"# TYPE {name.rsplit('_', 1)[0]}" in exported, name
