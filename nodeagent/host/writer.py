"""The one writer of host files: lock → re-read and compare → backup → temp → fsync →
rename → fsync the directory, with a restore handle for every write.

Every file the agent changes on the host — daemon.json, containerd's config.toml and
drop-in, the kubelet's extra-args file, its own state file and metrics textfile — goes
through :func:`write_file`; the config edits go through a :class:`Session` of a
:class:`Writer`, which adds the host lock and backups. What it guarantees
(docs/reliability.md):

* a reader, or a crash at any instant, sees the old file or the new one, never half;
* owner and mode are kept and never widened; a file derived from another is never more
  readable than its source (:attr:`FileChange.limit`);
* a symlink is written through (its target changes, the link stays), resolved inside
  the ``--root``;
* the file's line-ending convention and final newline are kept (:class:`Layout`);
* ENOSPC, EROFS, EPERM, EACCES, EDQUOT are one line naming the file, with nothing changed
  and no temp file left; temp files of a killed writer are swept by the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Protocol

from nodeagent.errors import InputError, NodeagentError, StepFailed
from nodeagent.host.change import FileChange
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import FileMeta, os_error, read_bytes, read_text
from nodeagent.log import get_logger

log = get_logger(__name__)

TEMP_MARK = ".nodeagent-tmp-"

_HINTS = {
    errno.ENOSPC: "the filesystem is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.EPERM: "not permitted (immutable? see `lsattr`; or run as root)",
    errno.EACCES: "permission denied (run as root, or fix the directory's mode)",
}


def write_error(shown: str, e: OSError) -> NodeagentError:
    """One line for a failed write: what failed and that nothing changed. A path whose
    directory is a file is bad input (exit 2); the rest is the host's state (exit 1)."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return InputError(f"{shown}: cannot write: a component of the path is not a directory")
    if e.errno == errno.ENAMETOOLONG:
        return InputError(f"{shown}: cannot write: the name is too long")
    hint = _HINTS.get(e.errno or 0, e.strerror or str(e))
    return StepFailed(f"{shown}: cannot write: {hint}; nothing changed")


