"""``nodeagent run`` as systemd runs it: a subprocess with a real notify socket, the
simulated GPU (XIDs injected through NVML's event API), a real dockerd and the test API
server — then signals, a lost GPU, a bad host file. What depends on long stretches of time
(heartbeats, an API outage) runs the daemon in this process on a fake clock
(tests/fakeclock.py), so it takes no real sleep; its memory over many heartbeats is a
measurement (``python -m bench.agent``, docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from nodeagent import config
from nodeagent.config import DaemonConfig
from nodeagent.daemon.loop import Daemon
from nodeagent.daemon.nodewatch import WATCH_TIMEOUT_S
from nodeagent.daemon.reporter import heartbeat_age_s
from nodeagent.daemon.schedule import (
    JOIN_POLL_S,
    ApplyBackoff,
    ReportSchedule,
    first_heartbeat,
    jittered,
)
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.gpu.health import Health, XidRecord
from nodeagent.host.paths import HostRoot
from nodeagent.kube.node import Node
from tests.fakeclock import FakeClock
from tests.notify import NotifySocket
from tests.sandbox import Sandbox

CONDITION = "nvidia.com/GPUReady"
REPO = Path(__file__).resolve().parents[1]


class Running:
    """``nodeagent run`` in a sandbox."""

    def __init__(self, box: Sandbox, notify: NotifySocket, patch: str = "", **env: str) -> None:
        """``patch``: Python run in the child first (a test-side seam to make it misbehave)."""
        self.box = box
        self.notify = notify
        argv = box.argv("--log-format", "json", "run")
        if patch:
            main = "from nodeagent.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
            argv = [sys.executable, "-c", f"import sys\n{patch}\n{main}", *argv[3:]]
            env = {**env, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            argv,
            env=box.env(NOTIFY_SOCKET=str(notify.path), **env),
            stdout=subprocess.PIPE,
            stderr=open(box.base / "daemon.log", "ab"),  # noqa: SIM115
            cwd=box.base,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - start

    def log(self) -> str:
        return (self.box.base / "daemon.log").read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


class InProcess:
    """``Daemon.serve`` in this process (thread "daemon") on a fake clock: its timers fire
    only when the test moves the clock on (:meth:`run_for`); rng 0.5, so no jitter."""

    THREADS = ("daemon", "reporter")  # the threads that wait on the clock

    def __init__(self, box: Sandbox, notify: NotifySocket) -> None:
        self.clock = FakeClock(wall=time.time())
        self.daemon = Daemon(
            lambda: config.load(box.config_path, must_exist=True),
            HostRoot(box.root),
            Notifier(str(notify.path)),
            clock=self.clock,
            rng=lambda: 0.5,
        )
        self.thread = threading.Thread(target=self.daemon.serve, name="daemon", daemon=True)

    def run_for(self, seconds: float, step: float) -> None:
        """Move the clock on by ``seconds`` in ``step``s, each time until both loops sleep."""
        self.clock.run_for(seconds, step, *self.THREADS)

    def alive(self) -> bool:
        names = {t.name for t in threading.enumerate()}
        return self.thread.is_alive() and "reporter" in names

    def log(self) -> str:
        return "(in this process: see the captured output)"


def condition(box: Sandbox) -> dict[str, Any]:
    return box.srv.node_condition(box.node, CONDITION)


def wait_until(
    what: str, probe: Callable[[], bool], timeout: float, run: Running | InProcess
) -> float:
    """Seconds until ``probe()`` holds (fails the test after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        assert run.alive(), f"the agent exited: {run.log()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"{what} not within {timeout} s; log: {run.log()[-3000:]}")


DAEMON = {
    "redetect_interval_s": 0.5,
    "heartbeat_interval_s": 2,
    "xid_recovery_s": 3,
    "retry_max_s": 3,
    "metrics_textfile": "/var/lib/nodeagent/metrics/nodeagent.prom",
}


@pytest.fixture
def box(docker_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return docker_sandbox(daemon=DAEMON, kube={"api_deadline_s": 5, "wait_for_node_s": 30})


@pytest.fixture
def ready(box: Sandbox, notify: NotifySocket) -> Iterator[Running]:
    """The daemon started, READY=1 sent, the Node registered and reported True."""
    run = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        box.register()
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 20, run)
        # The report's last write is its Event, after the status: wait for it, so a test
        # counting writes from here counts only its own.
        wait_until("the GPUReady Event", lambda: any(box.srv.events()), 10, run)
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)


