"""Go-struct schemas for the served kinds, and the JSON decode/encode roundtrip a real server does.

A real kube-apiserver decodes every body into Go structs and encodes them back, so clients
see: unknown fields dropped (reported for ``fieldValidation``), ``omitempty`` zero values
gone, non-omitempty zero values present (``"nodeInfo": {"machineID": "", ...}``, zero
``metav1.Time`` as ``null``), times in UTC at second precision, quantities canonical, and
fields in struct order. The same schema carries the ``patchStrategy``/``patchMergeKey`` tags
strategic merge patch needs (see :mod:`.smp`). Types follow ``k8s.io/api`` v1.32.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any, Optional, Union

from . import quantity


class DecodeError(ValueError):
    """The JSON does not decode into the Go type (wrong JSON type, bad time or quantity)."""


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A JSON scalar: ``string``, ``int64``, ``bool``, ``time`` (metav1.Time), ``microtime``,
    ``quantity`` or ``any`` (free-form JSON such as ``fieldsV1``)."""

    go: str


@dataclasses.dataclass(frozen=True)
class MapOf:
    """``map[string]T``."""

    value: Type


@dataclasses.dataclass(frozen=True)
class ListOf:
    """``[]T``."""

    elem: Type


@dataclasses.dataclass(frozen=True)
class Struct:
    """A Go struct: its fields in declaration order."""

    name: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Optional[Field]:
        for f in self.fields:
            if f.name == name:
                return f
        return None


Type = Union[Scalar, MapOf, ListOf, Struct]


@dataclasses.dataclass(frozen=True)
class Field:
    """A struct field: JSON name, type, ``omitempty``, pointer-ness and patch tags."""

    name: str
    type: Type
    omitempty: bool = True
    ptr: bool = False
    strategy: str = ""
    merge_key: str = ""


STR, INT, BOOL = Scalar("string"), Scalar("int64"), Scalar("bool")
TIME, MICROTIME, QUANTITY, ANY = (
    Scalar("time"),
    Scalar("microtime"),
    Scalar("quantity"),
    Scalar("any"),
)
F = Field


def _struct(name: str, *fields: Field) -> Struct:
    return Struct(name, tuple(fields))


OWNER_REFERENCE = _struct(
    "OwnerReference",
    F("apiVersion", STR, omitempty=False),
    F("kind", STR, omitempty=False),
    F("name", STR, omitempty=False),
    F("uid", STR, omitempty=False),
    F("controller", BOOL, ptr=True),
    F("blockOwnerDeletion", BOOL, ptr=True),
)
MANAGED_FIELDS_ENTRY = _struct(
    "ManagedFieldsEntry",
    F("manager", STR),
    F("operation", STR),
    F("apiVersion", STR),
    F("time", TIME, ptr=True),
    F("fieldsType", STR),
    F("fieldsV1", ANY, ptr=True),
    F("subresource", STR),
)
OBJECT_META = _struct(
    "ObjectMeta",
    F("name", STR),
    F("generateName", STR),
    F("namespace", STR),
    F("selfLink", STR),
    F("uid", STR),
    F("resourceVersion", STR),
    F("generation", INT),
    F("creationTimestamp", TIME),
    F("deletionTimestamp", TIME, ptr=True),
    F("deletionGracePeriodSeconds", INT, ptr=True),
    F("labels", MapOf(STR)),
    F("annotations", MapOf(STR)),
    F("ownerReferences", ListOf(OWNER_REFERENCE), strategy="merge", merge_key="uid"),
    F("finalizers", ListOf(STR), strategy="merge"),
    F("managedFields", ListOf(MANAGED_FIELDS_ENTRY)),
)

