"""How much of the event loop the usage ledger takes per request: buffered (append, then one
write() per flush window; what ext_proc does) vs one write() per record.

    python -m bench.ledger_bench
"""

from __future__ import annotations

import os
import tempfile
import time

from ext_proc.translate.canonical import Usage
from ext_proc.usage.ledger import Ledger, to_json
from ext_proc.usage.record import UsageRecord

N = 50_000


def record(i: int) -> UsageRecord:
    return UsageRecord(rid=f"abc-{i}", model="gpt-sim", backend="sim-openai/gpt-4o-mini",
                       status=200, stream=False, attempts=1, outcome="completed",
                       latency_s=0.0123, ttft_s=0.004, usage=Usage(812, 120, 64, 0),
                       cost_usd=0.000183, route="balanced; pick=sim-openai/gpt-4o-mini",
                       tenant="team-a", klass="interactive", system="openai",
                       response_model="gpt-4o-mini")


def main() -> None:
    records = [record(i) for i in range(N)]
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(d, "bench", max_buffered=1_000_000)
        t = time.perf_counter()
        for r in records:
            ledger.append(r)
        appended = time.perf_counter() - t
        t = time.perf_counter()
        ledger.flush()
        flushed = time.perf_counter() - t
        ledger.close()
        import orjson

        lines = [orjson.dumps(to_json(r, "bench", time.time())) + b"\n" for r in records]
        fd = os.open(os.path.join(d, "each.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        t = time.perf_counter()
        for line in lines:
            os.write(fd, line)
        each = time.perf_counter() - t
        os.close(fd)
    print(f"buffered: {appended / N * 1e6:.2f} us/append (serialise + buffer) + "
          f"{flushed / N * 1e6:.2f} us/record amortised write ({flushed * 1e3:.1f} ms for "
          f"{N} records in one write)")
    print(f"one write() per record instead: +{each / N * 1e6:.2f} us/record (syscall each)")


if __name__ == "__main__":
    main()
