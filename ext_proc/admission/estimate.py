"""How many tokens to reserve for a request before it runs.

    reserve = prompt tokens (characters / 4, as `select.candidates.estimate_tokens`)
            + max_tokens            when the request names one
            + learned p95 of output when it does not (per model alias)

The learned output size is a small decayed histogram per model: 64 geometric bins (x1.25 from
1 token to ~1.6M), each observation weighted a little more than the last (half-life
`HALF_LIFE` observations), so the p95 follows recent traffic. Observing is O(1); the p95 is
cached and recomputed at most every `RECOMPUTE_EVERY` observations (a walk over 64 floats).
"""

from __future__ import annotations

import math
from typing import Any

from ext_proc.select.candidates import estimate_tokens

#: Output reserve while a model has fewer than MIN_SAMPLES observations.
DEFAULT_OUTPUT = 1024
MIN_SAMPLES = 20
HALF_LIFE = 500
RECOMPUTE_EVERY = 16
_BINS = 64
_GROWTH = 1.25
_LOG_GROWTH = math.log(_GROWTH)
#: Upper edge of each bin (tokens).
_EDGES = tuple(math.ceil(_GROWTH ** (i + 1)) for i in range(_BINS))


def max_output(body: dict[str, Any]) -> int | None:
    out = body.get("max_completion_tokens") or body.get("max_tokens")
    return out if isinstance(out, int) and out > 0 else None


class OutputSketch:
    """Decayed histogram of one model's output tokens; `p95()` is an upper bin edge."""

    __slots__ = ("_cached", "_counts", "_dirty", "_total", "_weight", "samples")

    _STEP = 2.0 ** (1.0 / HALF_LIFE)

    def __init__(self) -> None:
        self._counts = [0.0] * _BINS
        self._total = 0.0
        self._weight = 1.0
        self._cached = DEFAULT_OUTPUT
        self._dirty = 0
        self.samples = 0

    def observe(self, tokens: int) -> None:
        i = 0 if tokens <= 1 else min(_BINS - 1, int(math.log(tokens) / _LOG_GROWTH))
        # bin i holds (GROWTH**i, GROWTH**(i+1)]; log rounding can put an edge one bin low
        if i < _BINS - 1 and tokens > _EDGES[i]:
            i += 1
        self._counts[i] += self._weight
        self._total += self._weight
        self._weight *= self._STEP
        if self._weight > 1e100:  # renormalise; the ratios are all that matter
            self._counts = [c / self._weight for c in self._counts]
            self._total /= self._weight
            self._weight = 1.0
        self.samples += 1
        self._dirty += 1

    def quantile(self, q: float) -> int:
        target = self._total * q
        acc = 0.0
        for i, c in enumerate(self._counts):
            acc += c
            if acc >= target and c > 0:
                return _EDGES[i]
        return _EDGES[-1]

    def p95(self) -> int:
        if self.samples < MIN_SAMPLES:
            return DEFAULT_OUTPUT
        if self._dirty >= RECOMPUTE_EVERY or self.samples == MIN_SAMPLES:
            self._cached = self.quantile(0.95)
            self._dirty = 0
        return self._cached


class Estimator:
    """Token reservations for admission; `observe` feeds it each response's true output."""

    __slots__ = ("default_output", "sketches")

    def __init__(self, default_output: int = DEFAULT_OUTPUT) -> None:
        self.sketches: dict[str, OutputSketch] = {}
        self.default_output = default_output

    def output(self, alias: str) -> int:
        sk = self.sketches.get(alias)
        if sk is None or sk.samples < MIN_SAMPLES:
            return self.default_output
        return sk.p95()

    def estimate(self, alias: str, body: dict[str, Any]) -> int:
        """Tokens to reserve: prompt + max_tokens, or prompt + learned p95 of the output."""
        total = estimate_tokens(body)  # includes max_tokens when present
        if max_output(body) is None:
            total += self.output(alias)
        return max(1, total)

    def observe(self, alias: str, output_tokens: int) -> None:
        sk = self.sketches.get(alias)
        if sk is None:
            sk = self.sketches[alias] = OutputSketch()
        sk.observe(output_tokens)
