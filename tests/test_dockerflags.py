"""Where dockerd's flags come from, and conflicts with what daemon.json would set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.config import Config
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.runtime.docker import flags as dockerflags
from nodeagent.runtime.docker.engine import DockerEngine
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


def test_unreadable_flag_sources_count_as_absent_and_never_block(tmp_path: Path) -> None:
    """Every flag source is an optional fact: a FIFO (a plain read would wait forever), a
    directory, non-UTF-8 bytes or a symlink loop must neither hang nor fail the run."""
    root = root_with(tmp_path, {"/etc/sysconfig/docker": "OPTIONS='--default-runtime=runc'\n"})
    os.mkfifo(tmp_path / "etc/sysconfig/docker.fifo")
    (tmp_path / "etc/sysconfig/docker").unlink()
    (tmp_path / "etc/sysconfig/docker").symlink_to("docker.fifo")
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/docker").mkdir()
    unit_dir = tmp_path / "etc/systemd/system/docker.service.d"
    unit_dir.mkdir(parents=True)
    (unit_dir / "10-latin1.conf").write_bytes(
        b"# caf\xe9\n[Service]\nExecStart=\nExecStart=/usr/bin/dockerd --default-runtime runc\n"
    )
    (unit_dir / "20-loop.conf").symlink_to("20-loop.conf")
    sources = dockerflags.collect(root)
    assert [s.where for s in sources] == [
        "/etc/systemd/system/docker.service.d/10-latin1.conf"
    ]  # the readable one still counts
    eng = DockerEngine(Config(), root)
    with pytest.raises(InputError, match=r"^/etc/systemd/system/docker.service.d/10-latin1"):
        eng.plan(eng.read())


def test_running_dockerd_is_found_by_its_name(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, argv in [
        ("10", "dockerd\n", b"dockerd\0--default-runtime\0runc\0"),
        ("11", "sleep\n", b"sleep\0600\0"),
    ]:
        (proc / pid).mkdir(parents=True)
        (proc / pid / "comm").write_text(comm)
        (proc / pid / "cmdline").write_bytes(argv)
    (proc / "12").mkdir()  # a process that exited while we looked: no comm
    (proc / "self").mkdir()
    found = dockerflags.running_dockerd(proc)
    assert found == [
        dockerflags.FlagSource("running dockerd (pid 10)", ("dockerd", "--default-runtime", "runc"))
    ]
