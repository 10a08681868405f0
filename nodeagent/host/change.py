"""A planned change to one host file: pure data, and its diff for ``--dry-run``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from nodeagent.host.reader import FileMeta, HostText, Layout


@dataclasses.dataclass(frozen=True)
class FileChange:
    """One file's old and new text (LF line breaks; ``layout`` puts the file's own back).

    ``old`` is None when the file does not exist; ``new`` is None when the change removes
    it. ``limit`` caps the new file's permission bits and names its owner when the file's
    content comes from another file (a drop-in copied from a 0600 config.toml is 0600):
    a derived file is never more readable than its source.
    """

    path: Path  # the path on this machine (already under --root)
    host_path: str  # the path as the host sees it, for messages and diffs
    old: Optional[str]
    new: Optional[str]
    layout: Layout = dataclasses.field(default_factory=Layout)
    limit: Optional[FileMeta] = None
    mode: Optional[int] = None  # the file's permission bits now (None: absent)

    @classmethod
    def of(
        cls,
        path: Path,
        host_path: str,
        current: Optional[HostText],
        new: Optional[str],
        limit: Optional[FileMeta] = None,
    ) -> FileChange:
        """The change from what was read (``current``, None if absent) to ``new``."""
        return cls(
            path=path,
            host_path=host_path,
            old=current.text if current is not None else None,
            new=new,
            layout=current.layout if current is not None else Layout(),
            limit=limit,
            mode=current.meta.mode if current is not None else None,
        )

    @property
    def narrows(self) -> bool:
        """Whether the file's mode is wider than its sources' and must be narrowed."""
        return (
            self.limit is not None
            and self.mode is not None
            and self.new is not None
            and self.mode & ~self.limit.mode != 0
        )

    @property
    def changed(self) -> bool:
        return self.old != self.new or self.narrows

    def diff(self) -> str:
        """A unified diff, ``a/`` the old file, ``b/`` the new one (and a mode narrowed)."""
        import difflib

        text = "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                (self.new or "").splitlines(keepends=True),
                fromfile=f"a{self.host_path}" if self.old is not None else "/dev/null",
                tofile=f"b{self.host_path}" if self.new is not None else "/dev/null",
            )
        )
        if self.narrows and self.limit is not None and self.mode is not None:
            narrowed = self.mode & self.limit.mode
            text += f"# {self.host_path}: mode {self.mode:04o} -> {narrowed:04o} (as its sources)\n"
        return text