@pytest.fixture
def in_process(
    box: Sandbox, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InProcess]:
    """The daemon in this process on a fake clock, READY=1 sent, the Node registered and
    reported True. Each API call gives up after 0.5 s, so an outage costs little real time."""
    monkeypatch.setenv("FAKE_NVML_PROFILE", str(box.profile))
    monkeypatch.setenv("FAKE_NVML_EVENTS", str(box.events))
    box.write_config(daemon=DAEMON, kube={"api_deadline_s": 0.5, "wait_for_node_s": 30})
    run = InProcess(box, notify)
    run.thread.start()
    try:
        notify.wait_for("READY", "1")
        box.register()
        deadline = time.monotonic() + 20
        while condition(box).get("status") != "True":  # a report that failed retries on
            assert time.monotonic() < deadline, "GPUReady True not within 20 s"
            run.run_for(0.5, 0.5)  # the clock: move it on
        yield run
    finally:
        run.daemon.stop()
        run.thread.join(15)
        assert not run.thread.is_alive(), "the daemon stopped"


def metrics(box: Sandbox) -> str:
    path = box.root / "var/lib/nodeagent/metrics/nodeagent.prom"
    return path.read_text() if path.exists() else ""


def test_critical_xid_flips_the_condition_within_2s_with_an_event_then_recovers(
    box: Sandbox, ready: Running
) -> None:
    with box.events.open("a") as f:
        f.write("2 79\n")
    took = wait_until(
        "GPUReady False XID79", lambda: condition(box).get("reason") == "XID79", 2.0, ready
    )
    assert condition(box)["status"] == "False"
    assert "on GPU 2 (GPU-" in condition(box)["message"]
    wait_until(
        "event",
        lambda: any(e["reason"] == "XID79" and e["type"] == "Warning" for e in box.srv.events()),
        3,
        ready,
    )
    print(f"XID -> condition False: {took:.3f} s")
    wait_until(
        "xid metric",
        lambda: 'nodeagent_xid_events_total{critical="true",gpu="2",xid="79"} 1' in metrics(box),
        3,
        ready,
    )
    # recovery: xid_recovery_s (3 s) quiet and every GPU readable -> True again
    wait_until("recovered", lambda: condition(box).get("status") == "True", 8, ready)
    assert any(e["reason"] == "GPUReady" for e in box.srv.events()[-2:])


def test_an_application_xid_changes_nothing(box: Sandbox, ready: Running) -> None:
    before = box.srv.writes()
    with box.events.open("a") as f:
        f.write("5 13\n")
    wait_until(
        "xid 13 counted",
        lambda: 'nodeagent_xid_events_total{critical="false",gpu="5",xid="13"} 1' in metrics(box),
        3,
        ready,
    )
    assert condition(box)["status"] == "True"
    assert box.srv.writes() == before


def test_a_gpu_falling_off_the_bus_is_reported(box: Sandbox, ready: Running) -> None:
    doc = json.loads(box.profile.read_text())
    doc["gpus"][3]["error"] = "NVML_ERROR_GPU_IS_LOST"
    box.profile.write_text(json.dumps(doc))
    wait_until("GPULost", lambda: condition(box).get("reason") == "GPULost", 3, ready)
    node = box.srv.get_node(box.node)
    assert node is not None
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "7"
    # the Event follows the condition's patch
    wait_until("event", lambda: any(e["reason"] == "GPULost" for e in box.srv.events()), 3, ready)


def test_a_daemon_started_before_the_kubelet_joined_reports_as_soon_as_it_has(
    docker_sandbox: Callable[..., Sandbox], notify: NotifySocket
) -> None:
    """A pre-baked image: the agent runs before `kubeadm join` writes the credential. It
    must not wait for its next re-detect (a minute by default) to report once it can."""
    slow = {**DAEMON, "redetect_interval_s": 60, "heartbeat_interval_s": 300}
    box = docker_sandbox(daemon=slow, kube={"api_deadline_s": 5, "wait_for_node_s": 30})
    credential = box.root / "etc/kubernetes/kubelet.conf"
    joined = credential.read_bytes()
    credential.unlink()  # not joined yet
    run = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        wait_until(  # its first report found no credential (the kubelet had not joined)
            "a report without credential",
            lambda: "nodeagent_last_report_timestamp_seconds" in metrics(box),
            10,
            run,
        )
        credential.write_bytes(joined)  # kubeadm join, then the kubelet registers
        box.register()
        took = wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 10, run)
        assert took < 4.0  # the join poll (2 s) and one report, far from the 60 s re-detect
    finally:
        run.stop()


