"""Where a finished request goes: Prometheus metrics, the usage ledger (`ledger.py`) and the
structured request log line."""

from __future__ import annotations

import structlog

from ext_proc.usage import ledger, metrics
from ext_proc.usage.record import NO_USAGE, UsageRecord, cost_usd

__all__ = ["NO_USAGE", "UsageRecord", "account", "cost_usd"]

log = structlog.get_logger("switchyard.request")


def account(r: UsageRecord) -> None:
    """Metrics, the usage ledger and the one log line of a finished request."""
    if ledger.LEDGER is not None:
        ledger.LEDGER.append(r)
    if r.outcome == "rejected":
        metrics.child(metrics.REJECTED, r.code or "rejected").inc()
        log.info("request", rid=r.rid, model=r.model or None, tenant=r.tenant,
                 priority=r.klass, status=r.status, outcome="rejected", code=r.code,
                 latency_ms=round(r.latency_s * 1000, 1))
        return
    u = r.usage
    m = metrics
    m.child(m.REQUESTS, r.model, r.backend, str(r.status)).inc()
    m.child(m.LATENCY, r.model, r.backend).observe(r.latency_s)
    if r.ttft_s is not None:
        m.child(m.TTFT, r.model, r.backend).observe(r.ttft_s)
    for kind, n in (("prompt", u.prompt), ("completion", u.completion), ("cached", u.cached),
                    ("reasoning", u.reasoning)):
        if n:
            m.child(m.TOKENS, r.model, r.backend, kind).inc(n)
    if r.cost_usd:
        m.child(m.COST, r.model, r.backend).inc(r.cost_usd)
    if r.attempts > 1:
        m.child(m.FAILOVERS, r.model, r.backend).inc(r.attempts - 1)
    _genai(r)
    log.info(
        "request",
        rid=r.rid,
        model=r.model,
        tenant=r.tenant,
        priority=r.klass,
        backend=r.backend,
        status=r.status,
        stream=r.stream,
        attempts=r.attempts,
        outcome=r.outcome,
        latency_ms=round(r.latency_s * 1000, 1),
        ttft_ms=round(r.ttft_s * 1000, 1) if r.ttft_s is not None else None,
        prompt_tokens=u.prompt,
        completion_tokens=u.completion,
        cached_tokens=u.cached,
        reasoning_tokens=u.reasoning,
        cost_usd=round(r.cost_usd, 8),
        route=r.route,
        endpoint=r.endpoint or None,
        pick=r.pick or None,
    )


def _genai(r: UsageRecord) -> None:
    """The request under the OpenTelemetry GenAI semantic-convention metric names."""
    m = metrics
    labels = (m.GENAI_SYSTEM.get(r.system, r.system or "_OTHER"), r.model,
              r.response_model or "", r.operation)
    error = "" if 200 <= r.status < 400 and r.outcome == "completed" else (
        str(r.status) if r.status else r.outcome)
    m.child(m.GENAI_DURATION, *labels, error).observe(r.latency_s)
    if r.ttft_s is not None:
        m.child(m.GENAI_TTFT, *labels).observe(r.ttft_s)
    u = r.usage
    if u.prompt or u.completion:
        m.child(m.GENAI_TOKENS, *labels, "input").observe(u.prompt)
        m.child(m.GENAI_TOKENS, *labels, "output").observe(u.completion)
