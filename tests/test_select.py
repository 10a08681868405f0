"""`runtime.engine: auto`: which runtime the agent configures on a host."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.config import Config, ContainerdConfig, DockerConfig, RuntimeConfig, engine_names
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.runtime import registry
from nodeagent.runtime.select import choose


def binary(root: Path, name: str) -> None:
    p = root / "usr" / "bin" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A unix socket at containerd's configured address (see cfg), as a running daemon's
    would be: "running" is a socket at the address on this machine, not under --root."""
    path = tmp_path / "containerd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    try:
        yield path
    finally:
        s.close()


def cfg(engine: str = "auto", sockets: Path = Path("/nonexistent")) -> Config:
    """Daemons whose sockets are in ``sockets`` (none running unless a test binds one)."""
    return Config(
        runtime=RuntimeConfig(
            engine=engine,
            docker=DockerConfig(host=f"unix://{sockets}/docker.sock"),
            containerd=ContainerdConfig(address=f"{sockets}/containerd.sock"),
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
    assert choose(cfg(sockets=tmp_path), HostRoot(tmp_path)) == "containerd"


def test_nothing_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no container runtime found"):
        choose(cfg(), HostRoot(tmp_path))


def test_explicit_choices_are_taken_as_given(tmp_path: Path) -> None:
    assert choose(cfg("containerd"), HostRoot(tmp_path)) == "containerd"
    assert choose(cfg("none"), HostRoot(tmp_path)) is None
    assert choose(cfg(), HostRoot(tmp_path), requested="docker") == "docker"


def test_a_socket_under_the_root_is_not_a_running_daemon(tmp_path: Path) -> None:
    """--root is a tree of files (an image being baked): nothing runs in it."""
    sock = tmp_path / "nonexistent" / "containerd.sock"
    sock.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        binary(tmp_path, "dockerd")
        assert choose(cfg(), HostRoot(tmp_path)) == "docker"


def test_the_registry_and_the_config_name_the_same_engines() -> None:
    """runtime.engine is validated by the config's engine sections, which sit below the
    registry: one list each, held together here."""
    assert registry.names() == engine_names()
    with pytest.raises(InputError, match="unknown runtime engine 'podman'"):
        registry.spec("podman")
