"""What the daemon tells Prometheus and systemd: its metrics (one table, :data:`METRICS`),
the ``STATUS=`` line for an apply, and the node-exporter textfile.

Called from every daemon thread: the registry and the notifier lock themselves, and the
textfile writes are serialised by :meth:`Metrics.write_textfile`. Holds no other state.
Touches one host file, ``daemon.metrics_textfile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from nodeagent import __version__
from nodeagent.daemon.metrics import Metrics
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.errors import NodeagentError
from nodeagent.gpu.events import XidEvent
from nodeagent.gpu.inventory import Inventory
from nodeagent.host.clock import Clock
from nodeagent.host.paths import HostRoot
from nodeagent.kube.node import ConditionStatus
from nodeagent.log import get_logger
from nodeagent.walk.steps import Outcome, Status

log = get_logger(__name__)

METRICS = (
    ("up", "gauge", "1 while the agent runs; info labels: version, node"),
    ("last_apply_success", "gauge", "1 if the last apply (start, SIGHUP) had no failed step"),
    ("last_apply_duration_seconds", "gauge", "wall time of the last apply"),
    ("last_apply_timestamp_seconds", "gauge", "when the last apply ended (Unix time)"),
    ("last_report_success", "gauge", "1 if the last report to the API server succeeded"),
    ("last_report_timestamp_seconds", "gauge", "when the last report ended (Unix time)"),
    ("condition", "gauge", "1 for the condition status the Node carries now, 0 for the others"),
    ("gpus", "gauge", "GPUs NVML lists"),
    ("gpus_usable", "gauge", "GPUs that answer every NVML query (not lost, no error)"),
    ("xid_events", "counter", "XID events seen, by GPU, XID and whether critical"),
    ("xid_active", "gauge", "1 while a critical XID is not recovered from, by GPU"),
    ("api_errors", "counter", "reports to the API server that failed after their retries"),
    ("api_writes", "counter", "writes to the API server (label/status patches, events)"),
)


def apply_status(outcome: Outcome) -> str:
    """The ``STATUS=`` line after an apply: the first failure, or what changed."""
    if outcome.failed:
        r = outcome.failed[0]
        return f"degraded: {r.step} failed: {r.detail}"[:200]
    changed = [str(r.step) for r in outcome.results if r.status is Status.CHANGED]
    return f"applied ({', '.join(changed) or 'nothing to change'}); reporting"


class Telemetry:
    """The daemon's metrics registry and systemd notifier, with the daemon's wording."""

    def __init__(self, notifier: Notifier, root: HostRoot, clock: Clock) -> None:
        self.notifier = notifier
        self.metrics = Metrics("nodeagent")
        for name, kind, help_text in METRICS:
            self.metrics.describe(name, kind, help_text)
        self._root = root
        self._clock = clock

    def up(self, running: bool) -> None:
        self.metrics.set("up", 1 if running else 0, {"version": __version__})

    def applied(self, ok: bool, elapsed_s: float) -> None:
        self.metrics.set("last_apply_success", 1 if ok else 0)
        self.metrics.set("last_apply_duration_seconds", round(elapsed_s, 6))
        self.metrics.set("last_apply_timestamp_seconds", round(self._clock.time(), 3))

    def detected(self, inv: Inventory) -> None:
        self.metrics.set("gpus", len(inv.gpus))
        self.metrics.set("gpus_usable", len(inv.healthy_gpus))

    def xids_active(self, inv: Inventory, gpus: Iterable[Optional[int]]) -> None:
        active = set(gpus)
        for g in inv.gpus:
            self.metrics.set("xid_active", 1 if g.index in active else 0, {"gpu": str(g.index)})

    def xid(self, ev: XidEvent) -> None:
        labels = {
            "gpu": str(ev.gpu_index),
            "xid": str(ev.xid),
            "critical": str(ev.critical).lower(),
        }
        self.metrics.inc("xid_events", labels=labels)

    def report_ended(self, writes: int, failed: bool) -> None:
        """A report to the API server ended (``failed``: after its retries)."""
        self.metrics.set("last_report_timestamp_seconds", round(self._clock.time(), 3))
        if writes:
            self.metrics.inc("api_writes", by=writes)
        if failed:
            self.metrics.inc("api_errors")

    def report_success(self, ok: bool) -> None:
        """Whether the last report (or the sync around it) went through."""
        self.metrics.set("last_report_success", 1 if ok else 0)

    def condition(self, condition_type: str, status: ConditionStatus) -> None:
        for s in ConditionStatus:
            labels = {"condition": condition_type, "status": s.value}
            self.metrics.set("condition", 1 if s is status else 0, labels)

    def write_textfile(self, host_path: str) -> None:
        """The registry to ``host_path`` (``daemon.metrics_textfile``; "" is off)."""
        if not host_path:
            return
        try:
            self.metrics.write_textfile(self._root.path(host_path))
        except NodeagentError as e:
            log.error("daemon.textfile_failed", error=str(e))
