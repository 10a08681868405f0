"""The report phase: after the kubelet registered the Node, tell the cluster the truth.

At most three writes, each only when something changed: one strategic-merge patch of the
labels (and the owned-labels annotation), one of the readiness condition on
``nodes/NAME/status``, one Event when the condition's status changes. The builders are pure
(:mod:`nodeagent.kube.patches`); this module only sequences them over :class:`NodeAPI`.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, Callable, Optional

from nodeagent.errors import StepFailed
from nodeagent.kube.client import Conflict, NodeAPI
from nodeagent.kube.patches import (
    TIME_FORMAT,
    condition_patch,
    find_condition,
    label_patch,
    readiness_event,
)
from nodeagent.kube.readiness import Readiness
from nodeagent.log import get_logger

log = get_logger(__name__)

# Readiness given the Node's status.capacity (None when not known).
ReadinessFn = Callable[[Optional[Mapping[str, str]]], Readiness]


@dataclasses.dataclass(frozen=True)
class Reported:
    """What the report phase did."""

    readiness: Readiness
    labels_changed: bool = False
    condition_changed: bool = False
    event: bool = False
    node: Optional[dict[str, Any]] = None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(TIME_FORMAT)


@dataclasses.dataclass(frozen=True)
class Report:
    """One report: the labels wanted, how to judge readiness, and the condition's type."""

    labels: Mapping[str, str]
    readiness: ReadinessFn
    condition_type: str
    host: str
    event_namespace: str = "default"

    def plan(
        self, node: Mapping[str, Any], now: str, heartbeat: bool = False
    ) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]], Readiness, bool]:
        """Pure: (label patch, status patch, readiness, status changed) for ``node``."""
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        lp = label_patch(meta.get("labels") or {}, meta.get("annotations") or {}, self.labels)
        r = self.readiness(status.get("capacity"))
        conditions = status.get("conditions") or []
        current = find_condition(conditions, self.condition_type)
        cp = condition_patch(conditions, r, self.condition_type, now, heartbeat)
        flipped = current is None or current.get("status") != r.status
        return lp, cp, r, flipped

    def apply(
        self,
        api: NodeAPI,
        node: dict[str, Any],
        *,
        heartbeat: bool = False,
        now: Optional[str] = None,
    ) -> Reported:
        """Make the writes ``plan`` asks for. ``node`` is the Node as last read."""
        stamp = now or now_rfc3339()
        lp, cp, r, flipped = self.plan(node, stamp, heartbeat)
        labels_changed = False
        if lp is not None:
            try:
                node = api.patch_node(lp)
            except Conflict:  # not expected for a merge patch without a precondition
                fresh = api.get_node()
                if fresh is None:
                    raise StepFailed(f"node {api.node_name} disappeared") from None
                return self.apply(api, fresh, heartbeat=heartbeat, now=stamp)
            labels_changed = True
            log.info("kube.labels.patched", node=api.node_name, patch=lp)
            # Readiness may depend on the Node's capacity as just returned.
            _, cp, r, flipped = self.plan(node, stamp, heartbeat)
        if cp is not None:
            node = api.patch_node_status(cp)
            log.info("kube.condition.patched", node=api.node_name, status=r.status, reason=r.reason)
        event = False
        if cp is not None and flipped:
            uid = (node.get("metadata") or {}).get("uid")
            try:
                api.create_event(
                    readiness_event(api.node_name, uid, r, stamp, self.host, self.event_namespace)
                )
                event = True
            except StepFailed as e:  # an event is a courtesy; the condition is the truth
                log.warning("kube.event.failed", node=api.node_name, error=str(e))
        return Reported(
            readiness=r,
            labels_changed=labels_changed,
            condition_changed=cp is not None,
            event=event,
            node=node,
        )