def test_a_recovery_action_event_is_reported_at_once_not_at_the_next_redetect(
    docker_sandbox: Callable[..., Sandbox], notify: NotifySocket
) -> None:
    """NVIDIA's verdict changes (nvmlEventTypeGpuRecoveryAction): the daemon re-detects on
    the event, so GPUReady turns False within seconds, not at the next re-detect (60 s)."""
    slow = {**DAEMON, "redetect_interval_s": 60, "heartbeat_interval_s": 300}
    box = docker_sandbox(daemon=slow, kube={"api_deadline_s": 5, "wait_for_node_s": 30})
    doc = json.loads(box.profile.read_text())
    doc["recovery_events"] = [{"gpu": 1, "after_ms": 4000, "action": "node_reboot"}]
    box.profile.write_text(json.dumps(doc))  # the node "boots" now (the profile's mtime)
    event_at = box.profile.stat().st_mtime + 4.0
    run = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        box.register()
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 10, run)
        assert time.time() < event_at, "the node became ready after the event: too slow a box"
        wait_until(
            "RecoveryActionNodeReboot",
            lambda: condition(box).get("reason") == "RecoveryActionNodeReboot",
            15,
            run,
        )
        assert time.time() - event_at < 3.0  # the event, not the 60 s re-detect
        assert condition(box)["status"] == "False"
        assert "GPU 1" in condition(box)["message"]
    finally:
        run.stop()


def test_a_device_plugin_that_advertises_after_registration_is_seen_within_seconds(
    docker_sandbox: Callable[..., Sandbox], notify: NotifySocket
) -> None:
    """The kubelet registers the Node first; the device plugin's ``nvidia.com/gpu`` comes
    later. While the Node is told DevicePluginNotReady, the daemon watches it — one watch
    request on its name, from the version it last read — and reads it on no backoff:
    GPUReady follows the capacity on the watch's event, not at a read seconds later nor at
    the next heartbeat (minutes). How fast: ``python -m bench.agent`` (docs/benchmarks.md)."""
    slow = {**DAEMON, "redetect_interval_s": 60, "heartbeat_interval_s": 300}
    box = docker_sandbox(daemon=slow, kube={"api_deadline_s": 5, "wait_for_node_s": 30})
    user = f"system:node:{box.node}"
    node_path = f"/api/v1/nodes/{box.node}"

    def since(mark: int) -> list[Any]:  # the agent's requests after the first ``mark``
        return [r for r in box.srv.requests[mark:] if r.user == user]

    def watches(mark: int) -> list[Any]:
        return [r for r in since(mark) if r.query.get("watch") == "true"]

    def status_patches(mark: int) -> list[Any]:
        return [r for r in since(mark) if r.method == "PATCH" and r.path == node_path + "/status"]

    run = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        box.register(gpus=0)  # registered, the device plugin not there yet
        wait_until(
            "DevicePluginNotReady",
            lambda: condition(box).get("reason") == "DevicePluginNotReady",
            10,
            run,
        )

        def from_version() -> list[Any]:  # (an earlier one, without, waited for the Node)
            return [w for w in watches(0) if w.query.get("resourceVersion")]

        wait_until("a watch on its Node", lambda: bool(from_version()), 10, run)
        told = box.srv.get_node(box.node)  # as the report left it (its Event is no change)
        assert told is not None
        watch = from_version()
        assert len(watch) == 1, watch
        mark = next(i for i, r in enumerate(box.srv.requests) if r is watch[0]) + 1
        assert watch[0].path == "/api/v1/nodes"
        assert watch[0].query["fieldSelector"] == f"metadata.name={box.node}"
        assert watch[0].query["resourceVersion"] == told["metadata"]["resourceVersion"]
        assert int(watch[0].query["timeoutSeconds"]) == WATCH_TIMEOUT_S
        assert watch[0].status == 200
        # Past the first backoff read the poll would make (2 s after the report): nothing
        # since the watch, the report's last request.
        time.sleep(JOIN_POLL_S + 0.5)
        assert [r for r in since(mark) if r.query.get("watch") != "true"] == []

        def advertise(node: dict[str, Any]) -> None:
            node["status"]["capacity"]["nvidia.com/gpu"] = "8"

        mark = len(box.srv.requests)
        box.srv.update_node(box.node, advertise)
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 10, run)
        wait_until("the GPUReady Event", lambda: len(box.srv.events()) == 2, 10, run)
        # Woken by the watch: one read (the report's own, before its patch), one status
        # patch, and no new watch: the one that saw the capacity ended with it.
        reads = [r for r in since(mark) if r.method == "GET" and r.path == node_path]
        assert len(reads) == 1, [(r.method, r.path, r.query) for r in since(mark)]
        assert len(status_patches(mark)) == 1
        assert watches(mark) == []
    finally:
        run.stop()


