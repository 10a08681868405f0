"""Strategic merge patch, following ``k8s.io/apimachinery/pkg/util/strategicpatch`` (apply side).

Rules, driven by the ``patchStrategy``/``patchMergeKey`` tags in :mod:`.schema`:

* maps and structs merge recursively; ``null`` deletes a key;
* lists tagged ``merge`` with a merge key merge element-wise by that key; untagged lists
  (e.g. ``spec.taints``) are replaced wholesale; ``merge`` lists of scalars are a union;
* directives: ``$patch: replace|delete`` in a map, ``{"$patch": "delete", <key>: v}`` and
  ``{"$patch": "replace"}`` elements in a merge list, ``$deleteFromPrimitiveList/<field>``,
  ``$setElementOrder/<field>`` (ordering honoured like the real merge) and ``$retainKeys``.

Errors carry the HTTP code the real server maps them to (400 for malformed directives,
500 for a missing merge key, as ``interpretStrategicMergePatchError`` leaves those raw).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from .schema import ListOf, Scalar, Struct, Type, lookup

DIRECTIVE = "$patch"
DELETE_FROM_PRIMITIVE = "$deleteFromPrimitiveList"
SET_ELEMENT_ORDER = "$setElementOrder"
RETAIN_KEYS = "$retainKeys"

ERR_BAD_PRIMITIVE = "invalid patch format of primitive list"  # ErrBadPatchFormatForPrimitiveList
ERR_BAD_RETAIN = "invalid patch format of retainKeys"  # ErrBadPatchFormatForRetainKeys
ERR_BAD_ORDER = "invalid patch format of setElementOrder list"  # ...ForSetElementOrderList


class PatchError(Exception):
    """A patch that cannot be applied; ``code`` is the HTTP status the server answers with."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


