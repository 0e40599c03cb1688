"""The replay engine: a trace through the live selection and admission code, against simulated
backends, in simulated time (a discrete-event loop on a heap).

What is the gateway's own code, called as the route phase calls it (never a copy):
  * the config: `load_config` -> `compile_config` -> `Routes.from_proto`, the table ext_proc
    serves from;
  * the request: a synthesised OpenAI chat body through `route.parse` (the ingress);
  * selection: `Replay._select`, the one place that calls `ext_proc.select` (`rank` when it
    exists, else `candidates`);
  * admission: `ext_proc.admission.Admission.admit` / `reconcile` / `release`, with the
    config's provider and backend limits when it has them;
  * statistics: every simulated answer is fed to the same objects the translate and response
    phases feed (`BackendHealth.record` / `cool_down` on 429, and the live `Selector`'s
    `attempt_status` / `finished`: live latency sketches; optional simulated feedback into its
    quality posteriors), so latency-, health- and quality-aware selection reacts to what the
    simulation does. Envoy's circuit-breaker view (`breaker_open`) follows the simulated
    in-flight counts.

What is simulated (Envoy and the providers): the attempt walk over the ordered candidates
(attempt k goes to candidate k, up to the model's retry budget), the per-try first-byte timeout,
each backend's TTFT (the provider's `simulate.ttft_ms` with log-normal jitter), decode speed
(`simulate.tokens_per_s`), errors (`simulate.error_rate`), the provider account's own quota
(`simulate.rpm` / `simulate.tpm` -> 429 with retry-after) and Envoy's circuit breaker
(`max_concurrent_requests` -> 503 overflow). Random draws come from one seeded RNG per run.

Live code reads `time.monotonic()`; while a replay runs, `sim_time` points the `time` those
modules see at the simulated clock, so cool-downs and decayed statistics age in simulated time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from control_plane.compile import cluster_name, compile_config
from control_plane.config import GatewayConfig, load_config, parse_config
from ext_proc import route
from ext_proc import select as selection
from ext_proc.admission import Admission, Admit, Queue, Shed, compile_admission
from ext_proc.admission.buckets import TokenBucket
from ext_proc.ingress import INGRESS
from ext_proc.select import ContextTooLong
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, Routes
from ext_proc.translate.canonical import Usage
from ext_proc.usage import cost_usd
from switchyard.contract import CHAT_PATH
from switchyard.replay.trace import TraceRequest

try:  # the live task classifier (issue 9); absent: every request counts as chat
    from ext_proc.select import features as _features
except ImportError:  # pragma: no cover - depends on what has landed
    _features = None  # type: ignore[assignment]

#: Sigma of the log-normal TTFT jitter (p95 is about 1.6x the configured median).
TTFT_SIGMA = 0.3
#: Sigma of the log-normal decode-speed jitter.
TPS_SIGMA = 0.15
#: A simulated 5xx answers after this share of the backend's TTFT.
ERROR_AFTER_TTFT = 0.5
#: A simulated 429 (provider quota) answers after this many seconds.
REJECT_AFTER_S = 0.05
#: `--strategy none`: replay without the model's `routing:` block (the configured order,
#: unhealthy backends last: the behaviour before live selection).
NO_ROUTING = "none"
#: `--category classify`: run the live task classifier on the synthesised prompts.
CLASSIFY = "classify"
#: SLO target when the model has none and the caller gave none.
DEFAULT_SLO_TTFT_MS = 1000.0
#: Words the synthesised prompts are made of (chat-like text, 4 characters per token on
#: average as `select.estimate_tokens` assumes: 3 letters and a space).
_WORDS = ("the", "how", "can", "you", "for", "and", "why", "set", "not", "one", "our", "all")


# -- simulated time ---------------------------------------------------------------------------
class SimClock:
    """Simulated seconds; `epoch` maps them to wall time for code that reads `time.time()`."""

    def __init__(self, epoch: float = 1_700_000_000.0) -> None:
        self.now = 0.0
        self.epoch = epoch

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now


class _TimeShim(types.ModuleType):
    """A stand-in for the `time` module whose clocks read the simulated clock."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__("time")
        self._clock = clock
        self.monotonic = clock.monotonic  # type: ignore[method-assign]
        self.perf_counter = clock.monotonic  # type: ignore[method-assign]
        self.time = clock.time  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def sim_time(clock: SimClock, prefix: str = "ext_proc.") -> Iterator[None]:
    """Point the clocks of every loaded `ext_proc` module at `clock` (restored on exit)."""
    shim = _TimeShim(clock)
    real = {time.monotonic: clock.monotonic, time.perf_counter: clock.monotonic,
            time.time: clock.time}
    patched: list[tuple[types.ModuleType, str, Any]] = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith(prefix) or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            if value is time:
                patched.append((mod, attr, value))
                setattr(mod, attr, shim)
            elif callable(value) and value in real:
                patched.append((mod, attr, value))
                setattr(mod, attr, real[value])
    try:
        yield
    finally:
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)


