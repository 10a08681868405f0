"""The daemon's watch on its own Node (nodeagent/daemon/nodewatch.py) on the test API server
(tests/kubeapi/), for what a real kube-apiserver cannot be made to do on demand: a
resourceVersion gone from the history (410 Gone: a re-list), a watch request that keeps
failing (given up after the API deadline, retried meanwhile), the Node deleted — and the
daemon reading its Node on the backoff again while its watch fails. The watch that turns
GPUReady True: tests/test_daemon.py (this server), tests/test_cluster.py (kube-apiserver)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from nodeagent.daemon.nodewatch import WATCH_TIMEOUT_S, NodeWatch, Seen
from nodeagent.kube.client import NodeAPI
from tests.kubeapi import Fault, KubeAPIServer
from tests.notify import NotifySocket
from tests.sandbox import Sandbox
from tests.test_daemon import DAEMON, Running, condition, wait_until

NODE = "gpu-1"
HISTORY = 5  # changes the server remembers: a version older than that is gone (410)
WATCH_PATH = r"^/api/v1/nodes$"  # a list or a watch; a read of the Node is /api/v1/nodes/NAME


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[KubeAPIServer]:
    server = KubeAPIServer(tmp_path / "kubeapi", history=HISTORY).start()
    try:
        yield server
    finally:
        server.stop()


def node_api(srv: KubeAPIServer, tmp_path: Path, deadline_s: float = 10) -> NodeAPI:
    kc = srv.node_kubeconfig(tmp_path / "node.kubeconfig", NODE)
    return NodeAPI(kc, NODE, deadline_s=deadline_s)


class Woken:
    """The reporter's ``wake``, as an Event the test waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> None:
        self.event.set()

    def wait(self, what: str) -> None:
        assert self.event.wait(10), f"not woken: {what}"
        self.event.clear()


def version(srv: KubeAPIServer) -> str:
    node = srv.get_node(NODE)
    assert node is not None
    return str(node["metadata"]["resourceVersion"])


def watches(srv: KubeAPIServer) -> list[Any]:
    return [r for r in srv.requests if r.query.get("watch") == "true"]


def advertise(gpus: str) -> Callable[[dict[str, Any]], None]:
    def change(node: dict[str, Any]) -> None:
        node["status"]["capacity"]["nvidia.com/gpu"] = gpus

    return change


def test_a_version_gone_from_the_history_relists(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE, capacity={"nvidia.com/gpu": "0"})
    old = version(srv)
    for i in range(HISTORY + 2):  # other changes push the Node's version out of the history
        srv.create_node(f"other-{i}")
    woken = Woken()
    watch = NodeWatch(node_api(srv, tmp_path), old, woken).start()
    try:
        woken.wait("the Node as it is now, re-listed")
        seen = watch.take()
        assert seen.failure is None
        assert seen.node is not None and seen.node.resource_version == version(srv)
        # the first request got 410 Gone (an ERROR event); the next one had no version
        assert [w.query.get("resourceVersion") for w in watches(srv)] == [old, None]
        assert all(w.query["fieldSelector"] == f"metadata.name={NODE}" for w in watches(srv))
        assert all(int(w.query["timeoutSeconds"]) == WATCH_TIMEOUT_S for w in watches(srv))

        srv.update_node(NODE, advertise("8"))  # and the re-listed watch goes on
        woken.wait("the capacity")
        seen = watch.take()
        assert seen.node is not None and seen.node.capacity == {"nvidia.com/gpu": "8"}
        assert len(watches(srv)) == 2
    finally:
        watch.stop()
        assert watch.join(5), "a stopped watch ends at once (not at its timeout)"


def test_a_watch_that_keeps_failing_gives_up_in_one_line(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    srv.create_node(NODE)
    srv.inject(Fault(method="GET", path_regex=WATCH_PATH, kind="503", count=10_000))
    woken = Woken()
    watch = NodeWatch(node_api(srv, tmp_path, deadline_s=1), version(srv), woken).start()
    try:
        woken.wait("the failure")
        seen = watch.take()
        assert seen.node is None
        assert seen.failure is not None and "\n" not in seen.failure
        assert seen.failure.startswith("watch nodes: gave up after"), seen.failure
        assert watch.join(5)
        tries = watches(srv)
        assert len(tries) >= 2, "retried (backoff with jitter) before giving up"
        assert {t.status for t in tries} == {503}
    finally:
        watch.stop()


def test_the_node_deleted_ends_the_watch(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    woken = Woken()
    watch = NodeWatch(node_api(srv, tmp_path), version(srv), woken).start()
    try:
        wait = time.monotonic() + 10
        while not watches(srv):
            assert time.monotonic() < wait, "no watch request"
            time.sleep(0.01)
        srv.delete_node(NODE)
        woken.wait("the deletion")
        assert watch.take() == Seen(failure=f"Node {NODE} was deleted")
        assert watch.join(5)
    finally:
        watch.stop()


def test_the_daemon_reads_on_its_backoff_while_its_watch_fails(
    docker_sandbox: Callable[..., Sandbox], notify: NotifySocket
) -> None:
    """Every watch request fails (503 until the API deadline): the daemon says so and falls
    back to reading its Node after 2, 4, 8 ... s, so GPUReady still follows the capacity."""
    slow = {**DAEMON, "redetect_interval_s": 60, "heartbeat_interval_s": 300}
    box = docker_sandbox(daemon=slow, kube={"api_deadline_s": 1, "wait_for_node_s": 30})
    box.register(gpus=0)  # before the daemon starts: it never waits for the Node on a watch
    box.srv.inject(Fault(method="GET", path_regex=WATCH_PATH, kind="503", count=10_000))
    node_path = f"/api/v1/nodes/{box.node}"
    run = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        wait_until(
            "DevicePluginNotReady",
            lambda: condition(box).get("reason") == "DevicePluginNotReady",
            10,
            run,
        )
        wait_until("the watch failed", lambda: "daemon.node_watch_failed" in run.log(), 10, run)
        mark = len(box.srv.requests)
        wait_until(  # the backoff read (2 s after the failure), not the heartbeat (300 s)
            "a read of the Node",
            lambda: any(r.path == node_path for r in box.srv.requests[mark:]),
            10,
            run,
        )
        box.srv.update_node(box.node, advertise("8"))
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 20, run)
        assert {w.status for w in watches(box.srv)} == {503}  # it never watched
    finally:
        code, _ = run.stop()
    assert code == 0
