"""``nodeagent check`` on a healthy simulated node, then one broken part at a time.

Each case breaks exactly one thing for real (stops dockerd, deletes the credential, loses a
GPU in the NVML profile, stops the API server ...) and expects exactly that probe to fail
with its fix hint, and exit 1. ``check`` must never write: the API server's request log
shows no write and the files keep their bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import FakeNVML
from tests.kubeapi import Fault
from tests.sandbox import Sandbox

pytestmark = pytest.mark.docker


# Every probe, in the order check runs them (docs/operations.md); the first eight are the
# bootstrap phase's.
PROBES = [
    "nvml",
    "gpus",
    "gpu-health",
    "runtime-binary",
    "runtime-config",
    "runtime-daemon",
    "cdi",
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
    results = {p["name"]: p["result"] for p in doc["probes"]}
    assert results.pop("cdi") == "skip"  # the host's docker 20.10 has no CDI (test_cdi.py)
    assert set(results.values()) == {"pass"}
    assert set(doc["probes"][0]) == {"name", "result", "message", "hint"}
    r = healthy.nodeagent("check")
    assert r.returncode == 0
    assert "\033[" not in r.stdout  # no colour when stdout is not a terminal
    assert r.stdout.splitlines()[-1].startswith(f"check all on {healthy.node}: pass · 13 pass")
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


def remap_pending(box: Sandbox) -> None:
    """GPU 3 waits for a reset to apply a row remap (the profile h100x8-remap-pending)."""
    doc = json.loads(box.profile.read_text())
    doc["gpus"][3]["remapped_rows"] = {
        "correctable": 1,
        "uncorrectable": 0,
        "pending": True,
        "failure": False,
    }
    box.profile.write_text(json.dumps(doc))


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
    (remap_pending, "gpu-health", "nvidia-smi -r -i 3"),
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
    assert [p["name"] for p in doc["probes"]] == PROBES[:8]  # the bootstrap ones
    _, doc = check_json(healthy, "--phase", "report")
    assert "kubelet-args" not in by_name(doc) and "condition" in by_name(doc)


def test_the_table_is_coloured_only_when_asked() -> None:
    from nodeagent.cli.render import check_table as render
    from nodeagent.walk.check import FAIL, PASS, WARN, ProbeResult, Report
    from nodeagent.walk.steps import Phase

    report = Report(
        "gpu-1",
        Phase.ALL,
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
    warn_only = Report("gpu-1", Phase.ALL, report.probes[2:], 0.1)
    assert (warn_only.exit_code(), warn_only.exit_code(strict=True)) == (0, 1)


# --- a hostile host: every probe still answers, the table is printed whole ---------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def node(tmp_path: Path, fake_nvml: FakeNVML) -> Iterator[Sandbox]:
    """A registered node whose runtime.engine is docker with no dockerd behind it."""
    box = Sandbox(tmp_path / "sb", docker=False, lib=fake_nvml.lib)
    with box:
        box.start(runtime={"engine": "docker", "docker": {"host": f"unix://{tmp_path}/no.sock"}})
        (box.root / "etc/docker").mkdir(parents=True)
        box.register()
        yield box


def probe_lines(stdout: str) -> dict[str, str]:
    """{probe: result} from the table."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASS", "WARN", "FAIL", "SKIP"):
            out[parts[1]] = parts[0].lower()
    return out


def test_daemon_json_a_directory_and_a_kubeconfig_list_still_print_the_whole_table(
    node: Sandbox,
) -> None:
    (node.root / "etc/docker/daemon.json").mkdir()
    (node.root / "etc/kubernetes/kubelet.conf").write_text("- clusters\n- users\n")
    r = node.nodeagent("check", timeout=30)
    assert r.returncode == 1
    assert r.stderr == ""
    assert list(probe_lines(r.stdout)) == PROBES
    got = probe_lines(r.stdout)
    assert got["runtime-config"] == got["credential"] == "fail"
    assert got["api"] == got["node"] == "skip"  # the credential probe says why
    assert "FAIL  runtime-config  /etc/docker/daemon.json: a directory, not a regular file" in (
        r.stdout
    )
    assert (
        "FAIL  credential      /etc/kubernetes/kubelet.conf: a kubeconfig is a mapping, not a list"
        in r.stdout
    )
    assert r.stdout.splitlines()[-1].startswith(f"check all on {node.node}: fail")


