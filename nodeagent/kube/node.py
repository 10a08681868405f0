"""A Node as the agent reads it: a typed, immutable view parsed once from the API's JSON.

:meth:`Node.from_api` is the only place that walks the API's ``dict`` for a Node; everything
after it reads typed fields (``node.condition(ctype).status``, ``node.capacity``,
``node.has_taint(key)``). A field of the wrong shape (conditions that are not a list, a
label value that is not a string, a condition status that is not True/False/Unknown) is a
:class:`MalformedNode` with one line naming the field, never a ``KeyError`` or
``AttributeError`` further on. Times (metav1.Time, ``2026-11-24T03:00:00Z``) are epoch
seconds, None when absent or not in the API server's format.

Pure: no I/O, no clock. May import :mod:`nodeagent.errors` only; the client, the patch
builders, the walk, the daemon and the controller import it.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
from collections.abc import Mapping
from typing import Any, Optional

from nodeagent import StrEnum
from nodeagent.errors import StepFailed

# The API server's time format (metav1.Time): RFC 3339 in UTC, whole seconds.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def epoch(stamp: object) -> Optional[float]:
    """A metav1.Time (``2026-11-24T03:00:00Z``) as Unix seconds; None if absent or not one."""
    if not stamp or not isinstance(stamp, str):
        return None
    try:
        t = datetime.datetime.strptime(stamp, TIME_FORMAT)
    except ValueError:
        return None
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def rfc3339(t: float) -> str:
    """Unix seconds as a metav1.Time (whole seconds, UTC): the inverse of :func:`epoch`."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(TIME_FORMAT)


class ConditionStatus(StrEnum):
    """A Node condition's status, as the API spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class MalformedNode(StepFailed):
    """The API returned a Node with a field of the wrong shape (one line: which field)."""


@dataclasses.dataclass(frozen=True)
class Condition:
    """One entry of ``status.conditions``."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_heartbeat_time: Optional[float] = None  # epoch seconds
    last_transition_time: Optional[float] = None  # epoch seconds


@dataclasses.dataclass(frozen=True)
class Taint:
    """One entry of ``spec.taints`` (also the kubelet's ``--register-with-taints``)."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"
    time_added: Optional[str] = None  # metav1.Time as sent (NoExecute taints carry it)

    def flag_value(self) -> str:
        """The kubelet flag's form: ``key=value:effect`` (``key:effect`` without a value)."""
        head = f"{self.key}={self.value}" if self.value else self.key
        return f"{head}:{self.effect}"

    def to_api(self) -> dict[str, str]:
        """The ``spec.taints`` entry (empty value and absent timeAdded left out)."""
        out = {"key": self.key}
        if self.value:
            out["value"] = self.value
        out["effect"] = self.effect
        if self.time_added is not None:
            out["timeAdded"] = self.time_added
        return out


_EMPTY: Mapping[str, str] = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Node:
    """The fields of a core/v1 Node the agent, ``check`` and the controller read."""

    name: str
    uid: Optional[str] = None
    resource_version: Optional[str] = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    taints: tuple[Taint, ...] = ()
    conditions: tuple[Condition, ...] = ()
    # status.capacity; None when the Node has none yet (readiness then cannot count GPUs).
    capacity: Optional[Mapping[str, str]] = None

    def condition(self, ctype: str) -> Optional[Condition]:
        """The condition of type ``ctype``, or None when the Node does not carry it."""
        return next((c for c in self.conditions if c.type == ctype), None)

    def has_taint(self, key: str) -> bool:
        return any(t.key == key for t in self.taints)

    @classmethod
    def from_api(cls, doc: object) -> Node:
        """Parse the API's JSON for a Node; :class:`MalformedNode` names a bad field."""
        obj = _object(doc, "Node", "the Node")
        meta = _object(obj.get("metadata"), "metadata", "the Node")
        name = _string(meta.get("name"), "metadata.name", "the Node") or ""
        where = f"Node {name}" if name else "the Node"
        spec = _object(obj.get("spec"), "spec", where)
        status = _object(obj.get("status"), "status", where)
        raw_capacity = status.get("capacity")
        return cls(
            name=name,
            uid=_string(meta.get("uid"), "metadata.uid", where),
            resource_version=_string(
                meta.get("resourceVersion"), "metadata.resourceVersion", where
            ),
            labels=_strings(meta.get("labels"), "metadata.labels", where),
            annotations=_strings(meta.get("annotations"), "metadata.annotations", where),
            taints=tuple(
                _taint(t, f"spec.taints[{i}]", where)
                for i, t in enumerate(_list(spec.get("taints"), "spec.taints", where))
            ),
            conditions=tuple(
                _condition(c, f"status.conditions[{i}]", where)
                for i, c in enumerate(_list(status.get("conditions"), "status.conditions", where))
            ),
            capacity=None
            if raw_capacity is None
            else _strings(raw_capacity, "status.capacity", where),
        )


# --- parsing helpers: each names the field it could not read ---------------------------


def _bad(where: str, field: str, what: str, value: object) -> MalformedNode:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return MalformedNode(f"{where}: {field}: {what}, not {shown}")


def _object(value: object, field: str, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(where, field, "expected an object", value)
    return value


def _list(value: object, field: str, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, field, "expected a list", value)
    return value


def _string(value: object, field: str, where: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(where, field, "expected a string", value)
    return value


def _strings(value: object, field: str, where: str) -> Mapping[str, str]:
    obj = _object(value, field, where)
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _bad(where, f"{field}[{k!r}]", "expected a string", v)
    return types.MappingProxyType(dict(obj))


def _taint(value: object, field: str, where: str) -> Taint:
    obj = _object(value, field, where)
    return Taint(
        key=_string(obj.get("key"), f"{field}.key", where) or "",
        value=_string(obj.get("value"), f"{field}.value", where) or "",
        effect=_string(obj.get("effect"), f"{field}.effect", where) or "",
        time_added=_string(obj.get("timeAdded"), f"{field}.timeAdded", where),
    )


def _condition(value: object, field: str, where: str) -> Condition:
    obj = _object(value, field, where)
    raw_status = obj.get("status")
    try:
        status = ConditionStatus(raw_status)
    except ValueError:
        raise _bad(
            where, f"{field}.status", "expected True, False or Unknown", raw_status
        ) from None
    return Condition(
        type=_string(obj.get("type"), f"{field}.type", where) or "",
        status=status,
        reason=_string(obj.get("reason"), f"{field}.reason", where) or "",
        message=_string(obj.get("message"), f"{field}.message", where) or "",
        last_heartbeat_time=epoch(obj.get("lastHeartbeatTime")),
        last_transition_time=epoch(obj.get("lastTransitionTime")),
    )
