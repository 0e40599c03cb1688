"""One finished request as plain data, and what it cost.

The response phase fills a `UsageRecord` when a request ends (completed, rejected, cut off);
metrics and the request log read it, and later the usage ledger and admission reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass

from ext_proc.table import BackendInfo
from ext_proc.translate.canonical import Usage

NO_USAGE = Usage(0, 0)


def cost_usd(backend: BackendInfo | None, usage: Usage) -> float:
    """Provider cost of `usage` at `backend`'s prices (USD per 1M tokens).

    Cached input tokens are billed at the cached-input price (the input price unless the
    config sets `price.cached_input`); reasoning tokens are output tokens."""
    if backend is None:
        return 0.0
    cached = min(usage.cached, usage.prompt)
    return ((usage.prompt - cached) * backend.price_input
            + cached * backend.price_cached_input
            + usage.completion * backend.price_output) / 1e6


@dataclass(slots=True)
class UsageRecord:
    rid: str
    model: str
    #: "provider/model" of the backend that answered, "-" when none did.
    backend: str
    status: int
    stream: bool
    attempts: int
    #: completed | rejected | client_disconnected | interrupted_mid_stream | aborted
    outcome: str
    latency_s: float
    ttft_s: float | None
    usage: Usage
    cost_usd: float
    #: Machine-readable reason of a rejection (the error `code`), else None.
    code: str | None = None
    #: Live selection's explanation (the x-switchyard-route header), else None.
    route: str | None = None
    tenant: str = "default"
    #: Priority class the request ran in.
    klass: str = "interactive"
    #: The answering backend's provider kind (OpenTelemetry's `gen_ai.system`), "" if none.
    system: str = ""
    #: The upstream model that answered (`gen_ai.response.model`), "" if none.
    response_model: str = ""
    #: `chat` or `embeddings` (`gen_ai.operation.name`).
    operation: str = "chat"
    #: GPU pool endpoint (IP:PORT) picked for the answering pool backend, and why (`prefix`,
    #: `score`, `round_robin`, `fail_open`); "" when no pool served the request.
    endpoint: str = ""
    pick: str = ""
