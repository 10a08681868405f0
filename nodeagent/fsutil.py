"""Safe file writes: one writer at a time, atomic replace, a backup of what was there.

Every file the agent edits on the host (daemon.json, containerd's config, the kubelet's
extra-args file) is written through :func:`write_atomic` while holding :class:`HostLock`.
A reader, or a crash at any instant, sees either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from nodeagent.errors import StepFailed

# Tests set this to a path; write_atomic then creates it and waits until it is removed,
# between writing the temp file and renaming it, so a test can kill the process there.
# With NODEAGENT_TEST_PAUSE_NAME set, only writes of a file of that name pause.
PAUSE_BEFORE_RENAME_ENV = "NODEAGENT_TEST_PAUSE_BEFORE_RENAME"
PAUSE_NAME_ENV = "NODEAGENT_TEST_PAUSE_NAME"


@dataclasses.dataclass(frozen=True)
class FileMeta:
    """Owner and mode to give a file we write."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o644

    @classmethod
    def of(cls, path: Path, default: Optional[FileMeta] = None) -> FileMeta:
        """The meta of ``path`` if it exists, else ``default`` (root:root 0644)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return default or cls(uid=os.getuid(), gid=os.getgid())
        return cls(uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode))


def read_text_or_none(path: Path) -> Optional[str]:
    """The file's text, or None if it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_atomic(path: Path, data: str, meta: Optional[FileMeta] = None) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename,
    fsync the directory. Owner and mode are the old file's (or ``meta``)."""
    meta = meta or FileMeta.of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.nodeagent-tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            _chown_quietly(f.fileno(), meta)
            os.fchmod(f.fileno(), meta.mode)
            os.fsync(f.fileno())
        _test_pause(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    # Temp files of this name left by a writer killed mid-write (writers hold the host
    # lock, so no other temp file is in use now).
    for stale in path.parent.glob(f".{path.name}.nodeagent-tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chown_quietly(fd: int, meta: FileMeta) -> None:
    # Only root can give a file away; an unprivileged test run keeps its own uid.
    try:
        os.fchown(fd, meta.uid, meta.gid)
    except PermissionError:
        if os.geteuid() == 0:
            raise


def _test_pause(path: Path) -> None:
    marker = os.environ.get(PAUSE_BEFORE_RENAME_ENV)
    if not marker or os.environ.get(PAUSE_NAME_ENV, path.name) != path.name:
        return
    Path(marker).write_text(str(os.getpid()))
    while Path(marker).exists():
        time.sleep(0.01)


@dataclasses.dataclass(frozen=True)
class Backups:
    """Timestamped copies of files before we change them, newest kept, oldest pruned."""

    directory: Path
    keep: int = 10

    def save(self, path: Path) -> Optional[Path]:
        """Copy ``path`` (if it exists) into the backup directory; return the copy."""
        try:
            data = path.read_bytes()
            meta = FileMeta.of(path)
        except FileNotFoundError:
            return None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        ns = time.time_ns() % 1_000_000_000
        dest = self.directory / f"{_slug(path)}.{stamp}.{ns:09d}.bak"
        write_atomic(dest, data.decode("utf-8", errors="surrogateescape"), meta)
        self._prune(path)
        return dest

    def list(self, path: Path) -> list[Path]:
        """Backups of ``path``, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{_slug(path)}.*.bak"))

    def newest(self, path: Path) -> Optional[Path]:
        found = self.list(path)
        return found[-1] if found else None

    def _prune(self, path: Path) -> None:
        found = self.list(path)
        for old in found[: max(0, len(found) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def _slug(path: Path) -> str:
    # The file's basename only: backups of different roots live in different backup dirs.
    return path.name.replace(os.sep, "_")


class HostLock:
    """An exclusive ``flock`` on a lock file (default /run/nodeagent/nodeagent.lock under
    the root), so two agents never interleave their edits. Waits at most ``timeout_s``."""

    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: Optional[int] = None

    def __enter__(self) -> HostLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StepFailed(
                        f"{self.path}: another nodeagent holds the lock "
                        f"(waited {self.timeout_s:.0f} s)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(path: Path, timeout_s: float = 30.0) -> Iterator[None]:
    with HostLock(path, timeout_s):
        yield
