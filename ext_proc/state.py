"""Per-request state shared by the phases of one request, and one record per attempt.

The route phase creates a `RequestState` and builds the first attempt itself; each retry's
translate-phase stream (same process) finds it by the request id and appends an `Attempt`;
the response phase reads which attempt answered and accounts the request when it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ext_proc.admission import Reservation
from ext_proc.ingress import INGRESS, Ingress
from ext_proc.providers.base import ResponseHandler
from ext_proc.select.rank import Selection
from ext_proc.table import BackendInfo
from switchyard.contract import CHAT_PATH

#: A built upstream request: (path with query, body, headers to set).
Built = tuple[bytes, bytes, list[tuple[str, bytes]]]


@dataclass(slots=True)
class Attempt:
    """One upstream attempt as the translate phase saw it."""

    number: int
    backend: BackendInfo
    started: float = field(default_factory=time.monotonic)
    #: Upstream status once its response headers arrived (0 before).
    status: int = 0
    #: Built by the route phase (the first attempt): no translate phase sees its answer.
    by_route: bool = False


class RequestState:
    """One HTTP request's state from the route phase to the end of its response."""

    __slots__ = (
        "attempts",
        "backend",
        "body",
        "built",
        "bytes_in",
        "candidates",
        "dropped",
        "envoy_attempts",
        "failed",
        "feedback",
        "handler",
        "ingress",
        "klass",
        "logged",
        "max_price_usd",
        "model",
        "pool_pick",
        "present",
        "rate_headers",
        "raw",
        "reservation",
        "response_id",
        "rid",
        "selection",
        "slo_ttft_ms",
        "status",
        "stream",
        "t0",
        "t_first",
        "tenant",
    )

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.t0 = time.monotonic()
        self.t_first: float | None = None
        self.ingress: Ingress = INGRESS[CHAT_PATH]
        #: The canonical (OpenAI chat) request, and the request as the client sent it (for
        #: same-schema passthrough).
        self.body: dict[str, Any] = {}
        self.raw: dict[str, Any] = {}
        self.bytes_in = 0
        self.model = ""
        self.stream = False
        self.candidates: tuple[BackendInfo, ...] = ()
        #: Names of the headers the client sent (what the first attempt must remove).
        self.present: list[str] = []
        #: Attempts seen by the translate phase, in start order.
        self.attempts: list[Attempt] = []
        #: Envoy's own attempt count (refused connections included), from the response.
        self.envoy_attempts = 0
        #: The backend whose response the client gets (the attempt that answered).
        self.backend: BackendInfo | None = None
        #: Upstream requests already built, per backend cluster (a retry reuses them).
        self.built: dict[str, Built] = {}
        self.dropped: set[str] = set()
        self.status = 0
        self.handler: ResponseHandler | None = None
        #: True once an error replaced the response: nothing more goes to the client.
        self.failed = False
        self.logged = False
        #: `POST /v1/feedback` (answered by the route phase itself).
        self.feedback = False
        #: Live selection's choice (explained in x-switchyard-route); None: not selected.
        self.selection: Selection | None = None
        #: The response's own `id` (what `POST /v1/feedback` names), once seen.
        self.response_id: str | None = None
        #: Client's per-request tightening of the SLO and price cap (None: the model's).
        self.slo_ttft_ms: float | None = None
        self.max_price_usd: float | None = None
        #: Caller and class (admission); what admission charged; x-ratelimit-* to send back.
        self.tenant = "default"
        self.klass = "interactive"
        self.reservation: Reservation | None = None
        self.rate_headers: tuple[tuple[str, str], ...] = ()
        #: GPU pool pick: (pool, endpoint IP:PORT, reason), for the log line; None: no pool.
        self.pool_pick: tuple[str, str, str] | None = None

    def attempt_for(self, cluster: str) -> Attempt | None:
        """The latest attempt that went to `cluster`."""
        for a in reversed(self.attempts):
            if a.backend.cluster == cluster:
                return a
        return None

    @property
    def attempt_count(self) -> int:
        return max(len(self.attempts), self.envoy_attempts)
