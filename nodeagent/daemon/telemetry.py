"""What the daemon tells Prometheus and systemd: its metrics (one table, :data:`METRICS`),
the ``STATUS=`` line for an apply, and the node-exporter textfile; and the per-GPU series
under dcgm-exporter's names and labels (one table, :data:`DCGM`; docs/operations.md), with
the pod that holds each GPU (:class:`PodSource`, the kubelet's pod-resources API).

Called from every daemon thread: the registry and the notifier lock themselves, and the
textfile writes are serialised by :meth:`Metrics.write_textfile`. Holds no other state than
the last XID seen per GPU and the last inventory's GPU labels (under its own lock), and the
:class:`PodSource`, which only the thread calling :meth:`Telemetry.detected` (the
reporter) uses. Touches one host file, ``daemon.metrics_textfile``, and one socket, the
kubelet's ``daemon.pod_resources_socket`` (through :mod:`nodeagent.kube.podresources`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Optional

from nodeagent import __version__
from nodeagent.daemon.metrics import Metrics
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.errors import NodeagentError
from nodeagent.gpu.events import XidEvent
from nodeagent.gpu.inventory import GPU, Inventory
from nodeagent.host.clock import Clock
from nodeagent.host.paths import HostRoot
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.podresources import (
    Attribution,
    Failure,
    PodResourcesError,
    attribute,
    list_pods,
)
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
    (
        "pod_resources_success",
        "gauge",
        "1 if the last List of the kubelet's pod-resources API answered (absent when off)",
    ),
)


def _fb_free(g: GPU) -> Optional[float]:
    if g.memory_total_mib is None or g.memory_used_mib is None:
        return None
    return max(g.memory_total_mib - g.memory_used_mib, 0)


def _rows(field: str) -> Callable[[GPU], Optional[float]]:
    def read(g: GPU) -> Optional[float]:
        return None if g.remapped_rows is None else float(getattr(g.remapped_rows, field))

    return read


#: dcgm-exporter's series (its default-counters.csv: name, type, help), each read from the
#: inventory; a reading that is None (NOT_SUPPORTED, failed, GPU lost) is no sample.
#: DCGM_FI_DEV_XID_ERRORS is not here: it comes from the XID watcher (:meth:`Telemetry.xid`).
DCGM: tuple[tuple[str, str, str, Callable[[GPU], Optional[float]]], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda g: g.utilization_gpu_pct),
    (
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Framebuffer memory used (in MiB).",
        lambda g: g.memory_used_mib,
    ),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", _fb_free),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: g.temperature_c),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: g.power_usage_w),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
        _rows("correctable"),
    ),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
        _rows("uncorrectable"),
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "Whether remapping of rows has failed",
        _rows("failure"),
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "gauge",
        "Whether remapping of rows is pending",
        _rows("pending"),
    ),
)
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
XID_ERRORS_HELP = "Value of the last XID error encountered (0: none since the agent started)."


def gpu_labels(g: GPU, hostname: str) -> dict[str, str]:
    """dcgm-exporter's labels of one GPU's series."""
    return {
        "gpu": str(g.index),
        "UUID": g.uuid or "",
        "device": f"nvidia{g.index}",
        "modelName": g.name or "",
        "Hostname": hostname,
    }


class PodSource:
    """Which pod holds each GPU, asked of the kubelet each time the per-GPU series are
    refreshed.

    Owned by the one thread that calls :meth:`refresh` (the reporter, through
    :meth:`Telemetry.detected`). ``socket_path`` gives the current
    ``daemon.pod_resources_socket`` ("" is off), read at each refresh so a reload takes
    effect. A failure is logged once per change of state (reason, gRPC code), not at every
    refresh; the GPUs then carry no pod labels, as dcgm-exporter's do when no pod holds them.
    """

    def __init__(self, root: HostRoot, socket_path: Callable[[], str]) -> None:
        self._root = root
        self._socket_path = socket_path
        self._said: Optional[tuple[str, ...]] = None  # the state last logged
        self._said_unmapped: tuple[str, ...] = ()

    def refresh(self, inv: Inventory) -> tuple[Attribution, Optional[bool]]:
        """(the attribution, whether the List answered: None when off)."""
        path = self._socket_path()
        if not path:
            if self._changed(str(Failure.OFF)):
                log.info("daemon.pod_resources_off")
            return Attribution({}), None
        try:
            listing = list_pods(self._root, path)
        except PodResourcesError as e:
            if self._changed(str(e.reason), str(e.grpc_code)):
                say = log.info if e.reason is Failure.SOCKET_ABSENT else log.warning
                say("daemon.pod_resources_unavailable", reason=str(e.reason), error=str(e))
            return Attribution({}), False
        found = attribute(listing.response, inv)
        if self._changed("ok", listing.api):
            log.info("daemon.pod_resources", api=listing.api, socket=path)
        if found.unmapped != self._said_unmapped:
            self._said_unmapped = found.unmapped
            if found.unmapped:
                log.warning("daemon.pod_resources_unmapped", device_ids=list(found.unmapped))
        return found, True

    def _changed(self, *state: str) -> bool:
        """Whether ``state`` differs from the last one seen (which it then becomes)."""
        if state == self._said:
            return False
        self._said = state
        return True


def apply_status(outcome: Outcome) -> str:
    """The ``STATUS=`` line after an apply: the first failure, or what changed."""
    if outcome.failed:
        r = outcome.failed[0]
        return f"degraded: {r.step} failed: {r.detail}"[:200]
    changed = [str(r.step) for r in outcome.results if r.status is Status.CHANGED]
    return f"applied ({', '.join(changed) or 'nothing to change'}); reporting"


class Telemetry:
    """The daemon's metrics registry and systemd notifier, with the daemon's wording."""

    def __init__(
        self,
        notifier: Notifier,
        root: HostRoot,
        clock: Clock,
        pod_socket: Callable[[], str] = lambda: "",
    ) -> None:
        self.notifier = notifier
        self.metrics = Metrics("nodeagent")
        for name, kind, help_text in METRICS:
            self.metrics.describe(name, kind, help_text)
        for name, kind, help_text, _ in DCGM:
            self.metrics.describe(name, kind, help_text, namespaced=False)
        self.metrics.describe(XID_ERRORS, "gauge", XID_ERRORS_HELP, namespaced=False)
        self._root = root
        self._clock = clock
        self._lock = threading.Lock()  # detected() (reporter) and xid() (watcher) race
        self._gpu_labels: dict[int, dict[str, str]] = {}  # by index, from the last inventory
        self._last_xid: dict[str, int] = {}  # by UUID: a GPU that comes back keeps its value
        self._pods = PodSource(root, pod_socket)  # the caller of detected()'s (the reporter)

    def up(self, running: bool) -> None:
        self.metrics.set("up", 1 if running else 0, {"version": __version__})

    def applied(self, ok: bool, elapsed_s: float) -> None:
        self.metrics.set("last_apply_success", 1 if ok else 0)
        self.metrics.set("last_apply_duration_seconds", round(elapsed_s, 6))
        self.metrics.set("last_apply_timestamp_seconds", round(self._clock.time(), 3))

    def detected(self, inv: Inventory, hostname: Optional[str] = None) -> None:
        """A re-detect: the GPU counts and every per-GPU series, replaced whole so a GPU
        that is gone has no series left. ``hostname``: the ``Hostname`` label (default: the
        host's name, as dcgm-exporter uses). A GPU a container holds also gets ``namespace``,
        ``pod`` and ``container`` (one List of the kubelet's pod-resources API per call)."""
        self.metrics.set("gpus", len(inv.gpus))
        self.metrics.set("gpus_usable", len(inv.healthy_gpus))
        host = hostname if hostname is not None else socket.gethostname()
        held, answered = self._pods.refresh(inv)
        if answered is None:
            self.metrics.replace("pod_resources_success", [])
        else:
            self.metrics.set("pod_resources_success", 1 if answered else 0)
        labelled = []
        for g in inv.gpus:
            labels = gpu_labels(g, host)
            ref = held.by_gpu.get(g.index)
            labelled.append((g, labels if ref is None else {**labels, **ref.labels()}))
        for name, _, _, read in DCGM:
            samples = [(lb, float(v)) for g, lb in labelled if (v := read(g)) is not None]
            self.metrics.replace(name, samples)
        with self._lock:
            self._gpu_labels = {g.index: lb for g, lb in labelled}
            self._render_xids()

    def _render_xids(self) -> None:
        """Under ``self._lock``: one XID sample per GPU of the last inventory."""
        self.metrics.replace(
            XID_ERRORS,
            [(lb, float(self._last_xid.get(lb["UUID"], 0))) for lb in self._gpu_labels.values()],
        )

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
        with self._lock:
            uuid = ev.uuid
            if uuid is None and ev.gpu_index in self._gpu_labels:
                uuid = self._gpu_labels[ev.gpu_index]["UUID"]
            if uuid:
                self._last_xid[uuid] = ev.xid
                self._render_xids()

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
