"""`python -m bench.guard`'s judgement on fixed numbers (no timing): what counts as a >15%
regression of the gateway's CPU per request normalized by Envoy alone's, and the baseline file
it writes and reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import guard


def results(gateway_proxy_us: float, envoy_total_us: float) -> dict[str, Any]:
    """A minimal `bench.run --json` document with the two numbers the guard uses."""

    def target(proxy: float, total: float) -> dict[str, Any]:
        return {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_us_per_request": total,
                "proxy_cpu_us_per_request": proxy,
                "cpu_us_per_request_by_process": {"envoy": proxy}, "noisy_runs": 0}

    return {"date": "2026-01-01 00:00:00 UTC", "command": "python -m bench.run",
            "machine": {"nproc": "2", "CPU model": "test"}, "load": {},
            "targets": {"envoy": target(200.0, envoy_total_us),
                        "gateway": target(gateway_proxy_us, gateway_proxy_us + 500)}}


@pytest.mark.parametrize(("current", "ok"), [
    (8.0, True),     # faster: fine
    (10.0, True),    # unchanged
    (11.5, True),    # exactly +15%: allowed
    (11.51, False),  # just over
    (13.0, False),
])
def test_compare_threshold(current: float, ok: bool) -> None:
    verdict = guard.compare(10.0, current)
    assert verdict.ok is ok
    assert verdict.growth == pytest.approx(current / 10.0 - 1)
    assert ("REGRESSION" in verdict.message()) is not ok


def test_compare_rejects_nonsense() -> None:
    with pytest.raises(guard.GuardError):
        guard.compare(0.0, 1.0)


def test_normalized_divides_gateway_proxy_cpu_by_envoy_total() -> None:
    assert guard.normalized(results(3900.0, 400.0)) == pytest.approx(9.75)


def test_normalization_cancels_a_slower_machine() -> None:
    """Same code on a machine 2x slower: both numbers double, the verdict is unchanged."""
    base = guard.normalized(results(3900.0, 400.0))
    assert guard.compare(base, guard.normalized(results(7800.0, 800.0))).ok
    # The gateway alone 20% dearer at the same Envoy cost: a regression.
    assert not guard.compare(base, guard.normalized(results(4680.0, 400.0))).ok


def test_missing_target_cannot_be_judged() -> None:
    doc = results(3900.0, 400.0)
    del doc["targets"]["envoy"]
    with pytest.raises(guard.GuardError, match="envoy"):
        guard.normalized(doc)


def test_update_then_check_round_trip(tmp_path: Path) -> None:
    baseline, measured = tmp_path / "baseline.json", tmp_path / "results.json"
    measured.write_bytes(orjson.dumps(results(3900.0, 400.0)))
    assert guard.main(["--json", str(measured), "--baseline", str(baseline), "--update"]) == 0
    doc = orjson.loads(baseline.read_bytes())
    assert doc["normalized_cpu_per_request"] == pytest.approx(9.75)
    assert doc["machine"]["CPU model"] == "test" and doc["gateway"]["rps"] == 1000.0
    assert guard.main(["--json", str(measured), "--baseline", str(baseline)]) == 0
    measured.write_bytes(orjson.dumps(results(3900.0 * 1.2, 400.0)))
    assert guard.main(["--json", str(measured), "--baseline", str(baseline)]) == 1
    assert guard.main(["--json", str(measured), "--baseline", str(tmp_path / "none")]) == 2