def _temp_name(name: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}-{os.urandom(4).hex()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temps(directory: Path) -> int:
    """Remove temp files a killed writer left in ``directory`` (their pid is gone)."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or TEMP_MARK not in name:
            continue
        tail = name.rsplit(TEMP_MARK, 1)[1]
        pid_text = tail.split("-", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    if removed:
        log.info("host.stale_temps_removed", directory=str(directory), count=removed)
    return removed


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chown(fd: int, meta: FileMeta) -> None:
    # Only root can give a file away; an unprivileged run keeps its own uid.
    try:
        os.fchown(fd, meta.uid, meta.gid)
    except PermissionError:
        if os.geteuid() == 0:
            raise


def write_file(path: Path, data: bytes, meta: FileMeta, shown: str = "") -> None:
    """Replace the regular file at ``path`` with ``data`` atomically: a temp file in the
    same directory, owner and mode set, fsync, rename, fsync the directory.

    ``path`` must already be the real file (symlinks resolved by the caller). On any
    failure the temp file is removed and the old file is untouched.
    """
    shown = shown or str(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(shown, e) from None
    sweep_temps(directory)
    tmp = directory / _temp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise write_error(shown, e) from None
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            _chown(fd, meta)
            os.fchmod(fd, meta.mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(shown, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename is done; a failed dir fsync changes nothing
        fsync_dir(directory)


def existing_meta(path: Path, default: FileMeta) -> FileMeta:
    """The owner and mode ``path`` has now (a rewrite keeps them), else ``default``."""
    try:
        return FileMeta.of_stat(os.stat(path))
    except OSError:
        return default


def own_meta(mode: int = 0o644) -> FileMeta:
    """This process's user and group, ``mode``: for files the agent itself owns."""
    return FileMeta(uid=os.geteuid(), gid=os.getegid(), mode=mode)


def remove_file(path: Path, shown: str = "") -> None:
    """Remove ``path`` (gone already is fine) and fsync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        raise StepFailed(
            f"{shown or path}: cannot remove: {_HINTS.get(e.errno or 0, e.strerror)}"
        ) from None
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


class HostLock:
    """An exclusive ``flock`` on the lock file (``lock_file``, under the root), so two
    agents never interleave their edits. Waits at most ``timeout_s``; every problem taking
    it is one line."""

    def __init__(self, path: Path, timeout_s: float = 30.0, shown: str = "") -> None:
        self.path = path
        self.shown = shown or str(path)
        self.timeout_s = timeout_s
        self._fd: Optional[int] = None

    def __enter__(self) -> HostLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                0o600,
            )
        except IsADirectoryError:
            raise InputError(f"{self.shown}: the lock file is a directory (lock_file)") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError(f"{self.shown}: the lock file is a symlink; refusing it") from None
            if e.errno in (errno.ENOTDIR, errno.EEXIST):
                raise InputError(
                    f"{self.shown}: cannot take the lock: a component of the path is not a "
                    "directory (lock_file)"
                ) from None
            raise os_error(self.shown, e, "cannot take the lock") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{self.shown}: the lock file is not a regular file (lock_file)")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise os_error(self.shown, e, "cannot take the lock") from None
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StepFailed(
                        f"{self.shown}: another nodeagent holds the lock "
                        f"(waited {self.timeout_s:.0f} s)"
                    ) from None
                time.sleep(0.05)
        with contextlib.suppress(OSError):  # the pid is a courtesy; a full /run must not stop us
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass(frozen=True)
class Backup:
    """One saved state of a file: a copy (``.bak``), or the record that it did not exist
    (``.absent``: undoing the change removes the file)."""

    path: Path

    @property
    def absent(self) -> bool:
        return self.path.suffix == ".absent"


@dataclasses.dataclass(frozen=True)
class Backups:
    """Timestamped states of files before the agent changed them, newest ``keep`` kept.

    Named ``<basename>.<UTC stamp>.<ns>.bak`` (or ``.absent``) in ``directory``. A
    rollback's copy of what it replaces is saved as ``.undone`` — kept for the operator,
    never restored by a later rollback, so rollback twice is rollback once.
    """

    directory: Path
    keep: int = 10
    shown: str = ""  # the directory's host path, for messages

    def _stamp(self, path: Path, suffix: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        ns = time.time_ns() % 1_000_000_000
        return self.directory / f"{path.name}.{stamp}.{ns:09d}.{suffix}"

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise write_error(f"{self.shown or self.directory} (backup_dir)", e) from None

    def save(self, path: Path, data: Optional[bytes], meta: FileMeta, suffix: str = "") -> Path:
        """Record ``path``'s state: ``data`` (None: it did not exist). Returns the record."""
        self._ensure_dir()
        sweep_temps(self.directory)
        kind = suffix or ("absent" if data is None else "bak")
        dest = self._stamp(path, kind)
        write_file(
            dest,
            data or b"",
            meta if data is not None else FileMeta(meta.uid, meta.gid, 0o600),
            f"{self.shown}/{dest.name}" if self.shown else str(dest),
        )
        self._prune(path, kind)
        return dest

    def list(self, path: Path) -> list[Backup]:
        """States of ``path`` a rollback may restore, oldest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        prefix = f"{path.name}."
        found = [
            self.directory / n
            for n in names
            if n.startswith(prefix)
            and (n.endswith(".bak") or n.endswith(".absent"))
            and n[len(prefix) :].split(".", 1)[0][:8].isdigit()
        ]
        return [Backup(p) for p in sorted(found, key=lambda p: p.name[len(prefix) :])]

    def newest(self, path: Path) -> Optional[Backup]:
        found = self.list(path)
        return found[-1] if found else None

    def _prune(self, path: Path, kind: str) -> None:
        if kind == "undone":
            prefix = f"{path.name}."
            try:
                names = sorted(
                    n
                    for n in os.listdir(self.directory)
                    if n.startswith(prefix) and n.endswith(".undone")
                )
            except OSError:
                return
            old = [self.directory / n for n in names[: max(0, len(names) - self.keep)]]
        else:
            found = self.list(path)
            old = [b.path for b in found[: max(0, len(found) - self.keep)]]
        for p in old:
            with contextlib.suppress(OSError):
                p.unlink()


@dataclasses.dataclass(frozen=True)
class Restore:
    """How to put one written file back as it was (the restore handle)."""

    path: Path  # the real file (symlinks resolved)
    shown: str
    data: Optional[bytes]  # None: the file did not exist
    meta: FileMeta

    def undo(self) -> None:
        if self.data is None:
            remove_file(self.path, self.shown)
        else:
            write_file(self.path, self.data, self.meta, self.shown)
        log.warning("host.restored", path=self.shown)


class WriterSettings(Protocol):
    """Where the writer keeps its lock and backups (the agent's config has these keys)."""

    @property
    def lock_file(self) -> str: ...
    @property
    def backup_dir(self) -> str: ...
    @property
    def backup_keep(self) -> int: ...


class Writer:
    """Config edits: the host lock, backups, and :func:`write_file`, under one ``--root``."""

    @classmethod
    def of(cls, root: HostRoot, settings: WriterSettings) -> Writer:
        """The writer the configured ``lock_file``, ``backup_dir`` and ``backup_keep`` say."""
        return cls(root, settings.lock_file, settings.backup_dir, settings.backup_keep)

    def __init__(
        self,
        root: HostRoot,
        lock_file: str,
        backup_dir: str,
        backup_keep: int = 10,
        lock_timeout_s: float = 30.0,
    ) -> None:
        self.root = root
        self.lock_file = lock_file
        # Both resolved inside the root: a symlinked backups directory never leads out.
        backups, _ = root.resolve(backup_dir)
        self.backups = Backups(backups, max(1, backup_keep), backup_dir)
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """Hold the host lock for a read-compare-write sequence."""
        lock, _ = self.root.resolve(self.lock_file)
        with HostLock(lock, self.lock_timeout_s, self.lock_file):
            yield Session(self)


class Session:
    """Writes under the host lock. Obtain from :meth:`Writer.session`."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.root = writer.root
        self.backups = writer.backups

    def real_path(self, host_path: str) -> tuple[Path, str]:
        """(the file on this machine, its host path) after symlinks, inside the root."""
        return self.root.resolve(host_path)

    def current(self, host_path: str) -> Optional[str]:
        """The file's text now (LF line breaks), None if absent."""
        found = read_text(self.real_path(host_path)[0], host_path)
        return None if found is None else found.text

    def raced(self, changes: Sequence[FileChange]) -> bool:
        """Whether any file differs from what the plan was made from (another writer)."""
        return any(self.current(c.host_path) != c.old for c in changes if c.changed)

    def apply(self, change: FileChange, *, backup: bool = True) -> Restore:
        """Write (or remove) one file; back it up first. Returns how to undo it."""
        real, real_host = self.real_path(change.host_path)
        shown = (
            change.host_path
            if real_host == change.host_path
            else f"{change.host_path} -> {real_host}"
        )
        old = read_bytes(real, shown)
        try:
            st = os.stat(real)
            meta: Optional[FileMeta] = FileMeta.of_stat(st)
        except FileNotFoundError:
            meta = None
        except OSError as e:
            raise os_error(shown, e) from None
        base = meta or (change.limit if change.limit is not None else own_meta())
        if backup:
            self.backups.save(real, old, base)
        restore = Restore(real, shown, old, base)
        if change.new is None:
            remove_file(real, shown)
            log.info("host.removed", path=shown)
            return restore
        mode = base.mode & (change.limit.mode if change.limit is not None else 0o7777)
        target = FileMeta(base.uid, base.gid, mode)
        write_file(real, change.layout.render(change.new).encode("utf-8"), target, shown)
        log.info("host.written", path=shown, mode=oct(mode))
        return restore

    def apply_all(self, changes: Sequence[FileChange]) -> list[Restore]:
        """Apply ``changes`` in order; if one fails, undo the ones before it, then raise."""
        done: list[Restore] = []
        try:
            for c in changes:
                if c.changed:
                    done.append(self.apply(c))
        except BaseException:
            undo_all(done)
            raise
        return done


def undo_all(restores: Sequence[Restore]) -> None:
    """Undo writes newest first; a failure to undo one is logged, the rest still run."""
    for r in reversed(restores):
        try:
            r.undo()
        except NodeagentError as e:
            log.error("host.restore_failed", path=r.shown, error=str(e))
