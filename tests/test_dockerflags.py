"""Where dockerd's flags come from, and conflicts with what daemon.json would set."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.config import Config
from nodeagent.errors import InputError
from nodeagent.paths import HostRoot
from nodeagent.runtime import dockerflags
from nodeagent.runtime.docker import DockerEngine
from tests.dockerd import write_runtime_standin

DEBIAN_UNIT = """[Service]
Type=notify
ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS \\
          --containerd=/run/containerd/containerd.sock
ExecReload=/bin/kill -s HUP $MAINPID
"""


def root_with(tmp_path: Path, files: dict[str, str]) -> HostRoot:
    for host_path, text in files.items():
        p = tmp_path / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    write_runtime_standin(tmp_path)
    return HostRoot(tmp_path)


def test_exec_start_with_continuation_and_drop_in_reset() -> None:
    units = [
        ("/lib/systemd/system/docker.service", DEBIAN_UNIT),
        ("/etc/systemd/system/docker.service.d/10.conf", "[Service]\nExecStart=\n"
         "ExecStart=/usr/bin/dockerd --add-runtime nvidia=/usr/bin/nvidia-container-runtime\n"),
    ]  # fmt: skip
    src = dockerflags.exec_start_words(units)
    assert src is not None
    assert src.where == "/etc/systemd/system/docker.service.d/10.conf"
    assert src.words == (
        "/usr/bin/dockerd",
        "--add-runtime",
        "nvidia=/usr/bin/nvidia-container-runtime",
    )
    only = dockerflags.exec_start_words(units[:1])
    assert only is not None and "--containerd=/run/containerd/containerd.sock" in only.words


@pytest.mark.parametrize(
    ("files", "where"),
    [
        (
            {"/etc/sysconfig/docker": "OPTIONS='--selinux-enabled --default-runtime=runc'\n"},
            "/etc/sysconfig/docker",
        ),
        (
            # Amazon Linux / CentOS style: pain point NVIDIA/nvidia-docker#751
            {"/etc/sysconfig/docker": 'DOCKER_ADD_RUNTIMES="--add-runtime nvidia=/usr/bin/x"\n'},
            "/etc/sysconfig/docker",
        ),
        (
            {"/lib/systemd/system/docker.service": DEBIAN_UNIT,
             "/etc/systemd/system/docker.service.d/override.conf":
                 "[Service]\nExecStart=\nExecStart=/usr/bin/dockerd --default-runtime runc\n"},
            "/etc/systemd/system/docker.service.d/override.conf",
        ),
    ],
)  # fmt: skip
def test_conflicting_flag_refused_with_its_source(
    tmp_path: Path, files: dict[str, str], where: str
) -> None:
    root = root_with(tmp_path, files)
    eng = DockerEngine(Config(), root)
    with pytest.raises(InputError) as e:
        eng.plan(eng.read())
    assert str(e.value).startswith(f"{where}: dockerd is started with --")
    assert not (tmp_path / "etc/docker/daemon.json").exists()


def test_no_conflict_with_plain_debian_unit(tmp_path: Path) -> None:
    files = {
        "/lib/systemd/system/docker.service": DEBIAN_UNIT,
        "/etc/default/docker": '#DOCKER_OPTS="--dns 8.8.8.8"\n',
    }
    root = root_with(tmp_path, files)
    eng = DockerEngine(Config(), root)
    assert eng.plan(eng.read()).changed


def test_other_config_file_is_refused(tmp_path: Path) -> None:
    unit = "[Service]\nExecStart=/usr/bin/dockerd --config-file=/etc/docker/custom.json\n"
    root = root_with(tmp_path, {"/etc/systemd/system/docker.service": unit})
    eng = DockerEngine(Config(), root)
    with pytest.raises(InputError, match=r"dockerd reads /etc/docker/custom\.json"):
        eng.plan(eng.read())


def test_default_runtime_only_conflicts_when_we_set_it(tmp_path: Path) -> None:
    src = [dockerflags.FlagSource("x", ("dockerd", "--default-runtime=runc"))]
    assert dockerflags.conflicts(src, {"runtimes"}) == []
    assert len(dockerflags.conflicts(src, {"runtimes", "default-runtime"})) == 1


def test_missing_runtime_binary(tmp_path: Path) -> None:
    eng = DockerEngine(Config(), HostRoot(tmp_path))  # no nvidia-container-runtime there
    plan = eng.plan(eng.read())  # docker not running: written, with a warning
    assert plan.warnings and "runtime binary not found" in plan.warnings[0]
