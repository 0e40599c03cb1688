"""The per-process state live selection reads and learns into, in one place.

`Selector` holds backend health (Envoy's view), live statistics, the quality posteriors, the
served-response memory for feedback, the recent share of first choices per model, and the
random generator; it makes each request's `SelectContext`, takes feedback, and renders the
`GET /routing` table. Plain data: server.py wires it to Envoy, admin.py to HTTP. With
`shared_state.redis` (`share`), a `fleet.FleetSync` keeps statistics, quality and served ids
in step with the other replicas in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from ext_proc.select.features import CATEGORIES
from ext_proc.select.quality import QualityModel, Served, ServedBy
from ext_proc.select.rank import SelectContext, Selection
from ext_proc.stats.health import BackendHealth
from ext_proc.stats.latency import LiveStats
from ext_proc.table import BackendInfo, Routes
from switchyard.contract import PRESETS

if TYPE_CHECKING:
    from ext_proc.select.fleet import FleetSync

log = structlog.get_logger("switchyard.ext_proc.select")

#: Half-life of the "share" of first choices shown by /routing.
SHARE_HALF_LIFE_S = 30.0
_SHARE_TAU = SHARE_HALF_LIFE_S / math.log(2)


@dataclass(frozen=True, slots=True)
class FeedbackReply:
    """The answer to `POST /v1/feedback` (an error has a message, code and param)."""

    status: int
    body: dict[str, Any] | None = None
    message: str = ""
    code: str = ""
    param: str | None = None


class Shares:
    """Decayed count of first choices per (model, cluster)."""

    def __init__(self, now: float) -> None:
        self.t0 = now
        self.counts: dict[str, dict[str, float]] = {}

    def add(self, model: str, cluster: str, now: float) -> None:
        x = (now - self.t0) / _SHARE_TAU
        if x > 50.0:
            f = math.exp(-x)
            for per in self.counts.values():
                for k in per:
                    per[k] *= f
            self.t0, x = now, 0.0
        per = self.counts.setdefault(model, {})
        per[cluster] = per.get(cluster, 0.0) + math.exp(x)

    def of(self, model: str) -> dict[str, float]:
        per = self.counts.get(model, {})
        total = sum(per.values())
        return {k: round(v / total, 4) for k, v in per.items()} if total else {}


class Selector:
    def __init__(self, health: BackendHealth | None = None, seed: int | None = None) -> None:
        self.health = health or BackendHealth()
        self.stats = LiveStats()
        self.quality = QualityModel()
        self.served = Served()
        # Replicas must not share a seed: their tie-breaks and exploration must differ.
        self.rng = random.Random(seed if seed is not None else os.urandom(8))
        self.shares = Shares(time.monotonic())
        #: Admission's quota-headroom check, when admission is wired in.
        self.headroom: Callable[[BackendInfo], bool] | None = None
        #: The Redis sync of the fleet's statistics, quality and served ids (None: local).
        self.fleet: FleetSync | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def share(self, url: str | None) -> None:
        """`shared_state.redis` of a new routing table: start (or stop, or move) the fleet
        sync. Called with admission's URL; the same URL again changes nothing."""
        if (self.fleet.url if self.fleet else None) == url:
            return
        old, new = self.fleet, None
        if url:
            from ext_proc.select.fleet import FleetSync  # only when configured

            new = FleetSync(url, self.stats, self.quality, self.served)
        self.fleet = new
        with contextlib.suppress(RuntimeError):  # no running loop (offline tools, tests)
            loop = asyncio.get_running_loop()
            for job in (old.close if old else None, new.start if new else None):
                if job is not None:
                    task = loop.create_task(job())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        log.info("selection state", shared=bool(url))

    def context(self, now: float, preset: str | None = None, slo_ttft_ms: float | None = None,
                max_price_usd: float | None = None) -> SelectContext:
        return SelectContext(self.health, self.stats, self.quality, self.rng, now,
                             slo_ttft_ms=slo_ttft_ms, max_price_usd=max_price_usd,
                             preset=preset, headroom=self.headroom)

    def chosen(self, model: str, sel: Selection, now: float) -> None:
        self.shares.add(model, sel.candidates[0].cluster, now)

    # -- learning -----------------------------------------------------------------------
    def finished(self, cluster: str, now: float, status: int, ttft_s: float | None,
                 latency_s: float, completion_tokens: int, stream: bool, outcome: str) -> None:
        """A request answered by `cluster` ended (from its UsageRecord)."""
        self.stats.observe(cluster, now, status, ttft_s, latency_s,
                           completion_tokens if stream else 0, outcome)

    def attempt_status(self, cluster: str, status: int) -> None:
        self.stats.observe_status(cluster, time.monotonic(), status)

    def remember(self, response_id: str, model: str, cluster: str, category: str) -> None:
        self.served.remember(response_id, self.served.of(model, cluster, category))

    def feedback(self, raw: bytes) -> FeedbackReply:
        """`POST /v1/feedback {"id": ..., "score": 0..1}` or `{"id": ..., "accepted": bool}`,
        for ids this replica served (see `feedback_async` for the fleet's)."""
        parsed = _parse_feedback(raw)
        if isinstance(parsed, FeedbackReply):
            return parsed
        rid, value = parsed
        return self._record(rid, value, self.served.get(rid))

    async def feedback_async(self, raw: bytes) -> FeedbackReply:
        """As `feedback`, and an id another replica served is looked up in Redis (an awaited
        GET: the feedback path, never the chat path). Redis down -> 503."""
        parsed = _parse_feedback(raw)
        if isinstance(parsed, FeedbackReply):
            return parsed
        rid, value = parsed
        served = self.served.get(rid)
        if served is None and self.fleet is not None:
            from ext_proc.select.fleet import FleetUnavailable

            try:
                served = await self.fleet.lookup(rid)
            except FleetUnavailable:
                return FeedbackReply(503, message="The gateway's shared state (Redis) is "
                                     "unavailable; retry the feedback later",
                                     code="unavailable", param="id")
        return self._record(rid, value, served)

    def _record(self, rid: str, value: float, served: ServedBy | None) -> FeedbackReply:
        if served is None:
            return FeedbackReply(404, message=f"No response with id '{rid}' is known to this "
                                 "gateway (unknown or too old)", code="not_found", param="id")
        self.quality.update(served.cluster, served.category, value)
        return FeedbackReply(200, {"id": rid, "object": "feedback", "model": served.model,
                                   "category": served.category, "recorded": value})

    # -- GET /routing -------------------------------------------------------------------
    def table(self, routes: Routes) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {}
        for alias, model in sorted(routes.models.items()):
            policy = model.routing
            shares = self.shares.of(alias)
            pct = policy.percentile if policy else 95.0
            rows = []
            for b in model.backends:
                quality = {}
                for cat in CATEGORIES:
                    quality[cat] = {"mean": round(self.quality.mean(b, cat), 4),
                                    "feedback": round(self.quality.feedback_count(
                                        b.cluster, cat), 1)}
                rows.append({
                    "backend": b.label, "cluster": b.cluster,
                    "price": {"input": b.price_input, "output": b.price_output},
                    "lacks": sorted(b.lacks),
                    "unhealthy": self.health.unhealthy(b.cluster, now),
                    "share": shares.get(b.cluster, 0.0),
                    "stats": self.stats.view(b.cluster, now, pct).as_dict(),
                    "quality": quality,
                })
            out[alias] = {
                "strategy": policy.strategy if policy else "ordered",
                "policy": None if policy is None else {
                    "weights": {"cost": policy.weight_cost, "latency": policy.weight_latency,
                                "quality": policy.weight_quality},
                    "slo": {"ttft_ms": policy.slo_ttft_ms or None,
                            "tpot_ms": policy.slo_tpot_ms or None, "percentile": pct},
                    "min_quality": policy.min_quality or None, "explore": policy.explore,
                    "max_price_usd": policy.max_price_usd or None},
                "presets": {f"{alias}:{p}": s for p, s in PRESETS.items()},
                "backends": rows,
            }
        return {"models": out, "feedback_ids": len(self.served),
                "fleet": self.fleet.status() if self.fleet is not None else None}


