"""Which container runtime engine to configure (``runtime.engine`` / ``--runtime``).

``auto`` picks one engine, in this order: docker if its daemon is running, containerd if
its daemon is running, docker if installed, containerd if installed. Docker comes first
because on a host that runs docker, containerd is usually docker's own backend (Debian's
docker.io runs the system containerd), and the brief's operators schedule GPU work through
docker; a Kubernetes node whose kubelet talks to containerd directly sets
``runtime.engine: containerd``.
"""

from __future__ import annotations

from typing import Optional

from nodeagent.config import Config
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot, unix_socket_path
from nodeagent.runtime.engine import Engine


def _socket_live(root: HostRoot, address: str) -> bool:
    path = unix_socket_path(address)
    return path is not None and root.path(path).is_socket()


def choose(cfg: Config, root: HostRoot, requested: Optional[str] = None) -> Optional[str]:
    """The engine name to use: ``docker``, ``containerd``, or None for ``none``."""
    name = requested or cfg.runtime.engine
    if name == "none":
        return None
    if name != "auto":
        return name
    if _socket_live(root, cfg.runtime.docker.host):
        return "docker"
    if _socket_live(root, cfg.runtime.containerd.address):
        return "containerd"
    if root.which("dockerd"):
        return "docker"
    if root.which("containerd"):
        return "containerd"
    raise InputError(
        f"{root.root}: no container runtime found (neither dockerd nor containerd running or "
        "installed); set runtime.engine or --runtime"
    )


def make_engine(name: str, cfg: Config, root: HostRoot) -> Engine:
    if name == "docker":
        from nodeagent.runtime.docker.engine import DockerEngine

        return DockerEngine(cfg, root)
    if name == "containerd":
        from nodeagent.runtime.containerd.engine import ContainerdEngine

        return ContainerdEngine(cfg, root)
    raise InputError(f"unknown runtime engine {name!r}")
