"""A vLLM-like engine model: continuous batching, KV blocks and a prefix cache, in plain data.

One `Engine` is one GPU replica. It is a discrete-step model of vLLM's scheduler, cheap enough
to run 4-8 replicas in one test process and a one-hour trace in seconds:

* requests wait in a FIFO queue; each step admits waiting requests while fewer than
  `max_num_seqs` run, their KV blocks fit, and the step's prefill token budget
  (`max_batched_tokens`) lasts; at least one request is admitted when nothing runs;
* an admitted request is prefilled in the step that admits it and produces its first token at
  the end of that step (TTFT = queueing + that step); every running request decodes one token
  per step;
* a step lasts `uncached prefill tokens / prefill_tokens_per_s` plus, when any request is
  decoding, `tpot_ms.base + tpot_ms.per_running_seq x running` milliseconds;
* the prompt is split into `block_size`-token blocks, each named by a hash chain over the
  blocks before it (like vLLM's automatic prefix caching): a block already cached is not
  prefilled again; unused cached blocks are evicted least-recently-used when a new request
  needs room; a request reserves its prompt and output blocks when admitted (no preemption).

Deterministic: the same arrivals at the same times give the same steps and timings. The
engine itself has no clock: `start_step(now)` plans a step and returns its end time,
`finish_step()` applies it. `AsyncEngine` drives it in real time for the simulator's HTTP
server; `switchyard plan` drives many of them in simulated time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Histogram buckets (seconds) as vLLM exports them (a subset).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_num_seqs: int = 64
    kv_blocks: int = 4096
    block_size: int = 16
    prefix_cache: bool = True
    prefill_tokens_per_s: float = 8000.0
    #: Decode step time = base + per_running_seq x running sequences (milliseconds).
    tpot_base_ms: float = 12.0
    tpot_per_seq_ms: float = 0.25
    #: Prefill tokens one step may take (vLLM's max_num_batched_tokens).
    max_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.kv_blocks < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs, kv_blocks and block_size must be >= 1")
        if self.prefill_tokens_per_s <= 0 or self.max_batched_tokens < 1:
            raise ValueError("prefill_tokens_per_s and max_batched_tokens must be > 0")
        if self.tpot_base_ms < 0 or self.tpot_per_seq_ms < 0:
            raise ValueError("tpot_ms must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EngineConfig:
        """From the config's `simulate.engine` shape (`tpot_ms: {base, per_running_seq}`)."""
        d = dict(d or {})
        tpot = d.pop("tpot_ms", None) or {}
        return cls(**d, tpot_base_ms=float(tpot.get("base", 12.0)),
                   tpot_per_seq_ms=float(tpot.get("per_running_seq", 0.25)))

    def tpot_s(self, running: int) -> float:
        return (self.tpot_base_ms + self.tpot_per_seq_ms * running) / 1000.0