def go_format(v: Any) -> str:
    """Go's ``%v`` for decoded JSON, as it appears in apimachinery's error messages."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_format(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_format(x) for x in v) + "]"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def apply(original: dict[str, Any], patch: Any, schema: Struct) -> dict[str, Any]:
    """``original`` with the strategic merge ``patch`` applied (inputs are not modified)."""
    if not isinstance(patch, dict):
        raise PatchError("invalid JSON document")
    return _merge_map(copy.deepcopy(original), copy.deepcopy(patch), schema)


def _field_meta(t: Optional[Type], key: str) -> tuple[Optional[Type], str, str]:
    sub, f = lookup(t, key)
    if f is None:
        return sub, "", ""
    strategies = [s for s in f.strategy.split(",") if s and s != "retainKeys"]
    return sub, (strategies[0] if strategies else ""), f.merge_key


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], t: Optional[Type]
) -> dict[str, Any]:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        raise PatchError(f"Unknown patch type: {directive} in map: {go_format(patch)}")
    _retain_keys(original, patch)
    _set_element_orders(original, patch, t)
    for key, pv in list(patch.items()):
        is_delete_list = key.startswith(DELETE_FROM_PRIMITIVE)
        if is_delete_list:
            key = _strip_prefix(key, DELETE_FROM_PRIMITIVE, ERR_BAD_PRIMITIVE)
        if pv is None:
            original.pop(key, None)
            continue
        if key not in original or type(original[key]) is not type(pv):
            if not is_delete_list:
                _drop_nulls(pv)
                kept, keep = _remove_directives(pv)
                if keep:
                    original[key] = kept
                else:
                    original.pop(key, None)
            continue
        sub, strategy, merge_key = _field_meta(t, key)
        ov = original[key]
        if isinstance(ov, dict):
            original[key] = pv if strategy == "replace" else _merge_map(ov, pv, sub)
        elif isinstance(ov, list):
            if strategy == "merge" or is_delete_list:
                original[key] = _merge_list(ov, pv, sub, merge_key, is_delete_list)
            else:
                original[key] = pv  # no strategy: replaced verbatim, as mergeSliceHandler does
        else:
            original[key] = pv
    return original


def _strip_prefix(key: str, prefix: str, err: str) -> str:
    head, sep, rest = key.partition("/")
    if not sep or head != prefix:
        raise PatchError(err)
    return rest


def _retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if RETAIN_KEYS not in patch:
        return
    keys = patch.pop(RETAIN_KEYS)
    if not isinstance(keys, list):
        raise PatchError(ERR_BAD_RETAIN)
    retained = set(keys)
    for k, v in patch.items():
        if v is None or k.startswith((DELETE_FROM_PRIMITIVE, SET_ELEMENT_ORDER)):
            continue
        if k not in retained:
            raise PatchError(ERR_BAD_RETAIN)
    for k in list(original):
        if k not in retained:
            del original[k]


def _drop_nulls(v: Any) -> None:
    """``discardNullValuesFromPatch``: nulls under a newly added key mean nothing."""
    if isinstance(v, dict):
        for k in [k for k, x in v.items() if x is None]:
            del v[k]
        for x in v.values():
            _drop_nulls(x)
    elif isinstance(v, list):
        for x in v:
            _drop_nulls(x)


def _remove_directives(v: Any) -> tuple[Any, bool]:
    """Strip directive markers from a value taken verbatim; (value, keep)."""
    if isinstance(v, dict):
        if DIRECTIVE in v:
            return None, False
        for k in list(v):
            if k.startswith((DELETE_FROM_PRIMITIVE, SET_ELEMENT_ORDER)) or k == RETAIN_KEYS:
                del v[k]
                continue
            v[k], keep = _remove_directives(v[k])
            if not keep:
                del v[k]
        return v, True
    if isinstance(v, list):
        out = []
        for x in v:
            nx, keep = _remove_directives(x)
            if keep:
                out.append(nx)
        return out, True
    return v, True


def _key_of(item: Any, merge_key: str) -> Any:
    if not merge_key:
        return item
    if not isinstance(item, dict):
        raise PatchError(f"value for key {merge_key} is not a map", 500)
    if merge_key not in item:
        raise PatchError(
            f"map: {go_format(item)} does not contain declared merge key: {merge_key}", 500
        )
    return item[merge_key]


def _index(items: list[Any], item: Any, merge_key: str) -> int:
    want = _key_of(item, merge_key)
    for i, x in enumerate(items):
        if (x.get(merge_key) if merge_key and isinstance(x, dict) else x) == want:
            return i
    return -1


def _elem_kind(*lists: list[Any]) -> str:
    kinds = {type(x).__name__ for lst in lists for x in lst}
    if "list" in kinds:
        raise PatchError("lists of lists are not supported", 422)
    if len(kinds) > 1:
        raise PatchError(f"list element types are not identical: {list(lists)}", 500)
    return kinds.pop() if kinds else ""


def _merge_list(
    original: list[Any],
    patch: list[Any],
    elem: Optional[Type],
    merge_key: str,
    is_delete_list: bool,
) -> list[Any]:
    if not original and not patch:
        return original
    kind = _elem_kind(original, patch)
    if kind != "dict":
        if is_delete_list:
            return [x for x in original if x not in patch]
        merged = []
        for x in original + patch:
            if x not in merged:
                merged.append(x)
        key = ""
    else:
        if not merge_key:
            raise PatchError(f"cannot merge lists without merge key for {_name(elem)}", 500)
        original, patch = _special_elements(original, patch, merge_key)
        merged = list(original)
        for item in patch:
            i = _index(merged, item, merge_key)
            if i >= 0:
                merged[i] = _merge_map(merged[i], item, elem)
            else:
                merged.append(_remove_directives(item)[0])
        key = merge_key
    in_patch = [x for x in merged if _index(patch, x, key) >= 0]
    server_only = [x for x in merged if _index(patch, x, key) < 0]
    return _normalize_order(in_patch, server_only, patch, original, key)


def _name(t: Optional[Type]) -> str:
    if isinstance(t, Struct):
        return t.name
    if isinstance(t, (ListOf, Scalar)):
        return repr(t)
    return ""


def _special_elements(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    """Apply ``$patch: delete`` elements; a ``$patch: replace`` element replaces the list."""
    plain = []
    replace = False
    for item in patch:
        if DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[DIRECTIVE]
        if directive == "delete":
            value = _key_of(item, merge_key)
            original = [x for x in original if _key_of(x, merge_key) != value]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch", 500)
        else:
            raise PatchError(f"Unknown patch type: {directive} in map: {go_format(item)}", 500)
    if replace:
        return plain, []
    return original, plain


def _sort_by(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    """``normalizeSliceOrder``: stable sort of items found in ``order`` by their position there."""
    deletes = [x for x in items if isinstance(x, dict) and x.get(DIRECTIVE) == "delete"]
    rest = [x for x in items if not (isinstance(x, dict) and x.get(DIRECTIVE) == "delete")]
    positions = {id(x): _index(order, x, merge_key) for x in rest}
    placed = sorted((x for x in rest if positions[id(x)] >= 0), key=lambda x: positions[id(x)])
    it = iter(placed)
    out = [next(it) if positions[id(x)] >= 0 else x for x in rest]
    return out + deletes


def _normalize_order(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    merge_key: str,
) -> list[Any]:
    """``normalizeElementOrder`` + ``mergeSortedSlice``: patch order, then live order."""
    left = _sort_by(server_only, server_order, merge_key)
    right = _sort_by(patch_items, patch_order, merge_key)
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li, ri = (
                _index(server_order, left[i], merge_key),
                _index(server_order, right[j], merge_key),
            )
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _set_element_orders(original: dict[str, Any], patch: dict[str, Any], t: Optional[Type]) -> None:
    """``mergePatchIntoOriginal``: merge each ``$setElementOrder/<f>`` list with its field."""
    for key in [k for k in patch if k.startswith(SET_ELEMENT_ORDER)]:
        order = patch.pop(key)
        if not isinstance(order, list):
            raise PatchError(ERR_BAD_ORDER)
        field = _strip_prefix(key, SET_ELEMENT_ORDER, ERR_BAD_ORDER)
        sub, strategy, merge_key = _field_meta(t, field)
        has_orig, has_patch = field in original, field in patch
        orig_list = original.get(field) if has_orig else []
        patch_list = patch.get(field) if has_patch else []
        if not isinstance(orig_list, list) or not isinstance(patch_list, list):
            raise PatchError(ERR_BAD_ORDER)
        _check_order(patch_list, order, merge_key)
        if has_orig and not has_patch:
            merged = orig_list
        elif has_patch and not has_orig:
            merged = _remove_directives(patch_list)[0]
        elif has_orig and has_patch:
            if strategy == "merge":
                merged = _merge_list(orig_list, patch_list, sub, merge_key, False)
            else:
                merged = _remove_directives(patch_list)[0]
        else:
            continue
        _elem_kind(orig_list, patch_list)
        in_order = [x for x in merged if _index(order, x, merge_key) >= 0]
        server_only = [x for x in merged if _index(order, x, merge_key) < 0]
        original[field] = _normalize_order(in_order, server_only, order, orig_list, merge_key)
        patch.pop(field, None)


def _check_order(patch_list: list[Any], order: list[Any], merge_key: str) -> None:
    """``validatePatchWithSetOrderList``: patch items must appear in the order list, in order."""
    if not order or not patch_list:
        return
    items = [x for x in patch_list if not (isinstance(x, dict) and DIRECTIVE in x)]
    pi = oi = 0
    while pi < len(items) and oi < len(order):
        if _key_of(items[pi], merge_key) == _key_of(order[oi], merge_key):
            pi += 1
        oi += 1
    if pi < len(items):
        raise PatchError(
            f"The order in patch list:\n{patch_list}\n doesn't match {SET_ELEMENT_ORDER} "
            f"list:\n{order}\n"
        )
