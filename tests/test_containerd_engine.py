"""The containerd engine: pure planning, and against a real containerd started by the tests.

Every containerd here has its own root, state and socket under a temp dir, named by the
config.toml the agent edits under ``--root``; restarts go through
``tests/containerd.py restart``, the stand-in for ``systemctl restart containerd``.

The tests against a running containerd run on each containerd of the runtime matrix
(tests/runtimes.py: 1.6, 1.7 and 2.1 from the Debian suites, ids ``containerd-bookworm``
...), each with the config version it writes natively (2 for 1.x, 3 for 2.x); what
containerd loaded is read through :class:`~nodeagent.runtime.containerd.dump.DumpedConfig`,
whatever the version. The offline tests use this machine's containerd.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import Config, ContainerdConfig, RuntimeConfig
from nodeagent.errors import InputError, StepFailed
from nodeagent.host.paths import HostRoot
from nodeagent.runtime.containerd import tomledit as ct
from nodeagent.runtime.containerd.dump import DumpedConfig
from nodeagent.runtime.containerd.engine import ContainerdEngine, runtime_mismatches
from nodeagent.runtime.engine import Activation
from tests.containerd import Containerd, needs_containerd
from tests.debcache import FetchError
from tests.dockerd import write_runtime_standin
from tests.realparts import skip_or_fail
from tests.runtimes import MATRIX, runtime

# Pinned so the health checks (too_slow on a loaded CI runner) never flake: a fixed,
# derandomized set of examples and no per-example deadline.
PINNED = settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

REPO = Path(__file__).resolve().parents[1]
CRI_V2 = ct.CRI_PLUGIN[2]
CRI = f'[plugins."{CRI_V2}"]'

HOST_CRI = f"""
# the operator's settings: nodeagent must keep every one of them
{CRI}
  sandbox_image = "registry.example.com/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"""

# The same settings in a version 3 config (containerd 2.x): the sandbox image is the
# images plugin's, the runtimes the runtime plugin's.
HOST_CRI_V3 = """
# the operator's settings: nodeagent must keep every one of them
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.example.com/pause:3.9"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    SystemdCgroup = true
"""


def host_cri(version: int) -> str:
    """The operator's CRI settings in a config of ``version``."""
    return HOST_CRI if version == 2 else HOST_CRI_V3


def in_version(text: str, version: int) -> str:
    """A version 2 runtime-section snippet as the same snippet of ``version``."""
    if version == 2:
        return text
    return text.replace("io.containerd.grpc.v1.cri", ct.CRI_PLUGIN[3])


# --- the pure part ------------------------------------------------------------------------


def test_desired_cri_copies_the_default_runtime_and_sets_the_binary() -> None:
    cri = tomlkit.parse(HOST_CRI).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]
    out = ct.desired_cri(cri, "nvidia", "/usr/bin/nvidia-container-runtime", True)
    ctd = out["containerd"]
    assert ctd["default_runtime_name"] == "nvidia"
    assert ctd["runtimes"]["nvidia"] == {
        "runtime_type": "io.containerd.runc.v2",
        "options": {"SystemdCgroup": True, "BinaryName": "/usr/bin/nvidia-container-runtime"},
    }
    assert ctd["runtimes"]["runc"] == cri["containerd"]["runtimes"]["runc"]  # untouched
    assert out["sandbox_image"] == "registry.example.com/pause:3.9"


def test_desired_cri_on_an_empty_section_keeps_containerds_builtin_runc() -> None:
    out = ct.desired_cri({}, "nvidia", "/usr/bin/nvidia-container-runtime", False)
    runtimes = out["containerd"]["runtimes"]
    assert runtimes["runc"] == {"runtime_type": "io.containerd.runc.v2"}
    assert "default_runtime_name" not in out["containerd"]


def test_desired_cri_keeps_an_existing_nvidia_entrys_options() -> None:
    cri = {
        "containerd": {
            "runtimes": {
                "runc": {"runtime_type": "io.containerd.runc.v2"},
                "nvidia": {"runtime_type": "io.containerd.runc.v2", "options": {"X": 1}},
            }
        }
    }
    out = ct.desired_cri(cri, "nvidia", "/b", True)
    assert out["containerd"]["runtimes"]["nvidia"]["options"] == {"X": 1, "BinaryName": "/b"}


toml_scalars = st.one_of(st.booleans(), st.integers(-100, 100), st.text(max_size=8))
runtime_entries = st.fixed_dictionaries(
    {"runtime_type": st.just("io.containerd.runc.v2")},
    optional={"options": st.dictionaries(st.sampled_from(["SystemdCgroup", "Root"]), toml_scalars)},
)


@PINNED
@given(
    runtimes=st.dictionaries(st.sampled_from(["runc", "kata", "nvidia"]), runtime_entries),
    default=st.sampled_from(["runc", "kata", "nvidia"]),
    set_default=st.booleans(),
)
def test_desired_cri_is_idempotent_and_loses_no_runtime(
    runtimes: dict[str, Any], default: str, set_default: bool
) -> None:
    cri = {"containerd": {"default_runtime_name": default, "runtimes": runtimes}}
    once = ct.desired_cri(cri, "nvidia", "/b", set_default)
    assert ct.desired_cri(once, "nvidia", "/b", set_default) == once
    assert set(runtimes) <= set(once["containerd"]["runtimes"])
    for name, entry in runtimes.items():
        if name != "nvidia":
            assert once["containerd"]["runtimes"][name] == entry


