"""Live selection: constraints, then objective. The ordered result is the failover order Envoy
walks (attempt k -> candidate k).

1. **Cannot serve** (dropped): context window too small, a capability the request needs
   (tools, images, JSON schema) that the backend lacks.
2. **Fallbacks** (kept, ordered after the rest): unhealthy (ejected, breaker open, cooling
   down) or out of quota (the `headroom` callback, from admission) -> tier 2; predicted TTFT /
   TPOT at the SLO percentile above the SLO, expected cost above the price cap, posterior
   quality below `min_quality` -> tier 1. When tier 0 is empty the best fallback is served
   and the explanation says so (`slo_unmet=...`).
3. **Objective** within each tier, by strategy: `ordered` (configured order), `cost`
   (price x estimated tokens), `latency` (predicted TTFT p50, plus TPOT p50 x expected output
   tokens for streams), `throughput` (output tokens/s), `quality` (a Thompson sample of the
   (backend, category) Beta posterior), `balanced` (utility: -w_cost*log2(cost/cheapest)
   - w_latency*log2(latency/fastest) + w_quality*10*(quality - best quality)).
   Numeric keys get up to `TIE_JITTER` of random noise, so replicas holding the same stale
   statistics spread over near-equal backends instead of herding onto one.
4. **Exploration**: with probability `explore` a random other healthy backend goes first, so
   the statistics of the rest stay fresh and a recovered backend wins its traffic back. A
   backend predicted to miss the SLO is probed at most `SLO_PROBE_BUDGET` of the SLO's error
   budget (1% of traffic at p95), so exploration alone cannot break the attainment target.

A backend without statistics yet is predicted as good as the best known one (optimistic, so
it gets tried). Plain data in and out: replay calls `rank_features` with trace features.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ext_proc.select.candidates import ContextTooLong
from ext_proc.select.features import Classifier, Features, classify, features_of
from ext_proc.select.quality import QualityModel
from ext_proc.stats.health import BackendHealth
from ext_proc.stats.latency import LiveStats
from ext_proc.table import BackendInfo, ModelInfo, RoutingPolicy
from switchyard.contract import PRESETS

#: Relative random noise on numeric keys (near-ties broken at random).
TIE_JITTER = 0.05
#: Balanced strategy: 0.1 quality is worth one "doubling" unit.
QUALITY_SCALE = 10.0
#: Default exploration of a preset (`ALIAS:fast`) when the model has no routing block.
PRESET_EXPLORE = 0.02
#: Share of the SLO's error budget (1 - percentile) that exploration may spend on backends
#: predicted to miss the SLO: at p95, at most 1% of a model's traffic probes them.
SLO_PROBE_BUDGET = 0.2

_TIER1 = frozenset({"slo_ttft", "slo_tpot", "price", "quality"})


class Unservable(Exception):
    """No backend of the model can serve this request (a capability nobody has)."""

    def __init__(self, message: str, code: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(slots=True)
class SelectContext:
    """What selection reads besides the model and the request."""

    health: BackendHealth
    stats: LiveStats
    quality: QualityModel
    rng: random.Random
    #: time.monotonic() of the decision.
    now: float
    #: Per-request tightening (x-switchyard-slo-ttft-ms / x-switchyard-max-price, USD per
    #: request): the stricter of the model's and the request's wins.
    slo_ttft_ms: float | None = None
    max_price_usd: float | None = None
    #: `ALIAS:fast|cheap|best`: fast, cheap or best (None: the model's own policy).
    preset: str | None = None
    #: Admission's "does this backend have quota headroom" (None: assume it does).
    headroom: Callable[[BackendInfo], bool] | None = None
    classify: Classifier = field(default=classify)


@dataclass(slots=True)
class Scored:
    """One candidate's prediction, as it decided (explanations, /routing, replay). Read-only
    by convention: not frozen because a frozen dataclass costs ~1 us more per instance."""

    backend: BackendInfo
    cost_usd: float
    #: Predicted TTFT p50 and at the SLO percentile (None: no statistics yet).
    ttft_ms: float | None
    ttft_pq_ms: float | None
    #: Quality used (a posterior sample for quality/balanced, else the posterior mean; None
    #: when the strategy did not need it).
    quality: float | None
    #: Why it is only a fallback (None: it met every constraint).
    reason: str | None


@dataclass(slots=True)
class Selection:
    """The ordered candidates of one request and why (read-only by convention, see Scored)."""

    candidates: tuple[BackendInfo, ...]
    #: Compact explanation (the x-switchyard-route header, the request log's `route`).
    explain: str
    strategy: str
    category: str
    explored: bool = False
    #: False when no backend met the SLO / price / quality constraints (best available).
    constraints_met: bool = True
    #: Per candidate, in candidate order.
    scored: tuple[Scored, ...] = ()
    #: (label, reason) of backends that cannot serve this request at all.
    dropped: tuple[tuple[str, str], ...] = ()

    @property
    def first(self) -> Scored | None:
        return self.scored[0] if self.scored else None


def policy_for(model: ModelInfo, preset: str | None) -> RoutingPolicy | None:
    """The model's policy, or its `fast|cheap|best` preset (SLO, floor, cap kept)."""
    policy = model.routing
    if preset is None:
        return policy
    strategy = PRESETS[preset]
    if policy is None:
        return RoutingPolicy(strategy=strategy, explore=PRESET_EXPLORE)
    return RoutingPolicy(
        strategy=strategy, weight_cost=policy.weight_cost, weight_latency=policy.weight_latency,
        weight_quality=policy.weight_quality, slo_ttft_ms=policy.slo_ttft_ms,
        slo_tpot_ms=policy.slo_tpot_ms, percentile=policy.percentile,
        min_quality=policy.min_quality, explore=policy.explore or PRESET_EXPLORE,
        max_price_usd=policy.max_price_usd)