def test_a_probe_that_raises_is_a_failed_probe(node: Sandbox) -> None:
    code = (
        "import sys\n"
        "import nodeagent.walk.check as check\n"
        "def boom(root):\n"
        "    raise ValueError('bad sysfs entry')\n"
        "check.nvidia_pci_gpus = boom\n"
        "from nodeagent.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *node.argv("check")[3:]],
        env={**node.env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert r.returncode == 1 and r.stderr == ""
    assert list(probe_lines(r.stdout)) == PROBES
    assert "FAIL  gpus            internal error: ValueError: bad sysfs entry" in r.stdout
    assert "fix: a bug in nodeagent: please report it" in r.stdout
    assert probe_lines(r.stdout)["node"] == "pass"  # the probes after it still ran


def _kubeconfig(box: Sandbox) -> tuple[Path, dict[str, Any]]:
    import yaml

    kc = box.root / "etc/kubernetes/kubelet.conf"
    return kc, yaml.safe_load(kc.read_text())


def _rewrite(box: Sandbox, change: Callable[[dict[str, Any]], object]) -> None:
    import yaml

    kc, doc = _kubeconfig(box)
    change(doc)
    kc.write_text(yaml.safe_dump(doc))


GARBAGE_KUBECONFIGS: list[tuple[str, Callable[[Sandbox], object], str]] = [
    (
        "yaml-syntax",
        lambda b: _kubeconfig(b)[0].write_text("clusters: [\n"),
        "/etc/kubernetes/kubelet.conf:2: invalid YAML",
    ),
    ("empty", lambda b: _kubeconfig(b)[0].write_text(""), "a mapping, not null"),
    (
        "no-current-context",
        lambda b: _rewrite(b, lambda d: d.pop("current-context")),
        "no current-context",
    ),
    (
        "context-names-no-user",
        lambda b: _rewrite(b, lambda d: d["contexts"][0]["context"].update(user="ghost")),
        "no entry in 'users' named 'ghost'",
    ),
    (
        "users-not-a-list",
        lambda b: _rewrite(b, lambda d: d.update(users={"a": 1})),
        "'users' must be a list, not an object",
    ),
    (
        "client-key-missing",
        lambda b: Path(_kubeconfig(b)[1]["users"][0]["user"]["client-key"]).unlink(),
        "does not exist (named by /etc/kubernetes/kubelet.conf)",
    ),
    (
        "ca-a-directory",
        lambda b: _rewrite(
            b, lambda d: d["clusters"][0]["cluster"].update({"certificate-authority": "/"})
        ),
        "/: a directory, not a regular file",
    ),
]


@pytest.mark.parametrize(
    ("breaks", "says"),
    [(b, s) for _, b, s in GARBAGE_KUBECONFIGS],
    ids=[n for n, _, _ in GARBAGE_KUBECONFIGS],
)
def test_the_credential_probe_fails_a_garbage_kubeconfig(
    node: Sandbox, breaks: Callable[[Sandbox], object], says: str
) -> None:
    _, doc = check_json(node, "--phase", "report")
    assert by_name(doc)["credential"]["result"] == "pass"
    breaks(node)
    code, doc = check_json(node, "--phase", "report")
    assert code == 1
    cred = by_name(doc)["credential"]
    assert cred["result"] == "fail" and says in cred["message"], cred
    assert "\n" not in cred["message"]
    report_phase = ["nvml", "gpus", "gpu-health", "runtime-daemon", "cdi", *PROBES[8:]]
    assert [p["name"] for p in doc["probes"]] == report_phase  # the whole table


def test_checks_api_deadline_is_true(node: Sandbox) -> None:
    node.srv.inject(Fault(method="GET", path_regex="/nodes/", kind="latency", delay_s=10, count=50))
    t0 = time.monotonic()
    code, doc = check_json(node, "--phase", "report")
    took = time.monotonic() - t0
    api = by_name(doc)["api"]
    assert code == 1 and api["result"] == "fail"
    said = float(api["message"].split("gave up after ")[1].split(" s")[0])
    assert 3 <= said <= 4, api["message"]  # what it says is what it waited
    assert took < 7, f"check took {took:.1f} s"


def test_runtime_config_fails_when_the_nvidia_runtime_has_another_cgroup_driver(
    tmp_path: Path, fake_nvml: FakeNVML
) -> None:
    """An upgraded node: runc now uses the systemd cgroup driver, the nvidia entry written
    before still says cgroupfs — GPU pods would run under another driver than the kubelet."""
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    (tmp_path / "etc/nodeagent/config.yaml").write_text(
        f"nvml_library: {fake_nvml.lib}\n"
        "runtime:\n  engine: containerd\n  containerd:\n    use_drop_in: false\n"
    )
    (tmp_path / "etc/containerd").mkdir(parents=True)
    cri = '[plugins."io.containerd.grpc.v1.cri".containerd'
    toml = (
        'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  default_runtime_name = "nvidia"\n'
        f'{cri}.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
        f"{cri}.runtimes.runc.options]\n  SystemdCgroup = true\n"
        f'{cri}.runtimes.nvidia]\n  runtime_type = "io.containerd.runc.v2"\n'
        f"{cri}.runtimes.nvidia.options]\n"
        '  BinaryName = "/usr/bin/nvidia-container-runtime"\n  SystemdCgroup = false\n'
    )
    config = tmp_path / "etc/containerd/config.toml"
    config.write_text(toml)
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "check", "--phase",
         "bootstrap", "-o", "json"],
        capture_output=True, text=True, env=fake_nvml.env("h100x8"), timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    probe = next(p for p in json.loads(r.stdout)["probes"] if p["name"] == "runtime-config")
    assert probe["result"] == "fail", probe
    assert probe["message"] == (
        "containerd: runtime 'nvidia' has options.SystemdCgroup = false but 'runc' has true"
    )
    assert "`nodeagent runtime configure` brings it in line" in probe["hint"]
    assert config.read_text() == toml  # check never writes