TAINT = _struct(
    "Taint",
    F("key", STR, omitempty=False),
    F("value", STR),
    F("effect", STR, omitempty=False),
    F("timeAdded", TIME, ptr=True),
)
CONFIGMAP_NODE_CONFIG_SOURCE = _struct(
    "ConfigMapNodeConfigSource",
    F("namespace", STR, omitempty=False),
    F("name", STR, omitempty=False),
    F("uid", STR),
    F("resourceVersion", STR),
    F("kubeletConfigKey", STR, omitempty=False),
)
NODE_CONFIG_SOURCE = _struct(
    "NodeConfigSource", F("configMap", CONFIGMAP_NODE_CONFIG_SOURCE, ptr=True)
)
NODE_SPEC = _struct(
    "NodeSpec",
    F("podCIDR", STR),
    F("podCIDRs", ListOf(STR), strategy="merge"),
    F("providerID", STR),
    F("unschedulable", BOOL),
    F("taints", ListOf(TAINT)),  # no patchStrategy: a strategic patch replaces the list
    F("configSource", NODE_CONFIG_SOURCE, ptr=True),
    F("externalID", STR),
)
NODE_CONDITION = _struct(
    "NodeCondition",
    F("type", STR, omitempty=False),
    F("status", STR, omitempty=False),
    F("lastHeartbeatTime", TIME),
    F("lastTransitionTime", TIME),
    F("reason", STR),
    F("message", STR),
)
NODE_ADDRESS = _struct(
    "NodeAddress", F("type", STR, omitempty=False), F("address", STR, omitempty=False)
)
NODE_DAEMON_ENDPOINTS = _struct(
    "NodeDaemonEndpoints",
    F("kubeletEndpoint", _struct("DaemonEndpoint", F("Port", INT, omitempty=False))),
)
NODE_SYSTEM_INFO = _struct(
    "NodeSystemInfo",
    *(
        F(n, STR, omitempty=False)
        for n in (
            "machineID",
            "systemUUID",
            "bootID",
            "kernelVersion",
            "osImage",
            "containerRuntimeVersion",
            "kubeletVersion",
            "kubeProxyVersion",
            "operatingSystem",
            "architecture",
        )
    ),
    F("swap", _struct("NodeSwapStatus", F("capacity", INT, ptr=True)), ptr=True),
)
NODE_CONFIG_STATUS = _struct(
    "NodeConfigStatus",
    F("assigned", NODE_CONFIG_SOURCE, ptr=True),
    F("active", NODE_CONFIG_SOURCE, ptr=True),
    F("lastKnownGood", NODE_CONFIG_SOURCE, ptr=True),
    F("error", STR),
)
NODE_RUNTIME_HANDLER = _struct(
    "NodeRuntimeHandler",
    F("name", STR, omitempty=False),
    F(
        "features",
        _struct(
            "NodeRuntimeHandlerFeatures",
            F("recursiveReadOnlyMounts", BOOL, ptr=True),
            F("userNamespaces", BOOL, ptr=True),
        ),
        ptr=True,
    ),
)
NODE_STATUS = _struct(
    "NodeStatus",
    F("capacity", MapOf(QUANTITY)),
    F("allocatable", MapOf(QUANTITY)),
    F("phase", STR),
    F("conditions", ListOf(NODE_CONDITION), strategy="merge", merge_key="type"),
    F("addresses", ListOf(NODE_ADDRESS), strategy="merge", merge_key="type"),
    F("daemonEndpoints", NODE_DAEMON_ENDPOINTS),
    F("nodeInfo", NODE_SYSTEM_INFO),
    F(
        "images",
        ListOf(
            _struct(
                "ContainerImage",
                F("names", ListOf(STR), omitempty=False),
                F("sizeBytes", INT),
            )
        ),
    ),
    F("volumesInUse", ListOf(STR)),
    F(
        "volumesAttached",
        ListOf(
            _struct(
                "AttachedVolume",
                F("name", STR, omitempty=False),
                F("devicePath", STR, omitempty=False),
            )
        ),
    ),
    F("config", NODE_CONFIG_STATUS, ptr=True),
    F("runtimeHandlers", ListOf(NODE_RUNTIME_HANDLER)),
    F("features", _struct("NodeFeatures", F("supplementalGroupsPolicy", BOOL, ptr=True)), ptr=True),
)


