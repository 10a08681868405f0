"""The runtime matrix: docker and containerd of three Debian suites, from tests/debcache.py.

=========  ===============  ===============
suite      docker.io        containerd
=========  ===============  ===============
bookworm   20.10            1.6
trixie     26.1             1.7
sid        28.5             2.1
=========  ===============  ===============

(the versions the suites held when this was written; :attr:`Runtime.version` reads the real
one from the unpacked binary). The host's own runc, tini and docker-proxy stay in use: sid's
runc needs a newer glibc than Debian 12's. A :class:`Runtime`'s :attr:`~Runtime.bindir` goes
first on a daemon's ``PATH``; the daemons run from the cache, never installed.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from tests.debcache import SUITES, unpacked

#: The Debian package of each runtime kind.
PACKAGES = {"docker": "docker.io", "containerd": "containerd"}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime of the matrix, unpacked: ``kind`` is ``docker`` or ``containerd``."""

    kind: str
    suite: str
    tree: Path  # the dpkg -x directory

    @property
    def bindir(self) -> Path:
        """The directory holding ``dockerd`` / ``containerd`` (first on PATH)."""
        return self.tree / "usr" / ("sbin" if self.kind == "docker" else "bin")

    @property
    def daemon(self) -> Path:
        return self.bindir / ("dockerd" if self.kind == "docker" else "containerd")

    @property
    def path_prefix(self) -> str:
        """PATH entries for this runtime's binaries (dockerd, docker, ctr, the shims)."""
        return f"{self.tree / 'usr' / 'sbin'}:{self.tree / 'usr' / 'bin'}"

    @property
    def version(self) -> tuple[int, int, int]:
        """The daemon's own version, from ``--version``."""
        out = subprocess.run(
            [str(self.daemon), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
        if not m:
            raise RuntimeError(f"{self.daemon}: no version in {out!r}")
        return (int(m[1]), int(m[2]), int(m[3]))

    @property
    def id(self) -> str:
        """A test id: ``docker-sid``."""
        return f"{self.kind}-{self.suite}"


def runtime(kind: str, suite: str) -> Runtime:
    """The ``kind`` runtime of ``suite``, fetched into the cache when absent (needs root)."""
    return Runtime(kind, suite, unpacked(suite, PACKAGES[kind]))


#: (kind, suite) pairs of the matrix, for pytest parametrisation before anything is fetched.
MATRIX = tuple((kind, suite) for kind in PACKAGES for suite in SUITES)
