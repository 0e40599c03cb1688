"""The admission decision, as plain data: Admit, Queue or Shed.

    admit(tenant, klass, alias, candidates, tokens)
      1. the tenant's own limits (tenant, then tenant x model): RPM 1, TPM `tokens`, one slot;
         class shares do not apply (they are the tenant's own quota);
      2. each candidate backend in failover order: its provider's and its own limits, of which
         the request's class may use only its `quota_share`, and the provider's backpressure;
         a backend without headroom is skipped for the next that has it (spill-over);
      3. some candidate has headroom -> Admit(those candidates, in order) charging the tenant
         and the first of them; none -> Queue (class has max_queue_ms and the earliest refill
         comes within it) or Shed (the limit that refused, exact retry-after, headers).

All of it is synchronous dict/attribute work on local objects: no awaits, so check-then-take
is atomic within the event loop. `reconcile` replaces the estimate with the true usage (and
moves the charge to the backend that answered); `release` frees the concurrency slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ext_proc.admission.backpressure import Backpressure
from ext_proc.admission.buckets import go_duration
from ext_proc.admission.estimate import Estimator
from ext_proc.admission.priorities import DEFAULTS, PriorityClass, compile_priorities
from ext_proc.admission.store import Limits, LocalStore, Scope

#: A concurrency limit has no refill time: suggest this retry-after.
CONCURRENCY_RETRY_S = 1.0
NO_LIMITS = Limits()


class _Provider(Protocol):
    @property
    def name(self) -> str: ...


class Candidate(Protocol):
    """What admission needs of a backend (ext_proc.table.BackendInfo fits)."""

    @property
    def cluster(self) -> str: ...
    @property
    def provider(self) -> _Provider: ...


@dataclass(frozen=True, slots=True)
class TenantLimits:
    limits: Limits = NO_LIMITS
    #: Per (tenant, model alias) limits.
    models: Mapping[str, Limits] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)
    providers: Mapping[str, Limits] = field(default_factory=dict)
    #: Keyed by Envoy cluster name (one per provider x upstream model).
    backends: Mapping[str, Limits] = field(default_factory=dict)
    priorities: Mapping[str, PriorityClass] = field(default_factory=lambda: dict(DEFAULTS))


def limits_from(spec: Mapping[str, Any] | None) -> Limits:
    """`{rpm, tpm, max_concurrent}` (any subset; None or absent = unlimited) -> Limits."""
    if not spec:
        return NO_LIMITS
    out = {}
    for k in ("rpm", "tpm", "max_concurrent"):
        v = spec.get(k)
        if v is not None and (not isinstance(v, int | float) or v <= 0):
            raise ValueError(f"limits.{k}: must be a positive number, got {v!r}")
        out[k] = v
    extra = set(spec) - {"rpm", "tpm", "max_concurrent"}
    if extra:
        raise ValueError(f"limits: unknown keys {sorted(extra)}")
    mc = out["max_concurrent"]
    return Limits(out["rpm"], out["tpm"], int(mc) if mc is not None else None)


def compile_admission(tenants: Mapping[str, Mapping[str, Any]] | None = None,
                      providers: Mapping[str, Mapping[str, Any]] | None = None,
                      backends: Mapping[str, Mapping[str, Any]] | None = None,
                      priorities: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> AdmissionConfig:
    """Plain dicts as in the YAML -> AdmissionConfig.

    tenants:    {NAME: {limits: {rpm, tpm, max_concurrent}, models: {ALIAS: {rpm, tpm}}}}
    providers:  {NAME: {rpm, tpm, max_concurrent}}        (the provider's `limits:` block)
    backends:   {CLUSTER: {rpm, tpm, max_concurrent}}     (a backend's `limits:`, by cluster)
    priorities: {CLASS: {quota_share, max_queue_ms}}
    """
    t = {
        name: TenantLimits(limits_from(spec.get("limits")),
                           {a: limits_from(s) for a, s in (spec.get("models") or {}).items()})
        for name, spec in (tenants or {}).items()
    }
    p = {n: lim for n, s in (providers or {}).items() if (lim := limits_from(s))}
    b = {n: lim for n, s in (backends or {}).items() if (lim := limits_from(s))}
    return AdmissionConfig(t, p, b, compile_priorities(priorities))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused: scope kind (tenant | tenant_model | provider | backend), its name,
    what ran out (rpm | tpm | concurrency | provider_backpressure) and when it frees up."""

    scope: str
    name: str
    limit: str
    retry_after_s: float

    @property
    def message(self) -> str:
        what = {"rpm": "requests per minute", "tpm": "tokens per minute",
                "concurrency": "concurrent requests",
                "provider_backpressure": "provider rate limit"}[self.limit]
        who = self.scope.replace("_", " ")
        return (f"Rate limit exceeded: {who} {self.name!r} {what}. "
                f"Retry after {self.retry_after_s:.3f} s.")


class Reservation:
    """What an admitted request holds; hand it back to `reconcile` and `release`."""

    __slots__ = ("alias", "backend_scopes", "charged", "klass", "released", "tenant_scopes",
                 "tokens")

    def __init__(self, tenant_scopes: tuple[Scope, ...], backend_scopes: tuple[Scope, ...],
                 charged: str | None, tokens: int, klass: str, alias: str) -> None:
        self.tenant_scopes = tenant_scopes
        self.backend_scopes = backend_scopes
        #: Cluster whose provider/backend buckets hold the charge (None: none had limits).
        self.charged = charged
        self.tokens = tokens
        self.klass = klass
        self.alias = alias
        self.released = False

    def __repr__(self) -> str:
        return (f"Reservation(tokens={self.tokens}, klass={self.klass!r}, "
                f"charged={self.charged!r})")


class Admit:
    """Go ahead: `candidates` (those with headroom, failover order) and the reservation."""

    __slots__ = ("_headers", "_now", "candidates", "reservation")

    def __init__(self, candidates: tuple[Any, ...], reservation: Reservation,
                 now: float) -> None:
        self.candidates = candidates
        self.reservation = reservation
        self._now = now
        self._headers: tuple[tuple[str, str], ...] | None = None

    def __repr__(self) -> str:
        return f"Admit({len(self.candidates)} candidates, {self.reservation!r})"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """`x-ratelimit-*` for the answer (the tenant's tightest limits), computed on use."""
        if self._headers is None:
            self._headers = rate_headers(self.reservation.tenant_scopes, self._now)
        return self._headers


@dataclass(frozen=True, slots=True)
class Shed:
    refusal: Refusal
    #: `retry-after`, `retry-after-ms` and `x-ratelimit-*` for the 429.
    headers: tuple[tuple[str, str], ...]

    @property
    def retry_after_s(self) -> float:
        return self.refusal.retry_after_s


@dataclass(frozen=True, slots=True)
class Queue:
    """Wait (up to `deadline`, monotonic seconds) for headroom: `WaitQueue.wait`."""

    deadline: float
    retry_after_s: float
    #: The answer if the deadline passes.
    shed: Shed


Decision = Admit | Queue | Shed


def _scope_wait(sc: Scope, tokens: int, floor: float, now: float) -> tuple[float, str]:
    wait, what = 0.0, ""
    if sc.conc is not None and not sc.conc.free(floor):
        wait, what = CONCURRENCY_RETRY_S, "concurrency"
    if sc.rpm is not None:
        w = sc.rpm.wait(1, now, floor)
        if w > wait:
            wait, what = w, "rpm"
    if sc.tpm is not None:
        w = sc.tpm.wait(tokens, now, floor)
        if w > wait:
            wait, what = w, "tpm"
    return wait, what


def _take(sc: Scope, tokens: int) -> None:
    if sc.rpm is not None:
        sc.rpm.take(1)
    if sc.tpm is not None:
        sc.tpm.take(tokens)
    if sc.conc is not None:
        sc.conc.acquire()


def rate_headers(tscopes: tuple[Scope, ...], now: float) -> tuple[tuple[str, str], ...]:
    """OpenAI-style `x-ratelimit-*` headers from the tightest of the tenant's buckets."""
    rpm = tpm = None
    for sc in tscopes:
        if sc.rpm is not None and (rpm is None or sc.rpm.level(now) / sc.rpm.capacity
                                   < rpm.level(now) / rpm.capacity):
            rpm = sc.rpm
        if sc.tpm is not None and (tpm is None or sc.tpm.level(now) / sc.tpm.capacity
                                   < tpm.level(now) / tpm.capacity):
            tpm = sc.tpm
    out: list[tuple[str, str]] = []
    if rpm is not None:
        out += [("x-ratelimit-limit-requests", str(int(rpm.limit))),
                ("x-ratelimit-remaining-requests", str(rpm.remaining(now))),
                ("x-ratelimit-reset-requests", go_duration(rpm.reset_s(now)))]
    if tpm is not None:
        out += [("x-ratelimit-limit-tokens", str(int(tpm.limit))),
                ("x-ratelimit-remaining-tokens", str(tpm.remaining(now))),
                ("x-ratelimit-reset-tokens", go_duration(tpm.reset_s(now)))]
    return tuple(out)


_SCOPE_KIND = {"tenant": "tenant", "tm": "tenant_model", "provider": "provider",
               "backend": "backend"}


def _refusal(sc: Scope, what: str, wait: float) -> Refusal:
    kind, _, name = sc.key.partition(":")
    if kind == "tm":
        name = name.split(":", 1)[1]
    return Refusal(_SCOPE_KIND[kind], name, what, wait)


class Admission:
    """One replica's admission state: buckets (local or fleet store), estimator, backpressure."""

    def __init__(self, config: AdmissionConfig | None = None, store: LocalStore | None = None,
                 estimator: Estimator | None = None, backpressure: Backpressure | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or AdmissionConfig()
        self.store = store or LocalStore()
        self.estimator = estimator or Estimator()
        self.backpressure = backpressure or Backpressure()
        self.clock = clock
        self.on_free: Callable[[], None] | None = None

    def update(self, config: AdmissionConfig) -> None:
        """New config: buckets keep their state where the limits stayed (relimit on next use)."""
        self.config = config

    # -- scopes ---------------------------------------------------------------------------
    def _tenant_scopes(self, tenant: str, alias: str, now: float) -> tuple[Scope, ...]:
        tl = self.config.tenants.get(tenant)
        if tl is None:
            return ()
        out = []
        if tl.limits:
            out.append(self.store.scope(f"tenant:{tenant}", tl.limits, False, now))
        ml = tl.models.get(alias)
        if ml:
            out.append(self.store.scope(f"tm:{tenant}:{alias}", ml, False, now))
        return tuple(out)

    def _backend_scopes(self, c: Candidate, now: float) -> tuple[Scope, ...]:
        out = []
        pl = self.config.providers.get(c.provider.name)
        if pl is not None:
            out.append(self.store.scope(f"provider:{c.provider.name}", pl, True, now))
        bl = self.config.backends.get(c.cluster)
        if bl is not None:
            sc = self.store.scope(f"backend:{c.cluster}", bl, True, now)
            if c.cluster in self.backpressure.backends:
                f = self.backpressure.factor(c.cluster, now)
                for b in (sc.rpm, sc.tpm, sc.conc):
                    if b is not None:
                        b.factor = f
            out.append(sc)
        return tuple(out)

    # -- the decision -----------------------------------------------------------------------
    def admit(self, tenant: str, klass: str, alias: str, candidates: Sequence[Candidate],
              tokens: int, now: float | None = None) -> Decision:
        now = self.clock() if now is None else now
        pc = self.config.priorities.get(klass) or DEFAULTS[klass]
        tscopes = self._tenant_scopes(tenant, alias, now)
        for sc in tscopes:
            wait, what = _scope_wait(sc, tokens, 0.0, now)
            if wait > 0:
                return self._refuse(_refusal(sc, what, wait), pc, tscopes, now)
        ok: list[Any] = []
        first: tuple[Scope, ...] | None = None
        charged: str | None = None
        best: Refusal | None = None
        floor = pc.floor
        for c in candidates:
            bscopes = self._backend_scopes(c, now)
            refusal = None
            bw = self.backpressure.wait(c.cluster, tokens, now)
            if bw > 0:
                refusal = Refusal("backend", c.cluster, "provider_backpressure", bw)
            for sc in bscopes:
                wait, what = _scope_wait(sc, tokens, floor, now)
                if wait > 0 and (refusal is None or wait > refusal.retry_after_s):
                    refusal = _refusal(sc, what, wait)
            if refusal is None:
                ok.append(c)
                if first is None:
                    first, charged = bscopes, c.cluster
            elif best is None or refusal.retry_after_s < best.retry_after_s:
                best = refusal
        if not ok:
            assert best is not None or not candidates
            if best is None:
                best = Refusal("backend", alias, "provider_backpressure", CONCURRENCY_RETRY_S)
            return self._refuse(best, pc, tscopes, now)
        for sc in tscopes:
            _take(sc, tokens)
        assert first is not None
        for sc in first:
            _take(sc, tokens)
        if charged is not None:
            self.backpressure.sent(charged, tokens)
        res = Reservation(tscopes, first, charged, tokens, klass, alias)
        return Admit(tuple(ok), res, now)

    def _refuse(self, r: Refusal, pc: PriorityClass, tscopes: tuple[Scope, ...],
                now: float) -> Queue | Shed:
        hdrs = (("retry-after", str(max(1, math.ceil(r.retry_after_s)))),
                ("retry-after-ms", str(math.ceil(r.retry_after_s * 1000))),
                *rate_headers(tscopes, now))
        shed = Shed(r, hdrs)
        if pc.max_queue_ms and r.retry_after_s * 1000 <= pc.max_queue_ms:
            return Queue(now + pc.max_queue_ms / 1000, r.retry_after_s, shed)
        return shed

    def headers(self, tenant: str, alias: str, now: float | None = None
                ) -> tuple[tuple[str, str], ...]:
        """`x-ratelimit-*` for any answer to this tenant (e.g. errors decided before admit)."""
        now = self.clock() if now is None else now
        return rate_headers(self._tenant_scopes(tenant, alias, now), now)

    # -- after the response -------------------------------------------------------------------
    def reconcile(self, res: Reservation, true_tokens: int, answered: Candidate | None = None,
                  output_tokens: int | None = None, now: float | None = None) -> None:
        """Replace the estimate by the true usage (prompt + completion) of the request.

        `answered`: the backend that answered; when it is not the one charged at admission,
        the charge moves there. `output_tokens` feeds the estimator's learned output size.
        Call it once, also for failed / cut-off requests (with what was used; 0 refunds all)."""
        now = self.clock() if now is None else now
        delta = true_tokens - res.tokens
        for sc in res.tenant_scopes:
            if sc.tpm is not None:
                sc.tpm.adjust(delta, now)
        if answered is None or answered.cluster == res.charged:
            for sc in res.backend_scopes:
                if sc.tpm is not None:
                    sc.tpm.adjust(delta, now)
        else:
            for sc in res.backend_scopes:  # refund the backend charged at admission ...
                if sc.tpm is not None:
                    sc.tpm.adjust(-res.tokens, now)
            for sc in self._backend_scopes(answered, now):  # ... charge the one that answered
                if sc.tpm is not None:
                    sc.tpm.adjust(true_tokens, now)
        res.tokens = true_tokens
        if output_tokens is not None:
            self.estimator.observe(res.alias, output_tokens)
        if delta < 0 and self.on_free is not None:
            self.on_free()

    def release(self, res: Reservation) -> None:
        """The request ended: free its concurrency slots (idempotent)."""
        if res.released:
            return
        res.released = True
        for sc in (*res.tenant_scopes, *res.backend_scopes):
            if sc.conc is not None:
                sc.conc.release()
        if self.on_free is not None:
            self.on_free()

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every bucket's limit, remaining and reset (for `GET /limits`)."""
        now = self.clock() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for key, sc in sorted(self.store.scopes.items()):
            d: dict[str, Any] = {}
            for name in ("rpm", "tpm"):
                b = getattr(sc, name)
                if b is not None:
                    d[name] = {"limit": b.limit, "remaining": b.remaining(now),
                               "reset_s": round(b.reset_s(now), 3),
                               "share": round(b.share, 4), "factor": round(b.factor, 4)}
            if sc.conc is not None:
                d["max_concurrent"] = {"limit": sc.conc.limit, "inflight": sc.conc.inflight}
            out[key] = d
        return out


class WaitQueue:
    """Earliest-deadline-first waiting room for Queue decisions.

    `await wait(try_admit, deadline)`: `try_admit()` re-runs `Admission.admit` for this request.
    Waiters are retried in deadline order whenever capacity is freed (`kick`, wired to
    `Admission.on_free`) or the earliest refill they were told about comes; a waiter whose
    next chance lies past its deadline gets its Shed at once. Cancelling the awaiting task
    (client gone) drops it without taking anything."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[[], Decision], asyncio.Future[Decision]]] = []
        self._seq = itertools.count()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(1 for *_, f in self._heap if not f.done())

    def kick(self) -> None:
        self._kick.set()

    async def wait(self, try_admit: Callable[[], Decision], deadline: float) -> Admit | Shed:
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline, next(self._seq), try_admit, fut))
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump())
        d = await fut
        assert not isinstance(d, Queue)
        return d

    async def _pump(self) -> None:
        while self._heap:
            self._kick.clear()
            now = self.clock()
            wake = math.inf
            keep = []
            for entry in sorted(self._heap):
                deadline, _, try_admit, fut = entry
                if fut.done():
                    continue
                d = try_admit()
                if isinstance(d, Admit):
                    fut.set_result(d)
                    continue
                shed = d if isinstance(d, Shed) else d.shed
                at = now + d.retry_after_s
                if at > deadline or now >= deadline:
                    fut.set_result(shed)
                    continue
                wake = min(wake, at)
                keep.append(entry)
            self._heap = keep
            heapq.heapify(self._heap)
            if not self._heap:
                break
            timeout = max(0.001, wake - now) if wake < math.inf else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)
