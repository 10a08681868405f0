"""Reading and writing daemon.json without losing anything the operator wrote.

Pure functions. Parsing keeps key order, refuses what dockerd itself would choke on or
what would silently lose data (duplicate keys: Go's decoder keeps the last, so the first
is invisible), and reports ``PATH:LINE:COL: what is wrong``. Rendering keeps the file's
indentation style and ends with a newline.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import attrs

from nodeagent.errors import InputError

MAX_BYTES = 1024 * 1024  # daemon.json is a few hundred bytes; a larger file is a mistake
DEFAULT_INDENT = "    "


@attrs.frozen
class JSONDoc:
    """A parsed JSON object file and how it was laid out."""

    data: dict[str, Any]
    indent: Optional[str]  # None: everything on one line


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def parse(text: str, name: str) -> JSONDoc:
    """Parse a JSON object file. Empty (or whitespace only) is ``{}``."""
    if len(text.encode("utf-8", errors="surrogateescape")) > MAX_BYTES:
        raise InputError(f"{name}:1:1: larger than {MAX_BYTES // 1024} KiB; refusing to edit it")
    if text.startswith("\ufeff"):
        raise InputError(
            f"{name}:1:1: starts with a UTF-8 byte-order mark, which dockerd cannot parse; "
            "remove it"
        )
    if not text.strip():
        return JSONDoc(data={}, indent=DEFAULT_INDENT)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except _Duplicate as d:
        line, col = _duplicate_position(text, d.key)
        raise InputError(
            f"{name}:{line}:{col}: duplicate key {d.key!r} (dockerd would silently keep only "
            "the last one)"
        ) from None
    if not isinstance(data, dict):
        line, col = _position(text, len(text) - len(text.lstrip()))
        raise InputError(f"{name}:{line}:{col}: the top level must be a JSON object")
    return JSONDoc(data=data, indent=detect_indent(text))


def _duplicate_position(text: str, key: str) -> tuple[int, int]:
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    hits = [m.start() for m in pattern.finditer(text)]
    return _position(text, hits[1] if len(hits) > 1 else 0)


def key_position(text: str, key: str) -> tuple[int, int]:
    """Line and column of the first ``"key":`` in ``text`` (1:1 if not found)."""
    m = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    return _position(text, m.start() if m else 0)


def detect_indent(text: str) -> Optional[str]:
    """The unit of indentation: a tab, N spaces, or None for a one-line document."""
    if "\n" not in text.strip():
        return None
    widths = []
    for line in text.splitlines():
        stripped = line.lstrip(" \t")
        if not stripped or len(stripped) == len(line):
            continue
        lead = line[: len(line) - len(stripped)]
        if lead.startswith("\t"):
            return "\t"
        widths.append(len(lead))
    return " " * min(widths) if widths else DEFAULT_INDENT


def render(doc: JSONDoc) -> str:
    """The document as text in its original style, ending with a newline."""
    if doc.indent is None:
        return json.dumps(doc.data, ensure_ascii=False) + "\n"
    return json.dumps(doc.data, indent=doc.indent, ensure_ascii=False) + "\n"
