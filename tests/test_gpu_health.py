"""GPU health end to end (issue 12): every NVML health signal of the simulated GPU, read by
the real pynvml, reaches the Node through the CLI as a subprocess — ``apply`` flips
``nvidia.com/GPUReady`` with the signal's reason (and an Event), ``check`` fails or warns
its ``gpu-health`` probe with the fix, and the condition returns to True only once the
GPU recovered. ``nodeagent run`` follows the signals on its own: an HGX node that boots
with the NVLink fabric still training turns ready by itself once the fabric completes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kube.controller import Rules, decide
from nodeagent.kube.node import Node
from tests.conftest import FakeNVML
from tests.fakenvml.build import profile
from tests.notify import NotifySocket
from tests.sandbox import Sandbox
from tests.test_daemon import Running, wait_until

CONDITION = "nvidia.com/GPUReady"


def condition(box: Sandbox) -> dict[str, Any]:
    return box.srv.node_condition(box.node, CONDITION)


def boot(box: Sandbox, name: str, **gpu_changes: dict[str, Any]) -> dict[str, Any]:
    """Give the node profile ``name`` (writing it boots the simulated node), with
    ``gpu_changes`` ("gpuN": fields) applied; returns the profile."""
    doc: dict[str, Any] = json.loads(profile(name).read_text())
    for key, fields in gpu_changes.items():
        doc["gpus"][int(key.removeprefix("gpu"))].update(fields)
    box.profile.write_text(json.dumps(doc))
    return doc


def check_json(box: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    r = box.nodeagent("check", "-o", "json", "--phase", "bootstrap", *args)
    assert r.stderr == "", r.stderr
    return r.returncode, json.loads(r.stdout)


def probe(doc: dict[str, Any], name: str = "gpu-health") -> dict[str, Any]:
    return next(p for p in doc["probes"] if p["name"] == name)


@pytest.fixture
def node(tmp_path: Path, fake_nvml: FakeNVML) -> Iterator[Sandbox]:
    """A registered 8x H100 node reported GPUReady=True (runtime engine none: no dockerd,
    the health signals are the subject)."""
    box = Sandbox(tmp_path / "sb", "h100x8", docker=False, lib=fake_nvml.lib)
    with box:
        box.start()
        assert box.nodeagent("apply", "--phase", "bootstrap").returncode == 0
        box.register()
        r = box.nodeagent("apply", "--phase", "report")
        assert r.returncode == 0, r.stdout + r.stderr
        assert condition(box)["status"] == "True"
        yield box


# profile, its reason, the GPU it names, words of check's fix
SIGNALS = [
    ("h100x8-fabric-failed", "FabricFailure", 2, "systemctl status nvidia-fabricmanager"),
    ("h100x8-remap-pending", "GPUResetRequired", 3, "nvidia-smi -r -i 3"),
    ("h100x8-remap-failure", "RowRemapFailure", 6, "replace GPU 6 (RMA)"),
    ("h100x8-recovery-node-reboot", "RecoveryActionNodeReboot", 1, "reboot"),
    ("h100x8-recovery-gpu-reset", "RecoveryActionGPUReset", 4, "nvidia-smi -r -i 4"),
    ("h100x8-ecc-uncorrectable", "UncorrectableECC", 5, "nvidia-smi -r -i 5"),
    ("v100x8-retired-pages-pending", "RetiredPagesPending", 2, "nvidia-smi -r -i 2"),
]


@pytest.mark.parametrize(("name", "reason", "gpu", "fix"), SIGNALS, ids=[s[0] for s in SIGNALS])
def test_each_signal_flips_gpuready_with_an_event_fails_check_and_recovers(
    node: Sandbox, name: str, reason: str, gpu: int, fix: str
) -> None:
    doc = boot(node, name)
    r = node.nodeagent("apply", "--phase", "report")
    assert r.returncode == 0, r.stdout + r.stderr  # the report told the truth
    cond = condition(node)
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert cond["message"].startswith(f"GPU {gpu} ({doc['gpus'][gpu]['uuid']}): ")
    flips = [e for e in node.srv.events() if e["reason"] == reason]
    assert len(flips) == 1 and flips[0]["type"] == "Warning"

    code, report = check_json(node)
    assert code == 1
    health = probe(report)
    assert health["result"] == "fail" and health["message"].startswith(f"{reason}: GPU {gpu} (")
    assert fix in health["hint"]
    assert probe(report, "gpus")["result"] == "pass"  # every GPU readable: not the gpus probe

    writes = node.srv.writes()
    assert node.nodeagent("apply", "--phase", "report").returncode == 0
    assert node.srv.writes() == writes  # still unhealthy: nothing new to say

    boot(node, "h100x8")  # repaired (reset, reboot, replaced)
    assert node.nodeagent("apply", "--phase", "report").returncode == 0
    assert condition(node)["status"] == "True"
    assert node.srv.events()[-1]["reason"] == "GPUReady"
    assert check_json(node)[0] == 0


def test_a_fabric_still_training_is_fabricnotready_on_every_gpu(node: Sandbox) -> None:
    doc = json.loads(profile("h100x8-fabric-boot").read_text())
    doc["fabric_events"] = []  # this boot never completes
    node.profile.write_text(json.dumps(doc))
    assert node.nodeagent("apply", "--phase", "report").returncode == 0
    cond = condition(node)
    assert (cond["status"], cond["reason"]) == ("False", "FabricNotReady")
    assert cond["message"].startswith(
        f"GPU 0 ({doc['gpus'][0]['uuid']}): NVLink fabric in_progress"
    )
    assert cond["message"].endswith("also 7 other GPUs: 1, 2, 3, 4, 5, 6, 7")
    code, report = check_json(node)
    assert code == 1 and "nvidia-fabricmanager" in probe(report)["hint"]


def test_warnings_keep_gpuready_true_and_warn_in_check(node: Sandbox) -> None:
    boot(
        node,
        "h100x8",
        gpu0={"persistence_mode": False},
        gpu5={"clocks_event_reasons": ["hw_slowdown", "hw_thermal"]},
    )
    assert node.nodeagent("apply", "--phase", "report").returncode == 0
    cond = condition(node)
    assert (cond["status"], cond["reason"]) == ("True", "GPUReady")
    assert "; warning: GPU 5 (" in cond["message"] and "hw_slowdown" in cond["message"]
    code, report = check_json(node)
    assert code == 0 and report["result"] == "warn"
    health = probe(report)
    assert health["result"] == "warn" and health["message"].startswith("HWSlowdown: GPU 5 (")
    assert "(+2 more)" in health["message"] and "cooling" in health["hint"]
    assert check_json(node, "--strict")[0] == 1


def test_the_controllers_unhealthy_taint_follows_a_new_reason(node: Sandbox) -> None:
    boot(node, "h100x8-remap-pending")
    assert node.nodeagent("apply", "--phase", "report").returncode == 0
    as_stored = Node.from_api(node.srv.get_node(node.node) or {})
    cond = as_stored.condition(CONDITION)
    assert cond is not None and cond.reason == "GPUResetRequired"
    since = cond.last_transition_time
    assert since is not None
    rules = Rules(
        CONDITION, "readiness.k8s.io/nvidia-gpu-not-ready", "nodeagent.io/gpu-unhealthy", 60
    )
    assert decide(as_stored, rules, since + 59).taints is None  # within the grace period
    after = decide(as_stored, rules, since + 61)
    assert after.taints is not None and "nodeagent.io/gpu-unhealthy" in [
        t.key for t in after.taints
    ]
    assert "GPUResetRequired" in after.why


DAEMON = {"redetect_interval_s": 0.5, "heartbeat_interval_s": 30, "retry_max_s": 3}


def test_run_an_hgx_node_booting_with_the_fabric_training_turns_ready_by_itself(
    tmp_path: Path, fake_nvml: FakeNVML, notify: NotifySocket
) -> None:
    box = Sandbox(tmp_path / "sb", "h100x8-fabric-boot", docker=False, lib=fake_nvml.lib)
    with box:
        box.start(daemon=DAEMON)
        box.register()  # the kubelet is up before the agent
        shutil.copy(profile("h100x8-fabric-boot"), box.profile)  # the node boots now
        booted = time.monotonic()
        run = Running(box, notify)
        try:
            wait_until(
                "FabricNotReady", lambda: condition(box).get("reason") == "FabricNotReady", 5, run
            )
            assert condition(box)["status"] == "False"
            took = wait_until(
                "GPUReady True", lambda: condition(box).get("status") == "True", 10, run
            )
            since_boot = time.monotonic() - booted
            assert since_boot >= 3.0  # not before the fabric completed
            print(f"fabric completes 3 s after boot; GPUReady True {since_boot:.2f} s after boot")
            # the Event is posted after the status patch the condition came with
            wait_until(
                "the GPUReady Event",
                lambda: [e["reason"] for e in box.srv.events()][-1:] == ["GPUReady"],
                5,
                run,
            )
            reasons = [e["reason"] for e in box.srv.events()]
            assert reasons[-2:] == ["FabricNotReady", "GPUReady"], reasons
            assert took < 10
            # and the recovery action of a running node, noticed on the next re-detect
            boot(box, "h100x8", gpu1={"recovery_action": "node_reboot"})
            wait_until(
                "RecoveryActionNodeReboot",
                lambda: condition(box).get("reason") == "RecoveryActionNodeReboot",
                3,
                run,
            )
            boot(box, "h100x8")
            wait_until("True again", lambda: condition(box).get("status") == "True", 3, run)
        finally:
            code, _ = run.stop()
            assert code == 0