def _top(kind: str, *fields: Field) -> Struct:
    return _struct(
        kind,
        F("kind", STR),
        F("apiVersion", STR),
        F("metadata", OBJECT_META),
        *fields,
    )


NODE = _top("Node", F("spec", NODE_SPEC), F("status", NODE_STATUS))

OBJECT_REFERENCE = _struct(
    "ObjectReference",
    F("kind", STR),
    F("namespace", STR),
    F("name", STR),
    F("uid", STR),
    F("apiVersion", STR),
    F("resourceVersion", STR),
    F("fieldPath", STR),
)
EVENT = _top(
    "Event",
    F("involvedObject", OBJECT_REFERENCE),
    F("reason", STR),
    F("message", STR),
    F("source", _struct("EventSource", F("component", STR), F("host", STR))),
    F("firstTimestamp", TIME),
    F("lastTimestamp", TIME),
    F("count", INT),
    F("type", STR),
    F("eventTime", MICROTIME),
    F(
        "series",
        _struct("EventSeries", F("count", INT), F("lastObservedTime", MICROTIME)),
        ptr=True,
    ),
    F("action", STR),
    F("related", OBJECT_REFERENCE, ptr=True),
    F("reportingComponent", STR, omitempty=False),
    F("reportingInstance", STR, omitempty=False),
)
NAMESPACE = _top(
    "Namespace",
    F("spec", _struct("NamespaceSpec", F("finalizers", ListOf(STR)))),
    F(
        "status",
        _struct(
            "NamespaceStatus",
            F("phase", STR),
            F(
                "conditions",
                ListOf(
                    _struct(
                        "NamespaceCondition",
                        F("type", STR, omitempty=False),
                        F("status", STR, omitempty=False),
                        F("lastTransitionTime", TIME),
                        F("reason", STR),
                        F("message", STR),
                    )
                ),
                strategy="merge",
                merge_key="type",
            ),
        ),
    ),
)

# Pods are served read-only (always none here) so ``kubectl describe node`` can list them.
POD = _top("Pod", F("spec", ANY, ptr=True), F("status", ANY, ptr=True))

# --- the roundtrip -------------------------------------------------------------------------

_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_MISSING = object()


def parse_time(text: str) -> dt.datetime:
    """Parse RFC 3339 (any fraction, ``Z`` or offset) to an aware UTC datetime."""
    m = _TIME_RE.match(text)
    if not m:
        raise DecodeError(
            f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse "{text}"'
        )
    frac = (m.group(7) or "0")[:6].ljust(6, "0")
    tz = m.group(8)
    offset = dt.timedelta(0)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        local = dt.datetime(year, month, day, hour, minute, second, int(frac))
    except ValueError as e:
        raise DecodeError(f'parsing time "{text}": {e}') from None
    return (local - offset).replace(tzinfo=dt.timezone.utc)


def format_time(t: dt.datetime) -> str:
    """``metav1.Time`` encoding: UTC, whole seconds."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_microtime(t: dt.datetime) -> str:
    """``metav1.MicroTime`` encoding: UTC, microseconds."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _go_type(t: Type) -> str:
    if isinstance(t, Scalar):
        return {
            "quantity": "resource.Quantity",
            "time": "v1.Time",
            "microtime": "v1.MicroTime",
        }.get(t.go, t.go)
    if isinstance(t, MapOf):
        return f"map[string]{_go_type(t.value)}"
    if isinstance(t, ListOf):
        return f"[]{_go_type(t.elem)}"
    return f"v1.{t.name}"


