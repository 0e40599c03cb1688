"""Prometheus metrics of the ext_proc server (the /metrics endpoint serves them)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

_CHILDREN: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """`metric.labels(*labels)`, memoized: prometheus_client validates and locks on every
    `labels()` call (a few µs each, a dozen per request); the children never change."""
    key = (metric, labels)
    c = _CHILDREN.get(key)
    if c is None:
        if len(_CHILDREN) > 100_000:  # unbounded label values would be a bug elsewhere
            _CHILDREN.clear()
        c = _CHILDREN[key] = metric.labels(*labels)
    return c


REQUESTS = Counter("switchyard_requests_total", "Requests answered", ["model", "backend", "status"])
REJECTED = Counter("switchyard_rejected_total", "Requests rejected before routing", ["reason"])
ATTEMPTS = Counter("switchyard_attempts_total", "Upstream attempts by backend and status",
                   ["backend", "status"])
FAILOVERS = Counter("switchyard_failovers_total", "Attempts after the first (retries, hedges)",
                    ["model", "backend"])
#: A retry's translate phase on a worker that did not route the request: built by the owner
#: ("built", or "rejected": an error answer), or the owner could not say ("unavailable": 503).
REMOTE_ATTEMPTS = Counter("switchyard_worker_remote_attempts_total",
                          "Attempts another ext_proc worker built for this one", ["result"])
EJECTIONS = Counter("switchyard_backend_ejections_total",
                    "Outlier ejections seen in Envoy, per backend cluster", ["cluster"])
TOKENS = Counter("switchyard_tokens_total",
                 "Tokens by kind: prompt (incl. cached), completion (incl. reasoning), "
                 "cached (prompt tokens read from a cache), reasoning",
                 ["model", "backend", "kind"])
COST = Counter("switchyard_cost_usd_total", "Estimated provider cost (USD)", ["model", "backend"])
LATENCY = Histogram("switchyard_request_seconds", "Gateway request latency", ["model", "backend"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TTFT = Histogram("switchyard_ttft_seconds", "Time to first response byte", ["model", "backend"],
                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ADMISSION = Counter("switchyard_admission_total",
                    "Admission decisions by tenant, priority class and reason "
                    "(decision: admitted | queued | shed | unauthenticated)",
                    ["tenant", "priority", "decision", "reason"])

# -- OpenTelemetry GenAI semantic conventions (docs/telemetry.md) ------------------------------
# The same requests under the standard names, so GenAI dashboards work unchanged. Prometheus
# spells `gen_ai.client.token.usage` as `gen_ai_client_token_usage` (dots become underscores;
# histograms get _bucket/_sum/_count). Buckets: the conventions' advisory boundaries.
_GENAI_LABELS = ["gen_ai_system", "gen_ai_request_model", "gen_ai_response_model",
                 "gen_ai_operation_name"]
GENAI_TOKENS = Histogram(
    "gen_ai_client_token_usage", "Tokens per request by gen_ai_token_type (input, output)",
    [*_GENAI_LABELS, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
             16777216, 67108864))
GENAI_TTFT = Histogram(
    "gen_ai_server_time_to_first_token", "Time to first token (seconds)", _GENAI_LABELS,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0))
GENAI_DURATION = Histogram(
    "gen_ai_server_request_duration", "Generative AI request duration (seconds)",
    [*_GENAI_LABELS, "error_type"],
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
             81.92))

#: Provider kind -> the conventions' `gen_ai.system` value (others: the kind itself).
GENAI_SYSTEM = {"openai": "openai", "azure_openai": "az.ai.openai", "anthropic": "anthropic",
                "bedrock": "aws.bedrock", "gemini": "gcp.gemini", "vertex": "gcp.vertex_ai",
                "vllm": "vllm", "tgi": "tgi"}
