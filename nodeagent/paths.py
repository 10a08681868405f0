"""Host paths under an optional ``--root`` prefix (like ``dpkg --root``).

Every path the agent reads or writes on the host goes through :class:`HostRoot`, so image
baking and tests can point the whole agent at a directory tree instead of ``/``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath


@dataclasses.dataclass(frozen=True)
class HostRoot:
    """The directory that stands for ``/`` on the host.

    ``HostRoot(Path("/"))`` is the real host; ``HostRoot(Path("/tmp/x"))`` maps
    ``/etc/docker/daemon.json`` to ``/tmp/x/etc/docker/daemon.json``.
    """

    root: Path = Path("/")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str too

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        """Map an absolute host path to the path on this machine."""
        p = PurePosixPath(os.fspath(host_path))
        if not p.is_absolute():
            raise ValueError(f"host path must be absolute: {host_path}")
        return self.root.joinpath(*p.parts[1:])

    @property
    def is_real_host(self) -> bool:
        return self.root.resolve() == Path("/")

    def which(self, name: str, search_path: str | None = None) -> Path | None:
        """Find an executable like ``shutil.which``, but looking inside the root.

        ``name`` may be absolute (checked under the root) or a bare name searched in
        ``search_path`` (default: the usual system PATH of a service, not this process's).
        """
        if "/" in name:
            candidate = self.path(name)
            return candidate if _is_executable(candidate) else None
        dirs = (search_path or DEFAULT_SERVICE_PATH).split(":")
        for d in dirs:
            if not d.startswith("/"):
                continue
            candidate = self.path(d) / name
            if _is_executable(candidate):
                return candidate
        return None


# The PATH systemd gives services (systemd's DEFAULT_PATH), which is what dockerd sees.
DEFAULT_SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _is_executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)
