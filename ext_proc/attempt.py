"""The translate phase: one upstream attempt's request, built for the backend it goes to.

The route phase builds the first attempt with `prepare` (its reply carries the request for the
first candidate); the upstream ext_proc filter inside each backend cluster runs from the
second attempt on (and for every attempt of a hedged model), so a retry on a backend of
another provider schema is translated again for that backend. Plain data in, plain
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
from switchyard.contract import REQUEST_ID_HEADER

#: The only request headers a provider receives besides what the attempt sets itself (path,
#: authority, content-length, the provider's content type, credentials, version and static
#: headers): the gateway's opaque request id, which later attempts of the request need.
#: Everything else a client sent (user-agent, cookies, x-forwarded-for, its own keys, any
#: x-*) and Envoy's x-envoy-* headers is removed. Attempts of one request share one header
#: map, so this also removes an earlier attempt's provider headers before setting this one's.
UPSTREAM_ALLOWED = frozenset({REQUEST_ID_HEADER})


@dataclass(frozen=True, slots=True)
class Upstream:
    """The request one attempt sends: path, authority, body, headers to set and remove."""

    path: bytes
    authority: bytes
    body: bytes
    set_headers: tuple[tuple[str, bytes], ...]
    remove_headers: tuple[str, ...]


def removed_headers(present: list[str], setting: set[str]) -> tuple[str, ...]:
    """Of the headers the attempt's request carries, those the provider must not see (the
    ones this attempt sets are overwritten instead: a removal would win over the set)."""
    return tuple(n for n in present
                 if n[0] != ":" and n not in UPSTREAM_ALLOWED and n not in setting)


def resolve(st: RequestState | None, cluster: str, routes: Routes
            ) -> tuple[BackendInfo | None, Reject | None]:
    """The backend an attempt to `cluster` goes to (a hedge cluster's is resolved by the
    caller from endpoint metadata first)."""
    if st is None:
        # This process did not route the request (it restarted in between): retryable.
        return None, Reject(503, "Request state not found for this attempt; retry", "api_error",
                            "unavailable", headers=(("retry-after", "1"),))
    backend = next((b for b in st.candidates if b.cluster == cluster), None)
    if backend is None:
        backend = routes.clusters.get(cluster)
    if backend is None:
        return None, Reject(502, f"No backend for cluster {cluster}", "api_error", "no_backend")
    return backend, None


def prepare(st: RequestState, backend: BackendInfo, present: list[str], by_route: bool = False
            ) -> Upstream | Reject:
    """Record the attempt and build (or reuse) its upstream request (`by_route`: the route
    phase builds the first attempt, so that no translate phase runs unless Envoy retries)."""
    st.attempts.append(Attempt(len(st.attempts) + 1, backend, by_route=by_route))
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
    setting = (*headers, *((k.lower(), v.encode()) for k, v in provider.headers))
    return Upstream(
        path=path,
        authority=provider.authority,
        body=body,
        set_headers=setting,
        remove_headers=removed_headers(present, {"content-length", *(k for k, _ in setting)}),
    )


def answered(st: RequestState | None, backend: BackendInfo, headers: Mapping[str, str],
             health: BackendHealth, gate: Gate) -> None:
    """An attempt's upstream response headers: metrics, health (429 cool-down, 5xx) and the
    provider's rate-limit headers for admission's backpressure."""
    status = headers.get(":status", "")
    metrics.child(metrics.ATTEMPTS, backend.label, status).inc()
    code = int(status) if status.isdigit() else 0
    if st is not None:
        attempt = st.attempt_for(backend.cluster)
        if attempt is not None:
            attempt.status = code
    if code == 429:
        health.cool_down(backend.cluster, headers.get("retry-after"))
    else:  # 0: no response at all (refused, reset, timed out)
        health.record(backend.cluster, code == 0 or code >= 500)
    gate.observe(backend.cluster, code, headers)
