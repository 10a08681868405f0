"""``nodeagent check`` on a healthy simulated node, then one broken part at a time.

Each case breaks exactly one thing for real (stops dockerd, deletes the credential, loses a
GPU in the NVML profile, stops the API server ...) and expects exactly that probe to fail
with its fix hint, and exit 1. ``check`` must never write: the API server's request log
shows no write and the files keep their bytes.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from tests.sandbox import Sandbox

pytestmark = pytest.mark.docker


# Every probe, in the order check runs them (docs/operations.md); the first six are the
# bootstrap phase's.
PROBES = [
    "nvml",
    "gpus",
    "runtime-binary",
    "runtime-config",
    "runtime-daemon",
    "kubelet-args",
    "credential",
    "api",
    "node",
    "labels",
    "condition",
    "startup-taint",
]


@pytest.fixture
def healthy(docker_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """A node after bootstrap, registration, report, and the controller's taint lift."""
    box = docker_sandbox()
    assert box.nodeagent("apply", "--phase", "bootstrap").returncode == 0
    box.register()
    r = box.nodeagent("apply", "--phase", "report")
    assert r.returncode == 0, r.stdout + r.stderr

    def untaint(node: dict[str, Any]) -> None:
        node["spec"]["taints"] = []

    box.srv.update_node(box.node, untaint)
    return box


def check_json(box: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    r = box.nodeagent("check", "-o", "json", *args)
    return r.returncode, json.loads(r.stdout)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["probes"]}


def test_healthy_node_passes_every_probe_and_check_writes_nothing(healthy: Sandbox) -> None:
    daemon_json = (healthy.root / "etc/docker/daemon.json").read_bytes()
    writes = healthy.srv.writes()
    code, doc = check_json(healthy)
    assert code == 0
    assert doc["schema_version"] == 1 and doc["result"] == "pass" and doc["node"] == healthy.node
    assert [p["name"] for p in doc["probes"]] == PROBES
    assert {p["result"] for p in doc["probes"]} == {"pass"}
    assert set(doc["probes"][0]) == {"name", "result", "message", "hint"}
    r = healthy.nodeagent("check")
    assert r.returncode == 0
    assert "\033[" not in r.stdout  # no colour when stdout is not a terminal
    assert r.stdout.splitlines()[-1].startswith(f"check all on {healthy.node}: pass · 12 pass")
    assert healthy.srv.writes() == writes
    assert (healthy.root / "etc/docker/daemon.json").read_bytes() == daemon_json


def lose_gpu(box: Sandbox) -> None:
    doc = json.loads(box.profile.read_text())
    doc["gpus"][3]["error"] = "NVML_ERROR_GPU_IS_LOST"
    box.profile.write_text(json.dumps(doc))


def gpu_vanished_from_nvml(box: Sandbox) -> None:
    """The PCI bus lists 9 NVIDIA display controllers; NVML sees the profile's 8."""
    for i in range(9):
        dev = box.root / f"sys/bus/pci/devices/0000:{0x18 + i:02x}:00.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n")  # 3D controller
    nic = box.root / "sys/bus/pci/devices/0000:05:00.0"  # an NVIDIA NIC-class device: not a GPU
    nic.mkdir(parents=True)
    (nic / "vendor").write_text("0x10de\n")
    (nic / "class").write_text("0x020000\n")


def no_driver(box: Sandbox) -> None:
    box.profile.write_text(json.dumps({"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"}))


def drop_runtime_from_daemon_json(box: Sandbox) -> None:
    p = box.root / "etc/docker/daemon.json"
    doc = json.loads(p.read_text())
    del doc["default-runtime"]
    p.write_text(json.dumps(doc))


def malformed_daemon_json(box: Sandbox) -> None:
    (box.root / "etc/docker/daemon.json").write_text('{"runtimes": {,}}\n')


def stop_docker(box: Sandbox) -> None:
    assert box.dockerd is not None
    box.dockerd.stop()


def remove_standin(box: Sandbox) -> None:
    (box.root / "usr/bin/nvidia-container-runtime").unlink()


def stale_kubelet_args(box: Sandbox) -> None:
    (box.root / "etc/default/kubelet").write_text("KUBELET_EXTRA_ARGS=--v=2\n")


def remove_credential(box: Sandbox) -> None:
    (box.root / "etc/kubernetes/kubelet.conf").unlink()


def stop_api(box: Sandbox) -> None:
    box.srv.stop()


def delete_node(box: Sandbox) -> None:
    box.srv.delete_node(box.node)


def remove_label(box: Sandbox) -> None:
    box.srv.update_node(box.node, lambda n: n["metadata"]["labels"].pop("gpu-type"))