def block_hashes(tokens: Sequence[str | int], block_size: int) -> list[bytes]:
    """Hash chain over the full blocks of a token sequence (block i names blocks 0..i)."""
    out: list[bytes] = []
    prev = b""
    for i in range(0, len(tokens) - block_size + 1, block_size):
        h = hashlib.blake2b(prev, digest_size=12)
        h.update("\x1f".join(map(str, tokens[i:i + block_size])).encode())
        prev = h.digest()
        out.append(prev)
    return out


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside an engine."""

    prompt_tokens: int
    output_tokens: int
    hashes: list[bytes] = field(default_factory=list)
    arrival: float = 0.0
    generated: int = 0
    cached_tokens: int = 0
    t_first: float | None = None
    t_done: float | None = None
    #: Decode step times after the first token (for TPOT).
    tpot_sum: float = 0.0
    private_blocks: int = 0
    tag: Any = None

    @property
    def done(self) -> bool:
        return self.t_done is not None

    @property
    def ttft(self) -> float:
        return (self.t_first or self.arrival) - self.arrival

    @property
    def tpot(self) -> float:
        return self.tpot_sum / (self.generated - 1) if self.generated > 1 else 0.0


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


class Engine:
    """One replica's scheduler (see the module docstring)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        #: Cached blocks: hash -> number of running requests using it (LRU order).
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._pinned = 0  # cached blocks with a user
        self._private = 0  # blocks held by running requests outside the cache
        self._step: tuple[float, float, list[Seq], list[Seq]] | None = None
        self.now = 0.0
        # Counters as vLLM exports them.
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished_total = 0
        self.ttft_hist = Histogram(TTFT_BUCKETS)
        self.tpot_hist = Histogram(TPOT_BUCKETS)
        self.busy_s = 0.0

    # -- state -------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_usage(self) -> float:
        return min(1.0, (self._pinned + self._private) / self.cfg.kv_blocks)

    @property
    def in_step(self) -> bool:
        return self._step is not None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Seq, now: float) -> Seq:
        seq.arrival = now
        self.waiting.append(seq)
        return seq

    def submit(self, tokens: Sequence[str | int] | int, output_tokens: int, now: float,
               tag: Any = None, hashes: list[bytes] | None = None) -> Seq:
        """Queue a request of `tokens` (or just a prompt length) producing `output_tokens`."""
        n = tokens if isinstance(tokens, int) else len(tokens)
        if hashes is None:
            hashes = ([] if isinstance(tokens, int) or not self.cfg.prefix_cache
                      else block_hashes(tokens, self.cfg.block_size))
        return self.add(Seq(max(1, n), max(1, output_tokens), hashes, tag=tag), now)

    # -- KV blocks ----------------------------------------------------------------------------
    def _blocks_for(self, seq: Seq) -> int:
        bs = self.cfg.block_size
        return -(-(seq.prompt_tokens + seq.output_tokens) // bs)

    def _try_allocate(self, seq: Seq) -> bool:
        """Reserve the request's blocks (reusing cached prefix blocks); False: no room."""
        cache = self._cache
        hit = 0
        if self.cfg.prefix_cache:
            for h in seq.hashes:
                if h not in cache:
                    break
                hit += 1
        new_shared = len(seq.hashes) - hit if self.cfg.prefix_cache else 0
        private = self._blocks_for(seq) - (len(seq.hashes) if self.cfg.prefix_cache else 0)
        need = new_shared + private
        free = self.cfg.kv_blocks - len(cache) - self._private
        if need > free:
            # Evict unused cached blocks, least recently used first (never the ones we hit).
            keep = set(seq.hashes[:hit])
            for h in list(cache):
                if need <= free:
                    break
                if cache[h] == 0 and h not in keep:
                    del cache[h]
                    free += 1
            if need > free:
                return False
        for h in seq.hashes if self.cfg.prefix_cache else ():
            users = cache.get(h)
            if users is None:
                cache[h] = 1
                self._pinned += 1
            else:
                if users == 0:
                    self._pinned += 1
                cache[h] = users + 1
                cache.move_to_end(h)
        seq.private_blocks = private
        self._private += private
        cached = hit * self.cfg.block_size
        seq.cached_tokens = min(cached, seq.prompt_tokens - 1)
        self.prefix_queries += seq.prompt_tokens
        self.prefix_hits += seq.cached_tokens
        self.prompt_tokens_total += seq.prompt_tokens
        return True

    def _release(self, seq: Seq) -> None:
        self._private -= seq.private_blocks
        seq.private_blocks = 0
        if not self.cfg.prefix_cache:
            return
        for h in seq.hashes:
            users = self._cache.get(h)
            if users:
                self._cache[h] = users - 1
                if users == 1:
                    self._pinned -= 1

    # -- steps --------------------------------------------------------------------------------
    def start_step(self, now: float) -> float | None:
        """Plan the next step at `now`; its end time, or None when there is nothing to do."""
        assert self._step is None, "finish_step() first"
        self.now = now
        cfg = self.cfg
        admitted: list[Seq] = []
        budget = cfg.max_batched_tokens
        prefill = 0
        while self.waiting and len(self.running) + len(admitted) < cfg.max_num_seqs:
            seq = self.waiting[0]
            if not self._try_allocate(seq):
                if not self.running and not admitted:
                    # Larger than the whole cache: serve it alone rather than block forever.
                    seq.private_blocks = 0
                    seq.cached_tokens = 0
                    self.prompt_tokens_total += seq.prompt_tokens
                    self.prefix_queries += seq.prompt_tokens
                else:
                    break
            cost = seq.prompt_tokens - seq.cached_tokens
            if admitted and prefill + cost > budget:
                self._release(seq)
                # Undo the counters of the tentative allocation.
                self.prefix_queries -= seq.prompt_tokens
                self.prefix_hits -= seq.cached_tokens
                self.prompt_tokens_total -= seq.prompt_tokens
                break
            self.waiting.popleft()
            admitted.append(seq)
            prefill += cost
        decoding = list(self.running)
        if not admitted and not decoding:
            return None
        duration = prefill / cfg.prefill_tokens_per_s
        if decoding:
            duration += cfg.tpot_s(len(decoding) + len(admitted))
        self._step = (now, now + duration, admitted, decoding)
        return now + duration

    def finish_step(self) -> list[Seq]:
        """Apply the planned step: first tokens, one decode token each, finished requests.
        Returns every request that made progress (finished ones have `t_done`)."""
        assert self._step is not None
        start, end, admitted, decoding = self._step
        self._step = None
        self.now = end
        self.busy_s += end - start
        step = end - start
        finished = []
        for seq in decoding:
            seq.generated += 1
            seq.tpot_sum += step
            self.tpot_hist.observe(step)
            if seq.generated >= seq.output_tokens:
                finished.append(seq)
        for seq in admitted:
            seq.generated = 1
            seq.t_first = end
            self.ttft_hist.observe(end - seq.arrival)
            if seq.output_tokens <= 1:
                finished.append(seq)
            else:
                self.running.append(seq)
        self.generation_tokens_total += len(decoding) + len(admitted)
        if finished:
            done = set(map(id, finished))
            self.running = [s for s in self.running if id(s) not in done]
            for seq in finished:
                seq.t_done = end
                self._release(seq)
            self.finished_total += len(finished)
        return decoding + admitted

    def run_until_idle(self, now: float = 0.0) -> float:
        """Run every queued request to completion (tests, profiles); the time it ended."""
        t = now
        while (end := self.start_step(t)) is not None:
            self.finish_step()
            t = end
        return t

    # -- /metrics -----------------------------------------------------------------------------
    def prometheus(self, model: str) -> str:
        """The engine's state under vLLM's own metric names (Prometheus text format)."""
        label = 'model_name="' + model.replace('"', "").replace("\\", "") + '"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.extend((f"# HELP vllm:{name} {help_text}", f"# TYPE vllm:{name} {kind}",
                          f"vllm:{name}{{{label}}} {float(value)}"))

        metric("num_requests_running", "gauge", "Number of requests in model execution batches.",
               self.num_running)
        metric("num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               self.num_waiting)
        metric("kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
               self.kv_usage)
        metric("prefix_cache_queries_total", "counter",
               "Prefix cache queries, in terms of number of queried tokens.", self.prefix_queries)
        metric("prefix_cache_hits_total", "counter",
               "Prefix cache hits, in terms of number of cached tokens.", self.prefix_hits)
        metric("prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               self.prompt_tokens_total)
        metric("generation_tokens_total", "counter", "Number of generation tokens processed.",
               self.generation_tokens_total)
        metric("num_preemptions_total", "counter", "Cumulative number of preemption.", 0)
        metric("request_success_total", "counter", "Count of successfully processed requests.",
               self.finished_total)
        for name, help_text, hist in (
                ("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                 self.ttft_hist),
                ("time_per_output_token_seconds", "Histogram of time per output token in "
                 "seconds.", self.tpot_hist)):
            lines.append(f"# HELP vllm:{name} {help_text}")
            lines.append(f"# TYPE vllm:{name} histogram")
            acc = 0
            for bound, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                acc += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'vllm:{name}_bucket{{{label},le="{le}"}} {float(acc)}')
            lines.append(f"vllm:{name}_count{{{label}}} {float(hist.count)}")
            lines.append(f"vllm:{name}_sum{{{label}}} {hist.sum}")
        return "\n".join(lines) + "\n"


class AsyncEngine:
    """Drives an `Engine` in real time on the running asyncio loop (the simulator's server).

    `generate()` queues a request and yields once per token as the engine produces it."""

    #: Finished requests `served()` keeps (bounded: a long benchmark must not grow memory).
    SERVED_KEPT = 10_000

    def __init__(self, cfg: EngineConfig) -> None:
        self.engine = Engine(cfg)
        #: (arrival, ttft, prompt tokens, cached tokens) of the latest finished requests, in
        #: the engine's own clock (the loop's, CLOCK_MONOTONIC: comparable across processes).
        self._served: deque[tuple[float, float, int, int]] = deque(
            maxlen=self.SERVED_KEPT)
        self._wake = asyncio.Event()
        self._events: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    def _ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        eng = self.engine
        while True:
            if not eng.has_work():
                self._wake.clear()
                await self._wake.wait()
            end = eng.start_step(loop.time())
            if end is None:
                continue
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for seq in eng.finish_step():
                ev = self._events.get(id(seq))
                if ev is not None:
                    ev.set()

    async def generate(self, tokens: Sequence[str | int] | int, output_tokens: int,
                       on_token: Callable[[Seq], Any] | None = None) -> Seq:
        """Run one request through the engine; `on_token(seq)` after each new token."""
        self._ensure()
        loop = asyncio.get_running_loop()
        seq = self.engine.submit(tokens, output_tokens, loop.time())
        ev = asyncio.Event()
        self._events[id(seq)] = ev
        self._wake.set()
        seen = 0
        try:
            while not seq.done:
                await ev.wait()
                ev.clear()
                if on_token is not None and seq.generated > seen:
                    seen = seq.generated
                    r = on_token(seq)
                    if asyncio.iscoroutine(r):
                        await r
            return seq
        finally:
            self._events.pop(id(seq), None)
            if not seq.done:  # the client went away: drop it from the engine
                self._abort(seq)
            elif seq.t_first is not None:
                self._served.append((seq.arrival, seq.ttft, seq.prompt_tokens,
                                     seq.cached_tokens))

    def served(self) -> list[dict[str, float]]:
        """The latest finished requests as the engine timed them: time to first token is
        queueing plus prefill in the engine's model, free of the client's and the gateway's
        CPU delays (what a picker changes; `GET /_sim/engine`)."""
        return [{"arrival": a, "ttft_s": t, "prompt_tokens": p, "cached_tokens": c}
                for a, t, p, c in self._served]

    def _abort(self, seq: Seq) -> None:
        eng = self.engine
        if seq in eng.waiting:
            eng.waiting.remove(seq)
        elif seq in eng.running:
            eng.running.remove(seq)
            seq.t_done = eng.now
            eng._release(seq)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def simulate_pool(cfg: EngineConfig, requests: Iterable[tuple[float, int, int, Any]],
                  replicas: int, pick: Callable[[list[Engine], Any], int] | None = None
                  ) -> list[Seq]:
    """Replay `(arrival_s, prompt_tokens, output_tokens, prefix_key)` through `replicas`
    engines in simulated time; `pick(engines, key)` chooses the replica (default: fewest
    waiting + running, ties to the lowest index). Returns every request, finished."""
    engines = [Engine(cfg) for _ in range(replicas)]
    choose = pick or (lambda es, _key: min(range(len(es)),
                                           key=lambda i: (es[i].num_waiting + es[i].num_running,
                                                          i)))
    out: list[Seq] = []
    ends: list[float | None] = [None] * replicas
    reqs = sorted(requests, key=lambda r: r[0])
    i = 0
    inf = float("inf")
    while True:
        t_next_arrival = reqs[i][0] if i < len(reqs) else inf
        t_step, k = min(((e, j) for j, e in enumerate(ends) if e is not None),
                        default=(inf, -1))
        if t_next_arrival == inf and t_step == inf:
            break
        if t_next_arrival <= t_step:
            t, prompt, output, key = reqs[i]
            i += 1
            j = choose(engines, key)
            hashes = [hashlib.blake2b(f"{key}:{b}".encode(), digest_size=12).digest()
                      for b in range(prompt // cfg.block_size)] if key is not None else []
            out.append(engines[j].submit(prompt, output, t, hashes=hashes))
            if ends[j] is None:
                ends[j] = engines[j].start_step(t)
        else:
            engines[k].finish_step()
            ends[k] = engines[k].start_step(t_step)
    return out
