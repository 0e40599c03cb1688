"""Selection CPU per request (issue 9: <= 50 us): microseconds per decision, before (the
configured order, `select.candidates`) and after (`select.rank` with each strategy), with
warm statistics for every backend.

    python -m bench.select_bench [--n 20000] [--backends 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from ext_proc.select import Selector, candidates, rank
from ext_proc.stats import BackendHealth
from ext_proc.table import BackendInfo, ModelInfo, ProviderInfo, RoutingPolicy

_P = ProviderInfo(name="p", kind="openai", authority=b"h", path_prefix="", api_key="",
                  headers=(), options={})
BODY = {"model": "m", "max_tokens": 200, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a Python function that merges two sorted lists " * 8}]}
#: A chat prompt of the same size: no keyword hits, so the classifier scans all of it (its
#: worst case; the code prompt above stops at the first word).
CHAT_BODY = {"model": "m", "max_tokens": 200, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me a story about a dragon who lives in a castle. " * 8}]}


def _model(n: int, policy: RoutingPolicy | None) -> ModelInfo:
    backends = tuple(BackendInfo(cluster=f"c{i}", provider=_P, model=f"m{i}",
                                 price_input=1.0 + i, price_output=2.0 + i,
                                 context_window=128000, label=f"p/m{i}", quality=0.7 + i / 100)
                     for i in range(n))
    return ModelInfo(name="m", backends=backends, max_retries=n - 1, per_try_timeout_ms=1000,
                     first_byte_timeout_ms=1000, hedge_after_ms=0, routing=policy)


def _time(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    """CPU time (this thread's, so waiting for a core on a busy machine does not count), best
    of `rounds` runs of n / rounds calls: the other processes only ever add to it."""
    for _ in range(min(n, 1000)):
        fn()
    per = max(1, n // rounds)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(per):
            fn()
        best = min(best, time.thread_time() - t0)
    return best / per * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.select_bench")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--backends", type=int, default=3)
    args = ap.parse_args(argv)
    health = BackendHealth()
    sel = Selector(health, seed=1)
    now = time.monotonic()
    for i in range(args.backends):
        for _ in range(50):
            sel.finished(f"c{i}", now, 200, 0.2 + i / 10, 1.0, 100, True, "completed")
    print(f"backends={args.backends} n={args.n} (CPU us per decision, best of 5 "
          "rounds, this machine)")
    plain = _model(args.backends, None)
    before = _time(lambda: candidates(plain, BODY, health), args.n)
    print(f"  before: candidates (configured order)   {before:6.1f}")
    us = _time(lambda: rank(plain, BODY, sel.context(time.monotonic())), args.n)
    print(f"  rank, no routing block                  {us:6.1f}")
    for strategy in ("ordered", "cost", "latency", "throughput", "quality", "balanced"):
        m = _model(args.backends, RoutingPolicy(strategy=strategy, slo_ttft_ms=800,
                                                explore=0.02))
        def one(m: ModelInfo = m) -> object:
            return rank(m, BODY, sel.context(time.monotonic()))

        us = _time(one, args.n)
        print(f"  rank, {strategy:<10} + SLO                 {us:6.1f}")
    m = _model(args.backends, RoutingPolicy(strategy="balanced", slo_ttft_ms=800, explore=0.02))
    us = _time(lambda: rank(m, CHAT_BODY, sel.context(time.monotonic())), args.n)
    print(f"  rank, balanced   + SLO, chat prompt     {us:6.1f}")


if __name__ == "__main__":
    main()
