"""The translate phase: one upstream attempt's request, built for the backend it goes to.

Runs once per attempt (upstream ext_proc filter inside each backend cluster), so a retry on a
backend of another provider schema is translated again for that backend. Plain data in, plain
data out: `envoy.py` turns an `Upstream` into the CONTINUE_AND_REPLACE headers reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ext_proc.admission.gate import Gate
from ext_proc.providers import PROVIDERS, without
from ext_proc.route import Reject
from ext_proc.state import Attempt, RequestState
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, Routes
from ext_proc.translate.canonical import TranslationError
from ext_proc.usage import metrics
from switchyard.contract import MODEL_HEADER

#: Headers no provider may receive from the client or from an earlier attempt. Upstream
#: filters share one header map across a request's attempts, so each attempt removes every
#: credential/provider header any provider could have set before setting its own.
STRIP_UPSTREAM = (
    "authorization",
    "x-api-key",
    "api-key",
    "anthropic-version",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "accept",
    "cookie",
    MODEL_HEADER,
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """The request one attempt sends: path, authority, body, headers to set and remove."""

    path: bytes
    authority: bytes
    body: bytes
    set_headers: tuple[tuple[str, bytes], ...]
    remove_headers: tuple[str, ...]


class StripList:
    """Headers each attempt removes: `STRIP_UPSTREAM` plus every provider's static headers,
    built once per routing table (not per attempt)."""

    def __init__(self) -> None:
        self._for: tuple[Routes | None, tuple[str, ...]] = (None, STRIP_UPSTREAM)

    def of(self, routes: Routes) -> tuple[str, ...]:
        if self._for[0] is not routes:
            self._for = (routes, (*STRIP_UPSTREAM, *routes.static_header_names))
        return self._for[1]


def resolve(st: RequestState | None, cluster: str, routes: Routes
            ) -> tuple[BackendInfo | None, Reject | None]:
    """The backend an attempt to `cluster` goes to (a hedge cluster's is resolved by the
    caller from endpoint metadata first)."""
    if st is None:
        return None, Reject(500, "Request state not found for this attempt", "api_error",
                            "internal_error")
    backend = next((b for b in st.candidates if b.cluster == cluster), None)
    if backend is None:
        backend = routes.clusters.get(cluster)
    if backend is None:
        return None, Reject(502, f"No backend for cluster {cluster}", "api_error", "no_backend")
    return backend, None


def prepare(st: RequestState, backend: BackendInfo, strip: tuple[str, ...]
            ) -> Upstream | Reject:
    """Record the attempt and build (or reuse) its upstream request."""
    st.attempts.append(Attempt(len(st.attempts) + 1, backend))
    st.backend = backend
    built = st.built.get(backend.cluster)
    if built is None:
        canonical = st.body
        provider = backend.provider
        bad = PROVIDERS[provider.kind].unsupported(canonical)
        if bad:
            if provider.options.get("unsupported_params") == "reject":
                return Reject(400, f"{provider.kind} backends do not support {', '.join(bad)}",
                              "invalid_request_error", "unsupported_parameter", bad[0])
            canonical = without(canonical, bad)
            st.dropped.update(bad)
        try:
            built = st.ingress.request(canonical, st.raw, backend)
        except TranslationError as exc:
            return Reject(exc.status, exc.message, "invalid_request_error", exc.code, exc.param)
        st.built[backend.cluster] = built
    path, body, headers = built
    provider = backend.provider
    return Upstream(
        path=path,
        authority=provider.authority,
        body=body,
        set_headers=(*headers, *((k, v.encode()) for k, v in provider.headers)),
        remove_headers=strip,
    )


def answered(st: RequestState | None, backend: BackendInfo, headers: Mapping[str, str],
             health: BackendHealth, gate: Gate) -> None:
    """An attempt's upstream response headers: metrics, health (429 cool-down, 5xx) and the
    provider's rate-limit headers for admission's backpressure."""
    status = headers.get(":status", "")
    metrics.ATTEMPTS.labels(backend.label, status).inc()
    code = int(status) if status.isdigit() else 0
    if st is not None:
        attempt = st.attempt_for(backend.cluster)
        if attempt is not None:
            attempt.status = code
    if code == 429:
        health.cool_down(backend.cluster, headers.get("retry-after"))
    else:
        health.record(backend.cluster, status[:1] == "5")
    gate.observe(backend.cluster, code, headers)
