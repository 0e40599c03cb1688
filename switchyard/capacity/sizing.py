"""Analytic sizing and provider economics, as plain arithmetic (unit-tested).

A GPU profile is what `switchyard profile` measures (or a `simulate.engine` block states):
prefill throughput P (tokens/s), decode step time TPOT(B) = a + b x B for B running sequences,
and the largest batch. For requests arriving at rate r per replica with mean input I and
output O tokens:

* prefill occupies rho = r x I / P of the GPU's time;
* decode steps are stretched by 1 / (1 - rho), so the steady batch B solves
  B = r x O x TPOT(B) / (1 - rho)  (Little's law), and the decode TPOT seen is TPOT(B) / (1 - rho);
* TTFT ~ I / P + M/D/1 queueing on prefill (rho / (2 (1 - rho)) x I / P) + one decode step.

The largest r meeting the TTFT and TPOT SLOs (and B <= max batch) is one replica's capacity;
replicas at a demand peak = ceil(peak / capacity). Economics: a replica costs
gpu_hour_usd x gpus_per_endpoint per hour whether busy or not; the same requests on a hosted
backend cost r x (I x price_in + O x price_out) / 1e6 each. Break-even utilisation is the share
of a replica's capacity at which both cost the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.config import Provider


@dataclass(frozen=True, slots=True)
class Profile:
    prefill_tokens_per_s: float
    tpot_base_ms: float
    tpot_per_seq_ms: float
    max_num_seqs: int

    def tpot_s(self, batch: float) -> float:
        return (self.tpot_base_ms + self.tpot_per_seq_ms * batch) / 1000.0


def pool_profile(provider: Provider, profile_json: Path | None = None) -> Profile:
    """A pool's GPU profile: a `switchyard profile` JSON when given, else the provider's
    `simulate.engine` numbers (the config's defaults without one). One function for `plan`
    and for the live desired-replicas gauge, so both size from the same numbers."""
    if profile_json is not None:
        d = json.loads(profile_json.read_text())
        return Profile(float(d["prefill_tokens_per_s"]), float(d["tpot_ms"]["base"]),
                       float(d["tpot_ms"]["per_running_seq"]), int(d["max_num_seqs"]))
    from control_plane.config import EngineSettings

    eng = provider.simulate.engine if provider.simulate else None
    e = eng or EngineSettings()
    return Profile(e.prefill_tokens_per_s, e.tpot_ms.base, e.tpot_ms.per_running_seq,
                   e.max_num_seqs)


@dataclass(frozen=True, slots=True)
class Load:
    """Latency of one replica at `rate` requests/s (None: it cannot keep up)."""

    rate: float
    rho_prefill: float
    batch: float
    ttft_s: float
    tpot_s: float


def replica_load(p: Profile, rate: float, mean_in: float, mean_out: float) -> Load | None:
    rho = rate * mean_in / p.prefill_tokens_per_s
    if rho >= 1.0:
        return None
    # B = r O (a + b B) / (1 - rho)  =>  B (1 - rho - r O b) = r O a
    k = rate * mean_out / (1.0 - rho)
    denom = 1.0 - k * p.tpot_per_seq_ms / 1000.0
    if denom <= 0:
        return None
    batch = k * p.tpot_base_ms / 1000.0 / denom
    if batch > p.max_num_seqs:
        return None
    prefill = mean_in / p.prefill_tokens_per_s
    ttft = prefill + rho / (2 * (1 - rho)) * prefill + p.tpot_s(batch)
    return Load(rate, rho, batch, ttft, p.tpot_s(batch) / (1.0 - rho))


def replica_capacity(p: Profile, mean_in: float, mean_out: float, slo_ttft_s: float,
                     slo_tpot_s: float) -> float:
    """Largest request rate one replica serves within both SLOs (bisection)."""
    def ok(r: float) -> bool:
        load = replica_load(p, r, mean_in, mean_out)
        return load is not None and load.ttft_s <= slo_ttft_s and load.tpot_s <= slo_tpot_s
    lo, hi = 0.0, 1.0
    while ok(hi) and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def replicas_for(rate: float, capacity: float) -> int:
    return max(1, math.ceil(rate / capacity - 1e-9)) if capacity > 0 else 0


def hosted_cost_per_request(mean_in: float, mean_out: float, price_in: float,
                            price_out: float) -> float:
    """USD per request at USD-per-1M-token prices."""
    return (mean_in * price_in + mean_out * price_out) / 1e6


def break_even_utilisation(gpu_hour_usd: float, gpus: int, capacity_rps: float,
                           usd_per_request: float) -> float:
    """Utilisation of one replica at which self-hosting costs what the hosted backend does
    (> 1: self-hosting never breaks even; inf when the hosted backend is free)."""
    per_hour_at_full = capacity_rps * 3600 * usd_per_request
    return gpu_hour_usd * gpus / per_hour_at_full if per_hour_at_full > 0 else math.inf


@dataclass(frozen=True, slots=True)
class Mix:
    gpu_replicas: int
    cost_usd: float
    hosted_share: float


def cheapest_mix(rates: Sequence[float], bucket_s: float, capacity: float, gpu_hour_usd: float,
                 gpus: int, usd_per_request: float, max_replicas: int) -> Mix:
    """Base load on k GPU replicas (always on), the rest of each bucket's demand to the hosted
    backend; the k with the lowest total cost over the trace."""
    hours = len(rates) * bucket_s / 3600
    total = sum(rates) * bucket_s
    best: Mix | None = None
    for k in range(0, max_replicas + 1):
        over = sum(max(0.0, r - k * capacity) for r in rates) * bucket_s
        cost = k * gpus * gpu_hour_usd * hours + over * usd_per_request
        if best is None or cost < best.cost_usd - 1e-12:
            best = Mix(k, cost, over / total if total else 0.0)
    assert best is not None
    return best