class Decoder:
    """One decode: collects unknown field paths (for ``fieldValidation``) as it goes."""

    def __init__(self) -> None:
        self.unknown: list[str] = []

    def _mismatch(self, v: Any, t: Type, path: str) -> DecodeError:
        return DecodeError(
            f"json: cannot unmarshal {_json_type(v)} into Go struct field {path} "
            f"of type {_go_type(t)}"
        )

    def scalar(self, v: Any, t: Scalar, path: str) -> Any:
        """Decode+encode a non-null scalar."""
        if t.go == "any":
            return v
        if t.go in ("string",):
            if not isinstance(v, str):
                raise self._mismatch(v, t, path)
            return v
        if t.go == "int64":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self._mismatch(v, t, path)
            if isinstance(v, float):
                if not v.is_integer():
                    raise self._mismatch(v, t, path)
                v = int(v)
            return v
        if t.go == "bool":
            if not isinstance(v, bool):
                raise self._mismatch(v, t, path)
            return v
        if t.go in ("time", "microtime"):
            if not isinstance(v, str):
                raise self._mismatch(v, t, path)
            when = parse_time(v)
            return format_time(when) if t.go == "time" else format_microtime(when)
        if t.go == "quantity":
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self._mismatch(v, t, path)
            try:
                return quantity.canonical(v if isinstance(v, str) else repr(v))
            except quantity.QuantityError as e:
                raise DecodeError(str(e)) from None
        raise AssertionError(t)

    def zero(self, t: Type, path: str) -> Any:
        """What Go encodes for the zero value of a non-omitted, non-pointer field."""
        if isinstance(t, Struct):
            return self.struct({}, t, path)
        if isinstance(t, Scalar):
            return {"string": "", "int64": 0, "bool": False, "quantity": "0"}.get(t.go)
        return None  # nil map / slice

    def value(self, v: Any, t: Type, path: str) -> Any:
        """Decode+encode a present, non-null value."""
        if isinstance(t, Struct):
            if not isinstance(v, dict):
                raise self._mismatch(v, t, path)
            return self.struct(v, t, path)
        if isinstance(t, MapOf):
            if not isinstance(v, dict):
                raise self._mismatch(v, t, path)
            return {
                k: self.zero(t.value, path) if x is None else self.value(x, t.value, f"{path}[{k}]")
                for k, x in v.items()
            }
        if isinstance(t, ListOf):
            if not isinstance(v, list):
                raise self._mismatch(v, t, path)
            return [
                self.zero(t.elem, path) if x is None else self.value(x, t.elem, f"{path}[{i}]")
                for i, x in enumerate(v)
            ]
        return self.scalar(v, t, path)

    def struct(self, obj: dict[str, Any], st: Struct, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in obj:
            if st.field(k) is None:
                self.unknown.append(f"{path}.{k}" if path else k)
        for f in st.fields:
            sub = f"{path}.{f.name}" if path else f.name
            raw = obj.get(f.name, _MISSING)
            if raw is _MISSING or raw is None:
                if f.ptr:
                    continue
                if isinstance(f.type, Scalar) and f.type.go in ("time", "microtime"):
                    out[f.name] = None  # zero metav1.Time encodes as null, even with omitempty
                    continue
                zero = self.zero(f.type, sub)
                if not f.omitempty or isinstance(f.type, Struct):
                    out[f.name] = zero
                continue
            value = self.value(raw, f.type, sub)
            if not _omitted(f, value):
                out[f.name] = value
        return out


def _omitted(f: Field, value: Any) -> bool:
    """``omitempty`` on a non-pointer: "", 0, false, empty slices and maps vanish; structs stay."""
    if not f.omitempty or f.ptr or isinstance(f.type, Struct):
        return False
    return value in ("", 0, False, [], {}) and value is not None


def roundtrip(obj: Any, st: Struct) -> tuple[dict[str, Any], list[str]]:
    """(what the server would store and return, unknown field paths) for ``obj`` as ``st``."""
    dec = Decoder()
    if not isinstance(obj, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_json_type(obj)} into Go value of type v1.{st.name}"
        )
    return dec.struct(obj, st, ""), dec.unknown


def lookup(t: Optional[Type], key: str) -> tuple[Optional[Type], Optional[Field]]:
    """The type and field (if a struct field) under ``key`` in a map or struct type."""
    if isinstance(t, Struct):
        f = t.field(key)
        return (f.type if f else None), f
    if isinstance(t, MapOf):
        return t.value, None
    return None, None