def rank(model: ModelInfo, canonical: dict[str, object], ctx: SelectContext) -> Selection:
    """Candidates of an OpenAI-chat (or embeddings) canonical request, best first.

    The task category is only worth its CPU when something uses it: a routing policy (quality
    per category, feedback) or a preset; the configured order classifies nothing."""
    plain = model.routing is None and ctx.preset is None
    return rank_features(model, features_of(canonical, _unclassified if plain else ctx.classify),
                         ctx)


def _unclassified(canonical: dict[str, Any], prompt_tokens: int) -> str:
    return "chat"


def _tighter(a: float, b: float | None) -> float:
    """The stricter of a configured limit (0: none) and a request's (None: none)."""
    if b is None or b <= 0:
        return a
    return b if a <= 0 else min(a, b)


def expected_cost(b: BackendInfo, f: Features) -> float:
    return (f.prompt_tokens * b.price_input + f.output_tokens * b.price_output) / 1e6


class _Plan:
    """What selection derives from a model alone, computed once per (model, preset) object:
    the resolved policy and the bounds that let most requests skip the capability and context
    filters."""

    __slots__ = ("lacks", "min_window", "model", "policy")

    def __init__(self, model: ModelInfo, preset: str | None) -> None:
        self.model = model
        self.policy = policy_for(model, preset)
        windows = [b.context_window for b in model.backends if b.context_window]
        #: Smallest configured context window (0: none configured).
        self.min_window = min(windows) if windows else 0
        #: Every capability some backend lacks.
        self.lacks: frozenset[str] = frozenset().union(*(b.lacks for b in model.backends))


_PLANS: dict[tuple[int, str | None], _Plan] = {}
_DEFAULT_POLICY = RoutingPolicy()


def _plan_of(model: ModelInfo, preset: str | None) -> _Plan:
    plan = _PLANS.get((id(model), preset))
    if plan is None or plan.model is not model:  # a new table (or a reused id)
        if len(_PLANS) > 1024:
            _PLANS.clear()
        plan = _PLANS[(id(model), preset)] = _Plan(model, preset)
    return plan


