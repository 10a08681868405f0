"""Which container runtime engine to configure (``runtime.engine`` / ``--runtime``).

``auto`` picks one engine of the registry (:mod:`nodeagent.runtime.registry`), in its
order: the first whose daemon is running, else the first installed. Docker comes first
because on a host that runs docker, containerd is usually docker's own backend (Debian's
docker.io runs the system containerd), and the brief's operators schedule GPU work through
docker; a Kubernetes node whose kubelet talks to containerd directly sets
``runtime.engine: containerd``.

"Running" is what the engines mean by it (:meth:`EngineSpec.running`): a socket at the
configured address on this machine. "Installed" is the daemon's binary under ``--root``.

Reads only: sockets and the root's PATH.
"""

from __future__ import annotations

from typing import Optional

from nodeagent.config import Config
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.runtime import registry


def choose(cfg: Config, root: HostRoot, requested: Optional[str] = None) -> Optional[str]:
    """The engine name to use (one of :func:`registry.names`), or None for ``none``."""
    name = requested or cfg.runtime.engine
    if name == "none":
        return None
    if name != "auto":
        return registry.spec(name).name
    for spec in registry.SPECS:
        if spec.running(cfg.runtime):
            return spec.name
    for spec in registry.SPECS:
        if spec.installed(root):
            return spec.name
    binaries = " nor ".join(s.binary for s in registry.SPECS)
    raise InputError(
        f"{root.root}: no container runtime found (neither {binaries} running or "
        "installed); set runtime.engine or --runtime"
    )
