"""Live per-backend statistics from real traffic: TTFT, time per output token, end-to-end
latency, error and 429 rates, throughput.

Every statistic is exponentially decayed in time (half-life `HALF_LIFE_S`), so a backend that
changed (slower, recovered) shows it within a few half-lives, and quantiles come from a
decayed histogram over logarithmic buckets (relative error about `GAMMA - 1`; no lists of
samples). Decay uses *forward decay*: a sample at time t weighs exp((t - t0) / tau) and all
weights are rescaled now and then, so adding a sample touches one bucket.

Selection reads a `StatsView` (quantiles cached for `VIEW_TTL_S`): the per-request cost is a
dict lookup, not a histogram scan. Fed at the end of each request (`observe`, from the
request's `UsageRecord`) and by every attempt's status (`observe_status`).

Fleet: with `shared_state.redis` set, `ext_proc.select.fleet.FleetSync` publishes this
replica's own sketches (`snapshot`) and hands each backend the sum of the other replicas'
(`set_remote`). Forward-decayed histograms add exactly: the fleet's sketch of a backend is the
sum of each replica's, each decayed by its age, so a backend one replica saw degrade moves
every replica's quantiles at the next sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Half-life of every statistic (seconds of wall time).
HALF_LIFE_S = 4.0
#: Bucket growth factor: bucket i covers [MIN_MS * GAMMA**i, MIN_MS * GAMMA**(i+1)).
GAMMA = 1.15
MIN_MS = 1.0
MAX_MS = 600_000.0
#: Quantiles and rates are recomputed at most this often per backend.
VIEW_TTL_S = 0.1
_TAU = HALF_LIFE_S / math.log(2)
_LOG_GAMMA = math.log(GAMMA)
_NBUCKETS = int(math.log(MAX_MS / MIN_MS) / _LOG_GAMMA) + 2
#: Rescale forward-decay weights before exp() grows past this exponent.
_MAX_EXPONENT = 60.0


class _Clock:
    """Forward-decay reference time shared by one backend's sketches and counters."""

    __slots__ = ("t0",)

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def weight(self, now: float) -> float:
        return math.exp((now - self.t0) / _TAU)


