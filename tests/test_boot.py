"""End to end on a booted systemd machine (systemd-nspawn, systemd as PID 1, a real dockerd,
cloud-init NoCloud): the freshly built .deb, the units, the cloud-init path, and the daemon
reporting to the test API server listening on the machine's own loopback.

1. **Fresh node**: cloud-init's user-data installs the .deb, writes the config, runs the
   bootstrap phase, "joins" (starts the kubelet stand-in, which registers the Node from the
   args file), and enables ``nodeagent.service``. Asserted: docker's default runtime is nvidia
   and a container runs through it; the Node has the labels and ``GPUReady=True``;
   ``nodeagent check`` exits 0 inside; no unit failed. The timings are printed and kept in
   docs/benchmarks.md.
2. **Running node**: the .deb installed on a machine whose docker runs a container: the
   container survives, docker is not restarted; a later ``apply`` reloads (never restarts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import rootfs
from tests.e2e.machine import Machine, install_kubelet_conf
from tests.fakenvml.build import build as build_fakenvml
from tests.fakenvml.build import profile
from tests.kubeapi import KubeAPIServer
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
NODE = "gpu-node-1"
CONDITION = "nvidia.com/GPUReady"

pytestmark = [pytest.mark.root, pytest.mark.boot]


@pytest.fixture(scope="module")
def pristine() -> Path:
    reason = rootfs.why_not()
    if reason:
        skip_or_fail("systemd-nspawn boot", reason)
    return rootfs.build()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb as `make packages` builds it (its wheel cache under build/ is reused)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "packaging/build.py",
            "--dist",
            str(dist),
            "--only",
            "deb",
            "--arch",
            "x86_64",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (found,) = dist.glob("nodeagent_*.deb")
    return found


@pytest.fixture(scope="module")
def fakenvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fakenvml(tmp_path_factory.mktemp("fnv"), "/etc/fakenvml/profile.json")


KUBELET_UNIT = """\
[Unit]
Description=kubelet (the boot test's stand-in: registers the Node, plays the device plugin)
After=network.target

[Service]
EnvironmentFile=-/etc/default/kubelet
ExecStart=/usr/local/bin/fake-kubelet $KUBELET_EXTRA_ARGS
Restart=on-failure
"""

RUNTIME_STANDIN = """\
#!/bin/sh
# nvidia-container-runtime stand-in: records that docker called it, then is runc.
echo "$@" >> /var/log/nvidia-runtime-calls
exec runc "$@"
"""

EXAMPLES = REPO / "cloud-init"


def _join_here(runcmd: list[Any]) -> list[Any]:
    """The example's runcmd with its `kubeadm join` replaced by starting the kubelet
    stand-in (the credential is put in place by the test, as join would)."""
    out = []
    for cmd in runcmd:
        words = cmd if isinstance(cmd, list) else cmd.split()
        if words[:2] == ["kubeadm", "join"]:
            out.append(["systemctl", "start", "--no-block", "kubelet.service"])
        else:
            out.append(cmd)
    return out


def user_data_from_url_example(deb: Path) -> str:
    """cloud-init/install-from-url.yaml as a cloud user fills it in, with the download
    replaced by a copy (no network here); its checksum check and install line run as is."""
    doc = yaml.safe_load((EXAMPLES / "install-from-url.yaml").read_text())
    doc.pop("packages", None)  # curl: not needed for a copy, not installable offline
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    install = doc["runcmd"][0]
    assert "curl" in install and "sha256sum -c" in install and "--force-confold" in install
    install = re.sub(
        r"curl -fsSL --retry 5 -o (\S+)\s+\S+", rf"cp /var/lib/seed/{deb.name} \1", install
    )
    install = install.replace("REPLACE-WITH-THE-SHA256-OF-THE-DEB", digest)
    doc["runcmd"] = _join_here([install, *doc["runcmd"][1:]])
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def user_data_prebaked_example() -> str:
    """cloud-init/prebaked-image.yaml for this image (docker, not containerd)."""
    doc = yaml.safe_load((EXAMPLES / "prebaked-image.yaml").read_text())
    cfg = yaml.safe_load(doc["write_files"][0]["content"])
    cfg["runtime"]["engine"] = "docker"
    doc["write_files"][0]["content"] = yaml.safe_dump(cfg, sort_keys=False)
    doc["runcmd"] = _join_here(doc["runcmd"])
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


class Cluster:
    """The test API server, bound on the machine's loopback, and the taint controller."""

    def __init__(self, machine: Machine, workdir: Path) -> None:
        self.machine = machine
        self.srv = KubeAPIServer(workdir)
        self.stop = threading.Event()

    def start(self) -> Cluster:
        from nodeagent.kube.client import KubeAPI
        from nodeagent.kube.controller import Controller, Rules

        admin = self.srv.workdir / "admin.kubeconfig"
        with self.machine.in_network():  # the listening socket and threads live in there
            self.srv.start()
            self.srv.admin_kubeconfig(admin)
            rules = Rules(
                condition_type=CONDITION,
                startup_taint_key="readiness.k8s.io/nvidia-gpu-not-ready",
                unhealthy_taint_key="nodeagent.io/gpu-unhealthy",
                grace_s=60,
            )
            self.controller = Controller(KubeAPI(admin, deadline_s=10), rules)
            threading.Thread(target=self.controller.run, name="controller", daemon=True).start()
        self._install_credential()
        return self

    def _install_credential(self) -> None:
        """/etc/kubernetes/kubelet.conf and its files, as `kubeadm join` leaves them."""
        tmp = self.srv.workdir / "node.kubeconfig"
        self.srv.node_kubeconfig(tmp, NODE)
        install_kubelet_conf(self.machine.root, tmp)

    def close(self) -> None:
        self.controller.stop()
        self.srv.stop()

    def condition(self) -> dict[str, Any]:
        return self.srv.node_condition(NODE, CONDITION)


def prepare(m: Machine, deb: Path, fakenvml: Path, *, user_data: str = "") -> None:
    r = m.root
    (r / "var/lib/seed").mkdir(parents=True, exist_ok=True)
    (r / "var/lib/seed" / deb.name).write_bytes(deb.read_bytes())
    # the simulated GPU: the library where the driver's would be, its profile, the GPU count
    lib = r / "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    lib.write_bytes(fakenvml.read_bytes())
    subprocess.run(["chroot", str(r), "ldconfig"], check=True)
    (r / "etc/fakenvml").mkdir(parents=True, exist_ok=True)
    data = json.loads(profile("h100x8").read_text())
    (r / "etc/fakenvml/profile.json").write_text(json.dumps(data))
    (r / "etc/fakenvml/gpus").write_text(f"{len(data['gpus'])}\n")
    runtime = r / "usr/bin/nvidia-container-runtime"
    runtime.write_text(RUNTIME_STANDIN)
    runtime.chmod(0o755)
    kubelet = r / "usr/local/bin/fake-kubelet"
    kubelet.write_text((REPO / "tests/e2e/fake_kubelet.py").read_text())
    kubelet.chmod(0o755)
    (r / "etc/systemd/system/kubelet.service").write_text(KUBELET_UNIT)
    if user_data:
        seed = r / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "meta-data").write_text(f"instance-id: {NODE}-1\nlocal-hostname: {NODE}\n")
        (seed / "user-data").write_text(user_data)
        (r / "etc/cloud/cloud.cfg.d/90-test.cfg").write_text("datasource_list: [ NoCloud, None ]\n")
    else:
        (r / "etc/cloud/cloud-init.disabled").touch()


