"""Discovery documents: ``/version``, ``/api``, ``/api/v1``, ``/apis``, legacy and aggregated.

kubectl 1.26+ asks ``/api`` and ``/apis`` for aggregated discovery
(``application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList``) and falls back to
the legacy documents when the server answers plain ``application/json``; both are served.
"""

from __future__ import annotations

from typing import Any

from .resources import RESOURCES, Resource

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T17:59:15Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}

AGGREGATED_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
STATUS_VERBS = ["get", "patch", "update"]


def wants_aggregated(accept: str) -> bool:
    """Whether the Accept header asks for apidiscovery.k8s.io/v2 (before any plain JSON)."""
    for part in accept.split(","):
        params = {p.strip() for p in part.split(";")[1:]}
        if {"g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"} <= params:
            return True
        if part.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _legacy_entry(r: Resource) -> list[dict[str, Any]]:
    entry = {
        "name": r.name,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": list(r.verbs),
        "shortNames": list(r.short_names),
        "storageVersionHash": r.storage_hash,
    }
    out = [entry]
    if r.status_subresource:
        out.append(
            {
                "name": f"{r.name}/status",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }
        )
    return out


def api_v1() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            e for r in sorted(RESOURCES.values(), key=lambda r: r.name) for e in _legacy_entry(r)
        ],
    }


def api_groups() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


def _aggregated_entry(r: Resource) -> dict[str, Any]:
    kind = {"group": "", "version": "v1", "kind": r.kind}
    entry: dict[str, Any] = {
        "resource": r.name,
        "responseKind": kind,
        "scope": "Namespaced" if r.namespaced else "Cluster",
        "singularResource": r.singular,
        "verbs": list(r.verbs),
        "shortNames": list(r.short_names),
    }
    if r.status_subresource:
        entry["subresources"] = [
            {"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}
        ]
    return entry


def aggregated_api() -> dict[str, Any]:
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [
            {
                "metadata": {"creationTimestamp": None},
                "versions": [
                    {
                        "version": "v1",
                        "resources": [
                            _aggregated_entry(r)
                            for r in sorted(RESOURCES.values(), key=lambda r: r.name)
                        ],
                        "freshness": "Current",
                    }
                ],
            }
        ],
    }


def aggregated_apis() -> dict[str, Any]:
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [],
    }
