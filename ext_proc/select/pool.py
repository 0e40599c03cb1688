"""Endpoint picking inside a GPU pool, as plain data (no I/O: the scraper in
`ext_proc.stats.pool_metrics` feeds it).

Each endpoint's load is its last scrape (`vllm:num_requests_waiting` + `running`) plus the
gateway's own requests sent there since that scrape, so a burst between two scrapes does not
all land on the replica that looked idle. Metrics older than `stale_after_ms` are not trusted:
that endpoint's load is the gateway's own in-flight count (fail open: never a pool-wide 503
because a scrape is late).

Score = queue x (1 - normalised load) + kv_cache x (1 - KV use) + prefix x [the endpoint the
prompt's prefix maps to]. The prefix endpoint comes from consistent hashing with bounded load
(Mirrokni et al. 2018) over a hash of the prompt's leading blocks: every gateway replica maps
the same prefix to the same endpoint without shared state, and an endpoint over
`load_factor` x the pool's mean load passes the prefix on to the next one on the ring.

Saturation: an endpoint whose waiting queue or KV use is over the thresholds takes no new
request of a low class (`saturation.low_classes`); a pool whose every endpoint is saturated
refuses them (they spill to the model's next backend), while higher classes keep its headroom.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from switchyard.capacity.sizing import Profile, replica_capacity, replicas_for

#: Prompt characters per hashed block for prefix affinity (about 16 tokens).
BLOCK_CHARS = 64
#: Virtual nodes per endpoint on the hash ring.
VNODES = 64
#: Bounded load allows this many requests over the cap (small pools at low load would
#: otherwise break affinity for a single request in flight).
LOAD_SLACK = 1
#: Hot prefixes (spread evenly, see HotPrefixes): hot from HOT_ON requests within about
#: HOT_WINDOW_S seconds (decayed count), cold again below HOT_OFF; at most MAX_TRACKED
#: prefixes are counted.
HOT_ON = 2.0
HOT_OFF = 0.5
HOT_WINDOW_S = 30.0
MAX_TRACKED = 4096
#: A demand rate is measured over at least this many seconds.
MIN_OBSERVED_S = 5.0


@dataclass(frozen=True, slots=True)
class PoolSettings:
    endpoints: tuple[str, ...]
    w_queue: float = 1.0
    w_kv: float = 1.0
    w_prefix: float = 2.0
    metrics_interval_s: float = 0.2
    stale_after_s: float = 1.0
    max_waiting: int = 8
    max_kv_usage: float = 0.9
    low_classes: frozenset[str] = frozenset({"agent", "batch"})
    load_factor: float = 1.25
    prefix_chars: int = 1024
    picker: str = "score"
    #: Desired-replicas sizing (`switchyard plan`'s analytic model): the GPU profile, the SLO
    #: and the decay time of the live demand window.
    profile: Profile | None = None
    slo_ttft_s: float = 0.5
    slo_tpot_s: float = 0.05
    demand_window_s: float = 60.0

    @classmethod
    def from_json(cls, text: str) -> PoolSettings:
        d: dict[str, Any] = json.loads(text)
        sc = d.get("scorers", {})
        sat = d.get("saturation", {})
        sz = d.get("sizing") or {}
        prof = sz.get("profile")
        return cls(
            endpoints=tuple(d["endpoints"]),
            w_queue=float(sc.get("queue", 1.0)), w_kv=float(sc.get("kv_cache", 1.0)),
            w_prefix=float(sc.get("prefix", 2.0)),
            metrics_interval_s=d.get("metrics_interval_ms", 200) / 1000.0,
            stale_after_s=d.get("stale_after_ms", 1000) / 1000.0,
            max_waiting=int(sat.get("max_waiting", 8)),
            max_kv_usage=float(sat.get("max_kv_usage", 0.9)),
            low_classes=frozenset(sat.get("low_classes", ("agent", "batch"))),
            load_factor=float(d.get("load_factor", 1.25)),
            prefix_chars=int(d.get("prefix_chars", 1024)),
            picker=str(d.get("picker", "score")),
            profile=Profile(float(prof["prefill_tokens_per_s"]), float(prof["tpot_base_ms"]),
                            float(prof["tpot_per_seq_ms"]), int(prof["max_num_seqs"]))
            if prof else None,
            slo_ttft_s=float(sz.get("slo_ttft_ms", 500)) / 1000.0,
            slo_tpot_s=float(sz.get("slo_tpot_ms", 50)) / 1000.0,
            demand_window_s=float(sz.get("window_s", 60.0)))


@dataclass(slots=True)
class EndpointState:
    address: str
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    #: Monotonic time of the last good scrape (None: never).
    scraped_at: float | None = None
    #: The gateway's own requests there now, and at the last scrape.
    inflight: int = 0
    inflight_at_scrape: int = 0
    picks: int = 0
    #: Picks by reason ("prefix", "score", "round_robin", "fail_open").
    reasons: dict[str, int] = field(default_factory=dict)

    def fresh(self, now: float, stale_after: float) -> bool:
        return self.scraped_at is not None and now - self.scraped_at <= stale_after

    def load(self, now: float, stale_after: float) -> float:
        """Requests at the endpoint: the scrape plus what we sent since; own in-flight when
        the scrape is stale."""
        if not self.fresh(now, stale_after):
            return float(self.inflight)
        return max(0.0, self.waiting + self.running + self.inflight - self.inflight_at_scrape)

    def saturated(self, now: float, s: PoolSettings) -> bool:
        """Over a threshold by fresh metrics (stale metrics never saturate: fail open)."""
        return self.fresh(now, s.stale_after_s) and (
            self.waiting > s.max_waiting or self.kv_usage > s.max_kv_usage)

    def observe(self, metrics: Mapping[str, float], now: float) -> None:
        self.waiting = metrics.get("vllm:num_requests_waiting", 0.0)
        self.running = metrics.get("vllm:num_requests_running", 0.0)
        kv = metrics.get("vllm:kv_cache_usage_perc")
        if kv is None:  # older vLLM builds
            kv = metrics.get("vllm:gpu_cache_usage_perc", 0.0)
        self.kv_usage = kv
        self.prefix_hits = metrics.get("vllm:prefix_cache_hits_total", self.prefix_hits)
        self.prefix_queries = metrics.get("vllm:prefix_cache_queries_total",
                                          self.prefix_queries)
        self.scraped_at = now
        self.inflight_at_scrape = self.inflight


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """A consistent-hash ring of endpoint addresses (VNODES points each)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        points = sorted((_h64(f"{ep}#{v}".encode()), i)
                        for i, ep in enumerate(endpoints) for v in range(VNODES))
        self._keys = [k for k, _ in points]
        self._owners = [i for _, i in points]
        self.n = len(endpoints)

    def walk(self, key: int) -> list[int]:
        """Endpoint indexes in ring order from `key`, each once."""
        start = bisect.bisect_left(self._keys, key)
        seen: list[int] = []
        m = len(self._keys)
        for j in range(m):
            owner = self._owners[(start + j) % m]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == self.n:
                    break
        return seen


