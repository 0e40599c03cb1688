"""Quality estimates per (backend, task category): a Beta posterior started from the
configured prior and updated by feedback; selection draws from it (Thompson sampling).

Prior: the backend's configured quality for the category (`quality: 0.82` or per category)
as the mean, worth `PRIOR_STRENGTH` observations; a backend without one starts at
`UNKNOWN_PRIOR` with strength 2 (almost no opinion). Feedback `score` in [0, 1] adds `score`
to alpha and `1 - score` to beta. The observed counts are capped at `MAX_OBSERVATIONS` (older
evidence scaled down) so a backend whose quality changes is re-learned.

Which response was served by what: `Served` remembers (bounded LRU) response id ->
(model, backend cluster, category) for `POST /v1/feedback`.

With `shared_state.redis` set, `ext_proc.select.fleet` shares the counts and the served ids
across the replicas (`pending` / `fresh` hold what is not yet pushed).
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

from ext_proc.table import BackendInfo

PRIOR_STRENGTH = 20.0
UNKNOWN_PRIOR = 0.5
UNKNOWN_STRENGTH = 2.0
MAX_OBSERVATIONS = 1000.0
#: How many served responses feedback can still name (per replica), and for how long (the
#: fleet's Redis keeps them for an hour, `select/fleet.py`): a replica's memory for them stops
#: growing after FEEDBACK_WINDOW_S at any rate below the capacity.
SERVED_CAPACITY = 100_000
FEEDBACK_WINDOW_S = 900.0


def prior_of(backend: BackendInfo, category: str) -> tuple[float, float]:
    """(mean, strength) of the configured prior."""
    q = backend.quality_for(category)
    if q is None:
        return UNKNOWN_PRIOR, UNKNOWN_STRENGTH
    return q, PRIOR_STRENGTH


#: Posterior weight (a + b) from which a normal approximation replaces the Beta draw.
NORMAL_APPROX_FROM = 10.0


class QualityModel:
    """Beta posteriors keyed by (cluster, category); the prior is read from the current
    BackendInfo at use, so a config change of the prior takes effect at once.

    `observed` is what this replica holds: its own feedback plus the fleet's when a
    `ext_proc.select.fleet.FleetSync` merges it in (`set_observed`). The posterior parameters
    of each (BackendInfo object, category) are cached until the next change: a Thompson draw
    on the request path is then one dict lookup and one `gauss`."""

    def __init__(self) -> None:
        #: (cluster, category) -> [successes, failures] observed (no prior).
        self.observed: dict[tuple[str, str], list[float]] = {}
        #: This replica's own feedback not yet pushed to the fleet (None: no fleet sync).
        self.pending: dict[tuple[str, str], list[float]] | None = None
        #: (id(backend), category) -> (backend, a, b, mean, sd); cleared on every change.
        self._post: dict[tuple[int, str], tuple[BackendInfo, float, float, float, float]] = {}

    def _posterior(self, backend: BackendInfo, category: str
                   ) -> tuple[BackendInfo, float, float, float, float]:
        c = self._post.get((id(backend), category))
        if c is not None and c[0] is backend:  # the same object, not a reused id
            return c
        a, b = self._ab(backend, category)
        n = a + b
        c = (backend, a, b, a / n, math.sqrt(a * b / (n * n * (n + 1.0))))
        if len(self._post) > 4096:  # old config versions' backends
            self._post.clear()
        self._post[(id(backend), category)] = c
        return c

    def _ab(self, backend: BackendInfo, category: str) -> tuple[float, float]:
        mean, strength = prior_of(backend, category)
        a, b = mean * strength, (1.0 - mean) * strength
        obs = self.observed.get((backend.cluster, category))
        if obs is not None:
            a += obs[0]
            b += obs[1]
        return max(a, 1e-3), max(b, 1e-3)

    def mean(self, backend: BackendInfo, category: str) -> float:
        return self._posterior(backend, category)[3]

    def sample(self, backend: BackendInfo, category: str, rng: random.Random) -> float:
        """A Thompson draw from the posterior. With enough evidence the Beta is close to a
        normal of the same mean and variance, drawn ~10x cheaper than `betavariate`."""
        _, a, b, mean, sd = self._posterior(backend, category)
        if a + b < NORMAL_APPROX_FROM:
            return rng.betavariate(a, b)
        x = rng.gauss(mean, sd)
        return 1.0 if x > 1.0 else (0.0 if x < 0.0 else x)

    def samples(self, backends: tuple[BackendInfo, ...], category: str,
                rng: random.Random) -> list[float]:
        """`sample` of each backend, in order (the same draws, one call per request)."""
        out = []
        post, gauss = self._post, rng.gauss
        for backend in backends:
            c = post.get((id(backend), category))
            if c is None or c[0] is not backend:
                c = self._posterior(backend, category)
            _, a, b, mean, sd = c
            if a + b < NORMAL_APPROX_FROM:
                out.append(rng.betavariate(a, b))
            else:
                x = gauss(mean, sd)
                out.append(1.0 if x > 1.0 else (0.0 if x < 0.0 else x))
        return out

    def update(self, cluster: str, category: str, score: float) -> None:
        """Feedback seen by this replica (also queued for the fleet)."""
        add_evidence(self.observed, cluster, category, score, 1.0 - score)
        if self.pending is not None:
            add_evidence(self.pending, cluster, category, score, 1.0 - score)
        self._post.clear()

    def set_observed(self, observed: dict[tuple[str, str], list[float]]) -> None:
        """Replace the observed counts (the fleet's totals plus what is still pending)."""
        self.observed = observed
        self._post.clear()

    def feedback_count(self, cluster: str, category: str) -> float:
        obs = self.observed.get((cluster, category))
        return obs[0] + obs[1] if obs else 0.0


def add_evidence(into: dict[tuple[str, str], list[float]], cluster: str, category: str,
         good: float, bad: float) -> None:
    """Add evidence, capped at MAX_OBSERVATIONS (older evidence scaled down)."""
    obs = into.setdefault((cluster, category), [0.0, 0.0])
    obs[0] += good
    obs[1] += bad
    total = obs[0] + obs[1]
    if total > MAX_OBSERVATIONS:
        f = MAX_OBSERVATIONS / total
        obs[0] *= f
        obs[1] *= f


@dataclass(frozen=True, slots=True)
class ServedBy:
    model: str
    cluster: str
    category: str


class Served:
    """Response id -> what served it, for `FEEDBACK_WINDOW_S` and at most `capacity` ids
    (oldest dropped first). One shared `ServedBy` per (model, cluster, category)."""

    def __init__(self, capacity: int = SERVED_CAPACITY,
                 window_s: float = FEEDBACK_WINDOW_S) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._by_id: OrderedDict[str, tuple[ServedBy, float]] = OrderedDict()
        self._shared: dict[tuple[str, str, str], ServedBy] = {}
        #: Remembered since the last fleet sync (None: no fleet sync).
        self.fresh: list[tuple[str, ServedBy]] | None = None

    def of(self, model: str, cluster: str, category: str) -> ServedBy:
        key = (model, cluster, category)
        served = self._shared.get(key)
        if served is None:
            if len(self._shared) > 10_000:
                self._shared.clear()
            served = self._shared[key] = ServedBy(model, cluster, category)
        return served

    def remember(self, response_id: str, served: ServedBy, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        by_id = self._by_id
        by_id[response_id] = (served, now)
        while by_id:
            oldest = next(iter(by_id.values()))
            if len(by_id) <= self.capacity and now - oldest[1] < self.window_s:
                break
            by_id.popitem(last=False)
        if self.fresh is not None:
            self.fresh.append((response_id, served))

    def get(self, response_id: str) -> ServedBy | None:
        got = self._by_id.get(response_id)
        if got is None or time.monotonic() - got[1] >= self.window_s:
            return None
        return got[0]

    def __len__(self) -> int:
        return len(self._by_id)
