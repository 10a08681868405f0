"""The API writes the agent makes, built as pure data from the Node as read.

* labels: one strategic-merge patch on ``metadata``; the agent's own keys are recorded in
  an annotation, so a later run removes a label the agent set and no longer wants, and
  never touches a label someone else set;
* the readiness condition: a strategic-merge patch on ``nodes/NAME/status`` carrying only
  that condition (conditions merge by ``type``, as node-problem-detector relies on);
  ``lastTransitionTime`` moves only when the status changes;
* an Event on the Node when readiness changes (``kubectl describe node`` shows it).

Each builder returns None when nothing would change, so an idempotent run makes no write.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from nodeagent.kube.readiness import TRUE, Readiness

OWNED_LABELS_ANNOTATION = "nodeagent.io/owned-labels"
# The API server's time format (metav1.Time): RFC 3339 in UTC, whole seconds.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def epoch(stamp: Optional[str]) -> Optional[float]:
    """A metav1.Time (``2026-11-24T03:00:00Z``) as Unix seconds; None if absent or not one."""
    if not stamp:
        return None
    import datetime

    try:
        t = datetime.datetime.strptime(stamp, TIME_FORMAT)
    except (TypeError, ValueError):
        return None
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def owned_labels(annotations: Mapping[str, str]) -> set[str]:
    raw = annotations.get(OWNED_LABELS_ANNOTATION, "")
    return {k for k in raw.split(",") if k}


def label_patch(
    labels: Mapping[str, str], annotations: Mapping[str, str], desired: Mapping[str, str]
) -> Optional[dict[str, Any]]:
    """The metadata patch that brings the Node's labels to ``desired``, or None."""
    changes: dict[str, Optional[str]] = {k: v for k, v in desired.items() if labels.get(k) != v}
    for k in owned_labels(annotations) - set(desired):
        if k in labels:
            changes[k] = None  # strategic merge: null deletes the key
    owned = ",".join(sorted(desired))
    meta: dict[str, Any] = {}
    if changes:
        meta["labels"] = dict(sorted(changes.items()))
    if annotations.get(OWNED_LABELS_ANNOTATION, "") != owned:
        meta["annotations"] = {OWNED_LABELS_ANNOTATION: owned}
    return {"metadata": meta} if meta else None


def find_condition(
    conditions: Sequence[Mapping[str, Any]], ctype: str
) -> Optional[Mapping[str, Any]]:
    for c in conditions:
        if c.get("type") == ctype:
            return c
    return None


def condition_changed(current: Optional[Mapping[str, Any]], r: Readiness) -> bool:
    if current is None:
        return True
    return (current.get("status"), current.get("reason"), current.get("message")) != (
        r.status,
        r.reason,
        r.message,
    )


def condition_patch(
    conditions: Sequence[Mapping[str, Any]],
    r: Readiness,
    ctype: str,
    now: str,
    heartbeat: bool = False,
) -> Optional[dict[str, Any]]:
    """The status patch for condition ``ctype``, or None when it is current and no
    heartbeat is due. ``now`` is an RFC 3339 time (``2026-11-24T03:00:00Z``)."""
    current = find_condition(conditions, ctype)
    if not condition_changed(current, r) and not heartbeat:
        return None
    same_status = current is not None and current.get("status") == r.status
    transition = current.get("lastTransitionTime") if same_status and current else now
    cond = {
        "type": ctype,
        "status": r.status,
        "reason": r.reason,
        "message": r.message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition or now,
    }
    return {"status": {"conditions": [cond]}}


def readiness_event(
    node: str, uid: Optional[str], r: Readiness, now: str, host: str, namespace: str = "default"
) -> dict[str, Any]:
    """A core/v1 Event on the Node, like the kubelet's own node events."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{node}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid or node},
        "reason": r.reason,
        "message": r.message,
        "type": "Normal" if r.status == TRUE else "Warning",
        "source": {"component": "nodeagent", "host": host},
        "reportingComponent": "nodeagent",
        "reportingInstance": host,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
