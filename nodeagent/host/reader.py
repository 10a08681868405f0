"""The one reader of host files: regular files only, size-capped, decoded with a clear error.

Every config file the agent parses (daemon.json, containerd's TOML, the kubelet's args,
its own config, the kubeconfig, its state file) is read here, so a strange host fails the
same way everywhere: one line naming the file, never a wait and never a traceback.

* The file is opened ``O_NONBLOCK`` and checked with ``fstat`` *before* any read: a
  directory, FIFO, socket or device is refused at once (a FIFO would block a plain read).
* Its size is checked before reading, and the read stops one byte past the cap.
* Bytes are decoded as strict UTF-8; a UTF-16/UTF-32 byte-order mark is named as such.
* A file whose every line break is CRLF is handed over with LF line breaks and a
  :class:`Layout` that the writer uses to put the CRLFs back; a final newline is recorded
  the same way. Editors therefore only ever see ``\\n``.

Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import Optional

from nodeagent.errors import InputError, StepFailed

MAX_BYTES = 1024 * 1024  # every file the agent edits is a few KiB; a larger one is a mistake

_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


@dataclasses.dataclass(frozen=True)
class FileMeta:
    """Owner and permission bits of a file."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o644

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileMeta:
        return cls(uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode))


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a text file ends its lines, so a rewrite keeps the convention.

    ``newline`` is ``"\\r\\n"`` only when every line break in the file is CRLF (a file that
    mixes both is handed over as it is, ``\\r`` and all). ``final_newline`` is whether the
    file ends with a line break.
    """

    newline: str = "\n"
    final_newline: bool = True

    @classmethod
    def of(cls, text: str) -> Layout:
        if not text:
            return cls()
        lf = text.count("\n")
        crlf = text.count("\r\n")
        return cls(newline="\r\n" if lf and crlf == lf else "\n", final_newline=text.endswith("\n"))

    def normalize(self, text: str) -> str:
        """File text → the text editors see (LF line breaks)."""
        return text.replace("\r\n", "\n") if self.newline == "\r\n" else text

    def render(self, text: str) -> str:
        """Editor text → file text in this layout."""
        if not self.final_newline and text.endswith("\n"):
            text = text[:-1]
        return text.replace("\n", self.newline) if self.newline != "\n" else text


@dataclasses.dataclass(frozen=True)
class HostText:
    """A host file as read: its text (LF line breaks), layout and owner/mode."""

    shown: str  # the path as the operator knows it (the host path), for messages
    text: str
    layout: Layout
    meta: FileMeta


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def os_error(shown: str, e: OSError, doing: str = "cannot read") -> StepFailed | InputError:
    """One line for an ``OSError`` on ``shown``: what the operator must fix."""
    why = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM):
        return StepFailed(f"{shown}: {doing}: {why} (run as root, or fix the file's mode)")
    if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
        return InputError(f"{shown}: {doing}: {why}")
    return StepFailed(f"{shown}: {doing}: {why}")


def read_bytes(path: Path, shown: str, *, max_bytes: int = MAX_BYTES) -> Optional[bytes]:
    """The file's bytes, or None when it does not exist.

    Raises :class:`InputError` for anything but a regular file or a file over the cap,
    :class:`StepFailed` when it cannot be read (permissions, I/O).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENXIO:  # a FIFO with no writer, or a socket
            raise InputError(f"{shown}: not a regular file; refusing to read it") from None
        raise os_error(shown, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(
                f"{shown}: {_kind(st.st_mode)}, not a regular file; refusing to read it"
            )
        if st.st_size > max_bytes:
            raise InputError(
                f"{shown}: {st.st_size} bytes, larger than the {max_bytes // 1024} KiB this "
                "file may have; refusing to read it"
            )
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # grew while we read it (a pseudo-file reports size 0)
            raise InputError(
                f"{shown}: larger than the {max_bytes // 1024} KiB this file may have; "
                "refusing to read it"
            )
        return b"".join(chunks)
    except OSError as e:
        raise os_error(shown, e) from None
    finally:
        os.close(fd)


def decode(data: bytes, shown: str) -> str:
    """Strict UTF-8, with a line that says what the bytes are when they are not."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise InputError(f"{shown}:1:1: {name} text (byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            f"{shown}:{line}:{col}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "refusing to read it"
        ) from None


def read_text(path: Path, shown: str, *, max_bytes: int = MAX_BYTES) -> Optional[HostText]:
    """The host file at ``path`` (already under ``--root``) as :class:`HostText`, or None
    when it does not exist. ``shown`` names it in every message."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise os_error(shown, e) from None
    data = read_bytes(path, shown, max_bytes=max_bytes)
    if data is None:
        return None
    raw = decode(data, shown)
    layout = Layout.of(raw)
    meta = FileMeta.of_stat(st) if st is not None else FileMeta()
    return HostText(shown=shown, text=layout.normalize(raw), layout=layout, meta=meta)


def read_optional(path: Path, *, max_bytes: int = 64 * 1024) -> Optional[str]:
    """A small informational file (``/etc/os-release``, ``/proc/.../boot_id``, sysfs): its
    text, or None when it is absent or cannot be read as text. Never raises: a fact the
    agent can do without is never a reason to fail."""
    try:
        data = read_bytes(path, str(path), max_bytes=max_bytes)
    except (InputError, StepFailed):
        return None
    return None if data is None else data.decode("utf-8", errors="replace")


# --- shape checks ----------------------------------------------------------------------------

_KIND_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true or false",
    int: "an integer",
}


def type_name(value: object) -> str:
    """The JSON/TOML name of ``value``'s type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expect(value: object, kind: type, shown: str, keypath: str, what: str = "") -> None:
    """Raise ``InputError`` ``SHOWN: 'KEYPATH' must be KIND, not TYPE`` unless ``value`` is
    a ``kind`` (a bool is never an int here)."""
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        name = what or _KIND_NAMES.get(kind, kind.__name__)
        raise InputError(f"{shown}: '{keypath}' must be {name}, not {type_name(value)}")
