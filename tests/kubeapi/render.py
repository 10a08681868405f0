"""How objects are encoded in answers: alone, as list items, as Tables, as metadata only."""

from __future__ import annotations

from typing import Any

from .request import Output
from .resources import Resource


def typed(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the server encodes it alone: kind and apiVersion first."""
    out = {"kind": res.kind, "apiVersion": "v1"}
    out.update({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    return out


def untyped(obj: dict[str, Any]) -> dict[str, Any]:
    """A list item: typed lists' items carry no kind/apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def partial(obj: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """``PartialObjectMetadata``: just the metadata."""
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj.get("metadata", {}),
    }


def table(
    res: Resource,
    objs: list[dict[str, Any]],
    out: Output,
    rv: int,
    *,
    include_columns: bool = True,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A ``meta.k8s.io`` Table (server-side printing, as ``kubectl get`` asks for)."""
    rows = []
    for obj in objs:
        row: dict[str, Any] = {"cells": res.cells(obj)}
        if include_object == "Object":
            row["object"] = typed(res, obj)
        elif include_object != "None":
            row["object"] = partial(obj, out.version)
        rows.append(row)
    columns = [
        {"name": n, "type": t, "format": f, "description": n, "priority": p}
        for n, t, f, p in res.columns
    ]
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{out.version}",
        "metadata": {"resourceVersion": str(rv)},
        "columnDefinitions": columns if include_columns else None,
        "rows": rows,
    }


def render(res: Resource, obj: dict[str, Any], out: Output, rv: int) -> dict[str, Any]:
    """One object in the negotiated representation."""
    if out.kind == "table":
        return table(res, [obj], out, rv)
    if out.kind == "partial":
        return partial(obj, out.version)
    return typed(res, obj)
