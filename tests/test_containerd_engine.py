"""The containerd engine: pure planning, and against a real containerd started by the tests.

Every containerd here has its own root, state and socket under a temp dir, named by the
config.toml the agent edits under ``--root``; restarts go through
``tests/containerd.py restart``, the stand-in for ``systemctl restart containerd``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.config import Config, ContainerdConfig, RuntimeConfig
from nodeagent.errors import InputError, StepFailed
from nodeagent.paths import HostRoot
from nodeagent.runtime import containerd as ct
from nodeagent.runtime.containerd import ContainerdEngine
from nodeagent.runtime.engine import ACTIVATE_NONE, ACTIVATE_RESTART
from tests.containerd import Containerd, needs_containerd
from tests.dockerd import write_runtime_standin
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
CRI = '[plugins."io.containerd.grpc.v1.cri"]'

HOST_CRI = f"""
# the operator's settings: nodeagent must keep every one of them
{CRI}
  sandbox_image = "registry.example.com/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"""


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
    assert plan.activation == ACTIVATE_NONE  # no containerd runs under this root


def test_a_later_import_with_its_own_cri_section_is_refused(tmp_path: Path) -> None:
    conf_d = tmp_path / "etc" / "containerd" / "conf.d"
    conf_d.mkdir(parents=True)
    (conf_d.parent / "config.toml").write_text('version = 2\nimports = ["conf.d/*.toml"]\n')
    (conf_d / "zz-site.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "p:1"\n')
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    with pytest.raises(InputError, match=r"zz-site\.toml: defines the CRI section"):
        eng.plan(eng.read())


def test_an_earlier_import_is_carried_into_the_drop_in(tmp_path: Path) -> None:
    conf_d = tmp_path / "etc" / "containerd" / "conf.d"
    conf_d.mkdir(parents=True)
    (conf_d.parent / "config.toml").write_text('version = 2\nimports = ["conf.d/*.toml"]\n')
    (conf_d / "10-site.toml").write_text(f'version = 2\n{CRI}\n  sandbox_image = "p:1"\n')
    eng = ContainerdEngine(Config(runtime=RuntimeConfig(engine="containerd")), HostRoot(tmp_path))
    (change,) = eng.plan(eng.read()).changes
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
    data = tomlkit.parse(drop_in.new).unwrap()
    assert data["version"] == 3
    assert list(data["plugins"]) == ["io.containerd.cri.v1.runtime"]


# --- against a real containerd ------------------------------------------------------------


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    reason = needs_containerd()
    if reason:
        skip_or_fail("containerd", reason)
    c = Containerd(Path(tempfile.mkdtemp(prefix="nac.", dir="/tmp")))
    write_runtime_standin(c.root)
    c.config.parent.mkdir(parents=True)
    c.config.write_text(c.base_toml() + HOST_CRI)
    try:
        assert c.start(), c.log.read_text()
        yield c
    finally:
        c.teardown()


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


def dump(c: Containerd) -> dict[str, Any]:
    out = subprocess.run(
        ["containerd", "--config", str(c.config), "config", "dump"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(tomlkit.parse(out.stdout).unwrap())


@pytest.mark.containerd
def test_configure_restarts_containerd_into_the_nvidia_runtime_keeping_host_settings(
    containerd: Containerd,
) -> None:
    c = containerd
    before_pid = c.pid
    eng = engine(c)
    plan = eng.plan(eng.read())
    assert plan.activation == ACTIVATE_RESTART
    assert {ch.host_path for ch in plan.changes} == {
        "/etc/containerd/config.toml",
        "/etc/containerd/conf.d/99-nvidia.toml",
    }
    result = eng.apply(plan)
    assert result.verified and result.activation == ACTIVATE_RESTART
    assert c.pid != before_pid  # restarted
    assert c.cri_status() == "ok"
    cri = dump(c)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.example.com/pause:3.9"
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    nvidia = cri["containerd"]["runtimes"]["nvidia"]
    assert nvidia["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert nvidia["options"]["SystemdCgroup"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert dump(c)["root"] == f"{c.base}/data"

    # Idempotent: nothing to write, no restart.
    mtimes = {
        p: p.stat().st_mtime_ns for p in (c.config, c.config.parent / "conf.d/99-nvidia.toml")
    }
    pid = c.pid
    again = eng.plan(eng.read())
    assert not again.changed and again.activation == ACTIVATE_NONE
    assert eng.apply(again).written == ()
    assert c.pid == pid
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert eng.verify()


@pytest.mark.containerd
def test_a_host_edit_of_config_toml_flows_into_the_drop_in(containerd: Containerd) -> None:
    c = containerd
    eng = engine(c)
    eng.apply(eng.plan(eng.read()))
    c.config.write_text(c.config.read_text().replace("pause:3.9", "pause:3.10"))
    plan = eng.plan(eng.read())
    assert [ch.host_path for ch in plan.changes] == ["/etc/containerd/conf.d/99-nvidia.toml"]
    assert eng.apply(plan).verified
    assert dump(c)["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].endswith("pause:3.10")


@pytest.mark.containerd
def test_a_config_containerd_refuses_is_never_restarted_into(containerd: Containerd) -> None:
    c = containerd
    # Valid TOML, but containerd cannot load a string into oom_score (an int).
    original = c.base_toml().replace("version = 2\n", 'version = 2\noom_score = "high"\n')
    original += HOST_CRI
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
    assert result.activation == ACTIVATE_RESTART
    assert c.config.read_text() == original
    assert not (c.config.parent / "conf.d" / "99-nvidia.toml").exists()
    cri = dump(c)["plugins"]["io.containerd.grpc.v1.cri"]
    assert "nvidia" not in cri["containerd"]["runtimes"]
    assert cri["containerd"]["default_runtime_name"] == "runc"
    assert c.cri_status() == "ok"
    assert eng.rollback().written == ()  # nothing left to undo


@pytest.mark.containerd
def test_in_place_mode_edits_config_toml_keeping_comments(containerd: Containerd) -> None:
    c = containerd
    eng = engine(c, use_drop_in=False)
    result = eng.apply(eng.plan(eng.read()))
    assert result.verified and result.written == ("/etc/containerd/config.toml",)
    text = c.config.read_text()
    assert "# the operator's settings: nodeagent must keep every one of them" in text
    assert not (c.config.parent / "conf.d").exists()
    cri = dump(c)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    assert cri["sandbox_image"] == "registry.example.com/pause:3.9"
    assert not eng.plan(eng.read()).changed


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
