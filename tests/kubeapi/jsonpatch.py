"""JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386), as evanphx/json-patch v4 applies them.

A malformed JSON Patch document is the client's fault at decode time (400); an operation
that does not apply (missing path, failed ``test``) surfaces from the real server as a
generic 422, which the caller maps through :class:`OperationError`.
"""

from __future__ import annotations

import copy
from typing import Any, Union

Container = Union[dict[str, Any], list[Any]]


class DecodeError(ValueError):
    """The patch is not a JSON Patch document (HTTP 400)."""


class OperationError(ValueError):
    """An operation could not be applied (HTTP 422)."""


def merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise OperationError(f"invalid path {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise OperationError(f'JSON pointer must be empty or start with a "/": {path}')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Container, str]:
    node = doc
    for p in parts[:-1]:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            raise OperationError(f"doc is missing path: {path}: missing value")
    if not isinstance(node, (dict, list)):
        raise OperationError(f"doc is missing path: {path}: missing value")
    return node, parts[-1]


def _index(container: list[Any], key: str, path: str, *, allow_end: bool) -> int:
    if key == "-" and allow_end:
        return len(container)
    try:
        idx = int(key)
    except ValueError:
        raise OperationError(f"Unable to access invalid index: {key}: invalid index") from None
    limit = len(container) + (1 if allow_end else 0)
    if idx < -len(container) or idx >= limit:
        raise OperationError(f"Unable to access invalid index: {idx}: invalid index")
    return idx + len(container) if idx < 0 else idx


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, key = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if key not in parent:
            raise OperationError(f"Unable to get nonexistent key: {key}: missing value")
        return parent[key]
    return parent[_index(parent, key, path, allow_end=False)]


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, key = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[key] = value
    else:
        parent.insert(_index(parent, key, path, allow_end=True), value)
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise OperationError("unable to remove the whole document")
    parent, key = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if key not in parent:
            raise OperationError(f"Unable to remove nonexistent key: {key}: missing value")
        del parent[key]
    else:
        del parent[_index(parent, key, path, allow_end=False)]
    return doc


def _replace(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, key = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if key not in parent:
            raise OperationError(
                f"replace operation does not apply: doc is missing key: {path}: missing value"
            )
        parent[key] = value
    else:
        parent[_index(parent, key, path, allow_end=False)] = value
    return doc


def _test(doc: Any, path: str, value: Any) -> None:
    try:
        current = _get(doc, path)
    except OperationError:
        if value is None:
            return
        raise OperationError(f"testing value {path} failed: test failed") from None
    if current != value or (isinstance(current, bool) != isinstance(value, bool)):
        raise OperationError(f"testing value {path} failed: test failed")


def decode(patch: Any) -> list[dict[str, Any]]:
    """Check the document shape: a list of operation objects."""
    if not isinstance(patch, list):
        kind = "object" if isinstance(patch, dict) else type(patch).__name__
        raise DecodeError(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
    for op in patch:
        if not isinstance(op, dict):
            raise DecodeError("json: cannot unmarshal into Go value of type jsonpatch.Operation")
    return patch


def _str(op: dict[str, Any], key: str) -> str:
    value = op.get(key)
    if not isinstance(value, str):
        raise OperationError(f"operation {op.get('op')!r} has no valid {key!r}")
    return value


def apply_json_patch(doc: Any, patch: Any) -> Any:
    """RFC 6902: apply each operation in order to a copy of ``doc``."""
    ops = decode(patch)
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        path = _str(op, "path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise OperationError(f"missing value for {kind} operation")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            doc = _replace(doc, path, copy.deepcopy(op["value"]))
        elif kind == "move":
            value = _get(doc, _str(op, "from"))
            doc = _remove(doc, _str(op, "from"))
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, _str(op, "from"))))
        elif kind == "test":
            _test(doc, path, op["value"])
        else:
            raise OperationError(f"Unexpected kind: {kind}")
    return doc
