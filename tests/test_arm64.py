"""The arm64 .deb, installed and run in an arm64 Debian under qemu-user emulation.

Builds the arm64 .deb (``packaging/build.py --arch aarch64 --only deb``, the pinned
cp3X-aarch64 locks), installs it with the root's own arm64 dpkg into an overlay over the cached
arm64 bookworm (tests/arm64root.py), and runs the installed ``nodeagent`` there with the
root's aarch64 python3: ``--version``, ``detect`` against an aarch64 build of the simulated NVML
(tests/fakenvml, cross-compiled with gcc-aarch64-linux-gnu) answering as a GB10, and
``apply --dry-run`` against a node root with a daemon.json. What emulation cannot prove is in
docs/packaging.md ("arm64").

Root, qemu-user-static, the cross compiler and a kernel with sandboxed binfmt_misc are needed:
without them the tests skip on a laptop and fail under CI=true. Cost, measured on this 2-core
machine while a CI run shared it (nice 15): cold 5 min 4 s (the root, once per machine: 50 s
of debootstrap, 212 s of emulated second stage), warm 49 s, of which about 38 s is building
the arm64 .deb and 8 s the dpkg -i and the emulated runs of the agent (1-2 s each).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import arm64root
from tests.fakenvml import build as fakenvml
from tests.realparts import skip_or_fail

# The first test builds the arm64 root when the cache lacks it: an emulated second stage.
pytestmark = [pytest.mark.arm64, pytest.mark.root, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
IN = "/srv/in"  # where the test's inputs appear inside the arm64 root
PROFILE = "gb10"  # NVIDIA GB10 (DGX Spark): an aarch64 machine's GPU
DAEMON_JSON = '{\n  "log-driver": "json-file"\n}\n'


def version() -> str:
    import tomlkit

    doc = tomlkit.parse((REPO / "pyproject.toml").read_text())
    return str(doc["project"]["version"])  # type: ignore[index]


@dataclasses.dataclass(frozen=True)
class Arm64Node:
    """An overlay over the cached arm64 root with the arm64 .deb installed."""

    rootfs: Path  # the cached pristine root (read only)
    state: Path  # the overlay's upper and work directories
    inputs: Path  # the host directory seen as IN inside
    deb: Path

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return arm64root.run(
            self.rootfs, self.state, list(argv), binds=((self.inputs, IN),), timeout=timeout
        )

    def nodeagent(self, *args: str) -> subprocess.CompletedProcess[str]:
        profile = f"FAKE_NVML_PROFILE={IN}/{PROFILE}.json"
        return self.run("/usr/bin/env", profile, "/usr/bin/nodeagent", *args)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def rootfs() -> Path:
    reason = arm64root.why_not()
    if reason:
        skip_or_fail("arm64 emulation", reason)
    return arm64root.build()


@pytest.fixture(scope="module")
def node(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Node]:
    tmp = tmp_path_factory.mktemp("arm64")
    build = [sys.executable, str(REPO / "packaging/build.py"), "--arch", "aarch64"]
    build += ["--only", "deb", "--locked", "--dist", str(tmp / "dist"), "--work", str(tmp / "w")]
    r = subprocess.run(build, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    deb = tmp / "dist" / f"nodeagent_{version()}_arm64.deb"
    assert deb.is_file(), sorted(p.name for p in (tmp / "dist").iterdir())
    inputs = tmp / "in"
    inputs.mkdir()
    shutil.copyfile(deb, inputs / deb.name)
    lib = fakenvml.build(tmp / "nvml-aarch64", arch="aarch64")
    assert fakenvml.elf_machine(lib) == fakenvml.ELF_MACHINES["aarch64"]
    shutil.copyfile(lib, inputs / fakenvml.LIBNAME)
    shutil.copyfile(fakenvml.profile(PROFILE), inputs / f"{PROFILE}.json")
    (inputs / "config.yaml").write_text(
        f"nvml_library: {IN}/{fakenvml.LIBNAME}\nruntime:\n  engine: docker\n"
    )
    daemon_json = inputs / "node/etc/docker/daemon.json"
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text(DAEMON_JSON)
    yield Arm64Node(rootfs=rootfs, state=tmp / "state", inputs=inputs, deb=deb)
    shutil.rmtree(tmp / "state", ignore_errors=True)


@pytest.fixture(scope="module")
def installed(node: Arm64Node) -> Arm64Node:
    ok(node.run("/usr/bin/dpkg", "-i", f"{IN}/{node.deb.name}"))
    return node


def test_the_root_is_arm64_and_runs_under_emulation(node: Arm64Node) -> None:
    assert ok(node.run("/usr/bin/uname", "-m")).strip() == "aarch64"
    assert ok(node.run("/usr/bin/dpkg", "--print-architecture")).strip() == "arm64"
    python = (node.rootfs / "usr/bin/python3").resolve()
    assert fakenvml.elf_machine(python) == fakenvml.ELF_MACHINES["aarch64"], python


def test_the_arm64_deb_installs_with_the_roots_dpkg(installed: Arm64Node) -> None:
    fmt = "${Package} ${Architecture} ${Version} ${Status}"
    out = ok(installed.run("/usr/bin/dpkg-query", "-W", "-f", fmt, "nodeagent"))
    assert out == f"nodeagent arm64 {version()} install ok installed"
    # The compiled libraries it installed are aarch64 ones, for the root's CPython 3.11.
    lib = installed.state / "upper/opt/nodeagent/lib/cp311"
    compiled = sorted(lib.rglob("*.so"))
    assert any("aarch64-linux-gnu" in p.name for p in compiled), compiled
    for so in compiled:
        assert fakenvml.elf_machine(so) == fakenvml.ELF_MACHINES["aarch64"], so


def test_version_runs_on_the_roots_aarch64_python(installed: Arm64Node) -> None:
    r = installed.nodeagent("--version")
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, f"nodeagent {version()}", "")


def test_detect_reads_the_aarch64_simulated_nvml(installed: Arm64Node) -> None:
    r = installed.nodeagent("--config", f"{IN}/config.yaml", "detect", "-o", "json")
    found = json.loads(ok(r))
    assert [g["name"] for g in found["gpus"]] == ["NVIDIA GB10"], found
    assert found["labels"]["nvidia.com/gpu.product"] == "NVIDIA-GB10"
    assert found["labels"]["nvidia.com/gpu.count"] == "1"
    assert "Traceback" not in r.stderr


def test_apply_dry_run_plans_the_runtime_and_writes_nothing(installed: Arm64Node) -> None:
    args = ["--config", f"{IN}/config.yaml", "--root", f"{IN}/node"]
    r = installed.nodeagent(*args, "apply", "--phase", "bootstrap", "--dry-run", "-o", "json")
    report = json.loads(ok(r))
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {
        "detect": "ok",
        "runtime": "would change",
        "kubelet-args": "would change",
    }, report
    assert report["dry_run"] is True
    assert (installed.inputs / "node/etc/docker/daemon.json").read_text() == DAEMON_JSON
    assert not (installed.inputs / "node/etc/default/kubelet").exists()
    assert all(s["file_writes"] == 0 for s in report["steps"])


def machine_binfmts() -> set[str]:
    """The machine's own binfmt_misc registrations, read in a private mount namespace."""
    where = "/proc/sys/fs/binfmt_misc"
    script = f"mountpoint -q {where} || mount -t binfmt_misc binfmt_misc {where}; ls {where}"
    out = ok(
        subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)
    )
    return set(out.split()) - {"register", "status"}


def test_emulation_leaves_the_machines_binfmt_misc_alone(node: Arm64Node) -> None:
    """qemu is registered in each run's own user namespace, never on the machine."""
    before = machine_binfmts()
    assert ok(node.run("/bin/sh", "-c", "echo emulated")).strip() == "emulated"
    assert machine_binfmts() == before
