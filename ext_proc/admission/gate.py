"""Admission as the request pipeline uses it: one object per ext_proc process.

`configure` takes the routing table's admission JSON (tenants with key digests, limits,
priorities, Redis URL); `identify` names the caller at request headers; `admit` decides after
the candidates are known; `settle` reconciles the estimate with the true usage and frees the
request's concurrency when it ends, whatever the outcome. Everything on the request path is
synchronous work on local objects; the Redis store syncs in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog

from ext_proc.admission.admit import (
    Admission,
    Admit,
    Decision,
    Queue,
    Reservation,
    WaitQueue,
    compile_admission,
)
from ext_proc.admission.priorities import request_class
from ext_proc.admission.store import LocalStore
from ext_proc.auth.callers import Callers, Tenant, compile_callers, identify
from ext_proc.translate.canonical import Usage
from ext_proc.usage.metrics import ADMISSION

log = structlog.get_logger("switchyard.ext_proc.admission")


class Gate:
    def __init__(self) -> None:
        self.admission = Admission()
        self.waiting = WaitQueue()
        self.admission.on_free = self.waiting.kick
        self.callers: Callers | None = None
        self.redis_url: str | None = None
        self._json = ""
        self._tasks: set[asyncio.Task[None]] = set()

    # -- config -----------------------------------------------------------------------------
    def configure(self, admission_json: str) -> None:
        """A new routing table: re-read limits and tenants (buckets keep their state)."""
        if admission_json == self._json:
            return
        doc: dict[str, Any] = orjson.loads(admission_json) if admission_json else {}
        self.callers = compile_callers(doc.get("tenants"), env={})
        self.admission.update(compile_admission(doc.get("tenants"), doc.get("providers"),
                                                doc.get("backends"), doc.get("priorities")))
        url = doc.get("redis")
        if url != self.redis_url:
            self.redis_url = url
            self._swap_store(url)
        self._json = admission_json

    def _swap_store(self, url: str | None) -> None:
        """In-process buckets, or the fleet store synced with Redis in the background."""
        old = self.admission.store
        if url:
            from ext_proc.admission.redis_store import RedisStore  # only when configured

            store: LocalStore = RedisStore(url)
        else:
            store = LocalStore()
        self.admission.store = store
        with contextlib.suppress(RuntimeError):  # no running loop (offline tools, tests)
            loop = asyncio.get_running_loop()
            for job in (getattr(old, "close", None), getattr(store, "start", None)):
                if job is not None:
                    task = loop.create_task(job())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        log.info("admission state", shared=bool(url))

    @property
    def open(self) -> bool:
        """No tenants configured: every caller is the default tenant."""
        return self.callers is None

    # -- the request path -----------------------------------------------------------------
    def identify(self, headers: Mapping[str, str]) -> Tenant | None:
        return identify(headers, self.callers)

    @staticmethod
    def klass(tenant: Tenant, asked: str | None) -> str:
        return request_class(tenant.priority, asked)

    def admit(self, tenant: str, klass: str, alias: str, candidates: Sequence[Any],
              tokens: int) -> Decision:
        return _counted(tenant, klass, self.admission.admit(tenant, klass, alias, candidates,
                                                             tokens))

    def estimate(self, alias: str, canonical: dict[str, Any]) -> int:
        return self.admission.estimator.estimate(alias, canonical)

    async def wait(self, tenant: str, klass: str, alias: str, candidates: Sequence[Any],
                   tokens: int, deadline: float) -> Decision:
        """Queue until headroom (earliest deadline first) or the deadline: Admit or Shed."""
        d = await self.waiting.wait(
            lambda: self.admission.admit(tenant, klass, alias, candidates, tokens), deadline)
        return _counted(tenant, klass, d, after_wait=True)

    def observe(self, cluster: str, status: int, headers: Mapping[str, str]) -> None:
        """A provider's answer to one attempt: its rate-limit headers and 429s."""
        self.admission.backpressure.observe(cluster, status, headers)

    def settle(self, res: Reservation | None, usage: Usage | None, answered: Any,
               upstream_answered: bool) -> None:
        """The request ended: replace the estimate by what it used, free its slots.

        Unknown usage after a provider answered (a stream cut off, a client gone mid-way)
        keeps the estimate charged: better to under-use a quota than to overshoot it. No
        upstream answer at all refunds everything."""
        if res is None:
            return
        if usage is not None:
            self.admission.reconcile(res, usage.prompt + usage.completion, answered,
                                     usage.completion)
        elif not upstream_answered:
            self.admission.reconcile(res, 0, None)
        self.admission.release(res)

    def snapshot(self) -> dict[str, Any]:
        """`GET /limits`: every bucket's limit, remaining and reset, and the queue."""
        out: dict[str, Any] = {
            "tenants": sorted(self.callers.tenants) if self.callers else ["default"],
            "shared": bool(self.redis_url), "queued": len(self.waiting),
            "buckets": self.admission.snapshot(time.monotonic())}
        store: Any = self.admission.store
        if hasattr(store, "connected"):  # the fleet store: is Redis there, how many replicas
            out["redis"] = {"connected": store.connected, "live_replicas": store.live,
                            "syncs": store.syncs, "failures": store.failures}
        return out


def _counted(tenant: str, klass: str, d: Decision, after_wait: bool = False) -> Decision:
    if isinstance(d, Admit):
        ADMISSION.labels(tenant, klass, "admitted", "waited" if after_wait else "headroom").inc()
    elif isinstance(d, Queue):
        ADMISSION.labels(tenant, klass, "queued", d.shed.refusal.limit).inc()
    else:
        ADMISSION.labels(tenant, klass, "shed", f"{d.refusal.scope}_{d.refusal.limit}").inc()
    return d


def unauthenticated() -> None:
    ADMISSION.labels("-", "-", "unauthenticated", "invalid_api_key").inc()


__all__ = ["Admit", "Gate", "unauthenticated"]
