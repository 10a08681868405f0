"""Reading and writing daemon.json without losing anything the operator wrote.

Pure functions on text (the file is read by :mod:`nodeagent.host.reader`). Parsing keeps
key order, refuses what dockerd itself would choke on or what would silently lose data
(duplicate keys: Go's decoder keeps the last, so the first is invisible), refuses nesting
deeper than :data:`MAX_DEPTH` before the recursive parser sees it, and reports
``PATH:LINE:COL: what is wrong``. Rendering keeps the file's indentation style and ends
with a newline. No I/O: never reads or writes a file itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

from nodeagent.errors import InputError

DEFAULT_INDENT = "    "
# daemon.json is two or three levels deep; Python's parser recurses per level and fails
# with RecursionError near 1000, so depth is bounded first, on the raw text.
MAX_DEPTH = 64
# A JSON string (skipped: brackets inside it do not nest) or one bracket.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


@dataclasses.dataclass(frozen=True)
class JSONDoc:
    """A parsed JSON object file and how it was laid out."""

    data: dict[str, Any]
    indent: Optional[str]  # None: everything on one line
    source: str = ""  # the text it was parsed from ("" for a new file)


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
    if text.startswith("\ufeff"):
        raise InputError(
            f"{name}:1:1: starts with a UTF-8 byte-order mark, which dockerd cannot parse; "
            "remove it"
        )
    if not text.strip():
        return JSONDoc(data={}, indent=DEFAULT_INDENT)
    _check_depth(text, name)
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
    except ValueError:  # Python's int(): a literal over sys.get_int_max_str_digits() digits
        raise InputError(
            f"{name}: a number with thousands of digits; dockerd cannot read it either"
        ) from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{name}: a string holds an unpaired UTF-16 surrogate escape (like \\ud800), "
            "which is no character; dockerd would silently replace it"
        ) from None
    if not isinstance(data, dict):
        line, col = _position(text, len(text) - len(text.lstrip()))
        raise InputError(f"{name}:{line}:{col}: the top level must be a JSON object")
    return JSONDoc(data=data, indent=detect_indent(text), source=text)


def _check_depth(text: str, name: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, naming where it goes too deep."""
    depth = 0
    for m in _TOKENS.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line, col = _position(text, m.start())
                raise InputError(
                    f"{name}:{line}:{col}: nested deeper than {MAX_DEPTH} levels; "
                    "refusing to read it"
                )
        elif token in "]}":
            depth -= 1


def _duplicate_position(text: str, key: str) -> tuple[int, int]:
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    hits = [m.start() for m in pattern.finditer(text)]
    return _position(text, hits[1] if len(hits) > 1 else 0)


def key_position(text: str, *keys: str) -> tuple[int, int]:
    """Line and column of ``"keys[-1]":``, found as the first ``"keys[0]":``, then the
    first ``"keys[1]":`` after it, and so on (1:1 if not found). A heuristic for messages:
    exact for the files people write (each key once on its path)."""
    pos = 0
    for key in keys:
        m = re.compile(re.escape(json.dumps(key)) + r"\s*:").search(text, pos)
        if m is None:
            break
        pos = m.start()
    return _position(text, pos)


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


def _dump(value: Any, indent: Optional[str], lead: str = "") -> str:
    if indent is None:
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, indent=indent, ensure_ascii=False).replace("\n", "\n" + lead)


@dataclasses.dataclass(frozen=True)
class _Member:
    key: str
    start: int  # the key's opening quote
    value_start: int
    value_end: int


def _members(text: str) -> Optional[list[_Member]]:
    """The top-level members of a JSON object text with their spans (None if not one)."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    i = ws.match(text, 0).end()  # type: ignore[union-attr]
    if text[i : i + 1] != "{":
        return None
    i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
    out: list[_Member] = []
    while text[i : i + 1] == '"':
        start = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = ws.match(text, i).end()  # type: ignore[union-attr]
        if text[i : i + 1] != ":":
            return None
        vstart = ws.match(text, i + 1).end()  # type: ignore[union-attr]
        _, vend = decoder.raw_decode(text, vstart)
        out.append(_Member(key, start, vstart, vend))
        i = ws.match(text, vend).end()  # type: ignore[union-attr]
        if text[i : i + 1] != ",":
            break
        i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
    return out


def render(doc: JSONDoc) -> str:
    """The document as text, ending with a newline.

    Against the text it was parsed from, the edit is minimal: members whose value is
    unchanged keep their exact bytes, a changed value is re-rendered in place, new members
    go after the last one in the file's indentation style. So a diff shows only what the
    agent changed. Removing a member, or a file with no members, renders it whole.
    """
    old = json.loads(doc.source) if doc.source.strip() else {}
    members = _members(doc.source) if old else None
    if not members or not set(old) <= set(doc.data):
        return _dump(doc.data, doc.indent) + "\n"
    text = doc.source
    out: list[str] = []
    pos = 0
    for m in members:
        if doc.data[m.key] != old[m.key]:
            line_start = text.rfind("\n", 0, m.start) + 1
            lead = text[line_start : m.start]
            lead = lead if not lead.strip() else (doc.indent or "")
            out += [text[pos : m.value_start], _dump(doc.data[m.key], doc.indent, lead)]
            pos = m.value_end
    last = members[-1]
    out.append(text[pos : last.value_end])
    for key in doc.data:
        if key in old:
            continue
        if doc.indent is None:
            out.append(f", {json.dumps(key, ensure_ascii=False)}: {_dump(doc.data[key], None)}")
        else:
            line_start = text.rfind("\n", 0, last.start) + 1
            lead = text[line_start : last.start]
            lead = lead if not lead.strip() else doc.indent
            value = _dump(doc.data[key], doc.indent, lead)
            out.append(f",\n{lead}{json.dumps(key, ensure_ascii=False)}: {value}")
    out.append(text[last.value_end :].rstrip() + "\n")
    return "".join(out)
