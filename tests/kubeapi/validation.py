"""Object validation worded like ``k8s.io/apimachinery/pkg/util/validation``'s field errors.

Only what matters for Nodes and Events is checked: names, label keys and values, annotation
keys, taints (key, value, effect, uniqueness) and an Event's namespace agreement. Each check
returns ``(causeType, field, body)`` tuples for :func:`.status.invalid`.
"""

from __future__ import annotations

import json
import re
from typing import Any

Cause = tuple[str, str, str]

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character"
)
_LABEL_KEY = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_LABEL_VALUE = "(" + _LABEL_KEY + ")?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character"
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    ex = " or ".join(f"'{e}'" for e in examples)
    return f"{msg} (e.g. {ex}, regex used for validation is '{fmt}')"


def _q(v: Any) -> str:
    """Go's ``%q``-ish rendering of a value in ``Invalid value: ...``."""
    return json.dumps(v) if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def invalid(fld: str, value: Any, detail: str) -> Cause:
    return ("FieldValueInvalid", fld, f"Invalid value: {_q(value)}: {detail}")


def required(fld: str, detail: str = "") -> Cause:
    return ("FieldValueRequired", fld, "Required value" + (f": {detail}" if detail else ""))


def dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not re.fullmatch(_DNS1123_SUBDOMAIN, value):
        errs.append(_regex_error(_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN, "example.com"))
    return errs


def qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS-subdomain prefix, ``/``, and a name."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain(prefix))
    else:
        return [
            "a valid label key "
            + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if not re.fullmatch(_LABEL_KEY, name):
        errs.append(
            "name part " + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY, "MyName", "my.name", "123-abc")
        )
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(_LABEL_VALUE, value):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE, "MyValue", "my_value", "12345"))
    return errs


def object_meta(meta: dict[str, Any], *, namespaced: bool) -> list[Cause]:
    """``ValidateObjectMeta`` (name, namespace, labels, annotation keys)."""
    causes: list[Cause] = []
    name = meta.get("name", "")
    if not name:
        causes.append(required("metadata.name", "name or generateName is required"))
    else:
        causes.extend(invalid("metadata.name", name, m) for m in dns1123_subdomain(name))
    if namespaced and not meta.get("namespace"):
        causes.append(required("metadata.namespace"))
    for key, value in sorted((meta.get("labels") or {}).items()):
        causes.extend(invalid("metadata.labels", key, m) for m in qualified_name(key))
        causes.extend(invalid("metadata.labels", value, m) for m in label_value(value))
    for key in sorted(meta.get("annotations") or {}):
        causes.extend(invalid("metadata.annotations", key, m) for m in qualified_name(key.lower()))
    return causes


def node(obj: dict[str, Any]) -> list[Cause]:
    """``ValidateNode``: metadata plus taints."""
    causes = object_meta(obj.get("metadata") or {}, namespaced=False)
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate((obj.get("spec") or {}).get("taints") or []):
        path = f"spec.taints[{i}]"
        key, value, effect = taint.get("key", ""), taint.get("value", ""), taint.get("effect", "")
        causes.extend(invalid(f"{path}.key", key, m) for m in qualified_name(key))
        causes.extend(invalid(f"{path}.value", value, m) for m in label_value(value))
        if not effect:
            causes.append(required(f"{path}.effect"))
        elif effect not in TAINT_EFFECTS:
            supported = ", ".join(f'"{e}"' for e in TAINT_EFFECTS)
            causes.append(
                (
                    "FieldValueNotSupported",
                    f"{path}.effect",
                    f"Unsupported value: {_q(effect)}: supported values: {supported}",
                )
            )
        if (key, effect) in seen:
            causes.append(
                (
                    "FieldValueDuplicate",
                    path,
                    f"Duplicate value: {_q(taint)}: taints must be unique by key and effect pair",
                )
            )
        seen.add((key, effect))
    return causes


def event(obj: dict[str, Any]) -> list[Cause]:
    """``ValidateEventCreate`` for core/v1 Events (the legacy, non-``eventTime`` form)."""
    meta = obj.get("metadata") or {}
    causes = object_meta(meta, namespaced=True)
    ns = meta.get("namespace", "")
    involved_ns = (obj.get("involvedObject") or {}).get("namespace", "")
    if obj.get("eventTime") is None:
        ok = ns in ("", "default") if not involved_ns else ns == involved_ns
    else:
        ok = bool(involved_ns) or ns in ("default", "kube-system")
        for fld in ("reportingComponent", "reportingInstance", "action", "reason"):
            if not obj.get(fld):
                causes.append(required(fld))
    if not ok:
        causes.append(
            invalid("involvedObject.namespace", involved_ns, "does not match event.namespace")
        )
    return causes
