"""Several ext_proc workers behind one Envoy (`ext_proc.workers`): which worker owns a
request, and the internal endpoint through which a retry that Envoy sent to another worker
has its upstream request built by the worker that holds the request's state.

Envoy spreads ext_proc streams round robin over the workers, so a retry's translate phase
lands on a worker that did not route the request about (N-1)/N of the time. The request id
names its owner (`w<i>-...`), and the other worker asks the owner with a short timeout over a
Unix socket in the gateway's private work directory: never a TCP port, since a reply carries
the provider's credentials. Failed first attempts that Envoy's attempt log reports to a
worker other than the owner are forwarded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from ext_proc import attempt, envoy, route
from ext_proc.usage import metrics

if TYPE_CHECKING:
    from ext_proc.pipeline import Pipeline

log = structlog.get_logger("switchyard.ext_proc")

#: Longest a retry waits for its owner (Envoy's ext_proc message timeout is 5 s by default).
INTERNAL_TIMEOUT_S = 1.0
#: The owner built the attempt's request (else its reply is an error answer for the client).
FORWARD_HEADER = "x-switchyard-forward"


def owner_of(rid: str) -> int | None:
    """The index of the worker that routed request `rid` (None: not a worker's id)."""
    if rid[:1] != "w":
        return None
    head = rid[1:].split("-", 1)[0]
    return int(head) if head.isdigit() else None


class Siblings:
    """This worker's index and every worker's internal socket (index-aligned), with one
    HTTP client per sibling, opened on first use."""

    def __init__(self, index: int, sockets: Sequence[str]) -> None:
        self.index = index
        self.sockets = list(sockets)
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def prefix(self) -> str:
        """What this worker's request ids start with."""
        return f"w{self.index}-"

    def elsewhere(self, rid: str) -> int | None:
        """The sibling that owns `rid` (None: this worker, or nobody known)."""
        owner = owner_of(rid)
        if owner is None or owner == self.index or owner >= len(self.sockets):
            return None
        return owner

    def _session(self, owner: int) -> aiohttp.ClientSession:
        s = self._sessions.get(owner)
        if s is None or s.closed:
            s = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.sockets[owner]),
                timeout=aiohttp.ClientTimeout(total=INTERNAL_TIMEOUT_S))
            self._sessions[owner] = s
        return s

    async def attempt(self, owner: int, rid: str, cluster: str, present: list[str]
                      ) -> tuple[bytes, bool] | None:
        """The owner's translate-phase reply for this attempt, in wire format, and whether
        it forwards the attempt (False: an error answer); None: the owner could not say."""
        body = orjson.dumps({"rid": rid, "cluster": cluster, "present": present})
        try:
            async with self._session(owner).post("http://worker/internal/attempt",
                                                 data=body) as r:
                if r.status == 200:
                    forward = r.headers.get(FORWARD_HEADER) == "1"
                    reply = await r.read()
                    metrics.REMOTE_ATTEMPTS.labels("built" if forward else "rejected").inc()
                    return reply, forward
        except (aiohttp.ClientError, OSError) as exc:  # OSError: timeouts too
            log.warning("worker did not answer for a retry", worker=owner, rid=rid,
                        error=repr(exc))
        metrics.REMOTE_ATTEMPTS.labels("unavailable").inc()
        return None

    def attempt_failed(self, owner: int, rid: str, cluster: str, status: int,
                       headers: dict[str, str], client_gone: bool) -> None:
        """Hand Envoy's report of a failed first attempt to the worker that made it."""
        body = orjson.dumps({"rid": rid, "cluster": cluster, "status": status,
                             "headers": headers, "client_gone": client_gone})

        async def send() -> None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self._session(owner).post("http://worker/internal/attempt-failed",
                                                     data=body):
                    pass

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.close()


def attempt_reply(p: Pipeline, rid: str, cluster: str, present: list[str]
                  ) -> tuple[bytes, bool] | None:
    """The owner's side: record the attempt on its own `RequestState` and build the
    translate phase's reply (None: this worker has no such request)."""
    st = p.inflight.get(rid)
    if st is None:
        return None
    backend, problem = attempt.resolve(st, cluster, p.routing.routes)
    if backend is None:
        assert problem is not None
        return _wire(envoy.reject(st.ingress, problem)), False
    built = attempt.prepare(st, backend, present)
    if isinstance(built, route.Reject):
        return _wire(envoy.reject(st.ingress, built)), False
    return envoy.upstream(built).SerializeToString(), True


def _wire(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else bytes(reply.SerializeToString())


async def start_internal(path: str, p: Pipeline) -> web.AppRunner:
    """Serve `/internal/attempt` and `/internal/attempt-failed` on a Unix socket."""

    async def on_attempt(request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        built = attempt_reply(p, q["rid"], q["cluster"], q["present"])
        if built is None:
            return web.Response(status=404)
        reply, forward = built
        return web.Response(body=reply, headers={FORWARD_HEADER: "1" if forward else "0"})

    async def on_attempt_failed(request: web.Request) -> web.Response:
        q = orjson.loads(await request.read())
        p.attempt_failed(q["rid"], q["cluster"], q["status"], q["headers"], q["client_gone"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/internal/attempt", on_attempt)
    app.router.add_post("/internal/attempt-failed", on_attempt_failed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with contextlib.suppress(FileNotFoundError):  # left behind by a worker that died
        Path(path).unlink()
    await web.UnixSite(runner, path).start()
    return runner
