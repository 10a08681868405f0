"""The API writes the agent makes, built as pure data from the Node as read.

* labels: one strategic-merge patch on ``metadata``; the agent's own keys are recorded in
  an annotation, so a later run removes a label the agent set and no longer wants, and
  never touches a label someone else set;
* the readiness condition: a strategic-merge patch on ``nodes/NAME/status`` carrying only
  that condition (conditions merge by ``type``, as node-problem-detector relies on);
  ``lastTransitionTime`` moves only when the status changes;
* an Event on the Node when readiness changes (``kubectl describe node`` shows it).

Each builder returns None when nothing would change, so an idempotent run makes no write.
Pure: no I/O, no clock (``now`` is passed in). May import the Node view and readiness only.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Optional

from nodeagent.kube.node import Condition, ConditionStatus, rfc3339
from nodeagent.kube.readiness import Readiness

OWNED_LABELS_ANNOTATION = "nodeagent.io/owned-labels"


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


def condition_changed(current: Optional[Condition], r: Readiness) -> bool:
    """The Node does not carry ``r`` (status, reason and message) as its condition."""
    if current is None:
        return True
    return (current.status, current.reason, current.message) != (r.status, r.reason, r.message)


def condition_patch(
    current: Optional[Condition],
    r: Readiness,
    ctype: str,
    now: str,
    heartbeat: bool = False,
) -> Optional[dict[str, Any]]:
    """The status patch that sets condition ``ctype`` (``current`` as the Node carries it)
    to ``r``, or None when it is current and no heartbeat is due. ``now`` is an RFC 3339
    time (``2026-11-24T03:00:00Z``)."""
    if not condition_changed(current, r) and not heartbeat:
        return None
    kept = current is not None and current.status == r.status
    since = current.last_transition_time if kept and current else None
    cond = {
        "type": ctype,
        "status": r.status.value,
        "reason": r.reason,
        "message": r.message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now if since is None else rfc3339(since),
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
        "type": "Normal" if r.status is ConditionStatus.TRUE else "Warning",
        "source": {"component": "nodeagent", "host": host},
        "reportingComponent": "nodeagent",
        "reportingInstance": host,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