# -- simulated backends -----------------------------------------------------------------------
@dataclass(slots=True)
class SimBackend:
    """One backend as the simulation sees it: the gateway's BackendInfo plus its behaviour."""

    info: BackendInfo
    ttft_ms: float
    tokens_per_s: float
    error_rate: float
    error_status: int
    #: The true quality of its answers, per task category ("*" = any).
    quality: Mapping[str, float]
    max_concurrent: int
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    retry_after_s: float = 1.0
    inflight: int = 0

    def quality_for(self, category: str) -> float | None:
        if category in self.quality:
            return self.quality[category]
        if "*" in self.quality:
            return self.quality["*"]
        return sum(self.quality.values()) / len(self.quality) if self.quality else None


def _quality_map(value: Any) -> dict[str, float]:
    if isinstance(value, int | float):
        return {"*": float(value)}
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {}


def sim_backends(cfg: GatewayConfig, routes: Routes, now: float = 0.0) -> dict[str, SimBackend]:
    """cluster -> SimBackend, from each backend's provider's `simulate:` block (per-backend
    `simulate:` / `quality:` fields when the config has them)."""
    by_cluster: dict[str, Any] = {}
    for model in cfg.models.values():
        for b in model.backends:
            by_cluster.setdefault(cluster_name(b), b)
    out = {}
    for cluster, info in routes.clusters.items():
        backend = by_cluster.get(cluster)
        provider = cfg.providers[info.provider.name]
        sim: Any = getattr(backend, "simulate", None) or provider.simulate
        rpm = getattr(sim, "rpm", None)
        tpm = getattr(sim, "tpm", None)
        out[cluster] = SimBackend(
            info=info,
            ttft_ms=float(getattr(sim, "ttft_ms", 0.0) or 0.0),
            tokens_per_s=float(getattr(sim, "tokens_per_s", 0.0) or 0.0),
            error_rate=float(getattr(sim, "error_rate", 0.0) or 0.0),
            error_status=int(getattr(sim, "error_status", 500) or 500),
            quality=_quality_map(getattr(backend, "quality", None)),
            max_concurrent=provider.max_concurrent_requests,
            rpm=TokenBucket(rpm, now) if rpm else None,
            tpm=TokenBucket(tpm, now) if tpm else None,
            retry_after_s=float(getattr(sim, "retry_after_s", 1) or 1),
        )
    return out


def admission_config(admission_json: str) -> Any:
    """Admission's config from the routing table's `admission_json` (what ext_proc reads:
    tenants, provider and backend quotas, priorities); empty: every request is admitted."""
    doc = orjson.loads(admission_json) if admission_json else {}
    return compile_admission(doc.get("tenants"), doc.get("providers"), doc.get("backends"),
                             doc.get("priorities"))


# -- one replay run ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Run:
    """One config (optionally with its routing strategy overridden) to replay."""

    label: str
    cfg: GatewayConfig
    alias: str
    #: The SLO to score against when the config's own routing block was dropped.
    slo: Mapping[str, Any] | None = None


def load_run(path: str | Path, strategy: str | None = None, alias: str | None = None) -> Run:
    """Load a config; `strategy` overrides `routing.strategy` of the replayed model."""
    path = Path(path)
    cfg = load_config(path)
    alias = alias or default_alias(cfg)
    if alias not in cfg.models:
        raise ValueError(f"{path}: no model {alias!r} (known: {', '.join(sorted(cfg.models))})")
    label = str(path)
    slo = None
    if strategy is not None:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        routing = data["models"][alias].get("routing") or {}
        if strategy == NO_ROUTING:  # today's behaviour; the SLO still scores the results
            data["models"][alias].pop("routing", None)
            slo = routing.get("slo")
        else:
            data["models"][alias]["routing"] = {**routing, "strategy": strategy}
        cfg = parse_config(yaml.safe_dump(data, sort_keys=False), f"{path} (strategy={strategy})")
        label = f"{path} [{strategy}]"
    return Run(label, cfg, alias, slo)