def test_with_import_keeps_comments_and_without_import_undoes_it() -> None:
    text = "version = 2\n# keep me\nroot = '/var/lib/x'\n\n[grpc]\n  address = '/s'\n"
    added = ct.with_import(text, "conf.d/99-nvidia.toml")
    assert tomlkit.parse(added)["imports"] == ["conf.d/99-nvidia.toml"]
    assert "# keep me" in added and "address = '/s'" in added
    again = ct.with_import(added, "other.toml")
    assert tomlkit.parse(again)["imports"] == ["conf.d/99-nvidia.toml", "other.toml"]
    assert "imports" not in tomlkit.parse(ct.without_import(added, "conf.d/99-nvidia.toml"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version = 2\n[grpc\n", "/etc/containerd/config.toml:2:"),
        ('[plugins.cri]\n  sandbox_image = "x"\n', "version 1 config"),
        ("version = 7\n", "config version 7"),
        ('version = 2\nimports = "conf.d/x.toml"\n', "'imports' must be a list"),
    ],
)
def test_bad_config_toml_is_an_input_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    cfg = tmp_path / "etc" / "containerd" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(text)
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    with pytest.raises(InputError) as e:
        eng.read()
    assert problem in str(e.value)
    assert str(e.value).startswith("/etc/containerd/config.toml")
    assert cfg.read_text() == text


def test_glob_import_already_covering_the_drop_in_adds_no_entry(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "containerd" / "config.toml"
    cfg.parent.mkdir(parents=True)
    text = 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    cfg.write_text(text)
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    plan = eng.plan(eng.read())
    assert [c.host_path for c in plan.changes] == ["/etc/containerd/conf.d/99-nvidia.toml"]
    assert plan.activation == Activation.NONE  # no containerd runs under this root


def test_a_later_import_with_its_own_cri_section_is_refused(tmp_path: Path) -> None:
    conf_d = tmp_path / "etc" / "containerd" / "conf.d"
    conf_d.mkdir(parents=True)
    (conf_d.parent / "config.toml").write_text(
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    )
    (conf_d / "zz-site.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "p:1"\n')
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    with pytest.raises(InputError, match=r"zz-site\.toml: defines the CRI section"):
        eng.plan(eng.read())


def test_an_earlier_import_is_carried_into_the_drop_in(tmp_path: Path) -> None:
    conf_d = tmp_path / "etc" / "containerd" / "conf.d"
    conf_d.mkdir(parents=True)
    (conf_d.parent / "config.toml").write_text(
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    )
    (conf_d / "10-site.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "p:1"\n')
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    (change,) = eng.plan(eng.read()).changes
    assert change.new is not None
    cri = tomlkit.parse(change.new).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "p:1"


def test_version_3_configs_use_the_containerd_2_plugin_name(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "containerd" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("version = 3\n")
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    drop_in = next(
        c for c in eng.plan(eng.read()).changes if c.host_path.endswith("99-nvidia.toml")
    )
    assert drop_in.new is not None
    data = tomlkit.parse(drop_in.new).unwrap()
    assert data["version"] == 3
    assert list(data["plugins"]) == ["io.containerd.cri.v1.runtime"]


# --- reading containerd's dump, by config version ---------------------------------------------

DUMP_V2 = f"""version = 2
root = "/var/lib/containerd"
{CRI}
  sandbox_image = "registry.example.com/pause:3.9"
  enable_cdi = true
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "nvidia"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
      BinaryName = "/usr/bin/nvidia-container-runtime"
"""

# The same settings as containerd 2.1 dumps them (trimmed): single quotes, version 3, the
# sandbox image in the images plugin, runc's options expanded with their defaults.
DUMP_V3 = """version = 3
root = '/var/lib/containerd'
[plugins]
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'registry.example.com/pause:3.9'
  [plugins.'io.containerd.cri.v1.runtime']
    enable_cdi = true
    cdi_spec_dirs = ['/etc/cdi', '/var/run/cdi']
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'nvidia'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia.options]
          BinaryName = '/usr/bin/nvidia-container-runtime'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = ''
          SystemdCgroup = true
"""


@pytest.mark.parametrize("text", [DUMP_V2, DUMP_V3], ids=["version-2", "version-3"])
def test_a_dump_reads_the_same_whatever_its_version(text: str) -> None:
    d = DumpedConfig.of(tomlkit.parse(text).unwrap())
    assert d.root == "/var/lib/containerd"
    assert d.default_runtime_name == "nvidia"
    assert set(d.runtimes) == {"runc", "nvidia"}
    assert d.runtimes["nvidia"].binary_name == "/usr/bin/nvidia-container-runtime"
    assert d.runtimes["runc"].binary_name == ""
    assert d.sandbox_image == "registry.example.com/pause:3.9"
    assert (d.enable_cdi, d.cdi_spec_dirs) == (True, ("/etc/cdi", "/var/run/cdi"))
    assert (d.systemd_cgroup("runc"), d.systemd_cgroup("nvidia"), d.systemd_cgroup("x")) == (
        True,
        False,
        None,
    )
    # nvidia does not follow runc's cgroup driver here, and the dump says so
    assert [str(m) for m in d.mismatches("nvidia")] == [
        "runtime 'nvidia' has options.SystemdCgroup = false but 'runc' has true"
    ]
    assert d.problem("nvidia", set_default=True) is None
    assert d.problem("nvidia", set_default=False) == (
        "containerd config dump shows 'nvidia' as the default runtime"
    )
    assert d.problem("kata", set_default=True) == "containerd config dump shows no 'kata' runtime"


def test_a_dump_without_cdi_or_a_cri_section_reads_as_unset() -> None:
    d = DumpedConfig.of({"version": 2, "plugins": {CRI_V2: {"containerd": "odd"}}})
    assert (d.enable_cdi, d.cdi_spec_dirs, d.sandbox_image) == (None, (), None)
    assert (d.default_runtime_name, d.runtimes) == (None, {})
    assert d.problem("nvidia", True) == "containerd config dump shows no 'nvidia' runtime"
    assert DumpedConfig.of({}).plugin_id == ("io.containerd.grpc.v1", "cri")  # 1.x: no version


@pytest.mark.parametrize("version", [1, 4, "3", True])
def test_a_dump_of_an_unknown_version_is_an_input_error(version: object) -> None:
    with pytest.raises(InputError, match=r"^containerd config dump: config version .* not 2 or 3"):
        DumpedConfig.of({"version": version})


# --- against a real containerd ------------------------------------------------------------

CONTAINERDS = [suite for kind, suite in MATRIX if kind == "containerd"]


@pytest.fixture(params=CONTAINERDS, ids=[f"containerd-{s}" for s in CONTAINERDS])
def containerd(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    """A running containerd of the matrix, with the operator's settings in its native
    config version; this process's PATH finds that containerd too (the engine under a
    --root without one asks this machine's for ``config dump``)."""
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    try:
        rt = runtime("containerd", request.param)
    except FetchError as e:
        skip_or_fail(f"containerd of {request.param}", str(e))
    c = Containerd(Path(tempfile.mkdtemp(prefix="nac.", dir="/tmp")), rt)
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{c.path_prefix}:{os.environ['PATH']}")
    write_runtime_standin(c.root)
    c.config.parent.mkdir(parents=True)
    c.config.write_text(c.base_toml() + host_cri(c.config_version))
    try:
        assert c.start(), c.log.read_text()
        yield c
    finally:
        c.teardown()
        mp.undo()


def engine(c: Containerd, **options: Any) -> ContainerdEngine:
    cc = ContainerdConfig(
        address=str(c.sock),
        restart_command=(
            sys.executable,
            str(REPO / "tests" / "containerd.py"),
            "restart",
            str(c.base),
        ),
        use_drop_in=options.pop("use_drop_in", True),
    )
    rt = RuntimeConfig(engine="containerd", containerd=cc, verify_timeout_s=20.0, **options)
    return ContainerdEngine(Config(runtime=rt), HostRoot(c.root))


def dump(c: Containerd) -> DumpedConfig:
    """What ``c``'s containerd loads from its config.toml and imports."""
    return DumpedConfig.of(tomlkit.parse(c.config_dump()).unwrap())


@pytest.mark.containerd
def test_configure_restarts_containerd_into_the_nvidia_runtime_keeping_host_settings(
    containerd: Containerd,
) -> None:
    c = containerd
    before_pid = c.pid
    eng = engine(c)
    plan = eng.plan(eng.read())
    assert plan.activation == Activation.RESTART
    assert {ch.host_path for ch in plan.changes} == {
        "/etc/containerd/config.toml",
        "/etc/containerd/conf.d/99-nvidia.toml",
    }
    result = eng.apply(plan)
    assert result.verified and result.activation == Activation.RESTART
    assert c.pid != before_pid  # restarted
    assert c.cri_status() == "ok"
    loaded = dump(c)
    assert loaded.version == c.config_version
    assert loaded.sandbox_image == "registry.example.com/pause:3.9"
    assert loaded.default_runtime_name == "nvidia"
    assert loaded.runtimes["nvidia"].binary_name == "/usr/bin/nvidia-container-runtime"
    assert loaded.systemd_cgroup("nvidia") is True
    assert loaded.systemd_cgroup("runc") is True
    assert loaded.root == f"{c.base}/data"

    # Idempotent: nothing to write, no restart.
    mtimes = {
        p: p.stat().st_mtime_ns for p in (c.config, c.config.parent / "conf.d/99-nvidia.toml")
    }
    pid = c.pid
    again = eng.plan(eng.read())
    assert not again.changed and again.activation == Activation.NONE
    assert eng.apply(again).written == ()
    assert c.pid == pid
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert eng.verify()


@pytest.mark.containerd
def test_a_host_edit_of_config_toml_flows_into_the_drop_in(containerd: Containerd) -> None:
    """The operator changes the sandbox image and runc's cgroup driver in config.toml: the
    drop-in's copy of the runtime section (and the nvidia runtime following runc) takes
    both on the next run (in version 3 the sandbox image is another plugin's, read by
    containerd from config.toml itself)."""
    c = containerd
    eng = engine(c)
    eng.apply(eng.plan(eng.read()))
    edited = c.config.read_text().replace("pause:3.9", "pause:3.10")
    c.config.write_text(edited.replace("SystemdCgroup = true", "SystemdCgroup = false"))
    plan = eng.plan(eng.read())
    assert [ch.host_path for ch in plan.changes] == ["/etc/containerd/conf.d/99-nvidia.toml"]
    assert eng.apply(plan).verified
    loaded = dump(c)
    assert loaded.sandbox_image == "registry.example.com/pause:3.10"
    assert (loaded.systemd_cgroup("runc"), loaded.systemd_cgroup("nvidia")) == (False, False)


@pytest.mark.containerd
def test_a_config_containerd_refuses_is_never_restarted_into(containerd: Containerd) -> None:
    c = containerd
    # Valid TOML, but containerd cannot load a string into oom_score (an int).
    version = f"version = {c.config_version}\n"
    original = c.base_toml().replace(version, f'{version}oom_score = "high"\n')
    original += host_cri(c.config_version)
    c.config.write_text(original)
    pid = c.pid
    eng = engine(c)
    with pytest.raises(StepFailed, match="containerd would not load the new config, restored"):
        eng.apply(eng.plan(eng.read()))
    assert c.config.read_text() == original
    assert not (c.config.parent / "conf.d" / "99-nvidia.toml").exists()
    assert c.pid == pid  # never restarted


@pytest.mark.containerd
def test_a_failed_restart_restores_the_files(containerd: Containerd) -> None:
    c = containerd
    original = c.config.read_text()
    eng = engine(c)
    eng.cc = ContainerdConfig(address=str(c.sock), restart_command=("false",))
    with pytest.raises(StepFailed, match="restored the previous files"):
        eng.apply(eng.plan(eng.read()))
    assert c.config.read_text() == original
    assert not (c.config.parent / "conf.d" / "99-nvidia.toml").exists()


@pytest.mark.containerd
def test_rollback_removes_the_runtime_and_restarts(containerd: Containerd) -> None:
    c = containerd
    original = c.config.read_text()
    eng = engine(c)
    eng.apply(eng.plan(eng.read()))
    result = eng.rollback()
    assert result.activation == Activation.RESTART
    assert c.config.read_text() == original
    assert not (c.config.parent / "conf.d" / "99-nvidia.toml").exists()
    loaded = dump(c)
    assert "nvidia" not in loaded.runtimes
    assert loaded.default_runtime_name == "runc"
    assert loaded.sandbox_image == "registry.example.com/pause:3.9"
    assert c.cri_status() == "ok"
    again = eng.rollback()  # nothing left to undo, and it says so
    assert again.written == () and again.message.startswith("nothing of nodeagent's to undo")


@pytest.mark.containerd
def test_a_stale_nvidia_entry_is_brought_in_line_and_pods_config_loads(
    containerd: Containerd,
) -> None:
    """An upgraded node: runc now has SystemdCgroup = true, the old nvidia entry has false
    and an empty runtime_type. In place, the restarted containerd's CRI plugin loads and
    the nvidia runtime follows runc; rollback restores the old file and restarts."""
    c = containerd
    original = c.base_toml() + in_version(
        STALE_NVIDIA.removeprefix("version = 2\n"), c.config_version
    )
    c.config.write_text(original)
    assert c.restart()
    eng = engine(c, use_drop_in=False)
    facts = eng.read()
    assert [m.key for m in runtime_mismatches(facts, "nvidia")] == ["options.SystemdCgroup"]
    result = eng.apply(eng.plan(facts))
    assert result.verified and result.activation == Activation.RESTART
    assert c.cri_status() == "ok"
    nvidia = dump(c).runtimes["nvidia"]
    assert nvidia.runtime_type == ct.RUNC_V2
    assert nvidia.systemd_cgroup is True
    assert nvidia.privileged_without_host_devices is True  # its own key, kept
    assert runtime_mismatches(eng.read(), "nvidia") == ()
    undone = eng.rollback()
    assert undone.activation == Activation.RESTART and c.config.read_text() == original
    assert "nothing to undo" in eng.rollback().message


@pytest.mark.containerd
def test_in_place_mode_edits_config_toml_keeping_comments(containerd: Containerd) -> None:
    c = containerd
    eng = engine(c, use_drop_in=False)
    result = eng.apply(eng.plan(eng.read()))
    assert result.verified and result.written == ("/etc/containerd/config.toml",)
    text = c.config.read_text()
    assert "# the operator's settings: nodeagent must keep every one of them" in text
    assert not (c.config.parent / "conf.d").exists()
    loaded = dump(c)
    assert loaded.version == c.config_version
    assert loaded.default_runtime_name == "nvidia"
    assert loaded.sandbox_image == "registry.example.com/pause:3.9"
    assert not eng.plan(eng.read()).changed
    undone = eng.rollback()  # in place: config.toml back from its backup, restarted
    assert undone.activation == Activation.RESTART
    assert "nvidia" not in dump(c).runtimes and c.cri_status() == "ok"


@pytest.mark.containerd
def test_cli_dry_run_shows_the_diff_and_changes_nothing(containerd: Containerd) -> None:
    c = containerd
    conf = c.base / "nodeagent.yaml"
    conf.write_text(f"runtime:\n  engine: containerd\n  containerd:\n    address: {c.sock}\n")
    before = c.config.read_text()
    pid = c.pid
    out = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--config", str(conf), "--root", str(c.root),
         "runtime", "configure", "--dry-run"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "+++ b/etc/containerd/conf.d/99-nvidia.toml" in out.stdout
    assert '+imports = ["conf.d/99-nvidia.toml"]' in out.stdout
    assert c.config.read_text() == before and c.pid == pid


# --- a hostile host: every read is one line, nothing written ------------------------------

CONFIG = "/etc/containerd/config.toml"
DROP_IN = "/etc/containerd/conf.d/99-nvidia.toml"
NVIDIA_BIN = "/usr/bin/nvidia-container-runtime"


def make_root(tmp_path: Path, text: Optional[str] = None, mode: int = 0o644) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "containerd").mkdir(parents=True)
    write_runtime_standin(root)
    if text is not None:
        cfg = root / CONFIG[1:]
        cfg.write_text(text)
        cfg.chmod(mode)
    return root


def offline(root: Path, **options: Any) -> ContainerdEngine:
    """An engine for a root where no containerd runs (activation: none; the files are
    still checked with the real ``containerd config dump`` when it is installed)."""
    cc = ContainerdConfig(
        address=str(root / "no-containerd.sock"), use_drop_in=options.pop("use_drop_in", True)
    )
    rt = RuntimeConfig(engine="containerd", containerd=cc, **options)
    return ContainerdEngine(Config(runtime=rt), HostRoot(root))


def run_cli(
    root: Path, *args: str, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    conf = root.parent / "nodeagent.yaml"
    conf.write_text(
        "runtime:\n  engine: containerd\n"
        f"  containerd:\n    address: {root / 'no-containerd.sock'}\n"
    )
    head = [sys.executable, "-m", *(wrapper or ("nodeagent",))]
    if wrapper:
        head.append("--")
    return subprocess.run(
        [*head, "--config", str(conf), "--root", str(root), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the root's /etc, by path: what must not change."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "etc").rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def one_line_error(out: subprocess.CompletedProcess[str], code: int, starts: str) -> str:
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("nodeagent: ")]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"nodeagent: {starts}"), lines[0]
    return lines[0]


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _directory(p: Path) -> None:
    p.mkdir()


HOSTILE_FILES = {
    "fifo": (_fifo, "a FIFO, not a regular file"),
    "directory": (_directory, "a directory, not a regular file"),
    "latin-1": (lambda p: p.write_bytes(b"version = 2\n# caf\xe9\n"), "not UTF-8 text"),
    "utf-16": (lambda p: p.write_bytes("version = 2\n".encode("utf-16")), "UTF-16 text"),
    "deep": (lambda p: p.write_text("version = 2\nx = " + "[" * 5000 + "]" * 5000), "nested"),
    "dup-key": (lambda p: p.write_text("version = 2\nversion = 2\n"), "malformed TOML"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_FILES))
@pytest.mark.parametrize("where", [CONFIG, DROP_IN])
def test_a_hostile_file_is_one_line_exit_2_and_nothing_is_written(
    tmp_path: Path, kind: str, where: str
) -> None:
    root = make_root(tmp_path, None if where == CONFIG else "version = 2\n")
    target = root / where[1:]
    target.parent.mkdir(parents=True, exist_ok=True)
    make, problem = HOSTILE_FILES[kind]
    make(target)
    before = snapshot(root)
    out = run_cli(root, "runtime", "configure", "--runtime", "containerd")
    line = one_line_error(out, 2, where)
    assert problem in line
    assert snapshot(root) == before
    assert not (root / "var" / "lib" / "nodeagent" / "backups").exists()


SHAPES = [
    ('version = "2"', "'version' must be an integer, not a string"),
    ("version = true", "'version' must be an integer, not a boolean"),
    ("version = 7", "config version 7 is not 2 or 3"),
    ('version = 2\nimports = "conf.d/x.toml"', "'imports' must be a list, not a string"),
    ("version = 2\nimports = [1]", "'imports[0]' must be a string, not a number"),
    ("version = 2\nplugins = 5", "'plugins' must be a table, not a number"),
    (
        'version = 2\n[plugins]\n"io.containerd.grpc.v1.cri" = "x"',
        """'plugins."io.containerd.grpc.v1.cri"' must be a table, not a string""",
    ),
    (
        f"version = 2\n{CRI}\ncontainerd = []",
        """'plugins."io.containerd.grpc.v1.cri".containerd' must be a table, not a list""",
    ),
    (
        f"version = 2\n{CRI}\ncontainerd.runtimes = 1",
        "containerd.runtimes' must be a table, not a number",
    ),
    (
        f"version = 2\n{CRI}\ncontainerd.default_runtime_name = 1",
        "containerd.default_runtime_name' must be a string, not a number",
    ),
    (
        f'version = 2\n{CRI}\ncontainerd.runtimes.runc = "x"',
        "containerd.runtimes.runc' must be a table, not a string",
    ),
    (
        f"version = 2\n{CRI}\ncontainerd.runtimes.runc.runtime_type = 2",
        "containerd.runtimes.runc.runtime_type' must be a string, not a number",
    ),
    (
        f"version = 2\n{CRI}\ncontainerd.runtimes.runc.options = [1]",
        "containerd.runtimes.runc.options' must be a table, not a list",
    ),
    (
        f'version = 2\n{CRI}\ncontainerd.runtimes."my.rt".options.SystemdCgroup = "true"',
        """containerd.runtimes."my.rt".options.SystemdCgroup' must be a boolean, not a string""",
    ),
]


@pytest.mark.parametrize(("text", "problem"), SHAPES)
def test_every_key_the_agent_touches_is_shape_checked_naming_its_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    root = make_root(tmp_path, text + "\n")
    with pytest.raises(InputError) as e:
        offline(root).read()
    assert str(e.value) == f"{CONFIG}: {problem}" or (
        str(e.value).startswith(f"{CONFIG}: '") and str(e.value).endswith(problem)
    )


def test_plugins_5_through_the_cli_is_exit_2_nothing_written(tmp_path: Path) -> None:
    root = make_root(tmp_path, "version = 2\nplugins = 5\n")
    before = snapshot(root)
    out = run_cli(root, "runtime", "configure", "--runtime", "containerd")
    line = one_line_error(out, 2, CONFIG)
    assert line == f"nodeagent: {CONFIG}: 'plugins' must be a table, not a number"
    assert snapshot(root) == before


def test_a_type_wrong_import_is_named(tmp_path: Path) -> None:
    root = make_root(tmp_path, 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n')
    (root / "etc/containerd/conf.d").mkdir()
    (root / "etc/containerd/conf.d/10-site.toml").write_text(
        f"version = 2\n{CRI}\ncontainerd = 1\n"
    )
    with pytest.raises(InputError, match=r"^/etc/containerd/conf\.d/10-site\.toml: 'plugins\."):
        offline(root).read()


def test_a_missing_plain_import_is_refused_as_containerd_would(tmp_path: Path) -> None:
    root = make_root(tmp_path, 'version = 2\nimports = ["/etc/containerd/site.toml"]\n')
    with pytest.raises(InputError, match=r"site\.toml does not exist"):
        offline(root).read()


@PINNED
@given(
    cri=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    [
                        "containerd",
                        "runtimes",
                        "runc",
                        "nvidia",
                        "options",
                        "SystemdCgroup",
                        "runtime_type",
                        "default_runtime_name",
                        "BinaryName",
                    ]
                ),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=12,
    ),
    set_default=st.booleans(),
)
def test_any_cri_section_is_refused_by_the_shape_check_or_planned_idempotently(
    cri: Any, set_default: bool
) -> None:
    data = {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": cri}}
    try:
        ct.check_shape(data, CONFIG)
    except InputError as e:
        assert str(e).startswith(f"{CONFIG}: ")
        return
    out = ct.desired_cri(cri, "nvidia", NVIDIA_BIN, set_default)
    ct.check_shape({"plugins": {"io.containerd.grpc.v1.cri": out}}, "out")
    assert ct.desired_cri(out, "nvidia", NVIDIA_BIN, set_default) == out
    assert ct.cri_mismatches(out, "nvidia") == ()


# --- the registry password never becomes more readable ---------------------------------------

SECRET_CRI = f"""version = 2
{CRI}
  [plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example.com".auth]
    username = "robot"
    password = "s3cret"
"""


def test_the_drop_in_is_never_more_readable_than_the_files_it_copies(tmp_path: Path) -> None:
    root = make_root(tmp_path, SECRET_CRI, mode=0o600)
    drop_in = root / DROP_IN[1:]
    eng = offline(root)
    eng.apply(eng.plan(eng.read()))
    assert "s3cret" in drop_in.read_text()  # containerd needs it: copied, but as private
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o600

    # An older run left it 0644: the text is right, the mode is not, so it is a change.
    drop_in.chmod(0o644)
    plan = eng.plan(eng.read())
    assert [c.host_path for c in plan.changes] == [DROP_IN]
    assert "mode 0644 -> 0600" in plan.diff()
    assert eng.apply(plan).written == (DROP_IN,)
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o600
    assert not eng.plan(eng.read()).changed


def test_a_narrower_import_narrows_the_drop_in_too(tmp_path: Path) -> None:
    root = make_root(tmp_path, 'version = 2\nimports = ["/etc/containerd/conf.d/10-*.toml"]\n')
    site = root / "etc/containerd/conf.d/10-site.toml"
    site.parent.mkdir()
    site.write_text(SECRET_CRI)
    site.chmod(0o640)
    eng = offline(root)
    eng.apply(eng.plan(eng.read()))
    assert stat.S_IMODE((root / DROP_IN[1:]).stat().st_mode) == 0o640


# --- what the agent writes, the agent and containerd accept on the next run -------------------

STOCK = """#   Copyright 2018-2022 Docker Inc.

#   Licensed under the Apache License, Version 2.0 (the "License");
#   you may not use this file except in compliance with the License.

#disabled_plugins = ["cri"]

#root = "/var/lib/containerd"
#state = "/run/containerd"
#subreaper = true
#oom_score = 0

#[grpc]
#  address = "/run/containerd/containerd.sock"
#  uid = 0
#  gid = 0
"""

EMPTY_TYPE = f"""version = 2
{CRI}
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = ""
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"""

STALE_NVIDIA = f"""version = 2
{CRI}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "nvidia"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
    runtime_type = ""
    privileged_without_host_devices = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
      SystemdCgroup = false
      BinaryName = "/opt/old/nvidia-container-runtime"
"""


def containerd_default() -> str:
    """``containerd config default``: the full file most guides tell operators to write."""
    out = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True)
    return out.stdout


INPUTS: dict[str, Any] = {
    "absent": None,
    "empty": "",
    "comment-only (containerd.io stock)": STOCK,
    "comment-only CRLF": STOCK.replace("\n", "\r\n"),
    "host settings": "version = 2\n" + HOST_CRI,
    "inherited empty runtime_type": EMPTY_TYPE,
    "stale nvidia entry": STALE_NVIDIA,
    "containerd config default": containerd_default,
}


def real_dump(root: Path) -> DumpedConfig:
    """The real containerd's view of the root's files (their imports are relative): the
    first ``containerd`` on PATH, run from / as under systemd."""
    out = subprocess.run(
        ["containerd", "--config", str(root / CONFIG[1:]), "config", "dump"],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return DumpedConfig.of(tomlkit.parse(out.stdout).unwrap())


@pytest.mark.parametrize("set_default", [True, False], ids=["default", "no-default"])
@pytest.mark.parametrize("use_drop_in", [True, False], ids=["drop-in", "in-place"])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_what_the_agent_writes_loads_converges_and_rolls_back_exactly(
    tmp_path: Path, name: str, use_drop_in: bool, set_default: bool
) -> None:
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    text = INPUTS[name]() if callable(INPUTS[name]) else INPUTS[name]
    writes_loads_converges_and_rolls_back(tmp_path, text, use_drop_in, set_default)


def writes_loads_converges_and_rolls_back(
    tmp_path: Path, text: Optional[str], use_drop_in: bool, set_default: bool
) -> DumpedConfig:
    """Configure ``text`` as config.toml, check what the first containerd on PATH loads,
    converge, roll back to every byte; what containerd loaded is returned."""
    root = make_root(tmp_path)
    cfg = root / CONFIG[1:]
    if text is not None:
        cfg.write_bytes(text.encode())
    before = snapshot(root)
    eng = offline(root, use_drop_in=use_drop_in, set_as_default=set_default)

    result = eng.apply(eng.plan(eng.read()))  # checked by `containerd config dump` inside
    assert result.written and result.activation == Activation.NONE

    # containerd loads it: the nvidia runtime as asked, following runc, with a type.
    loaded = real_dump(root)
    nvidia = loaded.runtimes["nvidia"]
    assert nvidia.runtime_type == ct.RUNC_V2
    assert nvidia.binary_name == NVIDIA_BIN
    assert (loaded.default_runtime_name == "nvidia") is set_default
    assert loaded.mismatches("nvidia") == ()
    if text is not None and "\r\n" in text:
        assert b"\r\n" in cfg.read_bytes() and b"\n" not in cfg.read_bytes().replace(b"\r\n", b"")

    # The agent accepts it and has nothing more to do; check finds no mismatch.
    facts = eng.read()
    assert not eng.plan(facts).changed
    assert runtime_mismatches(facts, "nvidia") == ()

    # Rollback puts every byte back (a file the agent created is removed); twice is once.
    first = eng.rollback()
    assert first.written
    assert snapshot(root) == before, first.message
    if text is None:
        assert not cfg.exists()
    second = eng.rollback()
    assert second.written == () and "nothing" in second.message
    return loaded


# --- config version 3, proven against a real containerd 2.x ------------------------------------


@pytest.fixture
def containerd_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Containerd:
    """containerd 2.x of the matrix (sid) first on this process's PATH: the one the engine
    (under a --root without its own) and :func:`real_dump` run. Nothing is started."""
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    try:
        rt = runtime("containerd", "sid")
    except FetchError as e:
        skip_or_fail("containerd of sid", str(e))
    c = Containerd(tmp_path / "containerd-2", rt.path_prefix)
    assert c.config_version == 3, c.version
    monkeypatch.setenv("PATH", f"{c.path_prefix}:{os.environ['PATH']}")
    return c


def containerd_2_default() -> str:
    """``containerd config default`` of containerd 2.x: a full version 3 file."""
    out = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("version = 3"), out.stderr
    return out.stdout


V3_INPUTS: dict[str, Any] = {
    "absent": None,  # nodeagent writes version 2: containerd 2.x migrates it
    "version 2 host settings": "version = 2\n" + HOST_CRI,  # migrated too
    "host settings": "version = 3\n" + HOST_CRI_V3,
    "host settings CRLF": ("version = 3\n" + HOST_CRI_V3).replace("\n", "\r\n"),
    "inherited empty runtime_type": in_version(EMPTY_TYPE, 3).replace("version = 2", "version = 3"),
    "stale nvidia entry": in_version(STALE_NVIDIA, 3).replace("version = 2", "version = 3"),
    "containerd config default": containerd_2_default,
}


@pytest.mark.containerd
@pytest.mark.parametrize("set_default", [True, False], ids=["default", "no-default"])
@pytest.mark.parametrize("use_drop_in", [True, False], ids=["drop-in", "in-place"])
@pytest.mark.parametrize("name", sorted(V3_INPUTS))
def test_containerd_2_loads_what_the_agent_writes_and_it_rolls_back_exactly(
    containerd_2: Containerd, tmp_path: Path, name: str, use_drop_in: bool, set_default: bool
) -> None:
    """Version 3 configs (and version 2 ones, which containerd 2.x migrates) on the real
    containerd 2.x: drop-in and in-place, loaded, converged, rolled back to every byte."""
    text = V3_INPUTS[name]() if callable(V3_INPUTS[name]) else V3_INPUTS[name]
    loaded = writes_loads_converges_and_rolls_back(tmp_path, text, use_drop_in, set_default)
    assert loaded.version == 3  # what containerd 2.x made of it
    if "host settings" in name:
        assert loaded.sandbox_image == "registry.example.com/pause:3.9"
        assert loaded.systemd_cgroup("nvidia") is True


@pytest.mark.containerd
def test_containerd_2_imports_are_carried_and_rolled_back(
    containerd_2: Containerd, tmp_path: Path
) -> None:
    """A version 3 config.toml importing a glob of site files: the site's runtime section
    is carried into the drop-in (merged after it), containerd 2.x loads all of it, and
    rollback leaves every file as it was."""
    root = make_root(
        tmp_path, 'version = 3\nimports = ["/etc/containerd/site.d/*.toml"]\n' + HOST_CRI_V3
    )
    site = root / "etc/containerd/site.d"
    site.mkdir()
    (site / "10-site.toml").write_text(
        f'version = 3\n[plugins."{ct.CRI_PLUGIN[3]}"]\n  enable_cdi = true\n'
        f'  cdi_spec_dirs = ["/etc/site-cdi"]\n'
        f'[plugins."{ct.CRI_PLUGIN[3]}".containerd.runtimes.kata]\n'
        '  runtime_type = "io.containerd.kata.v2"\n'
    )
    before = snapshot(root)
    eng = offline(root)
    plan = eng.plan(eng.read())
    assert {c.host_path for c in plan.changes} == {CONFIG, DROP_IN}
    drop_in = next(c for c in plan.changes if c.host_path == DROP_IN)
    assert drop_in.new is not None
    carried = tomlkit.parse(drop_in.new).unwrap()["plugins"][ct.CRI_PLUGIN[3]]
    assert carried["enable_cdi"] is True and "kata" in carried["containerd"]["runtimes"]
    eng.apply(plan)
    loaded = real_dump(root)
    assert {"runc", "kata", "nvidia"} <= set(loaded.runtimes)
    assert loaded.default_runtime_name == "nvidia"
    assert (loaded.enable_cdi, loaded.cdi_spec_dirs) == (True, ("/etc/site-cdi",))
    assert loaded.sandbox_image == "registry.example.com/pause:3.9"
    assert not eng.plan(eng.read()).changed
    eng.rollback()
    assert snapshot(root) == before
    assert "nvidia" not in real_dump(root).runtimes


@pytest.mark.containerd
def test_containerd_2_drops_a_version_2_import_into_a_version_3_config(
    containerd_2: Containerd, tmp_path: Path
) -> None:
    """Why the drop-in always has config.toml's version: containerd 2.x migrates a version 2
    import, but drops its runtimes when the version 3 config.toml defines the runtime
    plugin itself (seen with 2.1), so a drop-in of the wrong version would configure
    nothing there."""
    root = make_root(tmp_path, 'version = 3\nimports = ["conf.d/99-nvidia.toml"]\n' + HOST_CRI_V3)
    (root / DROP_IN[1:]).parent.mkdir()
    (root / DROP_IN[1:]).write_text(in_version(STALE_NVIDIA, 2))
    assert "nvidia" not in real_dump(root).runtimes
    eng = offline(root)
    eng.apply(eng.plan(eng.read()))  # rewritten in version 3
    assert tomlkit.parse((root / DROP_IN[1:]).read_text())["version"] == 3
    assert real_dump(root).default_runtime_name == "nvidia"


def test_a_comment_only_config_gets_a_version_with_its_import() -> None:
    out = ct.with_import(STOCK, "conf.d/99-nvidia.toml")
    data = tomlkit.parse(out).unwrap()
    assert data == {"version": 2, "imports": ["conf.d/99-nvidia.toml"]}
    assert out.startswith(STOCK)  # every comment kept, in place


# --- configs that load but make pods fail ------------------------------------------------------


def test_an_inherited_empty_runtime_type_counts_as_missing() -> None:
    cri = tomlkit.parse(EMPTY_TYPE).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]
    out = ct.desired_cri(cri, "nvidia", NVIDIA_BIN, True)
    assert out["containerd"]["runtimes"]["nvidia"]["runtime_type"] == ct.RUNC_V2
    assert out["containerd"]["runtimes"]["nvidia"]["options"]["SystemdCgroup"] is True
    assert out["containerd"]["runtimes"]["runc"]["runtime_type"] == ""  # not ours to fix


def test_an_existing_nvidia_entry_follows_runc_and_keeps_its_own_keys() -> None:
    cri = tomlkit.parse(STALE_NVIDIA).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]
    before = ct.cri_mismatches(cri, "nvidia")
    # runtime_type "" reads as runc v2 (containerd's default): only the cgroup driver differs
    assert [(m.key, m.value, m.base, m.base_value) for m in before] == [
        ("options.SystemdCgroup", False, "runc", True)
    ]
    assert (
        str(before[0]) == "runtime 'nvidia' has options.SystemdCgroup = false but 'runc' has true"
    )
    out = ct.desired_cri(cri, "nvidia", NVIDIA_BIN, True)
    nvidia = out["containerd"]["runtimes"]["nvidia"]
    assert nvidia == {
        "runtime_type": ct.RUNC_V2,
        "privileged_without_host_devices": True,
        "options": {"SystemdCgroup": True, "BinaryName": NVIDIA_BIN},
    }
    assert ct.cri_mismatches(out, "nvidia") == ()


def test_a_runc_without_systemd_cgroup_takes_it_off_the_nvidia_entry() -> None:
    cri = {
        "containerd": {
            "runtimes": {
                "runc": {"runtime_type": ct.RUNC_V2},
                "nvidia": {"runtime_type": ct.RUNC_V2, "options": {"SystemdCgroup": True}},
            }
        }
    }
    assert [m.key for m in ct.cri_mismatches(cri, "nvidia")] == ["options.SystemdCgroup"]
    out = ct.desired_cri(cri, "nvidia", NVIDIA_BIN, False)
    assert out["containerd"]["runtimes"]["nvidia"]["options"] == {"BinaryName": NVIDIA_BIN}


@pytest.mark.parametrize("use_drop_in", [True, False], ids=["drop-in", "in-place"])
def test_no_default_demotes_the_nvidia_default_to_runc_in_either_mode(
    tmp_path: Path, use_drop_in: bool
) -> None:
    root = make_root(tmp_path, "version = 2\n" + HOST_CRI)
    first = offline(root, use_drop_in=use_drop_in, set_as_default=True)
    first.apply(first.plan(first.read()))
    eng = offline(root, use_drop_in=use_drop_in, set_as_default=False)
    plan = eng.plan(eng.read())
    assert plan.changed
    eng.apply(plan)
    facts = eng.read()
    ctd = ct.effective_cri(facts.config, facts.merged, ct.CRI_PLUGIN[2])["containerd"]
    assert ctd.get("default_runtime_name", "runc") == "runc"  # unset is containerd's runc
    assert "nvidia" in ctd["runtimes"]
    assert not eng.plan(facts).changed


# --- rollback --------------------------------------------------------------------------------


def test_in_place_rollback_restores_a_malformed_config_and_twice_is_once(tmp_path: Path) -> None:
    original = "version = 2\n" + HOST_CRI
    root = make_root(tmp_path, original)
    cfg = root / CONFIG[1:]
    eng = offline(root, use_drop_in=False)
    eng.apply(eng.plan(eng.read()))
    cfg.write_text("version = 2\n[plugins\n")  # an operator broke it afterwards
    first = eng.rollback()
    assert first.written == (CONFIG,) and "restored" in first.message
    assert cfg.read_text() == original
    backups = root / "var/lib/nodeagent/backups"
    assert any(p.name.endswith(".undone") for p in backups.iterdir())  # the broken one, kept
    second = eng.rollback()
    assert second.written == () and "nothing to undo" in second.message
    assert cfg.read_text() == original


def test_in_place_rollback_of_a_config_the_agent_created_removes_it(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    eng = offline(root, use_drop_in=False)
    eng.apply(eng.plan(eng.read()))
    assert (root / CONFIG[1:]).exists()
    assert eng.rollback().written == (CONFIG,)
    assert not (root / CONFIG[1:]).exists()
    assert "already absent" in eng.rollback().message


def test_drop_in_rollback_keeps_an_operators_later_edit(tmp_path: Path) -> None:
    root = make_root(tmp_path, "version = 2\n" + HOST_CRI)
    cfg = root / CONFIG[1:]
    eng = offline(root)
    eng.apply(eng.plan(eng.read()))
    cfg.write_text(cfg.read_text().replace("pause:3.9", "pause:3.10"))
    eng.rollback()
    assert "pause:3.10" in cfg.read_text()
    assert "imports" not in tomlkit.parse(cfg.read_text())
    assert not (root / DROP_IN[1:]).exists()


def test_drop_in_rollback_removes_a_broken_drop_in(tmp_path: Path) -> None:
    root = make_root(tmp_path, "version = 2\n" + HOST_CRI)
    eng = offline(root)
    eng.apply(eng.plan(eng.read()))
    (root / DROP_IN[1:]).write_bytes(b"\xff\xfe garbage [[[")
    with pytest.raises(InputError, match="rollback` removes it"):
        eng.read()
    eng.rollback()
    assert not (root / DROP_IN[1:]).exists()


def _trace(root: Path, trace: Path, *args: str) -> list[str]:
    out = run_cli(root, *args, wrapper=("tests.crashpoint", "--trace", str(trace), "--nth", "0"))
    assert out.returncode == 0, out.stderr
    etc = f" {root}/etc/"  # the host's files, not backups or the dump's temp copy
    return [
        line for line in trace.read_text().splitlines()
        if line.split()[0] in ("replace", "unlink") and etc in line
    ]  # fmt: skip


@pytest.mark.parametrize("command", ["configure", "rollback"])
def test_a_kill_at_any_step_leaves_a_config_containerd_loads_and_the_next_run_converges(
    tmp_path: Path, command: str
) -> None:
    """SIGKILL before and after every rename/unlink of config.toml and the drop-in."""
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    original = "version = 2\n" + HOST_CRI
    args = (
        ("runtime", "configure", "--runtime", "containerd")
        if command == "configure"
        else ("rollback", "--runtime", "containerd")
    )
    probe = make_root(tmp_path / "probe", original)
    if command == "rollback":
        assert run_cli(probe, "runtime", "configure", "--runtime", "containerd").returncode == 0
    steps = _trace(probe, tmp_path / "trace", *args)
    names = [Path(line.split()[1]).name for line in steps]
    if command == "rollback":  # the import entry goes first, the drop-in after
        assert names == ["config.toml", "99-nvidia.toml"], steps
    else:  # the drop-in first, then the import that makes containerd read it
        assert names == ["99-nvidia.toml", "config.toml"], steps
    for i, line in enumerate(steps):
        op, path = line.split()[:2]
        nth = sum(1 for s in steps[: i + 1] if s.split()[:2] == [op, path])
        for when in ("before", "after"):
            root = make_root(tmp_path / f"{i}-{when}", original)
            if command == "rollback":
                assert (
                    run_cli(root, "runtime", "configure", "--runtime", "containerd").returncode == 0
                )
            killed = run_cli(root, *args, wrapper=(
                "tests.crashpoint", "--op", op, "--name", Path(path).name,
                "--nth", str(nth), "--when", when,
            ))  # fmt: skip
            assert killed.returncode == -9, killed.stderr
            real_dump(root)  # containerd loads whatever the kill left
            again = run_cli(root, *args)
            assert again.returncode == 0, again.stderr
            assert ("nvidia" in real_dump(root).runtimes) is (command == "configure")
            if command == "rollback":
                assert (root / CONFIG[1:]).read_text() == original
                assert not (root / DROP_IN[1:]).exists()


# --- the agent's own runs: concurrency, --root containment -------------------------------------


def test_the_loser_of_two_concurrent_runs_writes_nothing_and_says_so(tmp_path: Path) -> None:
    root = make_root(tmp_path, "version = 2\n" + HOST_CRI)
    slow, fast = offline(root), offline(root)
    stale = slow.plan(slow.read())
    assert fast.apply(fast.plan(fast.read())).written
    result = slow.apply(stale)
    assert result.written == () and "another nodeagent run" in result.message


def _tmp_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("nodeagent-containerd.")}


def test_config_dump_under_a_root_reads_only_the_roots_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absolute imports (plain, glob, nested) are the root's files, never this machine's."""
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    # a temp dir of this test's own: other workers' dumps come and go in the machine's /tmp
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    root = make_root(
        tmp_path,
        'version = 2\nimports = ["/etc/containerd/site.d/*.toml", "/etc/containerd/a.toml"]\n',
    )
    site = root / "etc/containerd/site.d"
    site.mkdir()
    (site / "10-site.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "from-glob:1"\n')
    (root / "etc/containerd/a.toml").write_text(
        'version = 2\nimports = ["/etc/containerd/b.toml"]\n'
    )
    (root / "etc/containerd/b.toml").write_text("version = 2\n[grpc]\n  uid = 4242\n")
    eng = offline(root)
    before = _tmp_dirs()
    dumped = eng.dump()
    assert dumped.config is not None, dumped.why
    data = dumped.config
    assert data["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == "from-glob:1"
    assert data["grpc"]["uid"] == 4242  # an import's own absolute import: the root's too
    assert _tmp_dirs() == before  # the temp copy is gone

    # A file this machine has but the root does not: containerd is told the root's path.
    (root / "etc/containerd/b.toml").unlink()
    (root / "etc/containerd/a.toml").write_text('version = 2\nimports = ["/etc/os-release"]\n')
    dumped = eng.dump()
    assert dumped.config is None and str(root / "etc/os-release") in dumped.why
    assert _tmp_dirs() == before


def test_the_roots_own_containerd_binary_is_the_one_asked(tmp_path: Path) -> None:
    root = make_root(tmp_path, "version = 2\n")
    fake = root / "usr/bin/containerd"
    calls = tmp_path / "calls"
    shown = tmp_path / "dump.toml"  # what the fake prints for `config dump`
    shown.write_text(
        f'version = 2\n{CRI}\n  containerd.default_runtime_name = "nvidia"\n'
        '  containerd.runtimes.nvidia.runtime_type = "io.containerd.runc.v2"\n'
    )
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat {shown}\n')
    fake.chmod(0o755)
    eng = offline(root)
    assert eng.check_files() is None
    assert "config dump" in calls.read_text()


def test_a_relative_glob_import_is_containerds_not_config_tomls_directory(tmp_path: Path) -> None:
    """containerd expands ``conf.d/*.toml`` from its working directory (/), so it does not
    import the drop-in: the agent adds its own entry, and containerd then loads it."""
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    root = make_root(tmp_path, 'version = 2\nimports = ["conf.d/*.toml"]\n' + HOST_CRI)
    eng = offline(root)
    plan = eng.plan(eng.read())
    assert {c.host_path for c in plan.changes} == {CONFIG, DROP_IN}
    eng.apply(plan)
    assert "nvidia" in real_dump(root).runtimes  # containerd runs in /


@pytest.mark.parametrize("entry", ["/../../outside.toml", "../../../outside.toml"])
def test_dot_dot_imports_never_leave_the_root(tmp_path: Path, entry: str) -> None:
    """containerd cleans ``..`` away like Go's filepath.Clean; so does the agent, and the
    result is a path inside the root (here: /outside.toml, which the root does not have)."""
    (tmp_path / "outside.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "leak:1"\n')
    root = make_root(tmp_path, f'version = 2\nimports = ["{entry}"]\n')
    with pytest.raises(InputError, match=r": /outside\.toml does not exist"):
        offline(root).read()


def test_a_dot_dot_glob_is_expanded_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "leak:1"\n')
    root = make_root(tmp_path, 'version = 2\nimports = ["/../*.toml"]\n')
    (root / "inside.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "in:1"\n')
    facts = offline(root).read()
    assert [i.host_path for i in facts.imports] == ["/inside.toml"]
