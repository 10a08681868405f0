"""One whole ``nodeagent apply`` on every runtime of the matrix (tests/runtimes.py).

Each runtime — docker 20.10 / 26.1 / 28.5 and containerd 1.6 / 1.7 / 2.1, unpacked from the
Debian suites' packages into the cache (tests/debcache.py), never installed — runs under a
simulated GPU node (tests/sandbox.py: the simulated NVML, the test API server). Per runtime:
``apply --phase bootstrap`` configures it and brings the daemon onto the nvidia runtime
(docker by a reload, containerd by a restart), verified; a container then runs through the
nvidia runtime stand-in (``docker run``; ``ctr run`` with the runc binary containerd's
config names); the Node is registered and a whole ``apply`` reports it; another ``apply``
changes nothing (no byte, no reload or restart, no API write); ``rollback`` undoes it.

docker ≥ 28.2 turns CDI on by default (``docker info`` → ``CDISpecDirs``): the agent's
docker edits leave that as it was, on every docker. containerd 2.x runs with its native
config version 3. The CDI logic itself is tested with the CDI code.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from nodeagent.runtime.containerd.dump import DumpedConfig
from tests.conftest import FakeNVML
from tests.containerd import Containerd, needs_containerd
from tests.debcache import FetchError
from tests.dockerd import BASE_CONFIG, Dockerd, needs_dockerd, write_runtime_standin
from tests.realparts import skip_or_fail
from tests.runtimes import MATRIX, Runtime, runtime
from tests.sandbox import REPO, Sandbox
from tests.standins import nvidia_ctk

NVIDIA_BIN = "/usr/bin/nvidia-container-runtime"


def matrix_runtime(kind: str, suite: str) -> Runtime:
    reason = needs_dockerd() if kind == "docker" else needs_containerd()
    if reason:
        skip_or_fail(kind, reason)
    try:
        return runtime(kind, suite)
    except FetchError as e:
        skip_or_fail(f"{kind} of {suite}", str(e))
        raise  # not reached: skip_or_fail raises


def results(out: str) -> dict[str, tuple[str, int]]:
    """{step: (status, activations)} from ``apply -o json``."""
    doc = json.loads(out)
    return {s["step"]: (s["status"], s["activations"]) for s in doc["steps"]}


def install_toolkit(box: Sandbox) -> None:
    """What a GPU node has besides the runtime: the driver's files and the NVIDIA Container
    Toolkit's ``nvidia-ctk`` (stand-ins, tests/standins), so a runtime that consumes CDI
    (docker 28.2+, containerd 2.x by default) gets its ``nvidia.com/gpu`` spec."""
    data = json.loads(box.profile.read_text())
    nvidia_ctk.install(box.root, box.lib)
    nvidia_ctk.install_driver(
        box.root, data["driver_version"], [g["minor_number"] for g in data["gpus"]]
    )


def writes(out: str) -> int:
    """File writes, API writes and reloads/restarts of an ``apply -o json``, all steps."""
    steps = json.loads(out)["steps"]
    return sum(s["file_writes"] + s["api_writes"] + s["activations"] for s in steps)


def stamp(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return (st.st_ino, st.st_mtime_ns, p.read_bytes())


# --- docker ---------------------------------------------------------------------------------


class DockerNode(Sandbox):
    """The simulated node with the matrix's dockerd instead of the host's."""

    def __init__(self, base: Path, lib: Path, docker: Runtime) -> None:
        super().__init__(base, lib=lib, docker=False)
        self.dockerd = Dockerd(Path(tempfile.mkdtemp(prefix="nmx.", dir="/tmp")), docker)
        self.root = self.dockerd.root

    def start(self, **config: Any) -> DockerNode:
        install_toolkit(self)
        super().start(**config)
        return self


@pytest.fixture(params=[s for k, s in MATRIX if k == "docker"], ids=lambda s: f"docker-{s}")
def docker_node(
    request: pytest.FixtureRequest, tmp_path: Path, fake_nvml: FakeNVML
) -> Iterator[DockerNode]:
    rt = matrix_runtime("docker", request.param)
    try:  # the suite's docker CLI and containerd: fetched too when absent
        node = DockerNode(tmp_path / "node", fake_nvml.lib, rt)
    except FetchError as e:
        skip_or_fail(f"docker of {request.param}", str(e))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.mark.docker
def test_apply_on_each_docker_reloads_into_nvidia_runs_a_container_and_rolls_back(
    docker_node: DockerNode,
) -> None:
    box = docker_node
    d = box.dockerd
    assert d is not None
    daemon_json = d.config
    runs_its_suites_binaries(d)
    info = d.info()
    cdi_before = info.get("CDISpecDirs")
    version = tuple(int(x) for x in info["ServerVersion"].split("+")[0].split(".")[:2])
    if version >= (28, 2):  # CDI on by default from 28.2
        assert cdi_before, info.get("CDISpecDirs")
    pid, reloads = d.pid, d.reloads()

    r = box.nodeagent("apply", "--phase", "bootstrap", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(r.stdout)["runtime"] == ("changed", 1)
    assert (d.pid, d.reloads()) == (pid, reloads + 1)  # a reload, not a restart
    info = d.info()
    assert info["DefaultRuntime"] == "nvidia"
    assert info.get("CDISpecDirs") == cdi_before  # the agent's edit leaves CDI as it was
    assert json.loads(daemon_json.read_text())["insecure-registries"] == ["10.0.0.5:5000"]

    # A container now runs through the nvidia runtime: by default and by name.
    d.import_busybox()
    calls = box.root / "nvidia-runtime-calls"
    assert d.docker("run", "--rm", "--network", "none", "bb:local", "echo", "hi") == "hi"
    assert " create " in calls.read_text()
    calls.unlink()
    out = d.docker("run", "--rm", "--network", "none", "--runtime", "nvidia", "bb:local",
                   "echo", "named")  # fmt: skip
    assert out == "named" and " create " in calls.read_text()

    # The Node registers from the agent's args; a whole apply reports it ...
    box.register()
    r = box.nodeagent("apply", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(r.stdout)["runtime"] == ("unchanged", 0)
    assert results(r.stdout)["node"][0] == "changed"
    # ... and the next one changes nothing at all.
    before = (stamp(daemon_json), d.pid, d.reloads(), box.srv.writes())
    r = box.nodeagent("apply", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert writes(r.stdout) == 0, r.stdout
    assert (stamp(daemon_json), d.pid, d.reloads(), box.srv.writes()) == before

    r = box.nodeagent("rollback", "--allow-restart")
    assert r.returncode == 0, r.stdout + r.stderr
    info = d.info()
    assert info["DefaultRuntime"] == "runc" and "nvidia" not in info["Runtimes"]
    assert info.get("CDISpecDirs") == cdi_before
    runs_its_suites_binaries(d)  # restarted by `tests/dockerd.py restart`: the same docker
    assert json.loads(daemon_json.read_text()) == {
        "insecure-registries": ["10.0.0.5:5000"],
        **BASE_CONFIG,
    }


def runs_its_suites_binaries(d: Dockerd) -> None:
    """What the matrix claims: dockerd, the CLI and the containerd dockerd started are the
    suite's (the host's runc stays)."""
    prefix = d.path_prefix.split(":")
    exe = Path(os.readlink(f"/proc/{d.pid}/exe"))
    assert exe.parent == Path(prefix[0]) and exe.name == "dockerd"
    children = [  # a Go program starts children from any of its threads
        Path(os.readlink(f"/proc/{pid}/exe"))
        for task in Path(f"/proc/{d.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert any(c.name == "containerd" and str(c.parent) in prefix for c in children), children
    server = d.docker("version", "--format", "{{.Server.Version}}")
    client = d.docker("version", "--format", "{{.Client.Version}}")
    assert server.split("+")[0] == client.split("+")[0]  # the suite's own CLI


# --- containerd -----------------------------------------------------------------------------


class ContainerdNode(Sandbox):
    """The simulated node with the matrix's containerd as its runtime."""

    def __init__(self, base: Path, lib: Path, containerd: Runtime) -> None:
        super().__init__(base, lib=lib, docker=False)
        self.containerd = Containerd(Path(tempfile.mkdtemp(prefix="nmx.", dir="/tmp")), containerd)
        self.root = self.containerd.root

    def start(self, **config: Any) -> ContainerdNode:
        install_toolkit(self)
        c = self.containerd
        write_runtime_standin(c.root)
        c.config.parent.mkdir(parents=True, exist_ok=True)
        c.config.write_text(c.base_toml())
        assert c.start(), c.log.read_text()[-2000:]
        runtime_config = {
            "engine": "containerd",
            "verify_timeout_s": 20,
            "containerd": {
                "address": str(c.sock),
                "restart_command": [
                    sys.executable,
                    str(REPO / "tests" / "containerd.py"),
                    "restart",
                    str(c.base),
                ],
            },
        }
        super().start(runtime=runtime_config, **config)
        return self

    def env(self, **extra: str) -> dict[str, str]:
        # The agent under --root asks the first containerd and ctr on PATH: this one.
        path = f"{self.containerd.path_prefix}:{os.environ.get('PATH', '')}"
        return super().env(PATH=path, **extra)

    def stop(self) -> None:
        self.containerd.teardown()
        super().stop()

    def dump(self) -> DumpedConfig:
        return DumpedConfig.of(tomlkit.parse(self.containerd.config_dump()).unwrap())

    def ctr_run(self, name: str, binary: str) -> str:
        """Run ``echo NAME`` in a busybox rootfs with ``binary`` as the runc binary."""
        rootfs = self.base / f"rootfs-{name}"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        (rootfs / "bin" / "echo").symlink_to("busybox")
        out = self.containerd.ctr(
            "run", "--rm", "--rootfs", "--runc-binary", binary, str(rootfs), name,
            "/bin/echo", name,
        )  # fmt: skip
        return (out or "").strip()


