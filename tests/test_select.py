"""`runtime.engine: auto`: which runtime the agent configures on a host."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.config import Config, ContainerdConfig, DockerConfig, RuntimeConfig
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.runtime.select import choose


def binary(root: Path, name: str) -> None:
    p = root / "usr" / "bin" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A unix socket that exists under the root, as a running daemon's would."""
    path = tmp_path / "run" / "containerd" / "containerd.sock"
    path.parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    try:
        yield path
    finally:
        s.close()


def cfg(engine: str = "auto") -> Config:
    return Config(
        runtime=RuntimeConfig(
            engine=engine,
            docker=DockerConfig(host="unix:///run/docker.sock"),
            containerd=ContainerdConfig(address="/run/containerd/containerd.sock"),
        )
    )


def test_installed_docker_wins_over_installed_containerd(tmp_path: Path) -> None:
    binary(tmp_path, "dockerd")
    binary(tmp_path, "containerd")
    assert choose(cfg(), HostRoot(tmp_path)) == "docker"


def test_only_containerd_installed(tmp_path: Path) -> None:
    binary(tmp_path, "containerd")
    assert choose(cfg(), HostRoot(tmp_path)) == "containerd"


def test_a_running_containerd_wins_over_an_installed_docker(
    tmp_path: Path, listening: Path
) -> None:
    binary(tmp_path, "dockerd")
    assert choose(cfg(), HostRoot(tmp_path)) == "containerd"


def test_nothing_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no container runtime found"):
        choose(cfg(), HostRoot(tmp_path))


def test_explicit_choices_are_taken_as_given(tmp_path: Path) -> None:
    assert choose(cfg("containerd"), HostRoot(tmp_path)) == "containerd"
    assert choose(cfg("none"), HostRoot(tmp_path)) is None
    assert choose(cfg(), HostRoot(tmp_path), requested="docker") == "docker"
