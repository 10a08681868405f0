"""The report phase: after the kubelet registered the Node, tell the cluster the truth.

At most three writes, each only when something changed: one strategic-merge patch of the
labels (and the owned-labels annotation), one of the readiness condition on
``nodes/NAME/status``, one Event when the condition's status changes. The builders are pure
(:mod:`nodeagent.kube.patches`); :meth:`Report.plan` is pure too and its :class:`Planned`
renders itself as the ``--dry-run`` diff; :meth:`Report.apply` only sequences the writes
over :class:`NodeAPI`. May import the client, the Node view, patches and readiness; never
the walk, the daemon or the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from nodeagent.errors import StepFailed
from nodeagent.kube.client import Conflict, NodeAPI
from nodeagent.kube.node import Node, rfc3339
from nodeagent.kube.patches import condition_patch, label_patch, readiness_event
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
    node: Optional[Node] = None

    @property
    def writes(self) -> int:
        return int(self.labels_changed) + int(self.condition_changed) + int(self.event)


@dataclasses.dataclass(frozen=True)
class Planned:
    """The writes one report would make for a Node as read (None: that write is not due)."""

    label_patch: Optional[dict[str, Any]]
    status_patch: Optional[dict[str, Any]]
    readiness: Readiness
    status_flipped: bool  # the condition's status changes (or it is new): an Event is due

    @property
    def changed(self) -> bool:
        return self.label_patch is not None or self.status_patch is not None

    def diff(self, node_name: str) -> str:
        """The patches as ``--dry-run`` prints them: one ``--- PATCH url`` block each."""
        return "".join(
            f"--- PATCH {url} (strategic merge)\n{json.dumps(p, indent=2)}\n"
            for url, p in (
                (f"/api/v1/nodes/{node_name}", self.label_patch),
                (f"/api/v1/nodes/{node_name}/status", self.status_patch),
            )
            if p is not None
        )


def now_rfc3339() -> str:
    """This moment as a metav1.Time."""
    return rfc3339(time.time())


@dataclasses.dataclass(frozen=True)
class Report:
    """One report: the labels wanted, how to judge readiness, and the condition's type."""

    labels: Mapping[str, str]
    readiness: ReadinessFn
    condition_type: str
    host: str
    event_namespace: str = "default"

    def plan(self, node: Node, now: str, heartbeat: bool = False) -> Planned:
        """Pure: the writes that bring ``node`` to the wanted labels and condition."""
        r = self.readiness(node.capacity)
        current = node.condition(self.condition_type)
        return Planned(
            label_patch=label_patch(node.labels, node.annotations, self.labels),
            status_patch=condition_patch(current, r, self.condition_type, now, heartbeat),
            readiness=r,
            status_flipped=current is None or current.status != r.status,
        )

    def apply(
        self,
        api: NodeAPI,
        node: Node,
        *,
        heartbeat: bool = False,
        now: Optional[str] = None,
    ) -> Reported:
        """Make the writes ``plan`` asks for. ``node`` is the Node as last read."""
        stamp = now or now_rfc3339()
        planned = self.plan(node, stamp, heartbeat)
        labels_changed = False
        if planned.label_patch is not None:
            try:
                node = api.patch_node(planned.label_patch)
            except Conflict:  # not expected for a merge patch without a precondition
                fresh = api.get_node()
                if fresh is None:
                    raise StepFailed(f"node {api.node_name} disappeared") from None
                return self.apply(api, fresh, heartbeat=heartbeat, now=stamp)
            labels_changed = True
            log.info("kube.labels.patched", node=api.node_name, patch=planned.label_patch)
            # Readiness may depend on the Node's capacity as just returned.
            planned = self.plan(node, stamp, heartbeat)
        r, cp = planned.readiness, planned.status_patch
        if cp is not None:
            node = api.patch_node_status(cp)
            log.info("kube.condition.patched", node=api.node_name, status=r.status, reason=r.reason)
        event = False
        if cp is not None and planned.status_flipped:
            try:
                api.create_event(
                    readiness_event(
                        api.node_name, node.uid, r, stamp, self.host, self.event_namespace
                    )
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
