"""Which Node this host is: the name the kubelet registers under.

Order: ``node_name`` from the config; else the kubelet's ``--hostname-override`` (from
its extra-args file, as the kubelet itself would see it); else the host name, lower-cased
(the kubelet lower-cases it too: ``nodeutil.GetHostname``).

Reads the host (the args file, /etc/os-release) through the one reader; writes nothing,
never talks to the API.
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from nodeagent.config import Config
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_optional, read_text
from nodeagent.kube import kubeletargs


def hostname_override(args: tuple[str, ...]) -> Optional[str]:
    for i, a in enumerate(args):
        if a.startswith("--hostname-override="):
            return a.split("=", 1)[1].strip() or None
        if a == "--hostname-override" and i + 1 < len(args):
            return args[i + 1].strip() or None
    return None


def node_name(
    cfg: Config,
    root: HostRoot,
    extra_args_path: Optional[str] = None,
    gethostname: Callable[[], str] = socket.gethostname,
) -> str:
    """The Node's name for this host (see module doc for the order). ``extra_args_path``:
    the kubelet-args file when the caller found it already (:attr:`Agent.kubelet_args_path`)."""
    if cfg.node_name:
        return cfg.node_name
    # /etc/os-release only picks the args file's default path (absent or unreadable: the
    # Debian one). The args file is input: a FIFO, a directory or undecodable bytes in it
    # are one-line errors.
    path = extra_args_path or kubeletargs.find_path(
        cfg.kube, read_optional(root.path("/etc/os-release"))
    )
    current = read_text(root.path(path), path)
    if current is not None:
        override = hostname_override(kubeletargs.parse(current.text, path).args)
        if override:
            return override.lower()
    return gethostname().strip().lower()