def test_no_api_write_between_heartbeats_when_nothing_changed(
    box: Sandbox, in_process: InProcess
) -> None:
    in_process.run_for(1, 0.25)  # let the first report settle
    before = box.srv.writes()
    reads = len(box.srv.requests)
    in_process.run_for(6, 0.25)  # 3 heartbeats (2 s), 12 re-detects (0.5 s)
    assert box.srv.writes() == before
    assert len(box.srv.requests) > reads, "heartbeats read the Node"


def test_api_outage_of_30s_is_survived_and_caught_up(box: Sandbox, in_process: InProcess) -> None:
    from structlog.testing import capture_logs

    box.srv.stop()
    doc = json.loads(box.profile.read_text())
    doc["gpus"][1]["error"] = "NVML_ERROR_GPU_IS_LOST"  # happens while the API is down
    box.profile.write_text(json.dumps(doc))
    with capture_logs() as logs:
        in_process.run_for(30, 5)  # 5 s at a time: each ends with a failed report
    assert in_process.alive(), "the agent survived the outage"
    failed = [e for e in logs if e["event"] == "daemon.report_failed"]
    assert len(failed) >= 5, logs
    box.srv.start()
    # caught up within one retry backoff (retry_max_s 3 s) of the API server coming back
    in_process.run_for(3, 0.5)
    assert condition(box).get("reason") == "GPULost"
    assert "nodeagent_api_errors_total" in metrics(box)


def test_sigterm_exits_cleanly_within_5s_even_mid_outage(
    box: Sandbox, ready: Running, notify: NotifySocket
) -> None:
    box.srv.stop()  # the reporter is stuck in retries
    with box.events.open("a") as f:
        f.write("0 79\n")
    time.sleep(1)
    code, took = ready.stop(signal.SIGTERM)
    assert code == 0
    assert took < 5
    notify.wait_for("STOPPING", "1", timeout=1)
    box.srv.start()


def test_sighup_rereads_the_config_and_reapplies(
    box: Sandbox, ready: Running, notify: NotifySocket
) -> None:
    box.write_config(
        daemon=DAEMON,
        kube={"api_deadline_s": 5},
        labels={"static": {"pool": "train"}},
    )
    ready.proc.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1", timeout=5)
    notify.wait_for("READY", "1", timeout=10)
    wait_until(
        "new label",
        lambda: (box.srv.get_node(box.node) or {})["metadata"]["labels"].get("pool") == "train",
        5,
        ready,
    )
    # a bad config on SIGHUP keeps the old one running, and says so
    box.config_path.write_text("daemon:\n  heartbeat_jitter: 7\n")
    ready.proc.send_signal(signal.SIGHUP)
    msg = notify.wait_for("STATUS", timeout=5)
    while "config not reloaded" not in msg["STATUS"]:
        msg = notify.wait_for("STATUS", timeout=5)
    assert "heartbeat_jitter" in msg["STATUS"]
    assert ready.proc.poll() is None


def test_watchdog_pings_and_metrics_are_served_on_localhost(
    box: Sandbox, notify: NotifySocket
) -> None:
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box.write_config(
        daemon={**DAEMON, "metrics_listen": f"127.0.0.1:{port}"}, kube={"api_deadline_s": 5}
    )
    box.register()
    run = Running(box, notify, WATCHDOG_USEC="400000")  # ping every 0.2 s
    try:
        notify.wait_for("READY", "1")
        first = notify.wait_for("WATCHDOG", "1", timeout=2)
        second = notify.wait_for("WATCHDOG", "1", timeout=2)
        assert first is not second
        wait_until("reported", lambda: condition(box).get("status") == "True", 10, run)
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "nodeagent_gpus 8" in text
        assert 'nodeagent_condition{condition="nvidia.com/GPUReady",status="True"} 1' in text
        assert "nodeagent_last_apply_success 1" in text
    finally:
        run.stop()


