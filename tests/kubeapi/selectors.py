"""Label and field selectors, parsed and matched like ``k8s.io/apimachinery/pkg/{labels,fields}``.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``,
comma-separated (all must hold). Field selectors: ``f=v``, ``f==v``, ``f!=v`` over the
fields a resource supports; an unsupported field is ``field label not supported: f``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable

from .status import bad_request

Requirement = Callable[[Mapping[str, str]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _equality(key: str, value: str, *, negate: bool) -> Requirement:
    def match(m: Mapping[str, str]) -> bool:
        return (m.get(key) != value) if negate else (key in m and m[key] == value)

    return match


def _label_requirement(term: str) -> Requirement:
    for op in ("==", "!=", "="):
        if op in term and not re.search(r"\s(in|notin)\s*\(", term):
            key, _, value = term.partition(op)
            key, value = key.strip(), value.strip()
            if not key or "=" in value or "!" in key:
                break
            return _equality(key, value, negate=op == "!=")
    m = _SET_RE.match(term)
    if not m or (m.group(1) and m.group(3)):
        raise bad_request(
            f"unable to parse requirement: found '{term.strip()}', expected: identifier"
        )
    neg, key, op, values = m.group(1), m.group(2), m.group(3), m.group(4)
    if op:
        allowed = {v.strip() for v in values.split(",")}
        if op == "in":
            return lambda labels: key in labels and labels[key] in allowed
        return lambda labels: labels.get(key) not in allowed
    if neg:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def parse_labels(text: str) -> Requirement:
    """A predicate over a labels map; the empty selector matches everything."""
    if not text.strip():
        return lambda labels: True
    reqs = [_label_requirement(t) for t in _split_top(text)]
    return lambda labels: all(r(labels) for r in reqs)


def _unescape_split(text: str, sep: str) -> list[str]:
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def parse_fields(text: str, supported: frozenset[str]) -> Requirement:
    """A predicate over a resource's selectable fields."""
    if not text.strip():
        return lambda fields: True
    reqs: list[Requirement] = []
    for term in _unescape_split(text, ","):
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        key = key.strip()
        if key not in supported:
            raise bad_request(f"field label not supported: {key}")
        reqs.append(_equality(key, value, negate=op == "!="))
    return lambda fields: all(r(fields) for r in reqs)
