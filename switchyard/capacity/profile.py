"""`switchyard profile URL`: measure an OpenAI-compatible endpoint (a real vLLM or the
simulator) into a GPU profile: prefill throughput vs input length, TPOT = a + b x running
sequences (least squares over a few batch sizes), and the largest batch seen on `/metrics`.

Prompts are unique per request (no prefix-cache hits); `ignore_eos` asks vLLM for exactly
`max_tokens` tokens."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ext_proc.select.pool import parse_prometheus


def _words(n: int) -> str:
    tag = uuid.uuid4().hex[:8]
    return " ".join(f"{tag}w{i}" for i in range(n))


def _stream(client: httpx.Client, url: str, model: str, words: int, max_tokens: int
            ) -> tuple[float, list[float]]:
    """(TTFT, gaps between later tokens) of one streamed request, in seconds."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": _words(words)}]}
    t0 = time.monotonic()
    stamps: list[float] = []
    with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data:") and '"content":"' in line.replace(" ", ""):
                stamps.append(time.monotonic())
    if not stamps:
        raise RuntimeError("the endpoint streamed no tokens")
    return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)]


def measure(url: str, model: str = "model", lengths: tuple[int, ...] = (16, 512, 2048, 4096),
            batches: tuple[int, ...] = (1, 4, 16, 32), decode_tokens: int = 24,
            burst: int = 128) -> dict[str, Any]:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=burst + 8)) as client:
        ttft = {n: min(_stream(client, url, model, n, 2)[0] for _ in range(2)) for n in lengths}
        base = ttft[lengths[0]]
        prefill_points = [{"input_tokens": n, "ttft_ms": ttft[n] * 1000,
                           "tokens_per_s": (n - lengths[0]) / max(1e-6, ttft[n] - base)}
                          for n in lengths[1:]]
        prefill = sum(p["tokens_per_s"] for p in prefill_points) / len(prefill_points)
        tpot_points = []
        for b in batches:
            with ThreadPoolExecutor(b) as pool:
                runs = list(pool.map(lambda _: _stream(client, url, model, 16, decode_tokens),
                                     range(b)))
            gaps = sorted(g for _, gs in runs for g in gs)
            mid = gaps[len(gaps) // 10: len(gaps) - len(gaps) // 10] or gaps
            tpot_points.append({"running": b, "tpot_ms": 1000 * sum(mid) / len(mid)})
        xs = [p["running"] for p in tpot_points]
        ys = [p["tpot_ms"] for p in tpot_points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0
        # Largest batch: flood the endpoint and watch vllm:num_requests_running.
        seen = 0.0
        stop = threading.Event()

        def watch() -> None:
            nonlocal seen
            while not stop.is_set():
                try:
                    m = parse_prometheus(client.get(url + "/metrics").text)
                    seen = max(seen, m.get("vllm:num_requests_running", 0.0))
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(burst) as pool:
                list(pool.map(lambda _: _stream(client, url, model, 16, decode_tokens),
                              range(burst)))
        finally:
            stop.set()
            watcher.join()
    return {"url": url, "prefill_tokens_per_s": prefill, "prefill": prefill_points,
            "tpot_ms": {"base": my - slope * mx, "per_running_seq": slope},
            "tpot": tpot_points, "max_num_seqs": int(seen)}
