"""`switchyard plan`: how many GPU replicas a trace needs, how busy they run, and what that
costs against sending the same tokens to each hosted backend.

1. Demand over time (per-minute req/s, input and output tokens/s) and its peak minute.
2. Analytic sizing from the pool's GPU profile (`sizing.py`), then a check in the simulator
   engine (`sim.vllm_engine.simulate_pool`) on the busiest window of the trace: the recommended
   N meets the SLO at p95, N-1 does not (the search moves N until both hold).
3. Utilisation, self-hosting cost vs each hosted backend's price, break-even utilisation, and
   the cheapest mix (base load on GPUs, the rest to the cheapest hosted backend).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from control_plane.config import GatewayConfig, Provider
from sim.vllm_engine import EngineConfig, simulate_pool
from switchyard.capacity.sizing import (
    Profile,
    break_even_utilisation,
    cheapest_mix,
    hosted_cost_per_request,
    pool_profile,
    replica_capacity,
    replicas_for,
)
from switchyard.replay.trace import TraceRequest

BUCKET_S = 60.0


@dataclass
class SimCheck:
    replicas: int
    p95_ttft_ms: float
    p95_tpot_ms: float
    meets: bool


@dataclass
class HostedOption:
    backend: str
    usd_per_request: float
    cost_usd: float
    break_even_utilisation: float


@dataclass
class Plan:
    pool: str
    trace_requests: int
    duration_s: float
    slo_ttft_ms: float
    slo_tpot_ms: float
    mean_input: float
    mean_output: float
    mean_rps: float
    peak_rps: float
    peak_minute: int
    capacity_rps: float
    analytic_replicas: int
    replicas: int
    checks: list[SimCheck]
    utilisation: float
    gpu_cost_usd: float
    gpu_hour_usd: float
    gpus_per_endpoint: int
    hosted: list[HostedOption]
    mix: dict[str, Any]
    series: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pool_provider(cfg: GatewayConfig, name: str | None) -> tuple[str, Provider]:
    pools = {n: p for n, p in cfg.providers.items()
             if p.kind in ("vllm", "tgi") and (p.endpoints or p.simulate or p.cost)}
    if name is not None:
        if name not in cfg.providers:
            raise ValueError(f"no provider {name!r} in the config")
        return name, cfg.providers[name]
    if not pools:
        raise ValueError("the config has no self-hosted pool (a vllm/tgi provider)")
    return sorted(pools.items())[0]


def profile_of(provider: Provider, profile_json: Path | None) -> Profile:
    return pool_profile(provider, profile_json)


def engine_of(provider: Provider, prof: Profile) -> EngineConfig:
    eng = provider.simulate.engine if provider.simulate else None
    base = EngineConfig.from_dict(eng.model_dump() if eng else None)
    return EngineConfig(max_num_seqs=prof.max_num_seqs, kv_blocks=base.kv_blocks,
                        block_size=base.block_size, prefix_cache=base.prefix_cache,
                        prefill_tokens_per_s=prof.prefill_tokens_per_s,
                        tpot_base_ms=prof.tpot_base_ms, tpot_per_seq_ms=prof.tpot_per_seq_ms,
                        max_batched_tokens=base.max_batched_tokens)


def _p95(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(0.95 * len(xs)) - 1)]


def check(engine: EngineConfig, reqs: list[TraceRequest], replicas: int, slo_ttft_s: float,
          slo_tpot_s: float) -> SimCheck:
    out = simulate_pool(engine, [(r.t, max(1, r.prompt_tokens), max(1, r.output_tokens), None)
                                 for r in reqs], replicas)
    ttft = _p95([s.ttft for s in out])
    tpot = _p95([s.tpot for s in out if s.generated > 1])
    return SimCheck(replicas, ttft * 1000, tpot * 1000,
                    ttft <= slo_ttft_s and tpot <= slo_tpot_s)


def busiest_window(trace: list[TraceRequest], window_s: float) -> list[TraceRequest]:
    if not trace:
        return []
    end = trace[-1].t
    best, best_n, j = 0.0, -1, 0
    starts = [r.t for r in trace]
    for i, t in enumerate(starts):
        if t + window_s > end + 1e-9 and best_n >= 0:
            break
        while j < len(starts) and starts[j] < t + window_s:
            j += 1
        if j - i > best_n:
            best, best_n = t, j - i
    return [TraceRequest(r.t - best, r.prompt_tokens, r.output_tokens, r.model)
            for r in trace if best <= r.t < best + window_s]


def make_plan(cfg: GatewayConfig, trace: list[TraceRequest], *, pool: str | None = None,
              slo_ttft_ms: float = 500.0, slo_tpot_ms: float = 50.0,
              profile_json: Path | None = None, window_s: float = 600.0) -> Plan:
    if not trace:
        raise ValueError("the trace is empty")
    name, provider = pool_provider(cfg, pool)
    prof = profile_of(provider, profile_json)
    engine = engine_of(provider, prof)
    duration = max(BUCKET_S, trace[-1].t - trace[0].t)
    buckets = max(1, math.ceil(duration / BUCKET_S))
    rps = [0.0] * buckets
    tin = [0.0] * buckets
    tout = [0.0] * buckets
    for r in trace:
        b = min(buckets - 1, int((r.t - trace[0].t) // BUCKET_S))
        rps[b] += 1 / BUCKET_S
        tin[b] += r.prompt_tokens / BUCKET_S
        tout[b] += r.output_tokens / BUCKET_S
    mean_in = sum(r.prompt_tokens for r in trace) / len(trace)
    mean_out = sum(max(1, r.output_tokens) for r in trace) / len(trace)
    peak = max(rps)
    peak_minute = rps.index(peak)
    cap = replica_capacity(prof, mean_in, mean_out, slo_ttft_ms / 1000, slo_tpot_ms / 1000)
    analytic = replicas_for(peak, cap)
    # Check in the simulator on the busiest window: N meets the SLO, N-1 does not.
    win = busiest_window(trace, window_s)
    slo = (slo_ttft_ms / 1000, slo_tpot_ms / 1000)
    checks: dict[int, SimCheck] = {}

    def at(n: int) -> SimCheck:
        if n not in checks:
            checks[n] = check(engine, win, n, *slo)
        return checks[n]
    # The SLO may be out of reach at any size (long prompts prefill too slowly alone).
    floor_ttft = _p95([max(1, r.prompt_tokens) / prof.prefill_tokens_per_s + prof.tpot_s(1)
                       for r in win])
    if floor_ttft > slo[0] or prof.tpot_s(1) > slo[1]:
        raise ValueError(f"the SLO cannot be met by any number of replicas with this profile: "
                         f"p95 TTFT of a lone request is {floor_ttft * 1000:.0f} ms "
                         f"(prefill {prof.prefill_tokens_per_s:.0f} tokens/s)")
    n = max(1, analytic)
    while not at(n).meets and n < 2 * analytic + 16:
        n += 1
    while n > 1 and at(n - 1).meets:
        n -= 1
    if n > 1:
        at(n - 1)
    gpus = provider.cost.gpus_per_endpoint if provider.cost else 1
    gpu_hour = provider.cost.gpu_hour_usd if provider.cost else 0.0
    hours = buckets * BUCKET_S / 3600
    gpu_cost = n * gpus * gpu_hour * hours
    mean_rps = len(trace) / (buckets * BUCKET_S)
    utilisation = mean_rps / (n * cap) if cap else 0.0
    hosted: list[HostedOption] = []
    seen: set[str] = set()
    for model in cfg.models.values():
        for be in model.backends:
            label = f"{be.provider}/{be.model}"
            if be.provider == name or be.price is None or label in seen:
                continue
            seen.add(label)
            per = hosted_cost_per_request(mean_in, mean_out, be.price.input, be.price.output)
            hosted.append(HostedOption(
                label, per, per * len(trace),
                break_even_utilisation(gpu_hour, gpus, cap, per) if gpu_hour else 0.0))
    hosted.sort(key=lambda h: h.cost_usd)
    mix: dict[str, Any] = {}
    if hosted and gpu_hour:
        m = cheapest_mix(rps, BUCKET_S, cap, gpu_hour, gpus, hosted[0].usd_per_request, n)
        mix = {"gpu_replicas": m.gpu_replicas, "hosted_backend": hosted[0].backend,
               "hosted_share": m.hosted_share, "cost_usd": m.cost_usd}
    series = {"minute": [float(i) for i in range(buckets)], "rps": rps,
              "input_tps": tin, "output_tps": tout,
              "replicas_needed": [float(replicas_for(r, cap)) if r > 0 else 0.0 for r in rps]}
    return Plan(name, len(trace), duration, slo_ttft_ms, slo_tpot_ms, mean_in, mean_out,
                mean_rps, peak, peak_minute, cap, analytic, n,
                [checks[k] for k in sorted(checks)], utilisation, gpu_cost, gpu_hour, gpus,
                hosted, mix, series)
