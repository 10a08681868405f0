"""The served resources: names, kinds, schemas, selectable fields, validation and Table columns.

Table rows follow ``pkg/printers/internalversion`` (what ``kubectl get`` prints when the
server does the printing): nodes show STATUS (Ready/NotReady/Unknown, SchedulingDisabled),
ROLES from ``node-role.kubernetes.io/*``, AGE like ``duration.HumanDuration``, VERSION.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Callable, Optional

from . import schema, validation
from .schema import Struct

Cell = Any
Column = tuple[str, str, str, int]  # name, type, format, priority


@dataclasses.dataclass(frozen=True)
class Resource:
    """One REST resource under ``/api/v1``."""

    name: str
    kind: str
    singular: str
    namespaced: bool
    schema: Struct
    short_names: tuple[str, ...]
    verbs: tuple[str, ...]
    fields: Callable[[dict[str, Any]], dict[str, str]]
    validate: Callable[[dict[str, Any]], list[validation.Cause]]
    columns: tuple[Column, ...]
    cells: Callable[[dict[str, Any]], list[Cell]]
    status_subresource: bool = False
    storage_hash: str = ""

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def selectable(self) -> frozenset[str]:
        """Field selector keys this resource supports."""
        probe = self.fields({"metadata": {}})
        return frozenset(probe)


def human_duration(seconds: float) -> str:
    """``duration.HumanDuration``: ``45s``, ``3m20s``, ``5h2m``, ``3d4h``, ``2y10d``..."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: Optional[str]) -> str:
    """``translateTimestampSince``: ``<unknown>`` for a missing time."""
    if not timestamp:
        return "<unknown>"
    then = schema.parse_time(timestamp)
    return human_duration((dt.datetime.now(dt.timezone.utc) - then).total_seconds())


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


# --- nodes ---------------------------------------------------------------------------------


def _node_fields(obj: dict[str, Any]) -> dict[str, str]:
    unschedulable = bool((obj.get("spec") or {}).get("unschedulable"))
    return {
        "metadata.name": _meta(obj).get("name", ""),
        "spec.unschedulable": str(unschedulable).lower(),
    }