@pytest.fixture
def machine(pristine: Path) -> Iterator[Machine]:
    m = Machine(pristine, Path(tempfile.mkdtemp(prefix="e2e.", dir="/tmp")), NODE)
    try:
        yield m.prepare()
    finally:
        m.teardown()


def docker_default_runtime(m: Machine) -> str:
    r = m.run("docker", "info", "--format", "{{.DefaultRuntime}}", timeout=20)
    return r.stdout.strip() if r.returncode == 0 else ""


def import_busybox(m: Machine) -> None:
    script = textwrap.dedent(
        """\
        set -e
        d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/
        for c in sh sleep true cat echo; do ln -s busybox $d/bin/$c; done
        tar -C $d -c . | docker import - bb:local >/dev/null
        """
    )
    m.run("sh", "-c", script, check=True, timeout=60)


def timings_file() -> Path:
    return REPO / "build" / "boot-timings.json"


def boot_to_gpu_ready(machine: Machine, tmp_path: Path, scenario: str) -> None:
    """Boot, then the whole story: docker configured, Node labelled and GPUReady=True, the
    startup taint lifted, a container through the nvidia runtime, `check` clean, no unit
    failed. Prints the timings and records them for docs/benchmarks.md."""
    machine.boot()
    cluster = Cluster(machine, tmp_path / "kubeapi").start()
    try:
        t_docker = machine.wait(
            "docker's default runtime is nvidia",
            lambda: docker_default_runtime(machine) == "nvidia",
            90,
        )
        t_ready = machine.wait(
            "GPUReady=True in the API server",
            lambda: cluster.condition().get("status") == "True",
            90,
        )
        t_untainted = machine.wait(
            "the controller lifted the startup taint",
            lambda: not ((cluster.srv.get_node(NODE) or {}).get("spec") or {}).get("taints"),
            30,
        )
        print(
            f"\n{scenario}: boot → docker configured {t_docker:.1f} s → GPUReady {t_ready:.1f} s "
            f"→ untainted {t_untainted:.1f} s"
        )
        node = cluster.srv.get_node(NODE)
        assert node is not None
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["gpu-type"] == "H100" and labels["nvidia.com/gpu.count"] == "8"
        status = machine.run("cloud-init", "status", "--wait", timeout=120).stdout
        assert "status: done" in status, status
        result = json.loads(machine.run("cat", "/run/cloud-init/result.json").stdout)
        assert result["v1"]["errors"] == [], result
        # the operator's config (written by cloud-init) survived the package's conffile
        seed = (machine.root / "var/lib/cloud/seed/nocloud/user-data").read_text()
        written = yaml.safe_load(seed)["write_files"][0]["content"]
        assert (machine.root / "etc/nodeagent/config.yaml").read_text() == written
        assert machine.run("dpkg-query", "-W", "-f=${Status}", "nodeagent").stdout == (
            "install ok installed"
        )

        # a container runs through the nvidia runtime (the stand-in records the call)
        import_busybox(machine)
        r = machine.run("docker", "run", "--rm", "bb:local", "echo", "hello", timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "hello", r.stderr
        assert "create" in (machine.root / "var/log/nvidia-runtime-calls").read_text()

        assert machine.unit_active("nodeagent.service")
        check = machine.run("nodeagent", "check", timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        failed = machine.run("systemctl", "--failed", "--no-legend", "--plain").stdout.strip()
        assert failed == "", failed
        timings_file().parent.mkdir(exist_ok=True)
        old = json.loads(timings_file().read_text()) if timings_file().exists() else {}
        old = {k: v for k, v in old.items() if isinstance(v, dict)}
        old[scenario] = {"docker": t_docker, "gpuready": t_ready, "untainted": t_untainted}
        timings_file().write_text(json.dumps(old, indent=2))
    finally:
        cluster.close()


def test_fresh_node_cloud_init_installs_the_deb_and_the_node_becomes_gpu_ready(
    machine: Machine, deb: Path, fakenvml: Path, tmp_path: Path
) -> None:
    prepare(machine, deb, fakenvml, user_data=user_data_from_url_example(deb))
    boot_to_gpu_ready(machine, tmp_path, "install-from-url")


def test_prebaked_image_bootstraps_before_the_kubelet(
    machine: Machine, deb: Path, fakenvml: Path, tmp_path: Path
) -> None:
    prepare(machine, deb, fakenvml, user_data=user_data_prebaked_example())
    # baked into the image: installed in the chroot, no systemd running
    r = subprocess.run(
        ["chroot", str(machine.root), "dpkg", "-i", f"/var/lib/seed/{deb.name}"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    boot_to_gpu_ready(machine, tmp_path, "prebaked-image")
    # the bootstrap unit ran at boot, before the kubelet stand-in started
    order = machine.journal("-u", "nodeagent-bootstrap", "-u", "kubelet", "-o", "cat")
    assert order.index("apply bootstrap: ok") < order.index("registered gpu-node-1"), order


def test_installing_on_a_running_node_never_restarts_docker_or_its_containers(
    machine: Machine, deb: Path, fakenvml: Path
) -> None:
    prepare(machine, deb, fakenvml)
    machine.boot()
    machine.wait("docker", lambda: machine.unit_active("docker.service"), 60)
    import_busybox(machine)
    cid = machine.run("docker", "run", "-d", "bb:local", "sleep", "3600", check=True).stdout.strip()

    def docker_pid() -> str:
        return machine.run("systemctl", "show", "-p", "MainPID", "--value", "docker").stdout.strip()

    def started(c: str) -> str:
        return machine.run("docker", "inspect", "-f", "{{.State.StartedAt}}", c).stdout.strip()

    pid, since = docker_pid(), started(cid)
    r = machine.run("apt-get", "install", "-y", f"/var/lib/seed/{deb.name}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert docker_pid() == pid, "installing the package restarted docker"
    assert started(cid) == since
    assert (
        machine.run("docker", "inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
    )

    # asked to configure: a reload (the change is reloadable), never a restart
    r = machine.run("nodeagent", "apply", "--phase", "bootstrap", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reloaded" in r.stdout
    assert docker_default_runtime(machine) == "nvidia"
    assert docker_pid() == pid
    assert started(cid) == since
    assert os.path.exists(machine.root / "etc/default/kubelet")