def default_alias(cfg: GatewayConfig) -> str:
    """The model to replay against: the first (by name) with `routing:`, else the first."""
    if not cfg.models:
        raise ValueError("the config has no models")
    routed = sorted(a for a, m in cfg.models.items() if getattr(m, "routing", None))
    return routed[0] if routed else sorted(cfg.models)[0]


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


@dataclass(slots=True)
class Outcome:
    """One trace request after the replay."""

    t: float
    #: answered | shed | failed | too_long
    status: str
    backend: str | None = None
    attempts: int = 0
    ttft_s: float | None = None
    tpot_s: float | None = None
    cost_usd: float = 0.0
    quality: float | None = None
    queued_s: float = 0.0


@dataclass(slots=True)
class _Req:
    idx: int
    tr: TraceRequest
    canonical: dict[str, Any]
    model: ModelInfo
    tokens: int = 0
    cands: tuple[BackendInfo, ...] = ()
    retries: int = 0
    attempt: int = 0
    reservation: Any = None
    deadline: float = math.inf
    started: float = 0.0
    category: str = "chat"


@dataclass
class Result:
    label: str
    alias: str
    strategy: str
    selection: str
    slo_ttft_ms: float
    slo_tpot_ms: float | None
    outcomes: list[Outcome]
    clusters: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


