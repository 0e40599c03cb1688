"""Envoy's quota safety net is one quota for the fleet, through real Envoys: two nodes on one
control plane, a provider quota of 60 requests per minute, no `shared_state`.

Without shared state each node's ext_proc admits up to the whole quota by itself (in-process
buckets), so here only Envoy's own local rate limit can hold the fleet to one quota: with
`local_cluster_rate_limit` each Envoy charges a request 2 tokens while the local cluster
(`switchyard_fleet`, EDS from the control plane) has 2 members, so each node lets 30 through
and the two together 60, not 120. When a node leaves, the other's local cluster shrinks to 1."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from switchyard.fleet import Node
from switchyard.launcher import free_ports
from switchyard.processes import die_with_parent
from tests.integration.conftest import render_config, wait_until

RPM = 60
MEMBERS = "cluster.switchyard_fleet.membership_total"
LIMITED = "switchyard_quota.http_local_rate_limit.rate_limited"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("safety_net")
    names = ["listen", "admin", "xds", "ext_proc", "metrics", "openai", "anthropic",
             "l1", "a1", "m1", "l2", "a2", "m2"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = tmp / "gateway.yaml"
    text = render_config(ports)
    # the quota on the openai provider only: Envoy's listener bucket keyed by first_provider
    text = text.replace("    kind: openai\n", f"    kind: openai\n    limits: {{rpm: {RPM}}}\n", 1)
    config.write_text(text)
    py = [sys.executable, "-m", "switchyard.cli"]

    def spawn(args: list[str], name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, stdout=(tmp / name).open("ab"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    procs = [spawn([*py, "sim", "--config", str(config)], "sim.log"),
             spawn([*py, "control-plane", "--config", str(config), "--port", str(ports["xds"]),
                    "--status-port", "0"], "control_plane.log")]
    nodes = [Node(f"127.0.0.1:{ports['xds']}", listen=f"127.0.0.1:{ports[f'l{i}']}",
                  admin=f"127.0.0.1:{ports[f'a{i}']}", metrics=f"127.0.0.1:{ports[f'm{i}']}",
                  node_id=f"node-{i}", concurrency=1, log_dir=tmp / f"node-{i}")
             for i in (1, 2)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(timeout=60)
        yield {"ports": ports, "nodes": nodes}
    finally:
        for n in nodes:
            n.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def _stat(admin_port: int, name: str) -> int:
    r = httpx.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": f"^{name}$"},
                  timeout=5)
    for line in r.text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def test_two_nodes_hold_one_provider_quota_and_membership_follows(
        fleet: dict[str, Any]) -> None:
    ports, nodes = fleet["ports"], fleet["nodes"]
    admins = [ports["a1"], ports["a2"]]
    wait_until(lambda: all(_stat(a, MEMBERS) == 2 for a in admins), timeout=10)

    body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hi"}]}
    ok = [0, 0]
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for _ in range(RPM):  # 2x the quota in total, 1x per node
            for i, port in enumerate((ports["l1"], ports["l2"])):
                r = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                ok[i] += r.status_code == 200
    elapsed = time.monotonic() - t0
    refill = RPM / 60 * elapsed  # what the fleet's bucket refilled meanwhile
    assert set(statuses) <= {200, 429}, (statuses, r.text)
    # one quota for the fleet (each node: half of it), not one per node
    assert RPM - 2 <= sum(ok) <= RPM + refill + 2, (ok, statuses, elapsed)
    for n in ok:
        assert RPM / 2 - 1 <= n <= RPM / 2 + refill / 2 + 1, (ok, elapsed)
    # ... and it was Envoy that said no: each node's listener bucket refused the rest
    assert all(_stat(a, LIMITED) > 0 for a in admins)

    nodes[1].stop()  # a node leaves: the control plane pushes the smaller local cluster
    wait_until(lambda: _stat(admins[0], MEMBERS) == 1, timeout=10)
