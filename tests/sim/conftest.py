"""Shared pieces of the simulator tests: fast default options, and a clean simulator for
every test (options back to how it started, no recorded requests).

Simulators are module-scoped fixtures named `*sim` (one runner) or `sims` (a dict of
runners); whatever a test did to them is undone before the next test.
"""

from __future__ import annotations

from typing import Any

import pytest

from sim.common import SimOptions
from sim.server import SimRunner

#: No first-token delay, no pacing: tests wait only for what they assert.
FAST = SimOptions(ttft_ms=0, tokens_per_s=0)


def reset(runner: SimRunner) -> None:
    runner.state.set_options(runner.state.initial_options)
    runner.state.clear_records()


@pytest.fixture(autouse=True)
def _reset_simulators(request: pytest.FixtureRequest) -> None:
    for name in request.fixturenames:
        if not (name.endswith("sim") or name == "sims"):
            continue
        value: Any = request.getfixturevalue(name)
        for runner in (value.values() if isinstance(value, dict) else (value,)):
            if isinstance(runner, SimRunner):
                reset(runner)