def test_an_xid_survives_the_agents_restart_within_one_boot(
    box: Sandbox, ready: Running, notify: NotifySocket
) -> None:
    with box.events.open("a") as f:
        f.write("2 79\n")
    wait_until("XID79", lambda: condition(box).get("reason") == "XID79", 2, ready)
    ready.stop()
    box.write_config(daemon={**DAEMON, "xid_recovery_s": 0}, kube={"api_deadline_s": 5})
    again = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        time.sleep(2)  # several re-detects and a heartbeat
        assert condition(box).get("reason") == "XID79"
    finally:
        again.stop()
    # after a reboot (a new boot id) the GPUs were reset: the XID is forgotten
    (box.root / "proc/sys/kernel/random/boot_id").write_text("7c1c3b2e-sandbox-boot-2\n")
    rebooted = Running(box, notify)
    try:
        notify.wait_for("READY", "1")
        wait_until("True after reboot", lambda: condition(box).get("status") == "True", 5, rebooted)
    finally:
        rebooted.stop()


def test_host_input_never_makes_run_exit_it_reports_and_retries(
    box: Sandbox, notify: NotifySocket
) -> None:
    daemon_json = box.root / "etc/docker/daemon.json"
    good = daemon_json.read_bytes()
    daemon_json.write_text('{"runtimes": null}\n')
    run = Running(box, notify)
    try:
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"].startswith("degraded: runtime failed: /etc/docker/daemon.json"), (
            ready
        )
        assert "--register-with-taints=readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule" in (
            box.kubelet_args()
        )  # the walk went on: the kubelet registers tainted
        box.register()
        wait_until(
            "RuntimeNotConfigured",
            lambda: condition(box).get("reason") == "RuntimeNotConfigured",
            10,
            run,
        )
        wait_until("metric", lambda: "nodeagent_last_apply_success 0" in metrics(box), 5, run)
        assert daemon_json.read_bytes() == b'{"runtimes": null}\n'  # never overwritten
        time.sleep(1.5)  # several re-detect ticks, each re-running the failed apply
        assert run.proc.poll() is None
        daemon_json.write_bytes(good)  # the operator fixes it: the next tick re-applies
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 15, run)
        wait_until("apply ok", lambda: "nodeagent_last_apply_success 1" in metrics(box), 5, run)
        assert json.loads(daemon_json.read_text())["default-runtime"] == "nvidia"
    finally:
        code, _ = run.stop()
    assert code == 0


def test_a_sync_that_raises_is_reported_and_retried(box: Sandbox, notify: NotifySocket) -> None:
    box.register()
    # a detection that raises once the daemon is up: the reporter says so and goes on
    raise_after = box.base / "raise-detect"
    patch = (
        "import os\n"
        "import nodeagent.gpu.nvml as nvml\n"
        "real = nvml.detect\n"
        "def detect(**kw):\n"
        f"    if os.path.exists({str(raise_after)!r}):\n"
        "        raise ZeroDivisionError('division by zero')\n"
        "    return real(**kw)\n"
        "nvml.detect = detect"
    )
    run = Running(box, notify, patch)
    try:
        notify.wait_for("READY", "1")
        wait_until("GPUReady True", lambda: condition(box).get("status") == "True", 10, run)
        raise_after.touch()
        msg = notify.wait_for("STATUS", timeout=10)
        while not msg["STATUS"].startswith("sync failed"):
            msg = notify.wait_for("STATUS", timeout=10)
        assert "internal error: ZeroDivisionError: division by zero" in msg["STATUS"]
        assert "daemon.sync_failed" in run.log()
        wait_until("metric", lambda: "nodeagent_last_report_success 0" in metrics(box), 5, run)
        raise_after.unlink()
        wait_until("recovered", lambda: "nodeagent_last_report_success 1" in metrics(box), 10, run)
    finally:
        code, _ = run.stop()
    assert code == 0


# --- the pure parts ---------------------------------------------------------------------


def test_jitter_spreads_heartbeats_within_bounds() -> None:
    assert jittered(100, 0.2, lambda: 0.0) == pytest.approx(80)
    assert jittered(100, 0.2, lambda: 0.999999) == pytest.approx(120, abs=1e-3)
    assert first_heartbeat(100, 0.2, lambda: 0.0) == 0
    assert first_heartbeat(100, 0.2, lambda: 0.5) == pytest.approx(60)


def test_heartbeat_age() -> None:
    node = Node.from_api(
        {
            "metadata": {"name": "n"},
            "status": {
                "conditions": [
                    {
                        "type": CONDITION,
                        "status": "True",
                        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    }
                ]
            },
        }
    )
    t = 1767225600.0  # 2026-01-01T00:00:00Z
    assert heartbeat_age_s(node, CONDITION, t + 30) == pytest.approx(30)
    assert heartbeat_age_s(Node.from_api({"metadata": {"name": "n"}}), CONDITION, t) == float("inf")
    assert heartbeat_age_s(None, CONDITION, t) == float("inf")