def bounded_choice(ring: Ring, key: int, loads: Sequence[float], factor: float,
                   allowed: Sequence[bool] | None = None, home: int | None = None
                   ) -> int | None:
    """Consistent hashing with bounded load: the first endpoint on the ring from `key` (from
    `home` first, when given) whose load after this request stays within ceil(factor x mean)
    (+ LOAD_SLACK)."""
    n = len(loads)
    cap = math.ceil(factor * (sum(loads) + 1) / n) + LOAD_SLACK
    first = None
    walk = ring.walk(key)
    if home is not None:
        walk = [home, *(i for i in walk if i != home)]
    for i in walk:
        if allowed is not None and not allowed[i]:
            continue
        if first is None:
            first = i
        if loads[i] + 1 <= cap:
            return i
    return first


class HotPrefixes:
    """Prefixes requested repeatedly of late, spread evenly over the pool.

    Plain consistent hashing puts a handful of hot prefixes unevenly (8 on 4 endpoints: 2
    each only 4% of the time), and an endpoint given more than its KV cache holds thrashes.
    So each hot prefix (>= HOT_ON requests within about `window_s`), in key order, takes the
    first endpoint on its ring walk that holds fewer than ceil(hot / endpoints) hot prefixes.
    The result depends only on the set of hot prefixes, so gateway replicas that see the
    same traffic agree without shared state; a one-off prefix keeps its plain ring place."""

    def __init__(self, ring: Ring, window_s: float = HOT_WINDOW_S) -> None:
        self.ring = ring
        self.tau = window_s
        self._seen: dict[int, tuple[float, float]] = {}  # key -> (decayed count, at)
        self.hot: set[int] = set()
        self._home: dict[int, int] = {}
        self._dirty = False
        self._swept = 0.0

    def observe(self, key: int, now: float) -> None:
        count, at = self._seen.get(key, (0.0, now))
        count = count * math.exp(-(now - at) / self.tau) + 1.0
        self._seen[key] = (count, now)
        if count >= HOT_ON and key not in self.hot:
            self.hot.add(key)
            self._dirty = True
        if now - self._swept > self.tau / 4 or len(self._seen) > MAX_TRACKED:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget what has gone quiet (cold below HOT_OFF; untracked below 0.05)."""
        self._swept = now
        keep: dict[int, tuple[float, float]] = {}
        for key, (count, at) in self._seen.items():
            c = count * math.exp(-(now - at) / self.tau)
            if c >= 0.05:
                keep[key] = (c, now)
            if c < HOT_OFF and key in self.hot:
                self.hot.discard(key)
                self._dirty = True
        if len(keep) > MAX_TRACKED:  # a flood of one-off prompts: keep the busiest
            keep = dict(sorted(keep.items(), key=lambda kv: -kv[1][0])[:MAX_TRACKED // 2])
            for key in self.hot - keep.keys():
                self.hot.discard(key)
                self._dirty = True
        self._seen = keep

    def home(self, key: int) -> int | None:
        """The endpoint a hot prefix is spread to (None: not hot)."""
        if self._dirty:
            self._assign()
        return self._home.get(key)

    def _assign(self) -> None:
        self._dirty = False
        self._home = {}
        if not self.hot:
            return
        cap = math.ceil(len(self.hot) / self.ring.n)
        counts = [0] * self.ring.n
        for key in sorted(self.hot):
            for i in self.ring.walk(key):
                if counts[i] < cap:
                    self._home[key] = i
                    counts[i] += 1
                    break


def prefix_key(messages: Iterable[Mapping[str, Any]], prefix_chars: int) -> int | None:
    """Hash of the prompt's leading whole blocks (up to `prefix_chars`), in message order;
    None when the prompt is shorter than one block (no affinity to keep)."""
    parts: list[str] = []
    size = 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            text = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        else:
            text = content if isinstance(content, str) else ""
        piece = f"<{msg.get('role', '')}>{text}"
        parts.append(piece)
        size += len(piece)
        if size >= prefix_chars:
            break
    prompt = "".join(parts)[:prefix_chars]
    whole = len(prompt) // BLOCK_CHARS * BLOCK_CHARS
    if whole == 0:
        return None
    return _h64(prompt[:whole].encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Pick:
    """The endpoint for a request, then its fallbacks (Envoy's override_host order)."""

    endpoints: tuple[str, ...]
    #: Why: "score", "prefix", "round_robin" or "fail_open" (every endpoint's metrics stale).
    reason: str

    @property
    def header(self) -> str:
        return ",".join(self.endpoints)


@dataclass(slots=True)
class PoolPicker:
    """One pool's endpoint states and picking (plain data; single-threaded use)."""

    name: str
    settings: PoolSettings
    endpoints: list[EndpointState] = field(default_factory=list)
    ring: Ring | None = None
    _rr: int = 0
    #: Live demand (for the desired-replicas sizing); time every endpoint was stale.
    demand: Demand = field(init=False)
    fail_open_s: float = 0.0
    hot: HotPrefixes = field(init=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            self.endpoints = [EndpointState(a) for a in self.settings.endpoints]
        self.ring = Ring(self.settings.endpoints)
        self.hot = HotPrefixes(self.ring)
        self.demand = Demand(self.settings.demand_window_s, time.monotonic())

    def all_stale(self, now: float) -> bool:
        return not any(e.fresh(now, self.settings.stale_after_s) for e in self.endpoints)

    def saturated(self, klass: str, now: float) -> bool:
        """True when a request of `klass` may not use this pool now."""
        s = self.settings
        return klass in s.low_classes and all(e.saturated(now, s) for e in self.endpoints)

    def pick(self, key: int | None, klass: str, now: float, fallbacks: int = 2) -> Pick:
        s = self.settings
        eps = self.endpoints
        n = len(eps)
        allowed = [not (klass in s.low_classes and e.saturated(now, s)) for e in eps]
        if not any(allowed):
            allowed = [True] * n
        if s.picker == "round_robin":
            self._rr += 1
            order = [(self._rr + j) % n for j in range(n)]
            return self._take(order, fallbacks, "round_robin")
        stale = s.stale_after_s
        loads = [e.load(now, stale) for e in eps]
        fresh_kv = [e.kv_usage for e in eps if e.fresh(now, stale)]
        mean_kv = sum(fresh_kv) / len(fresh_kv) if fresh_kv else 0.0
        lo, hi = min(loads), max(loads)
        target = None
        if key is not None and s.w_prefix > 0:
            assert self.ring is not None
            self.hot.observe(key, now)
            target = bounded_choice(self.ring, key, loads, s.load_factor, allowed,
                                    self.hot.home(key))
        scores = []
        if key is None:  # no prefix to keep: ties rotate, so equal loads do not all pick #0
            self._rr += 1
        for i, e in enumerate(eps):
            if not allowed[i]:
                continue
            q = 1.0 - (loads[i] - lo) / (hi - lo) if hi > lo else 1.0
            kv = e.kv_usage if e.fresh(now, stale) else mean_kv
            score = s.w_queue * q + s.w_kv * (1.0 - kv) + (s.w_prefix if i == target else 0.0)
            # Ties: less loaded, then a fixed per-request order (the prefix's ring order), or
            # for a prompt without a whole prefix block, round robin.
            tie = _h64(f"{key}:{e.address}".encode()) if key is not None else (i - self._rr) % n
            scores.append((-score, loads[i], tie, i))
        scores.sort()
        reason = "fail_open" if self.all_stale(now) else (
            "prefix" if target is not None and scores[0][3] == target else "score")
        return self._take([i for *_, i in scores], fallbacks, reason)

    def _take(self, order: list[int], fallbacks: int, reason: str) -> Pick:
        chosen = order[: 1 + fallbacks]
        ep = self.endpoints[chosen[0]]
        ep.inflight += 1
        ep.picks += 1
        ep.reasons[reason] = ep.reasons.get(reason, 0) + 1
        return Pick(tuple(self.endpoints[i].address for i in chosen), reason)

    def release(self, address: str) -> None:
        for e in self.endpoints:
            if e.address == address:
                e.inflight = max(0, e.inflight - 1)
                return

    def desired_replicas(self, now: float) -> int | None:
        """Replicas the live demand needs within the SLO, by the planner's own sizing
        (`switchyard.capacity.sizing`): ceil(req/s / one replica's capacity at the measured
        mean input and output lengths). None: no profile, or the SLO is out of reach."""
        cap = self.capacity_rps(now)
        if cap is None or cap <= 0:
            return None
        return replicas_for(self.demand.rps(now), cap)

    def capacity_rps(self, now: float) -> float | None:
        """One replica's request rate within the SLO at the live mean lengths (None: no
        profile, or no finished request with usage yet to measure the lengths by)."""
        s = self.settings
        lengths = self.demand.mean_lengths(now)
        if s.profile is None or lengths is None:
            return None
        return replica_capacity(s.profile, lengths[0], lengths[1], s.slo_ttft_s, s.slo_tpot_s)


class Decayed:
    """An exponentially decayed sum (time constant `tau`): its rate is the sum over the last
    ~tau seconds per second, smooth and O(1) per event (no buckets)."""

    __slots__ = ("_at", "_since", "tau", "value")

    def __init__(self, tau: float, now: float) -> None:
        self.tau = tau
        self.value = 0.0
        self._at = now
        self._since = now

    def at(self, now: float) -> float:
        if now > self._at:
            self.value *= math.exp(-(now - self._at) / self.tau)
            self._at = now
        return self.value

    def add(self, x: float, now: float) -> None:
        self.value = self.at(now) + x

    def rate(self, now: float) -> float:
        """Per second. Early on divided by the time observed so far (no slow ramp from zero),
        but by at least `MIN_OBSERVED_S` (one request just after a start is not a spike)."""
        age = max(now - self._since, min(self.tau, MIN_OBSERVED_S))
        return self.at(now) / (self.tau * (1.0 - math.exp(-age / self.tau)))


class Demand:
    """A pool's live demand in a decayed window: requests that wanted the pool (served or
    spilled) per second, and the mean input / output tokens of those that finished with
    usage, the inputs `switchyard plan` sizes from."""

    def __init__(self, window_s: float, now: float) -> None:
        self.requests = Decayed(window_s, now)
        self.sized = Decayed(window_s, now)
        self.input_tokens = Decayed(window_s, now)
        self.output_tokens = Decayed(window_s, now)
        #: The last lengths measured (kept when the window has decayed empty).
        self._lengths: tuple[float, float] | None = None

    def arrived(self, now: float) -> None:
        self.requests.add(1.0, now)

    def finished(self, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        self.sized.add(1.0, now)
        self.input_tokens.add(prompt_tokens, now)
        self.output_tokens.add(max(1, completion_tokens), now)

    def rps(self, now: float) -> float:
        return self.requests.rate(now)

    def mean_lengths(self, now: float) -> tuple[float, float] | None:
        n = self.sized.at(now)
        if n > 1e-6:
            self._lengths = (self.input_tokens.at(now) / n, self.output_tokens.at(now) / n)
        return self._lengths

    def tokens_per_s(self, now: float) -> tuple[float, float]:
        return self.input_tokens.rate(now), self.output_tokens.rate(now)


def parse_prometheus(text: str, wanted: Iterable[str] | None = None) -> dict[str, float]:
    """Sum of each `vllm:*` sample (labels ignored) in Prometheus text format."""
    want = set(wanted) if wanted is not None else None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.rfind(" ")
        name = line[:brace] if brace >= 0 else line[:space]
        if want is not None and name not in want:
            continue
        try:
            value = float(line[space + 1:])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out
