"""A fleet of agents against the real API server converges with only the writes an agent may
make, and never a 403 (the fleet bench's machinery, bench/fleet.py, at a small size).

kube-apiserver 1.20.2 and etcd from tests/cluster/ (Node,RBAC, NodeRestriction, an audit log);
20 agents as threads, each with its own node certificate; each Node registered with that
node's own credential and the startup taint, as a kubelet does; then a short steady state on
the daemon's schedule (intervals ÷720). Correctness only: the figures (time to converge, writes
per second, CPU) are `python -m bench.kube`'s, in docs/benchmarks.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fleet import AGENT_WRITES, Steady, logged_summary, run_fleet
from bench.fleetpki import node_user
from bench.fleetservers import RealServer
from tests.cluster.build import BuildError, binaries
from tests.cluster.controlplane import ControlPlane
from tests.realparts import skip_or_fail

pytestmark = [pytest.mark.cluster, pytest.mark.root]

FLEET = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if os.geteuid() != 0:
        skip_or_fail("kube-apiserver", "building and running the control plane needs root")
    try:
        bins = binaries()
    except BuildError as e:
        skip_or_fail("kube-apiserver", f"no Kubernetes binaries: {e}")
    plane = ControlPlane(tmp_path_factory.mktemp("fleet-cluster"), bins)
    try:
        plane.start()
        yield RealServer(plane)
    finally:
        plane.stop()


def test_a_fleet_converges_on_the_real_server_with_no_403(
    server: RealServer, tmp_path: Path
) -> None:
    result = run_fleet(server, tmp_path, FLEET, Steady(scale=720, hours=1), prefix="fl-")
    logged = server.logged()
    users = {node_user(f"fl-{i}") for i in range(FLEET)}
    fleet = [r for r in logged if r.user in users]
    why = f"{result.errors[:3]}\n{logged_summary(fleet)}"

    assert result.errors == (), why
    assert result.converged == FLEET, why  # labels, GPUReady=True, the startup taint kept
    assert result.refused == (), why
    assert not [r for r in fleet if r.code == 403], why
    # converging: exactly the three writes of a first report, a 404 and a watch to read
    assert result.report_writes_per_node == 3.0, why
    assert result.report_reads_per_node <= 3.0, why
    # a kubelet registers its Node; the agent writes only its labels, condition and Events
    wrote = {(r.verb, r.resource) for r in fleet if r.is_write}
    assert wrote <= AGENT_WRITES | {("create", "nodes")}, why
    assert ("create", "nodes") in wrote and ("patch", "nodes/status") in wrote, why
    # reads of its own Node: missing before registration, found on every heartbeat after
    assert {(r.resource, r.code) for r in fleet if r.verb == "get"} <= {
        ("nodes", 404),
        ("nodes", 200),
    }, why
