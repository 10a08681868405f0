"""The agent's API paths against a real Kubernetes 1.20.2 control plane (tests/cluster/).

etcd and kube-apiserver built from Debian's source (``tests/cluster/build.py``) run on loopback
with ``--authorization-mode=Node,RBAC`` and ``NodeRestriction``; the agent holds a real node
certificate (``system:node:NAME``), the controller exactly ``deploy/controller.yaml``'s service
account and RBAC. The API server's audit log counts requests and finds every 403: the agent and
the controller never get one, and NodeRestriction's refusals are real. What a real server cannot
be made to do (injected 429/5xx, resets, watch expiry) stays on tests/kubeapi (docs/kubernetes.md).

One control plane per module (per xdist worker); each test its own Node. The runtime is
``engine: none``: these tests prove the API side, the runtime has its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from nodeagent.config import KubeConfig
from nodeagent.daemon.schedule import JOIN_POLL_S
from nodeagent.kube.client import APIRefused, NodeAPI
from tests.cluster import audit
from tests.cluster.agentnode import ClusterNode
from tests.cluster.build import BuildError, binaries
from tests.cluster.controlplane import CONTROLLER, ControlPlane, node_identity
from tests.notify import NotifySocket
from tests.realparts import skip_or_fail

pytestmark = [pytest.mark.cluster, pytest.mark.root]

REPO = Path(__file__).resolve().parents[1]
CONDITION = KubeConfig().condition_type
STARTUP_TAINT = KubeConfig().startup_taint_key
# The real API server's TaintNodesByCondition admission adds this to a Node created without a
# Ready condition (no kubelet here); the node lifecycle controller would lift it. Not ours.
NOT_READY = "node.kubernetes.io/not-ready"
REGISTERED = [STARTUP_TAINT, NOT_READY]
DAEMON = {
    "redetect_interval_s": 0.5,
    "heartbeat_interval_s": 2,
    "condition_refresh_s": 2,  # a heartbeat rewrites lastHeartbeatTime when 2 s old
    "xid_recovery_s": 3,
    "retry_max_s": 3,
    "metrics_textfile": "",
}


@pytest.fixture(scope="module")
def plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """One started control plane with deploy/controller.yaml's RBAC applied."""
    if os.geteuid() != 0:
        skip_or_fail("kube-apiserver", "building and running the control plane needs root")
    try:
        bins = binaries()
    except BuildError as e:
        skip_or_fail("kube-apiserver", f"no Kubernetes binaries: {e}")
    cp = ControlPlane(tmp_path_factory.mktemp("cluster"), bins)
    failed_before = request.session.testsfailed
    try:
        cp.start()
        made = cp.apply_controller_rbac()
        assert made == [
            "Namespace/nodeagent-system",
            "ServiceAccount/nodeagent-controller",
            "ClusterRole/nodeagent-controller",
            "ClusterRoleBinding/nodeagent-controller",
        ]
        print(f"control plane up in {cp.started_in_s:.1f} s at {cp.url} (logs: {cp.logs})")
        yield cp
    finally:
        cp.stop()
        if request.session.testsfailed != failed_before:
            print(f"\ncontrol plane logs ({cp.logs}):\n{cp.report()}")


_serial = iter(range(1, 1000))


@pytest.fixture
def box(plane: ControlPlane, tmp_path: Path, fake_nvml: Any) -> ClusterNode:
    """A simulated 8x H100 node of its own (``gpu-N``) whose agent talks to ``plane``."""
    node = ClusterNode(tmp_path / "node", plane, lib=fake_nvml.lib, node=f"gpu-{next(_serial)}")
    return node.start(daemon=DAEMON, kube={"api_deadline_s": 10, "wait_for_node_s": 30})


def agent(box: ClusterNode, *args: str) -> subprocess.CompletedProcess[str]:
    r = box.nodeagent(*args)
    assert r.returncode == 0, f"nodeagent {' '.join(args)}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def own(records: list[audit.AuditRecord], box: ClusterNode) -> list[audit.AuditRecord]:
    return audit.by_user(records, node_identity(box.node).user)