def _node_cells(obj: dict[str, Any]) -> list[Cell]:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = "Unknown"
    if "Ready" in conditions:
        state = "Ready" if conditions["Ready"] == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = _meta(obj).get("labels") or {}
    roles = sorted(
        {
            k.split("/", 1)[1]
            for k in labels
            if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]
        }
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind: str) -> str:
        return next((a["address"] for a in addresses if a.get("type") == kind), "<none>")

    return [
        _meta(obj).get("name", ""),
        state,
        ",".join(roles) or "<none>",
        age(_meta(obj).get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


NODES = Resource(
    name="nodes",
    kind="Node",
    singular="node",
    namespaced=False,
    schema=schema.NODE,
    short_names=("no",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    fields=_node_fields,
    validate=validation.node,
    columns=(
        ("Name", "string", "name", 0),
        ("Status", "string", "", 0),
        ("Roles", "string", "", 0),
        ("Age", "string", "", 0),
        ("Version", "string", "", 0),
        ("Internal-IP", "string", "", 1),
        ("External-IP", "string", "", 1),
        ("OS-Image", "string", "", 1),
        ("Kernel-Version", "string", "", 1),
        ("Container-Runtime", "string", "", 1),
    ),
    cells=_node_cells,
    status_subresource=True,
    storage_hash="XwShjMxG9Fs=",
)

# --- events --------------------------------------------------------------------------------


def _event_fields(obj: dict[str, Any]) -> dict[str, str]:
    ref = obj.get("involvedObject") or {}
    out = {
        "metadata.name": _meta(obj).get("name", ""),
        "metadata.namespace": _meta(obj).get("namespace", ""),
    }
    for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"):
        out[f"involvedObject.{f}"] = ref.get(f, "")
    out["reason"] = obj.get("reason", "")
    out["reportingComponent"] = obj.get("reportingComponent", "")
    out["source"] = (obj.get("source") or {}).get("component", "")
    out["type"] = obj.get("type", "")
    return out


def _event_cells(obj: dict[str, Any]) -> list[Cell]:
    ref = obj.get("involvedObject") or {}
    source = obj.get("source") or {}
    last = obj.get("lastTimestamp") or obj.get("eventTime") or _meta(obj).get("creationTimestamp")
    first = obj.get("firstTimestamp") or obj.get("eventTime") or _meta(obj).get("creationTimestamp")
    src = source.get("component", "") + (f", {source['host']}" if source.get("host") else "")
    return [
        age(last),
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{(ref.get('kind') or '').lower()}/{ref.get('name', '')}",
        ref.get("fieldPath", ""),
        src or obj.get("reportingComponent", ""),
        (obj.get("message") or "").strip(),
        age(first),
        int(obj.get("count") or 1),
        _meta(obj).get("name", ""),
    ]


EVENTS = Resource(
    name="events",
    kind="Event",
    singular="event",
    namespaced=True,
    schema=schema.EVENT,
    short_names=("ev",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    fields=_event_fields,
    validate=validation.event,
    columns=(
        ("Last Seen", "string", "", 0),
        ("Type", "string", "", 0),
        ("Reason", "string", "", 0),
        ("Object", "string", "", 0),
        ("Subobject", "string", "", 1),
        ("Source", "string", "", 1),
        ("Message", "string", "", 0),
        ("First Seen", "string", "", 1),
        ("Count", "string", "", 1),
        ("Name", "string", "name", 1),
    ),
    cells=_event_cells,
    storage_hash="r2yiGXH7wu8=",
)

# --- namespaces ----------------------------------------------------------------------------


def _namespace_validate(obj: dict[str, Any]) -> list[validation.Cause]:
    return validation.object_meta(_meta(obj), namespaced=False)


NAMESPACES = Resource(
    name="namespaces",
    kind="Namespace",
    singular="namespace",
    namespaced=False,
    schema=schema.NAMESPACE,
    short_names=("ns",),
    verbs=("create", "get", "list", "watch"),
    fields=lambda obj: {
        "metadata.name": _meta(obj).get("name", ""),
        "status.phase": (obj.get("status") or {}).get("phase", ""),
    },
    validate=_namespace_validate,
    columns=(("Name", "string", "name", 0), ("Status", "string", "", 0), ("Age", "string", "", 0)),
    cells=lambda obj: [
        _meta(obj).get("name", ""),
        (obj.get("status") or {}).get("phase", ""),
        age(_meta(obj).get("creationTimestamp")),
    ],
    storage_hash="Q3oi5N2YM8M=",
)

# --- pods (read-only, always empty) ------------------------------------------------------


def _pod_fields(obj: dict[str, Any]) -> dict[str, str]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata.name": _meta(obj).get("name", ""),
        "metadata.namespace": _meta(obj).get("namespace", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.restartPolicy": spec.get("restartPolicy", ""),
        "spec.schedulerName": spec.get("schedulerName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "spec.hostNetwork": str(bool(spec.get("hostNetwork"))).lower(),
        "status.phase": status.get("phase", ""),
        "status.podIP": status.get("podIP", ""),
        "status.nominatedNodeName": status.get("nominatedNodeName", ""),
    }


PODS = Resource(
    name="pods",
    kind="Pod",
    singular="pod",
    namespaced=True,
    schema=schema.POD,
    short_names=("po",),
    verbs=("get", "list", "watch"),
    fields=_pod_fields,
    validate=lambda obj: validation.object_meta(_meta(obj), namespaced=True),
    columns=(
        ("Name", "string", "name", 0),
        ("Ready", "string", "", 0),
        ("Status", "string", "", 0),
        ("Restarts", "string", "", 0),
        ("Age", "string", "", 0),
    ),
    cells=lambda obj: [
        _meta(obj).get("name", ""),
        "0/0",
        "",
        "0",
        age(_meta(obj).get("creationTimestamp")),
    ],
    storage_hash="xPOwRZ+Yhw8=",
)

RESOURCES = {r.name: r for r in (NODES, EVENTS, NAMESPACES, PODS)}