@pytest.fixture(params=[s for k, s in MATRIX if k == "containerd"], ids=lambda s: f"containerd-{s}")
def containerd_node(
    request: pytest.FixtureRequest, tmp_path: Path, fake_nvml: FakeNVML
) -> Iterator[ContainerdNode]:
    rt = matrix_runtime("containerd", request.param)
    node = ContainerdNode(tmp_path / "node", fake_nvml.lib, rt)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.mark.containerd
def test_apply_on_each_containerd_restarts_into_nvidia_runs_a_container_and_rolls_back(
    containerd_node: ContainerdNode,
) -> None:
    box = containerd_node
    c = box.containerd
    config, drop_in = c.config, c.config.parent / "conf.d" / "99-nvidia.toml"
    pid = c.pid

    r = box.nodeagent("apply", "--phase", "bootstrap", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(r.stdout)["runtime"] == ("changed", 1)
    assert c.pid != pid and c.cri_status() == "ok"  # restarted, the CRI plugins loaded
    loaded = box.dump()
    assert loaded.version == c.config_version
    assert loaded.default_runtime_name == "nvidia"
    assert loaded.runtimes["nvidia"].binary_name == NVIDIA_BIN
    assert loaded.mismatches("nvidia") == ()
    assert tomlkit.parse(drop_in.read_text())["version"] == c.config_version

    # A container runs through the runtime binary containerd's config names (the stand-in).
    binary = str(c.root / loaded.runtimes["nvidia"].binary_name.lstrip("/"))
    assert box.ctr_run("through-nvidia", binary) == "through-nvidia"
    assert " create " in (box.root / "nvidia-runtime-calls").read_text()

    box.register()
    r = box.nodeagent("apply", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(r.stdout)["runtime"] == ("unchanged", 0)
    assert results(r.stdout)["node"][0] == "changed"
    before = (stamp(config), stamp(drop_in), c.pid, box.srv.writes())
    r = box.nodeagent("apply", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert writes(r.stdout) == 0, r.stdout
    assert (stamp(config), stamp(drop_in), c.pid, box.srv.writes()) == before

    pid = c.pid
    r = box.nodeagent("rollback", "--allow-restart")
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.pid != pid and c.cri_status() == "ok"
    # restarted by `tests/containerd.py restart`: the same containerd
    assert str(Path(os.readlink(f"/proc/{c.pid}/exe")).parent) in c.path_prefix.split(":")
    assert config.read_text() == c.base_toml() and not drop_in.exists()
    assert "nvidia" not in box.dump().runtimes
