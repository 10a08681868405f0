"""``nodeagent apply`` end to end: the simulated GPU, a real dockerd, the test API server.

The CLI runs as a subprocess, exactly as cloud-init and systemd run it; what it changed is
counted from the outside: file bytes and inodes, dockerd's own reload log, the API
server's request log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import FakeNVML
from tests.sandbox import Sandbox

pytestmark = pytest.mark.docker


def stamp(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return (st.st_ino, st.st_mtime_ns, p.read_bytes())


@pytest.fixture
def box(docker_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return docker_sandbox()


def steps(out: str) -> dict[str, str]:
    """{step: status} from apply's one-line-per-step output."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("detect", "runtime", "kubelet-args", "node"):
            found[parts[0]] = line[13:27].strip()
    return found


def test_phases_in_order_then_a_second_apply_changes_nothing(box: Sandbox) -> None:
    assert box.dockerd is not None
    daemon_json = box.root / "etc/docker/daemon.json"
    args_file = box.root / "etc/default/kubelet"
    reloads0 = box.dockerd.reloads()

    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(r.stdout) == {"detect": "ok", "runtime": "changed", "kubelet-args": "changed"}
    assert r.stdout.splitlines()[-1].startswith("apply bootstrap: ok · 1 ok, 2 changed")
    assert box.dockerd.reloads() == reloads0 + 1  # a reload, not a restart
    info = box.dockerd.info()
    assert info["DefaultRuntime"] == "nvidia"
    assert json.loads(daemon_json.read_text())["insecure-registries"] == ["10.0.0.5:5000"]
    assert "--register-with-taints=readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule" in (
        box.kubelet_args()
    )
    assert box.srv.writes() == 0  # bootstrap never talks to the API server

    box.register()
    r = box.nodeagent("apply", "--phase", "report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(r.stdout) == {"detect": "ok", "runtime": "unchanged", "node": "changed"}
    assert box.srv.writes() == 3  # labels, status, event
    node = box.srv.get_node(box.node)
    assert node is not None
    cond = next(c for c in node["status"]["conditions"] if c["type"] == "nvidia.com/GPUReady")
    assert (cond["status"], cond["reason"]) == ("True", "GPUReady")
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"

    before = (stamp(daemon_json), stamp(args_file), box.dockerd.reloads(), box.srv.writes())
    r = box.nodeagent("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(r.stdout) == {
        "detect": "ok",
        "runtime": "unchanged",
        "kubelet-args": "unchanged",
        "node": "unchanged",
    }
    after = (stamp(daemon_json), stamp(args_file), box.dockerd.reloads(), box.srv.writes())
    assert after == before  # no write, no reload, no API write

    r = box.nodeagent("apply", "-o", "json")
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 0
    assert sum(s["file_writes"] + s["api_writes"] + s["activations"] for s in doc["steps"]) == 0


def test_dry_run_prints_every_diff_and_patch_and_touches_nothing(box: Sandbox) -> None:
    assert box.dockerd is not None
    daemon_json = box.root / "etc/docker/daemon.json"
    before = stamp(daemon_json)
    r = box.nodeagent("apply", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(r.stdout)["runtime"] == "would change"
    assert '+  "default-runtime": "nvidia"' in r.stdout
    assert "+++ b/etc/default/kubelet" in r.stdout
    assert "would wait up to 20 s" in r.stdout  # the Node is not registered yet
    assert stamp(daemon_json) == before
    assert not (box.root / "etc/default/kubelet").exists()
    assert box.dockerd.reloads() == 0

    box.register()
    box.srv.clear_requests()
    r = box.nodeagent("apply", "--dry-run", "--phase", "report")
    assert f"--- PATCH /api/v1/nodes/{box.node} (strategic merge)" in r.stdout
    assert f"--- PATCH /api/v1/nodes/{box.node}/status (strategic merge)" in r.stdout
    assert '"nvidia.com/gpu.count": "8"' in r.stdout
    assert box.srv.writes() == 0
    assert box.srv.requests, "the dry run read the Node"


def test_malformed_daemon_json_is_one_line_exit_2_and_kept_but_the_walk_goes_on(
    box: Sandbox,
) -> None:
    daemon_json = box.root / "etc/docker/daemon.json"
    daemon_json.write_text('{\n  "insecure-registries": ["a",]\n}\n')
    before = daemon_json.read_bytes()
    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 2
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("runtime"))
    assert "failed" in line and "/etc/docker/daemon.json:2:" in line
    assert daemon_json.read_bytes() == before
    # the kubelet still registers tainted: no pod lands on a node whose runtime is broken
    assert steps(r.stdout)["kubelet-args"] == "changed"


def test_report_phase_tells_the_node_what_is_wrong(box: Sandbox) -> None:
    box.write_config(kube={"kubelet_args_file": "/etc/default/kubelet"})
    (box.root / "etc/default").mkdir(parents=True, exist_ok=True)
    (box.root / "etc/default/kubelet").write_text("KUBELET_EXTRA_ARGS=\n")
    box.register()
    r = box.nodeagent("apply", "--phase", "report")
    assert r.returncode == 1
    assert steps(r.stdout)["runtime"] == "failed"
    node = box.srv.get_node(box.node)
    assert node is not None
    cond = next(c for c in node["status"]["conditions"] if c["type"] == "nvidia.com/GPUReady")
    assert (cond["status"], cond["reason"]) == ("False", "RuntimeNotConfigured")
    assert any(e["reason"] == "RuntimeNotConfigured" for e in box.srv.events())


@pytest.mark.parametrize(
    ("profile", "no_gpu_is_error", "code"),
    [("driver-not-loaded", True, 3), ("zero-gpus", True, 3), ("driver-not-loaded", False, 0)],
)
def test_no_gpu(
    tmp_path: Path, fake_nvml: FakeNVML, profile: str, no_gpu_is_error: bool, code: int
) -> None:
    box = Sandbox(tmp_path / "sb", profile, docker=False, lib=fake_nvml.lib)
    with box:
        box.start(no_gpu_is_error=no_gpu_is_error)
        r = box.nodeagent("apply", "--phase", "bootstrap")
        assert r.returncode == code, r.stdout + r.stderr
        s = steps(r.stdout)
        assert s["runtime"] == "skipped"
        assert s["detect"] == ("failed" if no_gpu_is_error else "ok")
        # a GPU node without its driver still registers tainted; a CPU node is left alone
        assert (box.root / "etc/default/kubelet").exists() is no_gpu_is_error


def test_report_without_a_credential_fails_all_skips(tmp_path: Path, fake_nvml: FakeNVML) -> None:
    box = Sandbox(tmp_path / "sb", docker=False, lib=fake_nvml.lib)
    with box:
        box.start()
        os.unlink(box.root / "etc/kubernetes/kubelet.conf")
        r = box.nodeagent("apply", "--phase", "report")
        assert r.returncode == 1
        assert "no credential at /etc/kubernetes/kubelet.conf" in r.stdout
        r = box.nodeagent("apply")
        assert r.returncode == 0, r.stdout + r.stderr
        assert steps(r.stdout)["node"] == "skipped"


def test_bad_config_is_exit_2_naming_the_line(tmp_path: Path, fake_nvml: FakeNVML) -> None:
    box = Sandbox(tmp_path / "sb", docker=False, lib=fake_nvml.lib)
    with box:
        box.start()
        box.write_config(daemon={"heartbeat_jitter": 2})
        r = box.nodeagent("apply")
        assert r.returncode == 2
        assert r.stderr.strip().startswith(f"nodeagent: {box.config_path}:")
        assert "heartbeat_jitter" in r.stderr