def test_health_recovery_rules() -> None:
    h = Health().record(XidRecord(2, 79, 1000.0))
    assert h.current == XidRecord(2, 79, 1000.0)
    assert h.recover(1200.0, 300, gpus_readable=True) is h  # not quiet long enough
    assert h.recover(1300.0, 300, gpus_readable=False) is h  # quiet, but a GPU is unreadable
    assert h.recover(1300.0, 300, gpus_readable=True).active == ()
    assert h.recover(10**9, 0, gpus_readable=True) is h  # 0: only a reboot clears it
    h2 = h.record(XidRecord(2, 48, 1100.0)).record(XidRecord(5, 94, 1050.0))
    assert [r.xid for r in h2.active] == [48, 94] and h2.current and h2.current.xid == 48
    assert Health.from_json(h2.to_json("boot-a"), "boot-a") == h2
    assert Health.from_json(h2.to_json("boot-a"), "boot-b") == Health()  # rebooted
    assert Health.from_json("not json", "boot-a") == Health()


def test_boot_id_file_ties_state_to_a_boot(tmp_path: Path) -> None:
    from nodeagent.daemon.state import boot_id

    p = tmp_path / "proc/sys/kernel/random/boot_id"
    p.parent.mkdir(parents=True)
    p.write_text("0d6a0c9e-1\n")
    assert boot_id(HostRoot(tmp_path)) == "0d6a0c9e-1"
    assert os.path.exists("/proc/sys/kernel/random/boot_id")


def test_the_reporters_schedule() -> None:
    d = DaemonConfig(redetect_interval_s=60, heartbeat_interval_s=300, retry_max_s=60)
    s = ReportSchedule(1000.0, d, rng=lambda: 0.5)
    assert s.next_detect == 1060.0
    assert s.next_heartbeat == pytest.approx(1000 + 300 * 1.2 * 0.5)
    assert s.wake_at(1000.0, recovery_in=None) == 1060.0
    assert s.wake_at(1000.0, recovery_in=10.0) == pytest.approx(1010.05)
    tick = s.tick(1000.0, d, requested=True)  # a request: read the Node, nothing else due
    assert tick.read_node and not tick.redetect
    tick = s.tick(1060.0, d, requested=False)
    assert tick.redetect and not tick.read_node and s.next_detect == 1120.0
    tick = s.tick(1180.0, d, requested=False)  # the heartbeat is due: read the Node
    assert tick.read_node and s.next_heartbeat == pytest.approx(1180 + 300)
    # failures back off (full jitter, at least 1 s, at most retry_max_s) and force a read
    s = ReportSchedule(0.0, d, rng=lambda: 0.5)  # re-detect at 60, heartbeat at 180
    waits = [s.failed(10.0, d.retry_max_s) for _ in range(8)]
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert s.wake_at(10.0, None) == 40.0
    tick = s.tick(40.0, d, requested=False)
    assert tick.read_node and not tick.redetect
    assert s.succeeded() == 8 and s.next_retry is None and s.failures == 0


def test_a_failed_apply_is_rerun_after_1_2_4_intervals_at_most_an_hour() -> None:
    b = ApplyBackoff()
    assert not b.due(0.0)
    waits = []
    for _ in range(10):
        b = b.after(False, 100.0, redetect_s=60)
        assert not b.due(b.not_before - 0.1) and b.due(b.not_before)
        waits.append(b.not_before - 100.0)
    assert waits[:4] == [60, 120, 240, 480] and waits[-1] == 3600
    assert b.after(True, 200.0, 60) == ApplyBackoff()


def test_per_gpu_series_carry_the_node_name(box: Sandbox, ready: Running) -> None:
    """The dcgm-exporter-named series are labelled with the Node's name, which a per-node
    prometheus-adapter rule (deploy/prometheus-adapter-rule.yaml) maps onto the Node."""
    wait_until(
        "DCGM_FI_DEV_GPU_UTIL for GPU 0 labelled with the Node",
        lambda: any(
            line.startswith("DCGM_FI_DEV_GPU_UTIL{")
            and 'gpu="0"' in line
            and f'Hostname="{box.node}"' in line
            for line in metrics(box).splitlines()
        ),
        5,
        ready,
    )
