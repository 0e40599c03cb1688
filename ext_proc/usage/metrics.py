"""Prometheus metrics of the ext_proc server (the /metrics endpoint serves them)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("switchyard_requests_total", "Requests answered", ["model", "backend", "status"])
REJECTED = Counter("switchyard_rejected_total", "Requests rejected before routing", ["reason"])
ATTEMPTS = Counter("switchyard_attempts_total", "Upstream attempts by backend and status",
                   ["backend", "status"])
FAILOVERS = Counter("switchyard_failovers_total", "Attempts after the first (retries, hedges)",
                    ["model", "backend"])
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