def rank_features(model: ModelInfo, f: Features, ctx: SelectContext) -> Selection:
    """Candidates for a request described by `f` (raises ContextTooLong / Unservable)."""
    plan = _plan_of(model, ctx.preset)
    backends = model.backends
    dropped: list[tuple[str, str]] = []
    # Only when some backend may not fit (the common request fits them all).
    if f.context_tokens and plan.min_window and f.context_tokens > plan.min_window:
        fitting = tuple(b for b in backends
                        if not b.context_window or b.context_window >= f.context_tokens)
        if not fitting:
            raise ContextTooLong(f.context_tokens, max(b.context_window for b in backends))
        if len(fitting) != len(backends):
            dropped.extend((b.label, "context") for b in backends if b not in fitting)
        backends = fitting
    if f.needs and not f.needs.isdisjoint(plan.lacks):
        able = tuple(b for b in backends if not (f.needs & b.lacks))
        if not able:
            need = sorted(f.needs & frozenset().union(*(b.lacks for b in backends)))
            raise Unservable(
                f"The model `{model.name}` has no backend that supports {', '.join(need)}",
                "unsupported_capability", need[0])
        dropped.extend((b.label, "+".join(sorted(f.needs & b.lacks)))
                       for b in backends if b not in able)
        backends = able
    policy = plan.policy
    if policy is None:
        if ctx.slo_ttft_ms is None and ctx.max_price_usd is None:
            return _ordered(backends, f, ctx, dropped)
        policy = _DEFAULT_POLICY
    return _ranked(policy, backends, f, ctx, dropped)


def _ordered(backends: tuple[BackendInfo, ...], f: Features, ctx: SelectContext,
             dropped: list[tuple[str, str]]) -> Selection:
    """No routing block: the configured order, unhealthy (and out-of-quota) backends last."""
    reasons: list[str | None] = [None] * len(backends)
    if len(backends) > 1:
        now, health, headroom = ctx.now, ctx.health, ctx.headroom
        for i, b in enumerate(backends):
            if health.unhealthy(b.cluster, now):
                reasons[i] = "unhealthy"
            elif headroom is not None and not headroom(b):
                reasons[i] = "no_quota"
        if any(reasons):
            order = [i for i, r in enumerate(reasons) if r is None] + [
                i for i, r in enumerate(reasons) if r is not None]
            backends = tuple(backends[i] for i in order)
            reasons = [reasons[i] for i in order]
    scored = tuple(Scored(b, expected_cost(b, f), None, None, None, r)
                   for b, r in zip(backends, reasons, strict=True))
    skipped = [(s.backend.label, s.reason) for s in scored if s.reason] + dropped
    explain = f"ordered; pick={backends[0].label}"
    if skipped:
        explain += "; skipped=" + ",".join(f"{label}:{why}" for label, why in skipped)
    return Selection(backends, explain, "ordered", f.category, scored=scored,
                     dropped=tuple(dropped), constraints_met=reasons[0] is None)


_WANTS_Q = frozenset({"quality", "balanced"})
_SLO_REASONS = frozenset({"slo_ttft", "slo_tpot"})