def wait_for(what: str, probe: Callable[[], bool], timeout: float, plane: ControlPlane) -> float:
    """Seconds until ``probe()`` holds; fails with the control plane's logs after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout} s\n{plane.report(10)}")


def test_apply_reports_with_the_nodes_own_certificate_and_a_second_apply_writes_nothing(
    plane: ControlPlane, box: ClusterNode
) -> None:
    agent(box, "apply", "--phase", "bootstrap")  # the kubelet's args: labels, startup taint
    box.register()  # the "kubelet" registers from them; the device plugin advertises 8 GPUs
    assert box.taint_keys() == REGISTERED
    mark = plane.audit.mark()

    agent(box, "apply", "--phase", "report")
    node = box.node_object()
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert "H100" in labels["nvidia.com/gpu.product"]
    owned = node["metadata"]["annotations"]["nodeagent.io/owned-labels"].split(",")
    assert "nvidia.com/gpu.count" in owned
    c = box.condition()
    assert (c["status"], c["reason"]) == ("True", "GPUReady")
    assert box.taint_keys() == REGISTERED  # the agent never touches taints
    events = plane.events(box.node)
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "GPUReady")]

    records = own(plane.settled(mark), box)
    assert not audit.refused(records), audit.show(records)
    wrote = [(r.verb, r.resource, r.subresource) for r in audit.writes(records)]
    assert sorted(wrote) == [
        ("create", "events", ""),
        ("patch", "nodes", ""),
        ("patch", "nodes", "status"),
    ], audit.show(records)

    mark = plane.audit.mark()
    agent(box, "apply")  # every phase again: nothing has changed
    records = own(plane.settled(mark), box)
    assert records, "the second apply read its Node"
    assert audit.writes(records) == [], audit.show(records)
    assert not audit.refused(records), audit.show(records)


class Running:
    """``nodeagent run`` as systemd runs it (a notify socket), against the real server."""

    def __init__(self, box: ClusterNode, notify: NotifySocket) -> None:
        self.box = box
        self.log = box.base / "daemon.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                box.argv("--log-format", "json", "run"),
                env=box.env(NOTIFY_SOCKET=str(notify.path)),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(15)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def running(box: ClusterNode, notify: NotifySocket) -> Iterator[Running]:
    run = Running(box, notify)
    try:
        yield run
    finally:
        code = run.stop()
        assert code == 0, f"nodeagent run exited {code}: {run.tail()}"


def test_run_waits_for_registration_heartbeats_and_reports_an_xid(
    plane: ControlPlane, box: ClusterNode, running: Running, notify: NotifySocket
) -> None:
    notify.wait_for("READY", "1")
    mark = plane.audit.mark()
    box.register(gpus=0)  # after the daemon started; the device plugin has not advertised yet

    def status() -> str:
        assert running.alive(), f"the agent exited: {running.tail()}"
        return str(box.condition().get("status", ""))

    wait_for("DevicePluginNotReady", lambda: status() == "False", 30, plane)
    assert box.condition()["reason"] == "DevicePluginNotReady"
    plane.set_capacity(box.node, {"cpu": "8", "memory": "64Gi", "pods": "110",
                                  "nvidia.com/gpu": str(box.gpus())})  # fmt: skip
    took = wait_for("GPUReady True", lambda: status() == "True", 30, plane)
    print(f"nvidia.com/gpu advertised -> GPUReady True: {took:.2f} s")
    first = box.condition()["lastHeartbeatTime"]
    wait_for("a heartbeat", lambda: box.condition().get("lastHeartbeatTime") != first, 15, plane)

    with box.events.open("a") as f:  # the simulated NVML's event API: GPU 2 reports XID 79
        f.write("2 79\n")
    wait_for("GPUReady False XID79", lambda: box.condition().get("reason") == "XID79", 10, plane)
    assert box.condition()["status"] == "False"
    wait_for("GPUReady True again", lambda: status() == "True", 15, plane)

    def reasons() -> list[str]:
        return [e["reason"] for e in plane.events(box.node)]

    # each Event follows its condition's patch
    wait_for("the four Events", lambda: len(reasons()) == 4, 10, plane)
    assert reasons() == ["DevicePluginNotReady", "GPUReady", "XID79", "GPUReady"]

    records = own(plane.settled(mark), box)
    assert not audit.refused(records), audit.show(records)
    assert {(r.verb, r.resource, r.subresource) for r in audit.writes(records)} <= {
        ("patch", "nodes", ""),
        ("patch", "nodes", "status"),
        ("create", "events", ""),
    }, audit.show(records)


def test_run_watches_its_node_while_the_device_plugin_has_not_advertised(
    plane: ControlPlane, box: ClusterNode, notify: NotifySocket
) -> None:
    """Told DevicePluginNotReady, the daemon watches its own Node (the Node authorizer lets a
    node watch its Node: never a 403) from the version it last read, and reads it on no
    backoff meanwhile; the capacity's change reaches it through that watch, GPUReady turns
    True after one read (the report's own), and the watch ends with it."""
    quiet = {**DAEMON, "redetect_interval_s": 60, "heartbeat_interval_s": 300}
    box.write_config(daemon=quiet, kube={"api_deadline_s": 10, "wait_for_node_s": 30})
    running = Running(box, notify)
    try:
        _watches_until_advertised(plane, box, running, notify)
    finally:
        code = running.stop()
    assert code == 0, f"nodeagent run exited {code}: {running.tail()}"


def _watches_until_advertised(
    plane: ControlPlane, box: ClusterNode, running: Running, notify: NotifySocket
) -> None:
    notify.wait_for("READY", "1")
    box.register(gpus=0)

    def reason() -> str:
        assert running.alive(), f"the agent exited: {running.tail()}"
        return str(box.condition().get("reason", ""))

    wait_for("DevicePluginNotReady", lambda: reason() == "DevicePluginNotReady", 30, plane)
    # the report's last write is its Event: counted from here, the writes are the next ones
    wait_for("its Event", lambda: len(plane.events(box.node)) == 1, 10, plane)
    version = box.node_object()["metadata"]["resourceVersion"]
    mark = plane.audit.mark()
    time.sleep(JOIN_POLL_S + 0.5)  # past the first backoff read the poll would make
    plane.set_capacity(box.node, {"cpu": "8", "memory": "64Gi", "pods": "110",
                                  "nvidia.com/gpu": str(box.gpus())})  # fmt: skip
    took = wait_for("GPUReady", lambda: reason() == "GPUReady", 30, plane)
    print(f"nvidia.com/gpu advertised -> GPUReady True (watching): {took * 1000:.0f} ms")
    wait_for("the GPUReady Event", lambda: len(plane.events(box.node)) == 2, 10, plane)

    def watches() -> list[audit.AuditRecord]:  # logged as they end
        return [r for r in own(plane.audit.since(mark), box) if r.verb == "watch"]

    wait_for("the watch to end", lambda: bool(watches()), 15, plane)
    records = own(plane.settled(mark), box)
    assert not audit.refused(records), audit.show(records)
    (watch,) = watches()
    assert (watch.resource, watch.code) == ("nodes", 200), audit.show(records)
    assert f"fieldSelector=metadata.name%3D{box.node}" in watch.uri, watch.uri
    assert f"resourceVersion={version}" in watch.uri, watch.uri
    reads = [r for r in records if r.verb == "get" and r.resource == "nodes"]
    assert len(reads) == 1, audit.show(records)  # no backoff read: the report's own read
    assert [(r.verb, r.subresource) for r in audit.writes(records)] == [
        ("patch", "status"),
        ("create", ""),
    ], audit.show(records)


def test_a_rotated_certificate_is_picked_up(plane: ControlPlane, box: ClusterNode) -> None:
    box.register()
    api = NodeAPI(box.kubeconfig, box.node, deadline_s=10)
    mark = plane.audit.mark()
    assert api.get_node() is not None
    # The kubelet rotates its client certificate in place: the same files, a new identity here
    # (so the audit log tells the two apart).
    doc = yaml.safe_load(box.kubeconfig.read_text())
    cert = Path(doc["users"][0]["user"]["client-certificate"])
    key = Path(doc["users"][0]["user"]["client-key"])
    rotated = node_identity(f"{box.node}-rotated")
    new_cert, new_key = plane.pki.client_cert(rotated.user, rotated.groups)
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert api.get_node() is not None  # a node may read any Node
    gets = [r.user for r in plane.settled(mark) if r.verb == "get" and r.name == box.node]
    assert gets == [node_identity(box.node).user, rotated.user]


def test_node_restriction_refuses_the_nodes_own_taint_and_unlisted_kubernetes_labels(
    plane: ControlPlane, box: ClusterNode
) -> None:
    agent(box, "apply", "--phase", "bootstrap")
    box.register()
    api = NodeAPI(box.kubeconfig, box.node, deadline_s=10)
    mark = plane.audit.mark()
    with pytest.raises(APIRefused) as taints:
        api.patch_node({"spec": {"taints": None}})
    with pytest.raises(APIRefused) as label:
        api.patch_node({"metadata": {"labels": {"nodeagent.kubernetes.io/gpu": "true"}}})
    assert taints.value.status == label.value.status == 403
    assert "not allowed to modify taints" in str(taints.value)
    assert "nodeagent.kubernetes.io/gpu" in str(label.value)
    agent(box, "apply", "--phase", "report")  # what the agent itself sends is allowed
    assert box.taint_keys() == REGISTERED

    records = own(plane.settled(mark), box)
    assert [(r.verb, r.resource, r.name, r.code) for r in audit.refused(records)] == [
        ("patch", "nodes", box.node, 403),
        ("patch", "nodes", box.node, 403),
    ], audit.show(records)


def test_the_controller_lifts_the_taint_with_exactly_the_deployed_rbac(
    plane: ControlPlane, box: ClusterNode
) -> None:
    kubeconfig = plane.kubeconfig(CONTROLLER, box.base / "controller.kubeconfig")
    log = box.base / "controller.log"
    agent(box, "apply", "--phase", "bootstrap")
    box.register()
    mark = plane.audit.mark()
    with log.open("ab") as err:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "--log-format", "json", "controller",
             "--kubeconfig", str(kubeconfig)],
            env=box.env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        agent(box, "apply", "--phase", "report")  # GPUReady True: the controller's cue
        took = wait_for(
            "the startup taint lifted", lambda: STARTUP_TAINT not in box.taint_keys(), 30, plane
        )
        assert box.taint_keys() == [NOT_READY]  # another's taint is kept
        print(f"GPUReady True -> startup taint lifted: {took:.2f} s")
        assert ctl.poll() is None, log.read_text()[-3000:]
    finally:
        ctl.send_signal(signal.SIGTERM)
        code = ctl.wait(15)
    assert code == 0, log.read_text()[-3000:]

    records = plane.settled(mark)
    mine = audit.by_user(records, CONTROLLER.user)
    assert any(r.verb == "patch" and r.name == box.node for r in mine), audit.show(mine)
    assert not audit.refused(mine), audit.show(mine)
    assert not audit.refused(own(records, box)), audit.show(own(records, box))


def test_the_scheduler_and_controller_manager_start_on_demand(plane: ControlPlane) -> None:
    """Last in the module: once the controller-manager runs, nodes without a kubelet are
    tainted not-ready by its node lifecycle controller."""
    mark = plane.audit.mark()
    plane.start_controller_manager()
    plane.start_scheduler()
    # the controller-manager's service-account controller makes the default ServiceAccount
    wait_for(
        "the default ServiceAccount",
        lambda: plane.get("/api/v1/namespaces/default/serviceaccounts/default").status == 200,
        60,
        plane,
    )
    records = plane.settled(mark)
    scheduler = audit.by_user(records, "system:kube-scheduler")
    assert scheduler, "the scheduler talked to the API server"
    assert not audit.refused(scheduler), audit.show(scheduler)
