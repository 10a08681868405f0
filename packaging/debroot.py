"""Debootstrapped trees built once and cached: the mirror to fetch from, and the build-once step.

The controller image's base (packaging/image.py), the e2e machine's root (tests/e2e/rootfs.py)
and the arm64 root (tests/arm64root.py) are each a debootstrap kept under /var/cache, keyed by
what shapes it. :func:`cached_root` is the one place that builds such a tree: under a file
lock (concurrent callers wait, then find it built), into a temporary directory beside it,
renamed into place and marked ``.complete`` only when whole — so an interrupted build is
redone, never used. This module only reads /etc/apt and writes under the given cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable


def mirror() -> str:
    """The Debian mirror this machine's apt uses (the only one it may reach)."""
    for f in [*sorted(Path("/etc/apt/sources.list.d").glob("*")), Path("/etc/apt/sources.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(w for w in line.split()[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


def cached_root(cache: Path, name: str, fill: Callable[[Path], str]) -> Path:
    """``cache/name``, built by ``fill(tmp)`` when not yet complete. ``fill`` populates the
    empty-or-absent directory ``tmp`` and returns the line recorded in ``.complete`` (e.g.
    how long it took)."""
    target = cache / name
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():  # another caller built it while we waited
            return target
        tmp = cache / f".building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        note = fill(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        (target / ".complete").write_text(f"{note}\n")
    return target
