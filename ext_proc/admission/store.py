"""Where the buckets live: `LocalStore` (in-process, one replica) keyed by scope.

A scope is one limit holder: `tenant:NAME`, `tm:TENANT:ALIAS`, `provider:NAME`,
`backend:CLUSTER`; each has optional RPM and TPM buckets and a concurrency counter.
`RedisStore` (`ext_proc.admission.redis_store`) is a LocalStore whose buckets a background task
keeps in step with the fleet; the request path only ever touches these local objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from ext_proc.admission.buckets import Concurrency, TokenBucket


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute requests and tokens and in-flight requests; None = no such limit."""

    rpm: float | None = None
    tpm: float | None = None
    max_concurrent: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


class Scope:
    __slots__ = ("conc", "key", "limits", "rpm", "shared", "tpm")

    def __init__(self, key: str, limits: Limits, shared: bool, now: float) -> None:
        self.key = key
        self.limits = limits
        #: Provider / backend quota: priority classes get only their quota_share of it.
        self.shared = shared
        self.rpm = TokenBucket(limits.rpm, now) if limits.rpm is not None else None
        self.tpm = TokenBucket(limits.tpm, now) if limits.tpm is not None else None
        self.conc = Concurrency(limits.max_concurrent) if limits.max_concurrent else None

    def __repr__(self) -> str:
        return f"Scope({self.key!r}, rpm={self.rpm!r}, tpm={self.tpm!r}, conc={self.conc!r})"

    def relimit(self, limits: Limits, now: float) -> None:
        """A config reload changed this scope's limits: keep its state where it can."""
        if limits == self.limits:
            return
        for name in ("rpm", "tpm"):
            new = getattr(limits, name)
            old: TokenBucket | None = getattr(self, name)
            if new is None:
                setattr(self, name, None)
            elif old is None:
                setattr(self, name, TokenBucket(new, now))
            else:
                old.level(now)
                old.tokens = min(old.tokens * new / old.limit if old.limit else new, new)
                old.limit = float(new)
        if not limits.max_concurrent:
            self.conc = None
        elif self.conc is None:
            self.conc = Concurrency(limits.max_concurrent)
        else:
            self.conc.limit = limits.max_concurrent
        self.limits = limits


class LocalStore:
    """In-process buckets (`shared_state` absent, or the fleet store's local half)."""

    def __init__(self) -> None:
        self.scopes: dict[str, Scope] = {}

    def scope(self, key: str, limits: Limits, shared: bool, now: float) -> Scope:
        sc = self.scopes.get(key)
        if sc is None:
            sc = self.scopes[key] = self._new(key, limits, shared, now)
        elif sc.limits is not limits:
            sc.relimit(limits, now)
        return sc

    def _new(self, key: str, limits: Limits, shared: bool, now: float) -> Scope:
        return Scope(key, limits, shared, now)
