"""``nodeagent apply`` end to end: the simulated GPU, a real dockerd, the test API server.

The CLI runs as a subprocess, exactly as cloud-init and systemd run it; what it changed is
counted from the outside: file bytes and inodes, dockerd's own reload log, the API
server's request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
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


# --- the error boundary: a step that fails, or raises anything, and the walk goes on -----

REPO = Path(__file__).resolve().parents[1]
TAINT = "--register-with-taints=readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule"


@pytest.fixture
def dead_docker(tmp_path: Path, fake_nvml: FakeNVML) -> Iterator[Sandbox]:
    """A node whose runtime.engine is docker, with no dockerd behind its socket: every
    failure here comes from host input, before anything would talk to the daemon."""
    box = Sandbox(tmp_path / "sb", docker=False, lib=fake_nvml.lib)
    with box:
        box.start(runtime={"engine": "docker", "docker": {"host": f"unix://{tmp_path}/no.sock"}})
        (box.root / "etc/docker").mkdir(parents=True)
        yield box


def make_fifo(p: Path) -> None:
    os.mkfifo(p)


HOSTILE_DAEMON_JSON: list[tuple[str, Callable[[Path], object]]] = [
    ("runtimes-null", lambda p: p.write_text('{"runtimes": null}\n')),
    ("runtimes-list", lambda p: p.write_text('{"runtimes": []}\n')),
    ("default-runtime-number", lambda p: p.write_text('{"default-runtime": 5}\n')),
    ("top-level-list", lambda p: p.write_text("[]\n")),
    ("utf-16", lambda p: p.write_bytes('{"debug": true}\n'.encode("utf-16"))),
    ("not-utf-8", lambda p: p.write_bytes(b'{"debug": "\xff"}\n')),
    ("nested-900-deep", lambda p: p.write_text('{"x": ' + "[" * 900 + "]" * 900 + "}\n")),
    ("directory", lambda p: p.mkdir()),
    ("fifo", make_fifo),
]


@pytest.mark.parametrize(
    "make", [m for _, m in HOSTILE_DAEMON_JSON], ids=[n for n, _ in HOSTILE_DAEMON_JSON]
)
def test_hostile_daemon_json_fails_the_runtime_step_and_the_node_still_registers_tainted(
    dead_docker: Sandbox, make: Callable[[Path], object]
) -> None:
    box = dead_docker
    daemon_json = box.root / "etc/docker/daemon.json"
    make(daemon_json)
    before = daemon_json.read_bytes() if daemon_json.is_file() else None
    r = box.nodeagent("apply", "--phase", "bootstrap", timeout=30)  # a FIFO never blocks
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == ""
    runtime = next(ln for ln in r.stdout.splitlines() if ln.startswith("runtime"))
    assert runtime.startswith("runtime      failed        /etc/docker/daemon.json"), runtime
    assert steps(r.stdout)["kubelet-args"] == "changed"
    assert TAINT in box.kubelet_args()
    if before is not None:
        assert daemon_json.read_bytes() == before  # a malformed input is never overwritten
    assert sorted(p.name for p in daemon_json.parent.iterdir()) == ["daemon.json"]  # no junk


def patched_nodeagent(box: Sandbox, patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The sandbox's CLI in a child whose code ``patch`` made raise: a test-side seam for
    exceptions no host input should reach any more (a bug in a step)."""
    code = (
        f"import sys\n{patch}\nfrom nodeagent.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *box.argv(*args)[3:]],
        env={**box.env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_a_step_that_raises_anything_is_a_failed_step_and_the_walk_goes_on(
    dead_docker: Sandbox,
) -> None:
    box = dead_docker
    box.register()
    patch = (
        "from nodeagent.runtime.docker.engine import DockerEngine\n"
        "def read(self):\n"
        "    raise AttributeError(\"'NoneType' object has no attribute 'get'\")\n"
        "DockerEngine.read = read"
    )
    r = patched_nodeagent(box, patch, "apply")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert steps(r.stdout) == {
        "detect": "ok",
        "runtime": "failed",
        "kubelet-args": "changed",
        "node": "changed",
    }
    assert (
        "runtime      failed        internal error: AttributeError: 'NoneType' object has no "
        "attribute 'get'" in r.stdout
    )
    assert TAINT in box.kubelet_args()
    cond = box.srv.node_condition(box.node, "nvidia.com/GPUReady")
    assert (cond["status"], cond["reason"]) == ("False", "RuntimeNotConfigured")
    assert "internal error: AttributeError" in cond["message"]


def test_detection_that_raises_is_a_failed_detect_step(dead_docker: Sandbox) -> None:
    patch = (
        "import nodeagent.gpu.nvml as nvml\n"
        "def detect(**kw):\n"
        "    raise OSError(5, 'Input/output error')\n"
        "nvml.detect = detect"
    )
    r = patched_nodeagent(dead_docker, patch, "apply", "--phase", "bootstrap")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        "detect       failed        internal error: OSError: [Errno 5] Input/output error"
        in r.stdout
    )
    assert steps(r.stdout) == {"detect": "failed", "runtime": "skipped", "kubelet-args": "changed"}
    assert TAINT in dead_docker.kubelet_args()  # a GPU node that cannot be read stays tainted


def test_the_loser_of_two_concurrent_runs_says_unchanged(box: Sandbox, tmp_path: Path) -> None:
    """A holds the host lock, paused mid-write; B plans the same change and waits for the
    lock; when A finishes, B finds the work done: "unchanged", no second write or reload."""
    assert box.dockerd is not None
    marker = tmp_path / "paused"
    a = subprocess.Popen(
        [sys.executable, "-m", "tests.crashpoint", "--op", "replace", "--name", "daemon.json",
         "--nth", "1", "--action", "pause", "--marker", str(marker), "--",
         *box.argv("runtime", "configure")[3:]],
        env=box.env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and a.poll() is None, a.communicate()
            time.sleep(0.02)
        b = subprocess.Popen(
            box.argv("runtime", "configure"),
            env=box.env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.5)  # B has planned and waits for the lock
        reloads = box.dockerd.reloads()
        marker.unlink()
        a_out, a_err = a.communicate(timeout=60)
        b_out, b_err = b.communicate(timeout=60)
    finally:
        for p in (a, locals().get("b")):
            if isinstance(p, subprocess.Popen) and p.poll() is None:
                p.kill()
    assert a.returncode == 0 and b.returncode == 0, a_err + b_err
    assert a_out.startswith("docker: changed /etc/docker/daemon.json; reloaded; verified"), a_out
    assert b_out == "docker: unchanged (the nvidia runtime is already configured, by another run)\n"
    assert box.dockerd.reloads() == reloads + 1  # A's reload only
