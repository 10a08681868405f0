"""A minimal OpenAPI v3 document: the operations and their query parameters, no schemas.

kubectl 1.27+ fetches ``/openapi/v3`` before ``create``/``apply`` to learn whether the server
does field validation (``QueryParamVerifierV3`` looks for a ``fieldValidation`` query
parameter on the kind's PATCH operation); if it does, validation is left to the server.
``apply`` also checks whether the PATCH operation accepts strategic merge patch; without a
``requestBody`` it falls back to the patch metadata compiled into kubectl. With neither
document kubectl refuses to ``create -f`` unless ``--validate=false``. ``/openapi/v2`` is
not served (404), which kubectl tolerates when v3 is present.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import RESOURCES, Resource

WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
READ_PARAMS = ("pretty",)
LIST_PARAMS = (
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
)


def _params(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in names
    ]


def _op(res: Resource, action: str, params: tuple[str, ...], verb: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": ["core_v1"],
        "operationId": f"{verb}CoreV1{res.kind}",
        "parameters": _params(params),
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": res.kind},
    }
    return op


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for res in sorted(RESOURCES.values(), key=lambda r: r.name):
        base = (
            "/api/v1/namespaces/{namespace}/" + res.name
            if res.namespaced
            else "/api/v1/" + res.name
        )
        collection: dict[str, Any] = {"get": _op(res, "list", LIST_PARAMS, "list")}
        item: dict[str, Any] = {"get": _op(res, "get", READ_PARAMS, "read")}
        if "create" in res.verbs:
            collection["post"] = _op(res, "post", WRITE_PARAMS, "create")
        if "update" in res.verbs:
            item["put"] = _op(res, "put", WRITE_PARAMS, "replace")
        if "patch" in res.verbs:
            item["patch"] = _op(res, "patch", (*WRITE_PARAMS, "force"), "patch")
        if "delete" in res.verbs:
            item["delete"] = _op(
                res, "delete", ("dryRun", "gracePeriodSeconds", "propagationPolicy"), "delete"
            )
        paths[base] = collection
        paths[base + "/{name}"] = item
        if res.status_subresource:
            paths[base + "/{name}/status"] = {
                "get": _op(res, "get", READ_PARAMS, "read"),
                "put": _op(res, "put", WRITE_PARAMS, "replace"),
                "patch": _op(res, "patch", (*WRITE_PARAMS, "force"), "patch"),
            }
    return paths


def api_v1() -> dict[str, Any]:
    """The ``/openapi/v3/api/v1`` document."""
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": _paths(),
        "components": {"schemas": {}},
    }


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()[:128]


def index() -> dict[str, Any]:
    """The ``/openapi/v3`` discovery document pointing at each group-version's document."""
    return {
        "paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={_hash(api_v1())}"}}
    }