def _ranked(policy: RoutingPolicy, backends: tuple[BackendInfo, ...], f: Features,
            ctx: SelectContext, dropped: list[tuple[str, str]]) -> Selection:
    # The hot path of a model with a routing block: plain loops and locals, no helper calls
    # per backend. Random draws happen in a fixed order (Thompson samples, then tie noise,
    # then exploration), so a seeded generator reproduces a decision (replay, tests).
    now, rng, headroom = ctx.now, ctx.rng, ctx.headroom
    view, unhealthy = ctx.stats.view, ctx.health.unhealthy
    strategy = policy.strategy
    pct = policy.percentile
    slo_ttft = _tighter(policy.slo_ttft_ms, ctx.slo_ttft_ms)
    stream = f.stream
    slo_tpot = policy.slo_tpot_ms if stream else 0.0
    max_price = _tighter(policy.max_price_usd, ctx.max_price_usd)
    min_quality = policy.min_quality
    wants_q = strategy in _WANTS_Q
    qmodel, cat = ctx.quality, f.category
    qmean = qmodel.mean
    # Thompson draws first, in backend order: nothing else in the loop draws from `rng`.
    draws = qmodel.samples(backends, cat, rng) if wants_q else None
    pt, ot = f.prompt_tokens, f.output_tokens
    n = len(backends)
    costs: list[float] = []
    lat: list[float | None] = []
    ttft_pq: list[float | None] = []
    ttft50: list[float | None] = []
    tput: list[float | None] = []
    qual: list[float | None] = []
    reasons: list[str | None] = []
    tiers: list[int] = []
    for j, b in enumerate(backends):
        v = view(b.cluster, now, pct)
        cost = (pt * b.price_input + ot * b.price_output) / 1e6
        costs.append(cost)
        t50, tpq = v.ttft_p50, v.ttft_pq
        ttft50.append(t50)
        ttft_pq.append(tpq)
        if t50 is not None:
            tp50 = v.tpot_p50
            lat.append(t50 + (tp50 * ot if stream and tp50 is not None else 0.0))
        else:
            lat.append(None)
        tput.append(v.tokens_per_s)
        reason = None
        if unhealthy(b.cluster, now):
            reason = "unhealthy"
        elif headroom is not None and not headroom(b):
            reason = "no_quota"
        elif slo_ttft and tpq is not None and tpq > slo_ttft:
            reason = "slo_ttft"
        elif slo_tpot and v.tpot_pq is not None and v.tpot_pq > slo_tpot:
            reason = "slo_tpot"
        elif max_price and cost > max_price:
            reason = "price"
        q = draws[j] if draws is not None else None
        if min_quality and reason is None:
            mean = qmean(b, cat)
            if not wants_q:
                q = mean
            if mean < min_quality:
                reason = "quality"
        qual.append(q)
        reasons.append(reason)
        tiers.append(0 if reason is None else (1 if reason in _TIER1 else 2))
    keys = _keys(strategy, policy, costs, lat, tput, qual, rng)
    # (tier, key, index): ties keep the configured order, as a stable sort would
    order = [i for _, _, i in sorted(zip(tiers, keys, range(n), strict=True))]
    explored = False
    explore = policy.explore
    if explore > 0 and n > 1 and rng.random() < explore:
        others = [k for k in range(1, n) if tiers[order[k]] < 2]
        if others:
            k = others[rng.randrange(len(others))]
            probe = SLO_PROBE_BUDGET * (1.0 - pct / 100.0)
            if (reasons[order[k]] not in _SLO_REASONS
                    or rng.random() * explore < probe):
                order.insert(0, order.pop(k))
                explored = True
    cands = tuple([backends[i] for i in order])
    scored = tuple([Scored(backends[i], costs[i], ttft50[i], ttft_pq[i], qual[i], reasons[i])
                    for i in order])
    first = scored[0]
    met = first.reason is None
    explain = f"{strategy}; pick={first.backend.label}; cat={cat}"
    if first.ttft_ms is not None:
        explain += f"; ttft_ms={first.ttft_ms:.0f}"
    explain += f"; cost_usd={first.cost_usd:.3g}"
    if first.quality is not None:
        explain += f"; q={first.quality:.2f}"
    if explored:
        explain += "; explore"
    if not met:
        explain += f"; unmet={first.reason}"
    skipped = [(s.backend.label, s.reason) for s in scored[1:] if s.reason] + dropped
    if skipped:
        explain += "; skipped=" + ",".join([f"{label}:{why}" for label, why in skipped])
    return Selection(cands, explain, strategy, cat, explored, met, scored, tuple(dropped))


def _keys(strategy: str, policy: RoutingPolicy, costs: list[float],
          lat: list[float | None], tput: list[float | None], qual: list[float | None],
          rng: random.Random) -> list[float]:
    """Per backend, lower is better."""
    n = len(costs)
    r = rng.random
    if strategy == "ordered":
        return [float(i) for i in range(n)]
    if strategy == "cost":
        return [c * (1.0 + TIE_JITTER * r()) for c in costs]
    if strategy == "latency":
        known = [x for x in lat if x is not None]
        best = min(known) if known else 0.0
        return [(x if x is not None else best) * (1.0 + TIE_JITTER * r()) for x in lat]
    if strategy == "throughput":
        knownt = [x for x in tput if x is not None]
        top = max(knownt) if knownt else 0.0
        return [-(x if x is not None else top) * (1.0 + TIE_JITTER * r()) for x in tput]
    if strategy == "quality":
        return [-(q or 0.0) for q in qual]
    # balanced: utility in "doublings"; higher is better, so the key is its negative.
    cheapest = max(min(costs), 1e-12)
    known = [x for x in lat if x is not None]
    fastest = max(min(known), 1e-3) if known else 1.0
    qs = [q if q is not None else 0.0 for q in qual]
    qbest = max(qs)
    wc, wl, wq = policy.weight_cost, policy.weight_latency, policy.weight_quality * QUALITY_SCALE
    log2 = math.log2
    out = []
    for i in range(n):
        c = costs[i]
        u = -wc * log2((c if c > 1e-12 else 1e-12) / cheapest)
        x = lat[i]
        if x is not None:
            u -= wl * log2((x if x > 1e-3 else 1e-3) / fastest)
        u += wq * (qs[i] - qbest)
        out.append(-u + TIE_JITTER * r())
    return out