class DecayedSketch:
    """A time-decayed histogram with log-spaced buckets; quantiles within ~GAMMA-1."""

    __slots__ = ("buckets", "count", "total", "wsum")

    def __init__(self) -> None:
        self.buckets = [0.0] * _NBUCKETS
        self.total = 0.0
        #: Decayed sum of values (for the mean).
        self.wsum = 0.0
        #: Samples ever added (undecayed): 0 means "no data", not "zero latency".
        self.count = 0

    @staticmethod
    def index(value_ms: float) -> int:
        if value_ms <= MIN_MS:
            return 0
        return min(int(math.log(value_ms / MIN_MS) / _LOG_GAMMA) + 1, _NBUCKETS - 1)

    def add(self, value_ms: float, weight: float) -> None:
        self.buckets[self.index(value_ms)] += weight
        self.total += weight
        self.wsum += weight * value_ms
        self.count += 1

    def scale(self, factor: float) -> None:
        self.buckets = [b * factor for b in self.buckets]
        self.total *= factor
        self.wsum *= factor

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) in ms (bucket's geometric middle); None without data."""
        if self.total <= 0.0:
            return None
        target = q * self.total
        acc = 0.0
        for i, b in enumerate(self.buckets):
            acc += b
            if acc >= target and b > 0.0:
                if i == 0:
                    return MIN_MS
                return MIN_MS * GAMMA ** (i - 0.5)
        return MAX_MS

    def mean(self) -> float | None:
        return self.wsum / self.total if self.total > 0.0 else None

    def export(self, factor: float) -> list[float]:
        """[total, wsum, count, i0, w0, i1, w1, ...] scaled by `factor` (non-empty buckets)."""
        out = [self.total * factor, self.wsum * factor, float(self.count)]
        for i, b in enumerate(self.buckets):
            if b > 0.0:
                out.append(float(i))
                out.append(b * factor)
        return out

    def absorb(self, data: list[float], factor: float) -> None:
        """Add an `export` scaled by `factor` (a replica's sketch, decayed to this clock)."""
        self.total += data[0] * factor
        self.wsum += data[1] * factor
        self.count += int(data[2])
        buckets = self.buckets
        last = len(buckets) - 1
        for k in range(3, len(data) - 1, 2):
            i = int(data[k])
            buckets[i if 0 <= i <= last else last] += data[k + 1] * factor

    def plus(self, other: DecayedSketch) -> DecayedSketch:
        out = DecayedSketch()
        out.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        out.total = self.total + other.total
        out.wsum = self.wsum + other.wsum
        out.count = self.count + other.count
        return out


@dataclass(frozen=True, slots=True)
class StatsView:
    """One backend's statistics as selection reads them (ms; None where no data yet)."""

    ttft_p50: float | None
    #: TTFT at the model's SLO percentile (the percentile the view was asked for).
    ttft_pq: float | None
    tpot_p50: float | None
    tpot_pq: float | None
    latency_p50: float | None
    latency_pq: float | None
    #: Decayed shares of attempts that failed (5xx, connect errors) / were rate limited.
    error_rate: float
    rate_limited: float
    #: Output tokens per second of generation (after the first token); None: no data.
    tokens_per_s: float | None
    #: Decayed number of requests behind the latency figures (confidence).
    weight: float
    samples: int
    percentile: float

    def as_dict(self) -> dict[str, float | int | None]:
        r = _round
        return {"ttft_p50_ms": r(self.ttft_p50), f"ttft_p{self.percentile:g}_ms": r(self.ttft_pq),
                "tpot_p50_ms": r(self.tpot_p50), f"tpot_p{self.percentile:g}_ms": r(self.tpot_pq),
                "latency_p50_ms": r(self.latency_p50),
                f"latency_p{self.percentile:g}_ms": r(self.latency_pq),
                "error_rate": round(self.error_rate, 4),
                "rate_limited_rate": round(self.rate_limited, 4),
                "tokens_per_s": r(self.tokens_per_s), "weight": round(self.weight, 2),
                "samples": self.samples}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class BackendStats:
    """Decayed statistics of one backend cluster."""

    __slots__ = ("_clock", "_views", "attempts", "errors", "gen_s", "latency", "out_tokens",
                 "rate_limited", "remote", "tpot", "ttft")

    def __init__(self, now: float) -> None:
        self._clock = _Clock(now)
        self.ttft = DecayedSketch()
        self.tpot = DecayedSketch()
        self.latency = DecayedSketch()
        self.attempts = 0.0
        self.errors = 0.0
        self.rate_limited = 0.0
        self.out_tokens = 0.0
        self.gen_s = 0.0
        #: percentile -> (computed at, view)
        self._views: dict[float, tuple[float, StatsView]] = {}
        #: The other replicas' statistics of this backend, in this clock's units (fleet).
        self.remote: BackendStats | None = None

    def _weight(self, now: float) -> float:
        if (now - self._clock.t0) / _TAU > _MAX_EXPONENT:
            self._rescale(now)
        return self._clock.weight(now)

    def _rescale(self, now: float) -> None:
        factor = math.exp(-(now - self._clock.t0) / _TAU)
        for s in (self.ttft, self.tpot, self.latency):
            s.scale(factor)
        self.attempts *= factor
        self.errors *= factor
        self.rate_limited *= factor
        self.out_tokens *= factor
        self.gen_s *= factor
        self._clock.t0 = now
        if self.remote is not None:
            self.remote._rescale(now)

    def observe(self, now: float, ttft_ms: float | None, latency_ms: float,
                completion_tokens: int) -> None:
        """A successful request's timings (client view: first byte, whole response)."""
        w = self._weight(now)
        if ttft_ms is not None:
            self.ttft.add(ttft_ms, w)
            gen_ms = max(latency_ms - ttft_ms, 0.0)
            if completion_tokens > 1 and gen_ms > 0.0:
                self.tpot.add(gen_ms / (completion_tokens - 1), w)
                self.out_tokens += w * (completion_tokens - 1)
                self.gen_s += w * gen_ms / 1000.0
        self.latency.add(latency_ms, w)

    def observe_status(self, now: float, status: int) -> None:
        """One attempt's upstream status (0: no response at all: a connection failure)."""
        w = self._weight(now)
        self.attempts += w
        if status == 429:
            self.rate_limited += w
        elif status >= 500 or status == 0:
            self.errors += w

    def view(self, now: float, percentile: float = 95.0) -> StatsView:
        cached = self._views.get(percentile)
        if cached is not None and now - cached[0] < VIEW_TTL_S:
            return cached[1]
        q = percentile / 100.0
        clock = self._clock.weight(now)
        ttft, tpot, latency = self.ttft, self.tpot, self.latency
        attempts, errors, limited = self.attempts, self.errors, self.rate_limited
        out_tokens, gen_s = self.out_tokens, self.gen_s
        r = self.remote
        if r is not None:  # the fleet's: ours plus the others' (same clock)
            ttft, tpot, latency = ttft.plus(r.ttft), tpot.plus(r.tpot), latency.plus(r.latency)
            attempts += r.attempts
            errors += r.errors
            limited += r.rate_limited
            out_tokens += r.out_tokens
            gen_s += r.gen_s
        view = StatsView(
            ttft_p50=ttft.quantile(0.5), ttft_pq=ttft.quantile(q),
            tpot_p50=tpot.quantile(0.5), tpot_pq=tpot.quantile(q),
            latency_p50=latency.quantile(0.5), latency_pq=latency.quantile(q),
            error_rate=errors / attempts if attempts > 0 else 0.0,
            rate_limited=limited / attempts if attempts > 0 else 0.0,
            tokens_per_s=out_tokens / gen_s if gen_s > 0 else None,
            weight=latency.total / clock if clock > 0 else 0.0,
            samples=latency.count, percentile=percentile)
        self._views[percentile] = (now, view)
        return view

    # -- fleet ----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, list[float]] | None:
        """This replica's own statistics, decayed to `now` (weights as of now); None when
        they have decayed to nothing (no traffic for minutes)."""
        w = self._weight(now)
        factor = 1.0 / w
        if (self.latency.total + self.attempts) * factor < 1e-6:
            return None
        return {"ttft": self.ttft.export(factor), "tpot": self.tpot.export(factor),
                "lat": self.latency.export(factor),
                "n": [self.attempts * factor, self.errors * factor, self.rate_limited * factor,
                      self.out_tokens * factor, self.gen_s * factor]}

    def set_remote(self, parts: list[tuple[float, dict[str, list[float]]]], now: float) -> None:
        """Replace the others' statistics: (age in seconds, `snapshot`) per other replica."""
        if not parts:
            self.remote = None
            self._views.clear()
            return
        w = self._weight(now)  # rescales first when due, so the factors stay finite
        r = BackendStats(self._clock.t0)
        for age, snap in parts:
            factor = w * math.exp(-max(age, 0.0) / _TAU)
            r.ttft.absorb(snap["ttft"], factor)
            r.tpot.absorb(snap["tpot"], factor)
            r.latency.absorb(snap["lat"], factor)
            n = snap["n"]
            r.attempts += n[0] * factor
            r.errors += n[1] * factor
            r.rate_limited += n[2] * factor
            r.out_tokens += n[3] * factor
            r.gen_s += n[4] * factor
        self.remote = r
        self._views.clear()


_EMPTY = StatsView(None, None, None, None, None, None, 0.0, 0.0, None, 0.0, 0, 95.0)


class LiveStats:
    """Statistics of every backend cluster this replica has sent traffic to."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendStats] = {}

    def _of(self, cluster: str, now: float) -> BackendStats:
        s = self.backends.get(cluster)
        if s is None:
            s = self.backends[cluster] = BackendStats(now)
        return s

    def observe(self, cluster: str, now: float, status: int, ttft_s: float | None,
                latency_s: float, completion_tokens: int, outcome: str = "completed") -> None:
        """The end of one request answered by `cluster` (only successes carry timings: a
        fast error must not look like a fast backend)."""
        if status != 200 or outcome != "completed":
            return
        self._of(cluster, now).observe(
            now, ttft_s * 1000.0 if ttft_s is not None else None, latency_s * 1000.0,
            completion_tokens)

    def observe_status(self, cluster: str, now: float, status: int) -> None:
        self._of(cluster, now).observe_status(now, status)

    def view(self, cluster: str, now: float, percentile: float = 95.0) -> StatsView:
        s = self.backends.get(cluster)
        if s is None:
            return _EMPTY
        return s.view(now, percentile)

    # -- fleet ----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, dict[str, list[float]]]:
        """cluster -> this replica's own statistics as of `now` (what it publishes)."""
        out = {}
        for cluster, s in self.backends.items():
            snap = s.snapshot(now)
            if snap is not None:
                out[cluster] = snap
        return out

    def set_remote(self, others: list[tuple[float, dict[str, dict[str, list[float]]]]],
                   now: float) -> None:
        """The other replicas' snapshots, (age in seconds, cluster -> snapshot) each, become
        every backend's remote part (a backend only they have served gets an entry too)."""
        by: dict[str, list[tuple[float, dict[str, list[float]]]]] = {}
        for age, snaps in others:
            for cluster, snap in snaps.items():
                by.setdefault(cluster, []).append((age, snap))
        for cluster, s in self.backends.items():
            if cluster not in by and s.remote is not None:
                s.set_remote([], now)
        for cluster, parts in by.items():
            self._of(cluster, now).set_remote(parts, now)
