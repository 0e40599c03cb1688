"""The request pipeline of one ext_proc process: each Envoy message to its phase function
(`route`, `attempt`, `respond`, admission's `Gate`) and the decision back to protobuf
(`envoy`). Holds what outlives one message: in-flight requests by id, health, admission.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator
from typing import TypeAlias

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc import attempt, envoy, respond, route
from ext_proc.admission.gate import Gate, unauthenticated
from ext_proc.ingress import INGRESS
from ext_proc.select import FeedbackReply, Selector
from ext_proc.select.pool_route import pick_endpoint, steer
from ext_proc.state import Attempt, RequestState
from ext_proc.stats import BackendHealth
from ext_proc.stats.pool_metrics import Pools
from ext_proc.table import BackendInfo, Routes, RoutingClient
from ext_proc.usage import NO_USAGE, UsageRecord, account
from ext_proc.workers import Siblings
from switchyard.contract import CHAT_PATH, FEEDBACK_PATH

#: A reply to Envoy: a message, or one already in wire format (`ext_proc.wire`).
Reply: TypeAlias = "pb.ProcessingResponse | bytes"
#: How long a finished request's unreported first attempt waits for Envoy's attempt log
#: (flushed every 20 ms), and how many such attempts are kept at most.
FIRST_ATTEMPT_WAIT_S = 10.0
FIRST_ATTEMPTS_KEPT = 10_000


class Pipeline:
    def __init__(self, routing: RoutingClient, health: BackendHealth | None = None,
                 gate: Gate | None = None, selector: Selector | None = None,
                 pools: Pools | None = None, siblings: Siblings | None = None) -> None:
        self.routing = routing
        #: The other ext_proc workers behind this Envoy (None: this is the only one).
        self.siblings = siblings
        self.health = health or BackendHealth()
        self.gate = gate or Gate()
        #: Live selection's state: statistics, quality posteriors, served response ids.
        self.selector = selector or Selector(self.health)
        #: GPU pools: endpoint pickers and their metrics scrapers (issue 10).
        self.pools = pools or Pools()
        self._pool_version = ""
        self._pool_of: dict[str, str] = {}  # backend cluster -> pool (provider) name
        self.inflight: dict[str, RequestState] = {}
        #: Requests that ended before Envoy's attempt log reported their route-built first
        #: attempt (which answered nothing): request id -> (attempt, ended at), oldest first.
        self._unreported: dict[str, tuple[Attempt, float]] = {}
        self._order = envoy.OrderMetadata()
        self._ids = itertools.count(1)
        self._prefix = (f"{siblings.prefix if siblings else ''}{os.getpid():x}-"
                        f"{int(time.time()) & 0xFFFFFF:x}-")

    def new_request(self) -> RequestState:
        return RequestState(self._prefix + str(next(self._ids)))

    def ended(self, st: RequestState) -> None:
        """The route-phase stream closed, however it ended: account what was not yet."""
        self.inflight.pop(st.rid, None)
        if st.attempts and st.attempts[0].by_route and not st.attempts[0].status:
            self._await_report(st.rid, st.attempts[0])
        self.pools.release(st.rid)
        if not st.logged and st.model:
            self._account(st, respond.finish(st, outcome=respond.interrupted(st)))
        elif st.reservation is not None and not st.reservation.released:
            self.gate.settle(st.reservation, None, None, False)

    # -- route phase ------------------------------------------------------------------------
    def _reject(self, st: RequestState, r: route.Reject) -> Reply:
        account(respond.rejected(st, r))
        return envoy.reject(st.ingress, r)

    def request_headers(self, st: RequestState, msg: pb.HttpHeaders) -> Reply:
        path, internal, wanted, st.present = envoy.request_line(msg)
        if path.split("?", 1)[0] == FEEDBACK_PATH:  # answered with its body
            st.feedback = True
            return envoy.CONTINUE_REQUEST_HEADERS
        st.slo_ttft_ms, st.max_price_usd = route.overrides(wanted)
        ingress = route.ingress_for(path, msg.end_of_stream)
        if isinstance(ingress, route.Reject):
            if ingress.status == 404:  # not an API request: no log line, as Envoy's own 404
                return envoy.reject(st.ingress, ingress)
            return self._reject(st, ingress)
        st.ingress = ingress
        caller = route.identify(ingress, wanted, self.gate)
        if isinstance(caller, route.Reject):
            unauthenticated()
            return self._reject(st, caller)
        st.tenant, st.klass = caller.tenant, caller.klass
        return envoy.strip_internal(internal) if internal else envoy.CONTINUE_REQUEST_HEADERS

    def request_body(self, st: RequestState, raw: bytes
                         ) -> Reply | route.Wait:
        st.bytes_in = len(raw)
        if st.feedback:
            return self._feedback(raw)
        parsed = route.parse(st.ingress, raw)
        if isinstance(parsed, route.Reject):
            return self._reject(st, parsed)
        st.model = parsed.alias
        st.stream = parsed.stream
        routes = self.routing.routes if self.routing.ready.is_set() else None
        ctx = self.selector.context(time.monotonic(), slo_ttft_ms=st.slo_ttft_ms,
                                    max_price_usd=st.max_price_usd)
        decision = route.decide(st.ingress, parsed, routes, self.health, ctx)
        if isinstance(decision, route.Reject):
            return self._reject(st, decision)
        st.body = parsed.canonical
        st.raw = parsed.raw
        if self._sync_pools(routes):
            steered = steer(decision, self._pool_of, self.pools, st.klass)
            if isinstance(steered, route.Reject):
                return self._reject(st, steered)
            decision = steered
        admitted = route.admit(decision, parsed, route.Caller(st.tenant, st.klass), self.gate)
        if isinstance(admitted, route.Wait):
            return admitted
        return self._go(st, admitted)

    async def after_wait(self, st: RequestState, w: route.Wait) -> Reply:
        fwd = w.forward
        d = await self.gate.wait(st.tenant, st.klass, fwd.model.name, fwd.candidates, w.tokens,
                                 w.deadline)
        admitted = route.admitted(fwd, d, w.tokens)
        assert not isinstance(admitted, route.Wait)
        return self._go(st, admitted)

    def _go(self, st: RequestState, fwd: route.Forward | route.Reject) -> Reply:
        if isinstance(fwd, route.Reject):
            return self._reject(st, fwd)
        st.candidates = fwd.candidates
        st.selection = fwd.selection
        if fwd.selection is not None:
            self.selector.chosen(fwd.model.name, fwd.selection, time.monotonic())
        st.reservation = fwd.reservation
        st.rate_headers = fwd.rate_headers
        self.inflight[st.rid] = st
        # The model route is the base alias's (`gpt:fast` is routed as `gpt`).
        endpoint = None
        if self._pool_of:
            endpoint = pick_endpoint(fwd, st, self._pool_of, self.pools)
        first = None
        if not fwd.model.hedge_after_ms:  # a hedged attempt's backend is Envoy's pick
            built = attempt.prepare(st, fwd.candidates[0], st.present, by_route=True)
            if isinstance(built, route.Reject):
                return self._reject(st, built)
            first = built
        return envoy.forward(fwd, fwd.model.name, st.rid, self._order, endpoint, first)

    def _sync_pools(self, routes: Routes | None) -> bool:
        """Keep the pool pickers in step with the table; True when a model uses a pool."""
        if routes is None:
            return False
        if routes.version != self._pool_version:
            self._pool_version = routes.version
            self._pool_of = {c: b.provider.name for c, b in routes.clusters.items()
                             if b.provider.pool_json}
            self.pools.sync(routes.version, {b.provider.name: b.provider.pool_json
                                             for b in routes.clusters.values()})
        return bool(self._pool_of)

    def _account(self, st: RequestState, record: UsageRecord) -> None:
        """A finished request: admission's reconcile, then metrics and the log line."""
        if st.reservation is not None:
            upstream = st.handler is not None and not isinstance(st.handler, respond.EnvoyReply)
            known = record.usage if record.usage is not NO_USAGE else None
            self.gate.settle(st.reservation, known, st.backend, upstream)
        account(record)
        if st.backend is not None:
            self._learn(st, record)

    def _learn(self, st: RequestState, record: UsageRecord) -> None:
        """Live statistics from the finished request; remember what served its ids."""
        assert st.backend is not None
        cluster = st.backend.cluster
        self.selector.finished(cluster, time.monotonic(), record.status, record.ttft_s,
                               record.latency_s, record.usage.completion, st.stream,
                               record.outcome)
        sel = st.selection
        if record.status == 200 and sel is not None:
            for rid in (st.rid, st.response_id):
                if rid:
                    self.selector.remember(rid, st.model, cluster, sel.category)

    async def feedback(self, raw: bytes) -> Reply:
        """`POST /v1/feedback` (the server awaits it): as `_feedback`, and a response id
        another replica served is looked up in the fleet's Redis."""
        return self._feedback(raw, await self.selector.feedback_async(raw))

    def _feedback(self, raw: bytes, r: FeedbackReply | None = None) -> Reply:
        """`POST /v1/feedback`: update the quality estimate of what served a response."""
        r = r or self.selector.feedback(raw)
        if r.body is not None:
            return envoy.immediate(r.status, orjson.dumps(r.body), "feedback")
        return envoy.reject(INGRESS[CHAT_PATH], route.Reject(
            r.status, r.message, "invalid_request_error", r.code, r.param))

    def response(self, st: RequestState, req: pb.ProcessingRequest
                     ) -> Reply:
        if req.HasField("response_headers"):
            msg = req.response_headers
            end = msg.end_of_stream
            headers = envoy.headers(msg)
            reply = envoy.response_headers(respond.on_headers(st, headers, end, self.health))
            first = respond.answering_first_attempt(st, headers)
            if first is not None and st.status < 400:
                # No translate phase saw this answer: learn from it here (a failed one comes
                # through Envoy's attempt log, `attempt_failed`).
                self._learn_attempt(st, first.backend.cluster, first.backend, headers)
        else:
            end = req.response_body.end_of_stream
            reply = envoy.response_body(respond.on_body(st, req.response_body.body, end))
        if end:
            self._account(st, respond.finish(st))
        return reply

    def _learn_attempt(self, st: RequestState | None, cluster: str,
                       backend: BackendInfo | None, headers: dict[str, str]) -> None:
        """One attempt's answer, from whichever phase saw it (route phase, Envoy's attempt
        log, translate phase): health, admission's backpressure, live statistics."""
        if backend is not None:
            attempt.answered(st, backend, headers, self.health, self.gate)
        status = headers.get(":status", "")
        self.selector.attempt_status(cluster, int(status) if status.isdigit() else 0)

    def _await_report(self, rid: str, first: Attempt) -> None:
        now = time.monotonic()
        waiting = self._unreported
        while waiting:  # drop what waited too long (oldest first), and past the bound
            oldest = next(iter(waiting))
            if now - waiting[oldest][1] < FIRST_ATTEMPT_WAIT_S and (
                    len(waiting) < FIRST_ATTEMPTS_KEPT):
                break
            del waiting[oldest]
        waiting[rid] = (first, now)

    def attempt_failed(self, rid: str, cluster: str, status: int, headers: dict[str, str],
                       client_gone: bool = False) -> None:
        """Envoy's access log of one failed attempt: learn from it when it is a route-built
        first attempt (the translate phase reports the attempts it ran itself). An attempt
        Envoy reset because the client went away says nothing about the backend."""
        st = self.inflight.get(rid)
        if st is not None:
            first = st.attempts[0] if st.attempts else None
        else:
            waited = self._unreported.pop(rid, None)
            first = waited[0] if waited is not None else None
        if first is None and st is None and self.siblings is not None:
            owner = self.siblings.elsewhere(rid)  # another worker routed it: tell that one
            if owner is not None:
                self.siblings.attempt_failed(owner, rid, cluster, status, headers, client_gone)
            return
        if (first is None or not first.by_route or first.status
                or first.backend.cluster != cluster):
            return
        if not client_gone:
            headers[":status"] = str(status)
            self._learn_attempt(st, cluster, first.backend, headers)
        first.status = status or -1  # reported (-1: no response)

    # -- translate phase --------------------------------------------------------------------
    async def translate_phase(self, req: pb.ProcessingRequest,
                               rest: AsyncIterator[pb.ProcessingRequest]
                               ) -> AsyncIterator[Reply]:
        """One attempt: rewrite the request, then watch its response status for health."""
        rid, cluster, present = envoy.attempt_target(req)
        st, routes = self.inflight.get(rid), self.routing.routes
        owner = self.siblings.elsewhere(rid) if st is None and self.siblings else None
        if owner is not None:  # another worker routed it: that one builds the attempt
            assert self.siblings is not None
            remote = await self.siblings.attempt(owner, rid, cluster, present)
            if remote is not None:
                yield remote[0]
                if remote[1]:  # forwarded (else an error answer, as below)
                    async for resp in self._watch(None, routes.clusters.get(cluster), cluster,
                                                  rest):
                        yield resp
                return
        backend, problem = attempt.resolve(st, cluster, routes)
        if st is None or backend is None:
            assert problem is not None
            yield envoy.reject(st.ingress if st else INGRESS[CHAT_PATH], problem)
            return
        built = attempt.prepare(st, backend, present)
        if isinstance(built, route.Reject):
            yield envoy.reject(st.ingress, built)  # logged by the route phase's response path
            return
        yield envoy.upstream(built)
        async for resp in self._watch(st, backend, backend.cluster, rest):
            yield resp

    async def _watch(self, st: RequestState | None, backend: BackendInfo | None, cluster: str,
                     rest: AsyncIterator[pb.ProcessingRequest]) -> AsyncIterator[Reply]:
        """An attempt's response status: health, statistics, and which backend answered
        (`st` None: another worker holds the request's state)."""
        async for msg in rest:
            if msg.WhichOneof("request") == "response_headers":
                headers = envoy.headers(msg.response_headers)
                self._learn_attempt(st, cluster, backend, headers)
                yield envoy.answered_by(cluster)
            else:
                yield envoy.EMPTY