class Replay:
    """Drive `trace` through one config in simulated time."""

    def __init__(self, run: Run, trace: Sequence[TraceRequest], *, seed: int = 0,
                 slo_ttft_ms: float | None = None, priority: str = "chat",
                 tenant: str = "default", feedback: float = 0.0, category: str = "chat",
                 progress: Callable[[float], None] | None = None) -> None:
        self.run = run
        self.trace = trace
        self.rng = random.Random(seed)
        self.seed = seed
        self.priority = priority
        self.tenant = tenant
        #: Share of answered requests that send feedback (a Bernoulli draw of the true quality).
        self.feedback = feedback
        #: Task category of every request (traces carry no prompt text), or CLASSIFY: the
        #: live classifier reads the synthesised prompts.
        self.category = category
        self.progress = progress
        self.clock = SimClock()
        table = compile_config(run.cfg).routing
        self.routes = Routes.from_proto(table)
        self.model = self.routes.models[run.alias]
        self.backends = sim_backends(run.cfg, self.routes)
        self.health = BackendHealth()
        #: The live path's selection state (health, live stats, quality posteriors, RNG);
        #: made in simulated time by `run_all`. None: `candidates` (no live selection yet).
        self.selector: Any = None
        self.admission = Admission(admission_config(table.admission_json),
                                   clock=self.clock.monotonic)
        routing = getattr(run.cfg.models[run.alias], "routing", None)
        self.strategy = str(_get(routing, "strategy") or "ordered") if routing else "none"
        slo = _get(routing, "slo") or run.slo
        self.slo_ttft_ms = float(_get(slo, "ttft_ms") or slo_ttft_ms or DEFAULT_SLO_TTFT_MS)
        tpot = _get(slo, "tpot_ms")
        self.slo_tpot_ms = float(tpot) if tpot else None
        self.ingress = INGRESS[CHAT_PATH]
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.outcomes: list[Outcome] = []

    # -- the one place that calls the live selection code -------------------------------
    def _select(self, model: ModelInfo, canonical: dict[str, Any]
                ) -> tuple[tuple[BackendInfo, ...], str]:
        """(candidates in failover order, the request's task category)."""
        now = self.clock.now
        if self.selector is not None:
            ctx = self.selector.context(now)
            if self.category != CLASSIFY:
                ctx.classify = self._classify
            sel = selection.rank(model, canonical, ctx)
            self.selector.chosen(model.name, sel, now)
            return tuple(sel.candidates), str(sel.category)
        category = (_category(canonical, selection.estimate_tokens(canonical))
                    if self.category == CLASSIFY else self._classify(canonical, 0))
        return selection.candidates(model, canonical, self.health), category

    def _classify(self, canonical: dict[str, Any], prompt_tokens: int) -> str:
        """The live classifier on the request's structure (tools, long context), the trace's
        category for its text (synthesised text has no topic)."""
        bare = {k: v for k, v in canonical.items() if k != "messages"}
        found = _category(bare, prompt_tokens)
        return self.category if found == "chat" else found

    # -- what the translate and response phases feed back -------------------------------
    def _attempt_answered(self, b: SimBackend, status: int) -> None:
        """One attempt's upstream status (the translate phase's `answered`)."""
        cluster = b.info.cluster
        if status == 429:
            self.health.cool_down(cluster, str(b.retry_after_s))
        else:
            self.health.record(cluster, status >= 500)
        if self.selector is not None:
            self.selector.attempt_status(cluster, status)

    def _request_finished(self, req: _Req, b: SimBackend, ttft_s: float, latency_s: float,
                          out: int) -> None:
        """The end of an answered request (the response phase's UsageRecord)."""
        if self.selector is None:
            return
        now = self.clock.now
        cluster = b.info.cluster
        self.selector.finished(cluster, now, 200, ttft_s, latency_s, out, True, "completed")
        if self.feedback and self.rng.random() < self.feedback:
            q = b.quality_for(req.category)
            if q is not None:
                self.selector.quality.update(cluster, req.category,
                                             1.0 if self.rng.random() < q else 0.0)

    # -- event loop -----------------------------------------------------------------------
    def _at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, args))

    def run_all(self) -> Result:
        started = time.perf_counter()
        state = random.getstate()
        random.seed(self.seed)  # live code drawing from the global `random` is seeded too
        self.outcomes = [Outcome(r.t, "pending") for r in self.trace]
        for i, r in enumerate(self.trace):
            self._at(r.t, self._arrive, i)
        total = self.trace[-1].t if self.trace else 0.0
        next_report = time.perf_counter() + 0.5
        try:
            with sim_time(self.clock):
                make = getattr(selection, "Selector", None)
                if make is not None and hasattr(selection, "rank"):
                    self.selector = make(self.health, seed=self.seed)
                while self._heap:
                    t, _, fn, args = heapq.heappop(self._heap)
                    self.clock.now = t
                    fn(*args)
                    if self.progress is not None and time.perf_counter() >= next_report:
                        next_report = time.perf_counter() + 0.5
                        self.progress(min(t, total) / total if total else 1.0)
        finally:
            random.setstate(state)
        if self.progress is not None:
            self.progress(1.0)
        return Result(self.run.label, self.run.alias, self.strategy,
                      "rank" if self.selector is not None else "candidates",
                      self.slo_ttft_ms, self.slo_tpot_ms, self.outcomes,
                      {c: b.label for c, b in self.routes.clusters.items()},
                      time.perf_counter() - started)

    def _prompt(self, tokens: int) -> str:
        """About `tokens` tokens of chat-like text (4 characters per token)."""
        n = max(1, tokens)
        words = self.rng.choices(_WORDS, k=min(n, 64))
        return (" ".join(words) + " ") * (n // len(words)) + " ".join(words[: n % len(words)])

    def _arrive(self, i: int) -> None:
        tr = self.trace[i]
        alias = tr.model if tr.model in self.routes.models else self.run.alias
        body = {"model": alias, "messages": [{"role": "user", "content": self._prompt(
            tr.prompt_tokens)}], "stream": True}
        parsed = route.parse(self.ingress, orjson.dumps(body))
        assert isinstance(parsed, route.Parsed), parsed
        model = self.routes.models[alias]
        req = _Req(i, tr, parsed.canonical, model, started=self.clock.now)
        try:
            req.cands, req.category = self._select(model, parsed.canonical)
        except ContextTooLong:
            self.outcomes[i].status = "too_long"
            return
        except Exception as exc:  # rank's Unservable: no backend has a needed capability
            if type(exc).__name__ != "Unservable":
                raise
            self.outcomes[i].status = "unservable"
            return
        req.retries = (min(model.max_retries, len(req.cands) - 1) if len(req.cands) > 1
                       else model.max_retries)
        req.tokens = self.admission.estimator.estimate(alias, parsed.canonical)
        self._admit(req)

    def _admit(self, req: _Req) -> None:
        now = self.clock.now
        d = self.admission.admit(self.tenant, self.priority, req.model.name, req.cands,
                                 req.tokens, now=now)
        if isinstance(d, Admit):
            req.cands = d.candidates
            req.reservation = d.reservation
            self.outcomes[req.idx].queued_s = now - req.started
            self._attempt(req)
        elif isinstance(d, Queue):  # the live WaitQueue retries at the refill, until deadline
            req.deadline = min(req.deadline, d.deadline)
            at = now + max(d.retry_after_s, 0.001)
            if at > req.deadline:
                self.outcomes[req.idx].status = "shed"
            else:
                self._at(at, self._admit, req)
        else:
            assert isinstance(d, Shed)
            self.outcomes[req.idx].status = "shed"

    def _attempt(self, req: _Req) -> None:
        now = self.clock.now
        info = req.cands[min(req.attempt, len(req.cands) - 1)]
        b = self.backends[info.cluster]
        req.attempt += 1
        timeout_s = req.model.first_byte_timeout_ms / 1000 or math.inf
        if b.inflight >= b.max_concurrent:  # Envoy's circuit breaker: a local 503 overflow
            self._failed(req, b, 0, now)
            return
        if not self._quota_ok(b, req, now):
            self._at(now + REJECT_AFTER_S, self._failed, req, b, 429, now)
            return
        ttft = b.ttft_ms / 1000 * math.exp(self.rng.gauss(0.0, TTFT_SIGMA))
        if self.rng.random() < b.error_rate:
            fail_at = min(ttft * ERROR_AFTER_TTFT, timeout_s)
            self._at(now + fail_at, self._failed, req, b, b.error_status, now)
            return
        if ttft > timeout_s:  # Envoy gives up on the attempt at the first-byte timeout
            self._at(now + timeout_s, self._failed, req, b, 504, now)
            return
        b.inflight += 1
        if b.inflight == b.max_concurrent:  # what the route phase reads from Envoy's admin
            self.health.breaker_open = self.health.breaker_open | {info.cluster}
        out = req.tr.output_tokens
        tps = b.tokens_per_s * math.exp(self.rng.gauss(0.0, TPS_SIGMA))
        decode = out / tps if tps > 0 else 0.0
        self._at(now + ttft + decode, self._done, req, b, now, ttft, decode)

    def _quota_ok(self, b: SimBackend, req: _Req, now: float) -> bool:
        """The provider account's own RPM/TPM (charged at request time, as providers do)."""
        tokens = req.tr.prompt_tokens + req.tr.output_tokens
        for bucket, n in ((b.rpm, 1), (b.tpm, tokens)):
            if bucket is not None and bucket.wait(min(n, bucket.capacity), now) > 0:
                return False
        for bucket, n in ((b.rpm, 1), (b.tpm, tokens)):
            if bucket is not None:
                bucket.take(min(n, bucket.capacity))
        return True

    def _failed(self, req: _Req, b: SimBackend, status: int, sent: float) -> None:
        if status:  # 0: Envoy's own overflow reply, never seen by the translate phase
            self._attempt_answered(b, status)
        if req.attempt <= req.retries:
            self._attempt(req)
            return
        o = self.outcomes[req.idx]
        o.status, o.attempts, o.backend = "failed", req.attempt, None
        self._finish(req, None, 0)

    def _done(self, req: _Req, b: SimBackend, sent: float, ttft: float, decode: float) -> None:
        now = self.clock.now
        b.inflight -= 1
        if b.inflight == b.max_concurrent - 1 and b.info.cluster in self.health.breaker_open:
            self.health.breaker_open = self.health.breaker_open - {b.info.cluster}
        out = req.tr.output_tokens
        self._attempt_answered(b, 200)
        o = self.outcomes[req.idx]
        o.status = "answered"
        o.backend = b.info.cluster
        o.attempts = req.attempt
        o.ttft_s = sent + ttft - req.started
        o.tpot_s = decode / (out - 1) if out > 1 else None
        o.cost_usd = cost_usd(b.info, Usage(req.tr.prompt_tokens, out))
        o.quality = b.quality_for(req.category)
        self._request_finished(req, b, o.ttft_s, now - req.started, out)
        self._finish(req, b.info, out)

    def _finish(self, req: _Req, answered: BackendInfo | None, out: int) -> None:
        res = req.reservation
        if res is None:
            return
        used = req.tr.prompt_tokens + out if answered is not None else 0
        self.admission.reconcile(res, used, answered, output_tokens=out if answered else None,
                                 now=self.clock.now)
        self.admission.release(res)


def _category(canonical: dict[str, Any], prompt_tokens: int) -> str:
    """The request's task category by the live classifier (`chat` before there is one)."""
    classify = getattr(_features, "classify", None) if _features is not None else None
    return str(classify(canonical, prompt_tokens)) if classify is not None else "chat"


def replay(runs: Sequence[Run], trace: Sequence[TraceRequest], *, seed: int = 0,
           slo_ttft_ms: float | None = None, priority: str = "chat", tenant: str = "default",
           feedback: float = 0.0, category: str = "chat",
           progress: Callable[[str, float], None] | None = None) -> list[Result]:
    """Replay `trace` once per run, each with the same seed."""
    out = []
    for run in runs:
        cb = None if progress is None else (lambda f, label=run.label: progress(label, f))
        out.append(Replay(run, trace, seed=seed, slo_ttft_ms=slo_ttft_ms, priority=priority,
                          tenant=tenant, feedback=feedback,
                          category=category, progress=cb).run_all())
    return out