def flip_condition(box: Sandbox) -> None:
    def flip(n: dict[str, Any]) -> None:
        for c in n["status"]["conditions"]:
            if c["type"] == "nvidia.com/GPUReady":
                c["status"], c["reason"] = "False", "XID79"

    box.srv.update_node(box.node, flip)


def leave_startup_taint(box: Sandbox) -> None:
    def taint(n: dict[str, Any]) -> None:
        n["spec"]["taints"] = [
            {"key": "readiness.k8s.io/nvidia-gpu-not-ready", "effect": "NoSchedule"}
        ]
        for c in n["status"]["conditions"]:
            c["lastTransitionTime"] = "2026-01-01T00:00:00Z"

    box.srv.update_node(box.node, taint)


CASES: list[tuple[Callable[[Sandbox], None], str, str]] = [
    # break, the probe that must fail first, words its fix hint must carry
    (no_driver, "nvml", "install the NVIDIA driver"),
    (lose_gpu, "gpus", "reboot"),
    (gpu_vanished_from_nvml, "gpus", "dmesg"),
    (remove_standin, "runtime-binary", "nvidia-container-toolkit"),
    (drop_runtime_from_daemon_json, "runtime-config", "nodeagent apply"),
    (malformed_daemon_json, "runtime-config", "never overwrites"),
    (stop_docker, "runtime-daemon", "systemctl start docker.service"),
    (remove_credential, "credential", "kubeadm join"),
    (stop_api, "api", "kubectl get --raw /healthz"),
    (delete_node, "node", "systemctl status kubelet"),
    (remove_label, "labels", "nodeagent apply --phase report"),
    (flip_condition, "condition", "nodeagent run"),
    (leave_startup_taint, "startup-taint", "deploy/controller.yaml"),
]


@pytest.mark.parametrize(("breaks", "probe", "hint"), CASES, ids=[c[0].__name__ for c in CASES])
def test_one_broken_part_fails_its_probe_with_a_fix(
    healthy: Sandbox, breaks: Callable[[Sandbox], None], probe: str, hint: str
) -> None:
    breaks(healthy)
    code, doc = check_json(healthy)
    assert code == 1
    assert doc["result"] == "fail"
    failing = [p for p in doc["probes"] if p["result"] == "fail"]
    assert failing[0]["name"] == probe, failing
    assert hint in failing[0]["hint"]
    r = healthy.nodeagent("check")
    assert r.returncode == 1
    table = r.stdout
    assert f"FAIL  {probe}" in table and f"fix: {failing[0]['hint']}" in table


def test_warnings_fail_only_with_strict(healthy: Sandbox) -> None:
    stale_kubelet_args(healthy)  # after registration: a warning (applies at re-registration)
    code, doc = check_json(healthy)
    assert code == 0 and doc["result"] == "warn"
    assert by_name(doc)["kubelet-args"]["result"] == "warn"
    code, doc = check_json(healthy, "--strict")
    assert code == 1 and doc["result"] == "fail"


def test_phase_selects_probes(healthy: Sandbox) -> None:
    _, doc = check_json(healthy, "--phase", "bootstrap")
    assert [p["name"] for p in doc["probes"]] == PROBES[:6]  # the bootstrap ones
    _, doc = check_json(healthy, "--phase", "report")
    assert "kubelet-args" not in by_name(doc) and "condition" in by_name(doc)


def test_the_table_is_coloured_only_when_asked() -> None:
    from nodeagent.check import FAIL, PASS, WARN, ProbeResult, Report, render

    report = Report(
        "gpu-1",
        "all",
        (
            ProbeResult("nvml", PASS, "NVML loads; driver 580.159.04"),
            ProbeResult("gpus", FAIL, "GPU 3 fell off the bus", "reboot"),
            ProbeResult("labels", WARN, "stale", "apply"),
        ),
        0.25,
    )
    plain = render(report, colour=False)
    assert "\033[" not in plain
    assert plain.splitlines()[1] == "FAIL  gpus    GPU 3 fell off the bus"
    assert plain.splitlines()[2] == " " * 14 + "fix: reboot"  # under the message
    assert plain.splitlines()[-1] == "check all on gpu-1: fail · 1 pass, 1 warn, 1 fail · 0.25 s"
    coloured = render(report, colour=True)
    assert "\033[31mFAIL\033[0m  gpus" in coloured and "\033[32mPASS\033[0m  nvml" in coloured
    assert report.exit_code() == 1 and report.exit_code(strict=True) == 1
    warn_only = Report("gpu-1", "all", report.probes[2:], 0.1)
    assert (warn_only.exit_code(), warn_only.exit_code(strict=True)) == (0, 1)
