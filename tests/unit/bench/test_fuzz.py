"""The in-process core of `python -m bench.fuzz` on a small count, so a translator or parser
that starts raising outside its designed error path fails CI, not only the long run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import fuzz


@pytest.fixture(scope="module")
def samples() -> list[fuzz.Sample]:
    return fuzz.harvest(log=lambda _: None)


def test_harvest_has_answers_of_every_kind(samples: list[fuzz.Sample]) -> None:
    kinds = {(s.kind, s.content_type.split(";")[0], s.status < 300) for s in samples}
    for kind in fuzz.KINDS:
        assert (kind, "application/json", True) in kinds
        assert any(k == kind and not ok for k, _, ok in kinds)  # an error answer too
    assert ("bedrock", "application/vnd.amazon.eventstream", True) in kinds
    assert ("anthropic", "text/event-stream", True) in kinds


def test_two_thousand_inputs_find_nothing(samples: list[fuzz.Sample]) -> None:
    report = fuzz.fuzz_in_process(2_000, seed=12, samples=samples, time_limit_s=60,
                                  log=lambda _: None)
    assert report.total == 2_000
    assert report.crashes == 0, [(f.what, f.where, f.detail) for f in
                                 report.findings.values()]
    # Both sides were exercised, including translations that succeeded.
    assert report.inputs["provider answer"] > 500
    assert report.outcomes["provider answer: translated"] > 100
    assert report.outcomes["request completions: translated"] > 50
    assert report.outcomes["request messages: translated"] > 20


def test_mutator_is_seeded() -> None:
    a = fuzz.gen_request(fuzz.Mutator(random.Random(5)))
    b = fuzz.gen_request(fuzz.Mutator(random.Random(5)))
    assert a == b


def test_a_crash_is_reported_with_where_it_happened(samples: list[fuzz.Sample],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: str, raw: bytes) -> str:
        raise KeyError("x")

    monkeypatch.setattr(fuzz, "request_case", boom)
    report = fuzz.fuzz_in_process(50, seed=1, samples=samples, log=lambda _: None)
    assert report.crashes > 0
    assert all("KeyError" in f.what for f in report.findings.values())


def test_ext_proc_log_scan(tmp_path: Path) -> None:
    log = tmp_path / "ext_proc.log"
    log.write_text(
        '{"event": "response translation failed", "error": "JSONDecodeError(\'x\')"}\n'
        '{"event": "response translation failed", "error": "TypeError(\'y\')"}\n'
        '{"event": "request", "level": "info"}\n'
        'Traceback (most recent call last):\n')
    bad, designed = fuzz.scan_ext_proc_log(log)
    assert designed == 1 and len(bad) == 2
