"""CDI truth (issue 12, item 3): the verdict on the ``nvidia.com/gpu`` spec matches what the
runtime would do with it.

Specs come from the stand-in ``nvidia-ctk`` (tests/standins/nvidia_ctk.py), which asks the
real pynvml over the simulated library, as the real tool asks NVML. Whether a runtime
consumes CDI is asked of real daemons of the runtime matrix (tests/runtimes.py): docker
26.1 (CDI opt-in) and 28.5 (CDI on by default), containerd 1.7 (``enable_cdi`` false by
default) and 2.1 (true).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import tomlkit

from nodeagent.config import Config, ContainerdConfig, RuntimeConfig
from nodeagent.errors import InputError
from nodeagent.gpu.nvml import detect
from nodeagent.host.paths import HostRoot
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.readiness import Facts, assess
from nodeagent.runtime import cdi
from nodeagent.runtime.containerd.dump import DumpedConfig
from nodeagent.runtime.docker import engine as docker_engine
from nodeagent.walk import check
from nodeagent.walk.agent import Agent
from nodeagent.walk.steps import Phase, Status, Step
from tests.conftest import FakeNVML
from tests.containerd import Containerd, needs_containerd
from tests.debcache import FetchError
from tests.dockerd import Dockerd, needs_dockerd, write_runtime_standin
from tests.fakenvml.build import profile
from tests.realparts import skip_or_fail
from tests.runtimes import runtime
from tests.sandbox import REPO, Sandbox
from tests.standins import nvidia_ctk

SPEC = "/var/run/cdi/nvidia.yaml"
USED = cdi.Use(True, cdi.DEFAULT_SPEC_DIRS, "test")


# --- a node: a profile, the driver files it installs, the stand-in ---------------------------


@dataclasses.dataclass
class Node:
    """A --root with a simulated driver: ``profile`` (a copy, edited to swap GPUs or
    upgrade the driver), the driver's files under ``root``, the stand-in nvidia-ctk."""

    root: Path
    profile: Path
    lib: Path

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.profile.read_text())
        return data

    def install_driver(self) -> None:
        d = self.data
        nvidia_ctk.install_driver(
            self.root, d["driver_version"], [g["minor_number"] for g in d["gpus"]]
        )

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        d = self.data
        change(d)
        self.profile.write_text(json.dumps(d))

    def generate(self) -> str:
        """What ``nvidia-ctk cdi generate`` prints for the GPUs now."""
        tool = self.root / "usr/bin/nvidia-ctk"
        r = subprocess.run(
            [str(tool), *cdi.generate_argv(str(tool))[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return r.stdout

    def write_spec(self, text: str, host_path: str = SPEC) -> Path:
        p = self.root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def verdict(self, use: cdi.Use = USED) -> cdi.Verdict:
        root = HostRoot(self.root)
        return cdi.judge(cdi.read_facts(root, use), detect(str(self.lib), root))


def make_node(base: Path, lib: Path, profile_name: str, monkeypatch: pytest.MonkeyPatch) -> Node:
    base.mkdir(parents=True, exist_ok=True)
    prof = base / "profile.json"
    prof.write_text(profile(profile_name).read_text())
    monkeypatch.setenv("FAKE_NVML_PROFILE", str(prof))  # this process and the stand-in
    node = Node(base / "root", prof, lib)
    nvidia_ctk.install(node.root, lib)
    node.install_driver()
    return node


@pytest.fixture
def node(tmp_path: Path, fake_nvml: FakeNVML, monkeypatch: pytest.MonkeyPatch) -> Node:
    return make_node(tmp_path / "node", fake_nvml.lib, "h100x8", monkeypatch)


def swap_gpu(index: int, uuid: str) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        d["gpus"][index]["uuid"] = uuid

    return change


# --- the spec format -----------------------------------------------------------------------


def test_a_generated_spec_parses_as_yaml_and_as_json(node: Node) -> None:
    text = node.generate()
    spec = cdi.parse_spec(text, SPEC)
    assert spec.kind == "nvidia.com/gpu"
    names = [d.name for d in spec.devices]
    uuids = [g["uuid"] for g in node.data["gpus"]]
    assert names[:2] == ["0", uuids[0]] and "all" in names and set(uuids) <= set(names)
    version = node.data["driver_version"]
    assert f"/usr/lib/x86_64-linux-gnu/libcuda.so.{version}" in spec.all_host_paths()
    as_json = json.dumps(__import__("yaml").safe_load(text))
    assert cdi.parse_spec(as_json, "/etc/cdi/nvidia.json") == dataclasses.replace(
        spec, path="/etc/cdi/nvidia.json"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [\n", ":4:1: malformed YAML"),
        ("- a list\n", "'(top level)' must be an object"),
        ("kind: nvidia.com/gpu\ndevices: []\n", "'cdiVersion' must be"),
        ("cdiVersion: 0.5.0\nkind: gpu\ndevices: []\n", "'kind' must be 'vendor/class'"),
        ("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n", "'devices' must be a non"),
        (
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- containerEdits: {}\n",
            "'devices[0].name' must be a name",
        ),
        (
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: '0'\n"
            "  containerEdits:\n    mounts:\n    - containerPath: /x\n",
            "'devices[0].containerEdits.mounts[0].hostPath' must be a path",
        ),
        (
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: '0'\n"
            "  containerEdits: {env: [1]}\n",
            "'devices[0].containerEdits.env' must be a list of strings",
        ),
    ],
)
def test_a_malformed_spec_names_the_file_and_the_key(text: str, says: str) -> None:
    with pytest.raises(InputError) as e:
        cdi.parse_spec(text, SPEC)
    assert str(e.value).startswith(SPEC) and says in str(e.value), e.value


# --- does the runtime consume CDI ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dirs", "version", "feature", "used"),
    [
        (["/etc/cdi", "/var/run/cdi"], "26.1.5", True, True),  # the API says: trusted
        ([], "28.5.2", None, False),  # CDISpecDirs empty: CDI off
        (None, "20.10.24", True, False),  # before docker 25 there is no CDI
        (None, "26.1.5", None, False),  # opt-in
        (None, "26.1.5", True, True),
        (None, "28.2.0", None, True),  # default on from 28.2
        (None, "28.5.2", False, False),
        (None, None, True, True),  # docker not answering: only the file tells
        (None, None, None, False),
    ],
)
def test_docker_use(dirs: Any, version: Any, feature: Any, used: bool) -> None:
    found = cdi.docker_use(dirs, version, feature)
    assert found.used is used, found
    assert not found.used or found.spec_dirs


def test_containerd_use() -> None:
    assert not cdi.containerd_use(None, (), "dump").used  # 1.6: no such setting
    assert not cdi.containerd_use(False, ("/etc/cdi",), "dump").used
    assert cdi.containerd_use(True, (), "dump").spec_dirs == cdi.DEFAULT_SPEC_DIRS
    assert cdi.containerd_use(True, ("/x",), "dump").spec_dirs == ("/x",)
    assert not cdi.containerd_files_use({}, 2).used  # 1.7's default
    assert cdi.containerd_files_use({}, 3).used  # 2.x's default
    assert not cdi.containerd_files_use({"enable_cdi": False}, 3).used


# --- the verdict ----------------------------------------------------------------------------


def test_a_fresh_spec_is_fresh(node: Node) -> None:
    node.write_spec(node.generate())
    v = node.verdict()
    assert v.state is cdi.State.FRESH and v.reason is None, v
    assert cdi.judge(cdi.read_facts(HostRoot(node.root), cdi.Use.no("off")), detect()).state is (
        cdi.State.NOT_USED
    )


def test_no_spec_is_missing(node: Node) -> None:
    v = node.verdict()
    assert (v.state, v.reason, v.path) == (cdi.State.MISSING, cdi.Reason.MISSING, None)
    assert "/etc/cdi, /var/run/cdi" in v.message


def test_a_spec_of_another_kind_does_not_count(node: Node) -> None:
    other = node.generate().replace("kind: nvidia.com/gpu", "kind: example.com/fpga")
    node.write_spec(other, "/etc/cdi/fpga.yaml")
    assert node.verdict().state is cdi.State.MISSING


def test_a_swapped_gpu_is_stale_naming_its_index_and_uuid(node: Node) -> None:
    node.write_spec(node.generate())
    new = "GPU-00000000-1111-2222-3333-444444444444"
    node.edit(swap_gpu(3, new))
    v = node.verdict()
    assert (v.state, v.reason, v.path) == (cdi.State.STALE, cdi.Reason.STALE, SPEC), v
    assert v.message.startswith(f"GPU 3 ({new}): ") and "does not name its UUID" in v.message


def test_a_gpu_gone_is_stale_naming_the_device(node: Node) -> None:
    node.write_spec(node.generate())
    gone = node.data["gpus"][7]["uuid"]
    node.edit(lambda d: d["gpus"].pop())
    v = node.verdict()
    assert v.state is cdi.State.STALE, v
    assert "nvidia.com/gpu=7, which NVML does not see" in v.message or gone in v.message


def test_a_driver_upgrade_is_stale_naming_the_old_library(node: Node) -> None:
    node.write_spec(node.generate())
    old = node.data["driver_version"]
    node.edit(lambda d: d.update(driver_version="590.44.01"))
    v = node.verdict()
    assert v.state is cdi.State.STALE, v
    assert f"libcuda.so.{old}, but the driver is 590.44.01" in v.message
    # and once the old libraries are gone, even without NVML's version: a missing file
    nvidia_ctk.remove_driver(node.root, old)
    facts = cdi.read_facts(HostRoot(node.root), USED)
    assert f"/usr/lib/x86_64-linux-gnu/libcuda.so.{old}" in facts.absent


def test_a_missing_device_node_is_stale(node: Node) -> None:
    node.write_spec(node.generate())
    (node.root / "dev/nvidia5").unlink()
    v = node.verdict()
    assert (v.state, v.message) == (cdi.State.STALE, f"{SPEC}: /dev/nvidia5 does not exist")


def test_a_broken_nvidia_spec_is_invalid_and_anothers_is_ignored(node: Node) -> None:
    node.write_spec(node.generate())
    node.write_spec("cdiVersion: [\n", "/etc/cdi/fpga.yaml")
    assert node.verdict().state is cdi.State.FRESH
    node.write_spec("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n", "/etc/cdi/nvidia-extra.yaml")
    v = node.verdict()
    assert (v.state, v.reason, v.path) == (
        cdi.State.INVALID,
        cdi.Reason.INVALID,
        "/etc/cdi/nvidia-extra.yaml",
    )
    assert v.message == "/etc/cdi/nvidia-extra.yaml: 'devices' must be a non-empty list"


def test_two_specs_of_one_directory_defining_a_device_are_invalid(node: Node) -> None:
    text = node.generate()
    node.write_spec(text)
    node.write_spec(text, "/var/run/cdi/nvidia-copy.yaml")
    v = node.verdict()
    assert v.state is cdi.State.INVALID and "is also defined in" in v.message, v


def test_a_later_spec_directory_shadows_an_earlier_one(node: Node) -> None:
    """CDI resolves a device from the last spec directory defining it: an old spec in
    /etc/cdi under a fresh one in /var/run/cdi is never used, so it is not stale."""
    old = node.generate()  # the same device names, the driver before an upgrade
    node.edit(lambda d: d.update(driver_version="590.44.01"))
    node.install_driver()
    node.write_spec(old, "/etc/cdi/nvidia.yaml")
    node.write_spec(node.generate())
    assert node.verdict().state is cdi.State.FRESH
    (node.root / SPEC.lstrip("/")).unlink()  # now the old one is what the runtime uses
    v = node.verdict()
    assert (v.state, v.path) == (cdi.State.STALE, "/etc/cdi/nvidia.yaml"), v


def test_readiness_says_why_after_the_runtime(node: Node) -> None:
    inv = detect(str(node.lib), HostRoot(node.root))
    node.write_spec(node.generate())
    node.edit(swap_gpu(0, "GPU-00000000-1111-2222-3333-444444444444"))
    stale = node.verdict()
    r = assess(Facts(inv, runtime_ok=True, capacity={"nvidia.com/gpu": "8"}, cdi=stale))
    assert (r.status, r.reason) == (ConditionStatus.FALSE, "CDISpecStale")
    assert "GPU 0 (GPU-00000000-1111-2222-3333-444444444444)" in r.message
    # the runtime not being configured is said first
    r = assess(Facts(inv, runtime_ok=False, capacity={"nvidia.com/gpu": "8"}, cdi=stale))
    assert r.reason == "RuntimeNotConfigured"
    missing = cdi.Verdict(cdi.State.MISSING, "no spec")
    r = assess(Facts(inv, runtime_ok=True, capacity={"nvidia.com/gpu": "8"}, cdi=missing))
    assert (r.status, r.reason) == (ConditionStatus.FALSE, "CDISpecMissing")
    fresh = cdi.Verdict(cdi.State.FRESH, "ok")
    r = assess(Facts(inv, runtime_ok=True, capacity={"nvidia.com/gpu": "8"}, cdi=fresh))
    assert r.status is ConditionStatus.TRUE


# --- apply and check over real daemons ------------------------------------------------------


def docker_of(suite: str) -> Any:
    reason = needs_dockerd()
    if reason:
        skip_or_fail("dockerd", reason)
    try:
        return runtime("docker", suite)
    except FetchError as e:
        skip_or_fail(f"docker of {suite}", str(e))


@pytest.fixture
def docker_box(
    tmp_path: Path, fake_nvml: FakeNVML
) -> Iterator[Callable[[str], tuple[Sandbox, Node]]]:
    """A sandbox node (tests/sandbox.py) whose dockerd is the ``suite``'s, with the
    simulated driver's files and the stand-in nvidia-ctk under its --root."""
    started: list[Sandbox] = []

    def start(suite: str, **config: Any) -> tuple[Sandbox, Node]:
        rt = docker_of(suite)
        box = Sandbox(tmp_path / f"sb{len(started)}", lib=fake_nvml.lib)
        assert box.dockerd is not None
        box.dockerd = Dockerd(box.dockerd.base, rt)  # same dir and --root, that docker
        started.append(box)
        node = Node(box.root, box.profile, fake_nvml.lib)
        nvidia_ctk.install(node.root, fake_nvml.lib)
        node.install_driver()
        box.start(**config)
        return box, node

    try:
        yield start
    finally:
        for box in started:
            box.stop()


def probes(box: Sandbox, *args: str) -> dict[str, dict[str, Any]]:
    r = box.nodeagent("check", "-o", "json", *args)
    return {p["name"]: p for p in json.loads(r.stdout)["probes"]}


def steps(out: str) -> dict[str, str]:
    return {json_step["step"]: json_step["status"] for json_step in json.loads(out)["steps"]}


def condition(box: Sandbox) -> tuple[str, str, str]:
    node = box.srv.get_node(box.node) or {}
    c = next(c for c in node["status"]["conditions"] if c["type"] == "nvidia.com/GPUReady")
    return c["status"], c["reason"], c["message"]


@pytest.mark.docker
def test_docker_26_with_cdi_enable_restarts_into_cdi_and_generates_the_spec(
    docker_box: Callable[..., tuple[Sandbox, Node]],
) -> None:
    box, node = docker_box("trixie", runtime={"cdi": "enable"})
    assert box.dockerd is not None
    assert box.dockerd.info()["CDISpecDirs"] == []  # docker 26: CDI is opt-in
    assert probes(box, "--phase", "bootstrap")["cdi"]["result"] == "skip"
    pid = box.dockerd.pid

    r = box.nodeagent("apply", "--phase", "bootstrap", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(r.stdout) == {
        "detect": "ok",
        "runtime": "changed",
        "cdi": "changed",
        "kubelet-args": "changed",
    }
    daemon_json = json.loads(box.dockerd.config.read_text())
    assert daemon_json["features"] == {"cdi": True}
    assert box.dockerd.pid != pid  # features.cdi needs a restart: a reload does not take it
    assert box.dockerd.info()["CDISpecDirs"] == ["/etc/cdi", "/var/run/cdi"]
    spec = cdi.parse_spec((box.root / SPEC.lstrip("/")).read_text(), SPEC)
    assert {d.name for d in spec.devices} >= {"0", "7", node.data["gpus"][7]["uuid"]}
    cdi_probe = probes(box, "--phase", "bootstrap")["cdi"]
    assert cdi_probe["result"] == "pass", cdi_probe

    before = (box.root / SPEC.lstrip("/")).stat().st_mtime_ns, box.dockerd.pid
    r = box.nodeagent("apply", "--phase", "bootstrap", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert sum(s["file_writes"] + s["activations"] for s in doc["steps"]) == 0
    assert ((box.root / SPEC.lstrip("/")).stat().st_mtime_ns, box.dockerd.pid) == before


@pytest.mark.docker
def test_docker_28_consumes_cdi_by_default_and_a_stale_spec_makes_the_node_unready(
    docker_box: Callable[..., tuple[Sandbox, Node]],
) -> None:
    box, node = docker_box("sid")
    assert box.dockerd is not None
    assert box.dockerd.info()["CDISpecDirs"] == ["/etc/cdi", "/var/run/cdi"]
    found = probes(box)["cdi"]
    assert (found["result"], found["message"].split(":")[0]) == ("fail", "CDISpecMissing")
    assert found["hint"] == "`nodeagent apply` regenerates it (or run " + (
        f"`nvidia-ctk cdi generate --output={SPEC}`)"
    )

    # --dry-run shows the spec it would write and writes nothing
    r = box.nodeagent("apply", "--phase", "bootstrap", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would regenerate /var/run/cdi/nvidia.yaml" in r.stdout
    assert "+kind: nvidia.com/gpu" in r.stdout
    assert not (box.root / SPEC.lstrip("/")).exists()

    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    box.register()
    r = box.nodeagent("apply", "--phase", "report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert condition(box)[:2] == ("True", "GPUReady")
    assert probes(box)["cdi"]["result"] == "pass"

    # a GPU swapped: NVML sees a UUID the spec does not name
    new = "GPU-00000000-1111-2222-3333-444444444444"
    node.edit(swap_gpu(2, new))
    found = probes(box)["cdi"]
    assert found["result"] == "fail"
    assert found["message"].startswith(f"CDISpecStale: GPU 2 ({new}): "), found
    r = box.nodeagent("apply", "--phase", "report")
    assert r.returncode == 1  # the report phase verifies only: its cdi step fails
    status, reason, message = condition(box)
    assert (status, reason) == ("False", "CDISpecStale") and f"GPU 2 ({new})" in message

    r = box.nodeagent("apply")  # bootstrap + report: regenerated, then ready again
    assert r.returncode == 0, r.stdout + r.stderr
    assert "regenerated /var/run/cdi/nvidia.yaml for 8 GPUs (was stale" in r.stdout
    assert condition(box)[:2] == ("True", "GPUReady")
    assert new in (box.root / SPEC.lstrip("/")).read_text()


@pytest.mark.docker
def test_without_the_toolkit_apply_says_how_and_the_node_stays_unready(
    docker_box: Callable[..., tuple[Sandbox, Node]],
) -> None:
    box, node = docker_box("sid")
    (node.root / "usr/bin/nvidia-ctk").unlink()
    found = probes(box, "--phase", "bootstrap")["cdi"]
    assert found["hint"] == (
        f"install nvidia-container-toolkit, then run `nvidia-ctk cdi generate --output={SPEC}`"
    )
    r = box.nodeagent("apply")
    assert r.returncode == 1
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("cdi "))
    assert "failed" in line and "nvidia-ctk not found: install nvidia-container-toolkit" in line
    box.register()
    r = box.nodeagent("apply", "--phase", "report")
    assert condition(box)[:2] == ("False", "CDISpecMissing")


@pytest.mark.docker
def test_cdi_enable_on_docker_before_25_is_refused_in_one_line(
    docker_box: Callable[..., tuple[Sandbox, Node]],
) -> None:
    box, _ = docker_box("bookworm", runtime={"cdi": "enable"})
    r = box.nodeagent("apply", "--phase", "bootstrap")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("runtime "))
    assert "runtime.cdi enable: docker 20.10" in line and "has no CDI (docker 25 or later)" in line
    assert r.returncode == 2, r.stdout


# --- containerd -------------------------------------------------------------------------------


@pytest.fixture(params=["trixie", "sid"], ids=["containerd-trixie", "containerd-sid"])
def containerd(
    request: pytest.FixtureRequest, tmp_path: Path, fake_nvml: FakeNVML
) -> Iterator[Containerd]:
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    try:
        rt = runtime("containerd", request.param)
    except FetchError as e:
        skip_or_fail(f"containerd of {request.param}", str(e))
    c = Containerd(Path(tempfile.mkdtemp(prefix="ncd.", dir="/tmp")), rt)
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{c.path_prefix}:{os.environ['PATH']}")  # config dump asks this one
    write_runtime_standin(c.root)
    c.config.parent.mkdir(parents=True)
    c.config.write_text(c.base_toml())
    try:
        assert c.start(), c.log.read_text()
        yield c
    finally:
        c.teardown()
        mp.undo()


def containerd_agent(c: Containerd, lib: Path, **runtime_options: Any) -> Agent:
    cc = ContainerdConfig(
        address=str(c.sock),
        restart_command=("python3", str(REPO / "tests" / "containerd.py"), "restart", str(c.base)),
    )
    rt = RuntimeConfig(engine="containerd", containerd=cc, verify_timeout_s=20.0, **runtime_options)
    return Agent(Config(runtime=rt, nvml_library=str(lib), node_name="n"), HostRoot(c.root))


@pytest.mark.containerd
def test_containerd_cdi_enable_then_a_fresh_spec_passes_and_a_driver_upgrade_is_regenerated(
    containerd: Containerd, fake_nvml: FakeNVML, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    c = containerd
    node = make_node(tmp_path / "n", fake_nvml.lib, "h100x8", monkeypatch)
    node = dataclasses.replace(node, root=c.root)
    nvidia_ctk.install(c.root, fake_nvml.lib)
    node.install_driver()
    default_on = c.config_version == 3
    loaded = DumpedConfig.of(tomlkit.parse(c.config_dump()).unwrap())
    assert loaded.enable_cdi is default_on  # 1.7: off by default; 2.x: on

    agent = containerd_agent(c, fake_nvml.lib, cdi="enable")
    out = agent.apply(Phase.BOOTSTRAP)
    by_step = {r.step: r for r in out.results}
    assert by_step[Step.RUNTIME].status is Status.CHANGED, by_step[Step.RUNTIME]
    assert by_step[Step.CDI].status is Status.CHANGED, by_step[Step.CDI]
    loaded = DumpedConfig.of(tomlkit.parse(c.config_dump()).unwrap())
    assert loaded.enable_cdi is True
    assert loaded.cdi_spec_dirs == ("/etc/cdi", "/var/run/cdi")
    assert c.cri_status() == "ok"
    report = {p.name: p for p in check.run(agent, Phase.BOOTSTRAP).probes}
    assert report["cdi"].result is check.PASS, report["cdi"]

    # a driver upgrade: the old libraries go, NVML says the new version
    old = node.data["driver_version"]
    node.edit(lambda d: d.update(driver_version="590.44.01"))
    nvidia_ctk.remove_driver(c.root, old)
    node.install_driver()
    report = {p.name: p for p in check.run(agent, Phase.BOOTSTRAP).probes}
    assert report["cdi"].result is check.FAIL
    assert report["cdi"].message.startswith("CDISpecStale: ") and old in report["cdi"].message
    out = agent.apply(Phase.BOOTSTRAP)
    assert {r.step: r.status for r in out.results}[Step.CDI] is Status.CHANGED
    assert "libcuda.so.590.44.01" in (c.root / SPEC.lstrip("/")).read_text()
    assert check.run(agent, Phase.BOOTSTRAP).worst() is not check.FAIL
    out = agent.apply(Phase.BOOTSTRAP)  # nothing left to do
    assert sum(r.file_writes + r.activations for r in out.results) == 0


@pytest.mark.containerd
def test_containerd_cdi_disable_turns_it_off_and_the_probe_skips(
    containerd: Containerd, fake_nvml: FakeNVML, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    c = containerd
    make_node(tmp_path / "n", fake_nvml.lib, "t4", monkeypatch)
    agent = containerd_agent(c, fake_nvml.lib, cdi="disable")
    out = agent.apply(Phase.BOOTSTRAP)
    assert Step.CDI not in {r.step for r in out.results}  # CDI not used: no cdi step
    assert DumpedConfig.of(tomlkit.parse(c.config_dump()).unwrap()).enable_cdi is False
    report = {p.name: p for p in check.run(agent, Phase.BOOTSTRAP).probes}
    assert report["cdi"].result is check.SKIP and "enable_cdi is false" in report["cdi"].message


def test_docker_plan_restarts_for_features_cdi() -> None:
    old = {"runtimes": {"nvidia": {"path": "x", "runtimeArgs": []}}, "default-runtime": "nvidia"}
    new = docker_engine.desired(old, "nvidia", "x", True, "enable")
    assert new["features"] == {"cdi": True}
    keys = docker_engine.changed_keys(old, new)
    assert docker_engine.CDI_FEATURE_KEY in keys and not keys <= docker_engine.RELOADABLE_KEYS
    assert docker_engine.desired(new, "nvidia", "x", True, "auto") == new  # auto: as it is


@pytest.mark.docker
def test_docker_28_resolves_the_spec_the_agent_judged_fresh_and_fails_the_stale_one(
    docker_box: Callable[..., tuple[Sandbox, Node]],
) -> None:
    """The strongest proof: dockerd 28 itself resolves ``--device nvidia.com/gpu=N`` through
    the spec the agent wrote, and refuses it once the agent calls it stale.

    So that one spec is right for both readers, dockerd reads the spec directory at the
    sandbox root's real path (``cdi-spec-dirs``), the spec's host paths carry that path
    (the stand-in's ``--driver-root``), and inside the root that absolute path leads back
    to the root (a relative symlink): the agent under ``--root`` and dockerd on this
    machine read the same files. The GPU device nodes are character devices 1:3 (what
    /dev/null is) that runc can bind."""
    box, node = docker_box("sid")
    dockerd = box.dockerd
    assert dockerd is not None
    root = node.root
    inside = root / str(root).lstrip("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.symlink_to(os.path.relpath(root, inside.parent))
    nvidia_ctk.install(root, node.lib, driver_root=str(root))
    version = node.data["driver_version"]
    for f in (root / "dev").glob("nvidia*"):  # empty files: replaced by device nodes
        f.unlink()
    nvidia_ctk.install_driver(
        root, version, [g["minor_number"] for g in node.data["gpus"]], devices=True
    )
    config = json.loads(dockerd.config.read_text())
    dockerd.config.write_text(json.dumps({**config, "cdi-spec-dirs": [f"{root}/var/run/cdi"]}))
    assert dockerd.restart(), dockerd.log.read_text()[-2000:]
    assert dockerd.info()["CDISpecDirs"] == [f"{root}/var/run/cdi"]
    image = dockerd.import_busybox()

    def run(device: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", dockerd.host, "run", "--rm", "--device", device, image,
             "sh", "-c", "ls /dev/nvidia* && cat /usr/lib/x86_64-linux-gnu/libcuda.so.*"],
            capture_output=True, text=True, timeout=120, env=dockerd.env(),
        )  # fmt: skip

    missing = run("nvidia.com/gpu=0")
    assert missing.returncode != 0 and "nvidia.com/gpu=0" in missing.stderr, missing
    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    assert probes(box, "--phase", "bootstrap")["cdi"]["result"] == "pass"
    ok = run("nvidia.com/gpu=0")
    assert ok.returncode == 0, ok.stderr
    assert "/dev/nvidia0" in ok.stdout and f"a driver library of {version}" in ok.stdout
    uuid = node.data["gpus"][3]["uuid"]
    assert run(f"nvidia.com/gpu={uuid}").returncode == 0

    # a driver upgrade: the old libraries go; docker fails the spec the agent calls stale
    node.edit(lambda d: d.update(driver_version="590.44.01"))
    nvidia_ctk.remove_driver(root, version)
    nvidia_ctk.install_driver(root, "590.44.01", [], devices=True)
    found = probes(box, "--phase", "bootstrap")["cdi"]
    assert found["result"] == "fail" and found["message"].startswith("CDISpecStale: "), found
    stale = run("nvidia.com/gpu=0")
    assert stale.returncode != 0 and f"libcuda.so.{version}" in stale.stderr, stale.stderr
    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    ok = run("nvidia.com/gpu=0")
    assert ok.returncode == 0 and "a driver library of 590.44.01" in ok.stdout, ok.stderr

    # a swapped GPU: the spec does not know the new UUID; neither does docker
    new = "GPU-00000000-1111-2222-3333-444444444444"
    node.edit(swap_gpu(3, new))
    assert probes(box, "--phase", "bootstrap")["cdi"]["result"] == "fail"
    gone = run(f"nvidia.com/gpu={new}")
    assert gone.returncode != 0 and new in gone.stderr, gone.stderr
    r = box.nodeagent("apply", "--phase", "bootstrap")
    assert r.returncode == 0, r.stdout + r.stderr
    assert run(f"nvidia.com/gpu={new}").returncode == 0
