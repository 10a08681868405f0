"""Applying planned file changes: the one place plain config files are written.

Holds the host lock, backs up each old file, writes atomically. Unchanged files are not
touched at all (same inode, same mtime), so running twice writes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodeagent.config import Config
from nodeagent.fsutil import Backups, HostLock, write_atomic
from nodeagent.paths import HostRoot
from nodeagent.runtime.engine import FileChange


def write_changes(changes: Sequence[FileChange], cfg: Config, root: HostRoot) -> list[str]:
    """Write every changed file; return the host paths written."""
    todo = [c for c in changes if c.changed]
    if not todo:
        return []
    backups = Backups(root.path(cfg.backup_dir), cfg.backup_keep)
    with HostLock(root.path(cfg.lock_file)):
        for c in todo:
            backups.save(c.path)
            write_atomic(c.path, c.new)
    return [c.host_path for c in todo]
