"""Host paths under an optional ``--root`` prefix (like ``dpkg --root``).

Every path the agent reads or writes on the host goes through :class:`HostRoot`, so image
baking and tests can point the whole agent at a directory tree instead of ``/``. The root
is a containment boundary: a host path with ``..`` is refused, and symlinks are followed
as the host would see them — an absolute link target is taken inside the root, and ``..``
never climbs above it (:meth:`HostRoot.resolve`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath
from typing import Optional

from nodeagent.errors import InputError, shorten

_MAX_LINKS = 40  # the kernel's own limit on symlinks in one lookup


@dataclasses.dataclass(frozen=True)
class HostRoot:
    """The directory that stands for ``/`` on the host.

    ``HostRoot(Path("/"))`` is the real host; ``HostRoot(Path("/tmp/x"))`` maps
    ``/etc/docker/daemon.json`` to ``/tmp/x/etc/docker/daemon.json``.
    """

    root: Path = Path("/")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.abspath(os.fspath(self.root))))

    @classmethod
    def of(cls, raw: str) -> HostRoot:
        """The root a ``--root`` argument names. Empty is refused: ``Path("")`` is ``.``,
        which would make the working directory stand for ``/``."""
        if not raw:
            raise InputError("--root: empty; give a directory (/ for this machine)")
        return cls(Path(raw))

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        """Map an absolute host path to the path on this machine."""
        p = PurePosixPath(os.fspath(host_path))
        if not p.is_absolute():
            raise InputError(f"{host_path}: a host path must be absolute")
        if ".." in p.parts:
            raise InputError(f"{host_path}: a host path may not contain '..'")
        return self.root.joinpath(*p.parts[1:])

    def resolve(self, host_path: str) -> tuple[Path, str]:
        """(the path on this machine, the host path) of ``host_path`` with every symlink
        followed as the host sees it: inside the root, never above it."""
        self.path(host_path)  # absolute, no '..'
        pending = list(PurePosixPath(host_path).parts[1:])
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            local = self.root.joinpath(*done, part)
            try:
                is_link = local.is_symlink()
            except OSError as e:  # a name too long for the filesystem, a denied directory
                raise InputError(f"{shorten(host_path)}: {e.strerror or e}") from None
            if is_link:
                hops += 1
                if hops > _MAX_LINKS:
                    raise InputError(f"{host_path}: too many levels of symbolic links")
                target = PurePosixPath(os.readlink(local))
                if target.is_absolute():
                    done = []
                    pending = list(target.parts[1:]) + pending
                else:
                    pending = list(target.parts) + pending
                continue
            done.append(part)
        host = "/" + "/".join(done)
        return self.root.joinpath(*done), host

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


def unix_socket_path(address: str) -> Optional[str]:
    """The filesystem path of a ``unix://`` (or bare path) address, else None."""
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if address.startswith("/"):
        return address
    return None
