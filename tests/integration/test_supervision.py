"""Self-healing (issue 12): `switchyard up`'s supervisor restarts a killed child; while ext_proc
is down clients get a retryable 503 error object (never an empty 500), and the gateway serves
again within about 2 s. Bounded: one gateway, sequential requests for a few seconds per kill."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from switchyard.launcher import Gateway
from tests.integration.conftest import start_gateway

BODY = {"model": "gpt-sim", "messages": [{"role": "user", "content": "still there?"}]}


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(tmp_path_factory.mktemp("supervised"))
    gw = running.gateway
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(gw.supervise(stop.is_set)), daemon=True)
    t.start()
    yield gw
    stop.set()
    t.join(10)
    gw.stop()
    assert result == [0]  # no crash loop: every kill was healed


def _kill_and_watch(gw: Gateway, child: str, seconds: float = 6.0
                    ) -> tuple[list[int], float | None]:
    """Kill -9 `child`, then send requests back to back: (statuses, seconds until the first
    200 after the first failure, or None if none failed)."""
    _serving(gw)
    old_pid = gw.procs[child].pid
    os.kill(old_pid, signal.SIGKILL)
    t_kill = time.monotonic()
    statuses: list[int] = []
    failed_at = recovered = None
    with httpx.Client(timeout=10) as c:
        while time.monotonic() - t_kill < seconds:
            r = c.post(gw.url + "/v1/chat/completions", json=BODY)
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert r.headers["content-type"].startswith("application/json"), r.text
                err = r.json()["error"]
                assert err["message"] and r.status_code in (502, 503), (r.status_code, err)
                if child == "ext_proc" and r.status_code == 503:  # the gateway's own outage
                    assert r.headers.get("retry-after"), r.text
                failed_at = failed_at or time.monotonic()
            elif failed_at is not None and recovered is None:
                recovered = time.monotonic() - t_kill
            time.sleep(0.02)
    assert gw.procs[child].pid != old_pid and gw.procs[child].poll() is None  # restarted
    return statuses, recovered if failed_at is not None else None


def _serving(gw: Gateway) -> None:
    """Every child alive and a request answered 200 (the previous kill is healed)."""
    deadline = time.monotonic() + 15
    while True:
        alive = all(p.poll() is None for p in gw.procs.values())
        if alive and httpx.post(gw.url + "/v1/chat/completions", json=BODY,
                                timeout=10).status_code == 200:
            return
        assert time.monotonic() < deadline, "gateway did not heal"
        time.sleep(0.1)


def test_killed_ext_proc_is_restarted_with_clean_errors_meanwhile(supervised: Gateway) -> None:
    statuses, recovered = _kill_and_watch(supervised, "ext_proc")
    assert statuses[-1] == 200
    assert recovered is None or recovered < 3.0, recovered  # ~2 s: restart + routing table


@pytest.mark.parametrize("child", ["control_plane", "sim"])
def test_killed_control_plane_or_simulator_is_restarted(supervised: Gateway,
                                                        child: str) -> None:
    statuses, _ = _kill_and_watch(supervised, child, seconds=4.0)
    if child == "control_plane":  # Envoy and ext_proc keep serving their last config
        assert set(statuses) == {200}, statuses
    assert statuses[-1] == 200


def test_restart_is_logged_in_one_line(supervised: Gateway, capfd: pytest.CaptureFixture[str]
                                       ) -> None:
    _kill_and_watch(supervised, "sim", seconds=2.0)
    err = capfd.readouterr().err
    assert "switchyard: sim exited with code -9; restarting in" in err