def _parse_feedback(raw: bytes) -> tuple[str, float] | FeedbackReply:
    """(response id, score) of a feedback body, or the 400 that answers it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return FeedbackReply(400, message="Request body is not valid JSON", code="invalid_json")
    if not isinstance(body, dict):
        return FeedbackReply(400, message="Request body must be a JSON object",
                             code="invalid_request")
    rid = body.get("id")
    if not isinstance(rid, str) or not rid:
        return FeedbackReply(400, message="'id' must be a response id (string)",
                             code="invalid_request", param="id")
    extra = set(body) - {"id", "score", "accepted"}
    if extra:
        return FeedbackReply(400, message=f"Unknown field '{sorted(extra)[0]}'",
                             code="invalid_request", param=sorted(extra)[0])
    score = body.get("score")
    accepted = body.get("accepted")
    if (score is None) == (accepted is None):
        return FeedbackReply(400, message="Set exactly one of 'score' (0..1) or 'accepted'",
                             code="invalid_request", param="score")
    if accepted is not None:
        if not isinstance(accepted, bool):
            return FeedbackReply(400, message="'accepted' must be true or false",
                                 code="invalid_request", param="accepted")
        return rid, 1.0 if accepted else 0.0
    if isinstance(score, bool) or not isinstance(score, int | float) or not (
            0.0 <= score <= 1.0):
        return FeedbackReply(400, message="'score' must be a number from 0 to 1",
                             code="invalid_request", param="score")
    return rid, float(score)


def split_preset(alias: str) -> tuple[str, str | None]:
    """`gpt:fast` -> ("gpt", "fast"); anything else -> (alias, None)."""
    base, sep, suffix = alias.rpartition(":")
    if sep and base and suffix in PRESETS:
        return base, suffix
    return alias, None
