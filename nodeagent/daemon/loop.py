"""``nodeagent run``: apply once, then keep the Node's truth current until told to stop.

Three threads, each with one job (node-problem-detector's split: problem sources apart
from the exporter that writes conditions):

* **main** — signals and systemd: SIGTERM/SIGINT stop (exit within 5 s, whatever the
  others are doing), SIGHUP re-reads the config and re-applies, ``WATCHDOG=1`` pings;
* **the XID watcher** (:class:`nodeagent.gpu.events.XidWatcher`) — blocks on NVML's event
  set; a critical XID is recorded and wakes the reporter at once;
* **the reporter** — the only thread that talks to the API server. It wakes on an XID, on
  the re-detect interval (NVML only; the API is called only when what the Node should say
  changed), on the jittered heartbeat (read the Node, correct drift), and on the retry
  backoff after a failure. An API outage is waited out here with bounded, jittered backoff,
  never by exiting.

Host input never makes it exit: an apply (at start, on SIGHUP) or a sync that fails — or
raises anything — is reported (``STATUS=``, the condition's reason, the
``last_apply_success`` metric) and tried again: the bootstrap apply on a re-detect tick
while the last one failed — after 1, 2, 4 … re-detect intervals (at most an hour), so a
runtime that keeps refusing the change is not reloaded every minute —, a sync on the retry
backoff. Only a bad config at start exits (2).

Nothing grows with time: the state is the latest inventory, the latest report and the
active XIDs (at most one per GPU).
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from nodeagent import __version__
from nodeagent.errors import NodeagentError, describe
from nodeagent.gpu.health import Health, XidRecord
from nodeagent.gpu.inventory import STATE_OK, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.log import get_logger
from nodeagent.walk.agent import Agent, NodeState, RuntimeState
from nodeagent.walk.steps import CHANGED, FAILED, Outcome, StepResult

if TYPE_CHECKING:
    from nodeagent.config import Config
    from nodeagent.daemon.metrics import Metrics, MetricsServer
    from nodeagent.daemon.sdnotify import Notifier
    from nodeagent.gpu.events import XidEvent, XidWatcher

log = get_logger(__name__)

STOP_GRACE_S = 3.0  # what the reporter gets to finish after SIGTERM (systemd waits 5 s+)
REAPPLY_MAX_S = 3600.0  # the longest wait between two re-applies after failures


def jittered(interval: float, jitter: float, rng: Callable[[], float] = random.random) -> float:
    """``interval`` scaled by a factor drawn uniformly from [1 - jitter, 1 + jitter]."""
    return interval * (1 - jitter + 2 * jitter * rng())


def first_heartbeat(
    interval: float, jitter: float, rng: Callable[[], float] = random.random
) -> float:
    """The first heartbeat's delay, uniform in [0, (1 + jitter) x interval]: a fleet that
    booted together spreads its heartbeats over a whole interval from the start."""
    return interval * (1 + jitter) * rng()


def heartbeat_age_s(node: Optional[dict[str, Any]], ctype: str, now: float) -> float:
    """Seconds since the condition's lastHeartbeatTime (inf when absent or unreadable)."""
    from nodeagent.kube.patches import epoch, find_condition

    cond = find_condition(((node or {}).get("status") or {}).get("conditions") or [], ctype)
    since = epoch(cond.get("lastHeartbeatTime") if cond else None)
    return float("inf") if since is None else now - since


def boot_id(root: HostRoot) -> str:
    from nodeagent.host.reader import read_optional

    return (read_optional(root.path("/proc/sys/kernel/random/boot_id")) or "").strip()


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


@dataclasses.dataclass
class _Reported:
    """What the Node was last told, so an unchanged re-detect makes no API call."""

    labels: Optional[dict[str, str]] = None
    readiness: Optional[tuple[str, str, str]] = None
    node: Optional[dict[str, Any]] = None


class Daemon:
    """The long-running agent. ``load_config`` re-reads the config file (on SIGHUP)."""

    def __init__(
        self,
        load_config: Callable[[], Config],
        root: HostRoot,
        notifier: Notifier,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.load_config = load_config
        self.root = root
        self.notifier = notifier
        self.rng = rng
        self.cfg = load_config()
        self.agent = Agent(self.cfg, root)
        self.boot_id = boot_id(root)
        self.health = self._load_health()
        self.inventory: Optional[Inventory] = None
        self.runtime = RuntimeState()
        self.reported = _Reported()
        self.metrics = self._metrics()
        self._server: Optional[MetricsServer] = None
        self._watcher: Optional[XidWatcher] = None
        self._lock = threading.Lock()  # health, agent and cfg swaps
        self._stop = threading.Event()
        self._wake_main = threading.Event()
        self._kick = threading.Event()  # wake the reporter now
        self._full = False  # the kick wants an API read (not just a re-detect)
        self._reload = False
        self._reloading = threading.Event()
        self._failures = 0
        self._next_retry: Optional[float] = None
        self._apply_failures = 0  # bootstrap applies that failed in a row
        self._next_reapply = 0.0  # monotonic time before which a failed apply is not re-run
        self._reporter: Optional[threading.Thread] = None

    # --- setup --------------------------------------------------------------------------

    def _metrics(self) -> Metrics:
        from nodeagent.daemon.metrics import Metrics

        m = Metrics("nodeagent")
        for name, kind, help_text in METRICS:
            m.describe(name, kind, help_text)
        return m

    def _load_health(self) -> Health:
        from nodeagent.host.reader import read_text

        host_path = self.cfg.daemon.state_file
        try:
            found = read_text(self.root.path(host_path), host_path)
        except NodeagentError as e:  # unreadable state: start clean, and say so
            log.error("daemon.state_unreadable", error=str(e))
            found = None
        health = Health.from_json(found.text, self.boot_id) if found else Health()
        if health.active:
            log.warning(
                "daemon.xid_state_restored",
                xids=[(r.gpu, r.xid) for r in health.active],
                file=self.cfg.daemon.state_file,
            )
        return health

    def _save_health(self) -> None:
        from nodeagent.host.writer import existing_meta, own_meta, write_file

        host_path = self.cfg.daemon.state_file
        data = (self.health.to_json(self.boot_id) + "\n").encode()
        try:
            real, _ = self.root.resolve(host_path)
            write_file(real, data, existing_meta(real, own_meta()), host_path)
        except NodeagentError as e:  # the state is a courtesy across restarts: keep running
            log.error("daemon.state_not_saved", error=str(e))

    def _start_metrics(self) -> None:
        listen = self.cfg.daemon.metrics_listen
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        try:
            self._server = self.metrics.serve(host.strip("[]"), int(port))
            log.info("daemon.metrics", address=f"{host}:{self._server.address[1]}")
        except OSError as e:  # metrics are a courtesy: never a reason not to run
            log.error("daemon.metrics_unavailable", listen=listen, error=str(e))

    def _start_watcher(self) -> None:
        from nodeagent.gpu.events import XidWatcher

        d = self.cfg.daemon
        self._watcher = XidWatcher(
            self._on_xid,
            library=self.cfg.nvml_library,
            on_error=lambda msg: log.warning("daemon.xid_watch_unavailable", error=msg),
            extra_critical=d.xid_extra_critical,
            ignore=d.xid_ignore,
        )
        self._watcher.start()

    # --- main thread --------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM/SIGINT: returns the exit code (0 on a clean stop)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.metrics.set("up", 1, {"version": __version__})
        self._start_metrics()
        outcome = self._apply()
        self.notifier.ready(self._status(outcome))
        self._start_watcher()
        self._request(full=True)
        self._reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        self._reporter.start()
        watchdog = self.notifier.watchdog_interval_s()
        next_ping = 0.0
        while not self._stop.is_set():
            self._wake_main.wait(timeout=min(watchdog, 1.0) if watchdog else 1.0)
            self._wake_main.clear()
            if watchdog and time.monotonic() >= next_ping:
                self.notifier.watchdog()
                next_ping = time.monotonic() + watchdog
            if self._reload and not self._stop.is_set() and not self._reloading.is_set():
                self._reload = False
                # Off the main thread: a re-apply that restarts a runtime may take a minute,
                # and the watchdog pings above must not stop meanwhile.
                self._reloading.set()
                threading.Thread(target=self._reload_once, name="reload", daemon=True).start()
        return self._shutdown()

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self._stop.set()
        self._kick.set()
        self._wake_main.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload = True
        self._wake_main.set()

    def _shutdown(self) -> int:
        log.info("daemon.stopping")
        self.notifier.stopping("stopping")
        deadline = time.monotonic() + STOP_GRACE_S
        if self._watcher is not None:
            self._watcher.stop(timeout_s=1.0)
        if self._reporter is not None:
            self._reporter.join(timeout=max(0.1, deadline - time.monotonic()))
        if self._server is not None:
            self._server.close()
        self.metrics.set("up", 0, {"version": __version__})
        self._write_textfile()
        return 0

    def _reload_once(self) -> None:
        try:
            self._do_reload()
        except Exception as e:  # a reload must never take the daemon down
            log.exception("daemon.reload_crashed", error=str(e))
        finally:
            self._reloading.clear()
            self._wake_main.set()  # a SIGHUP that came in meanwhile is served now

    def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            cfg = self.load_config()
        except NodeagentError as e:
            log.error("daemon.reload_failed", error=str(e))
            self.notifier.ready(f"config not reloaded ({e}); running with the previous one")
            return
        with self._lock:
            old = self.agent
            self.cfg = cfg
            self.agent = Agent(cfg, self.root)
            old.close()
        log.info("daemon.reloaded")
        if self._watcher is not None:
            self._watcher.stop(timeout_s=1.0)
        self._start_watcher()
        outcome = self._apply()
        self._request(full=True)
        self.notifier.ready(self._status(outcome))

    def _apply(self) -> Outcome:
        """The local steps (detect, runtime, kubelet args) — the Node is the reporter's."""
        start = time.monotonic()
        try:
            outcome = self.agent.apply("bootstrap")
        except Exception as e:  # the walk catches its steps' errors; this is the last net
            log.debug("daemon.apply_crashed", error=describe(e), exc_info=e)
            failed = StepResult.of_error("apply", e)
            outcome = Outcome("bootstrap", False, (failed,), time.monotonic() - start)
        ok = not outcome.failed
        self._apply_failures = 0 if ok else self._apply_failures + 1
        if not ok:
            wait = min(
                REAPPLY_MAX_S,
                self.cfg.daemon.redetect_interval_s * 2 ** min(self._apply_failures - 1, 16),
            )
            self._next_reapply = time.monotonic() + wait
        now = time.time()
        self.metrics.set("last_apply_success", 1 if ok else 0)
        self.metrics.set("last_apply_duration_seconds", round(outcome.elapsed_s, 6))
        self.metrics.set("last_apply_timestamp_seconds", round(now, 3))
        for r in outcome.results:
            if r.step == "runtime" and r.status == FAILED:
                self.runtime = RuntimeState(False, r.detail)
            elif r.step == "runtime":
                self.runtime = RuntimeState(None)  # the reporter verifies on its first sync
        log.info("daemon.applied", summary=outcome.summary())
        return outcome

    def _reapply(self) -> None:
        """The bootstrap apply again, after one that failed (a re-detect tick)."""
        self.notifier.status(self._status(self._apply()))

    @staticmethod
    def _status(outcome: Outcome) -> str:
        if outcome.failed:
            r = outcome.failed[0]
            return f"degraded: {r.step} failed: {r.detail}"[:200]
        changed = [r.step for r in outcome.results if r.status == CHANGED]
        return f"applied ({', '.join(changed) or 'nothing to change'}); reporting"

    # --- the XID watcher's callback -----------------------------------------------------

    def _on_xid(self, ev: XidEvent) -> None:
        labels = {
            "gpu": str(ev.gpu_index),
            "xid": str(ev.xid),
            "critical": str(ev.critical).lower(),
        }
        self.metrics.inc("xid_events", labels=labels)
        if not ev.critical:
            log.info("daemon.xid", gpu=ev.gpu_index, xid=ev.xid, critical=False)
            self._write_textfile()  # seen by monitoring even while the API is down
            return
        log.warning("daemon.xid", gpu=ev.gpu_index, xid=ev.xid, critical=True, what=ev.description)
        with self._lock:
            self.health = self.health.record(XidRecord(ev.gpu_index, ev.xid, time.time()))
            self._save_health()
        self._write_textfile()
        self._request(full=True)

    # --- the reporter -------------------------------------------------------------------

    def _request(self, full: bool) -> None:
        if full:
            self._full = True
        self._kick.set()

    def _report_loop(self) -> None:
        d = self.cfg.daemon
        now = time.monotonic()
        next_detect = now + d.redetect_interval_s
        next_heartbeat = now + first_heartbeat(d.heartbeat_interval_s, d.heartbeat_jitter, self.rng)
        while not self._stop.is_set():
            d = self.cfg.daemon
            now = time.monotonic()
            due = min(next_detect, next_heartbeat)
            if self._next_retry is not None:
                due = min(due, self._next_retry)
            recovery = self.health.recovery_due(d.xid_recovery_s)
            if recovery is not None:
                due = min(due, now + max(0.0, recovery - time.time()) + 0.05)
            self._kick.wait(timeout=max(0.0, due - now))
            self._kick.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            full = self._full
            self._full = False
            if now >= next_heartbeat:
                full = True
                next_heartbeat = now + jittered(
                    d.heartbeat_interval_s, d.heartbeat_jitter, self.rng
                )
            if self._next_retry is not None and now >= self._next_retry:
                full = True
            redetect_due = now >= next_detect
            if redetect_due:
                next_detect = now + d.redetect_interval_s
                if (
                    self._apply_failures
                    and now >= self._next_reapply
                    and not self._reloading.is_set()
                ):
                    self._reapply()
            try:
                self.sync(full=full, verify_runtime=redetect_due or self.inventory is None)
            except Exception as e:  # the reporter outlives any one bad cycle, and says so
                log.debug("daemon.sync_crashed", error=describe(e), exc_info=e)
                self._retry_later("sync", describe(e))
                self._write_textfile()

    def sync(self, *, full: bool, verify_runtime: bool = True) -> None:
        """One cycle: re-detect; talk to the API when ``full`` or when what the Node
        should say changed since it was last told."""
        with self._lock:
            agent, cfg = self.agent, self.cfg
        inv = agent.detect()
        self.inventory = inv
        self.metrics.set("gpus", len(inv.gpus))
        self.metrics.set("gpus_usable", len(inv.healthy_gpus))
        if verify_runtime:
            self.runtime = self._verify_runtime(agent)
        gpus_readable = inv.state == STATE_OK and all(g.usable for g in inv.gpus)
        with self._lock:
            before = self.health
            self.health = self.health.recover(time.time(), cfg.daemon.xid_recovery_s, gpus_readable)
            if self.health is not before:
                log.info("daemon.xid_recovered", quiet_s=cfg.daemon.xid_recovery_s)
                self._save_health()
            current = self.health.current
            active = {r.gpu for r in self.health.active}
        for g in inv.gpus:
            self.metrics.set("xid_active", 1 if g.index in active else 0, {"gpu": str(g.index)})
        if inv.state != STATE_OK and not cfg.no_gpu_is_error:
            return  # a CPU node: nothing to report
        xid = current
        labels = agent.labels(inv)
        capacity = ((self.reported.node or {}).get("status") or {}).get("capacity")
        r = agent.readiness_fn(inv, self.runtime, xid)(capacity)
        want = (r.status, r.reason, r.message)
        if not full and labels == self.reported.labels and want == self.reported.readiness:
            return
        refresh = cfg.daemon.condition_refresh_s
        heartbeat = bool(refresh) and (
            heartbeat_age_s(self.reported.node, cfg.kube.condition_type, time.time()) >= refresh
        )
        result, state = agent.step_node(inv, labels, self.runtime, xid=xid, heartbeat=heartbeat)
        self._after_report(result.status == FAILED, result.detail, result.api_writes, state, labels)

    def _verify_runtime(self, agent: Agent) -> RuntimeState:
        r, state = agent.step_runtime(configure=False, dry_run=False)
        if r.status == FAILED:
            log.warning("daemon.runtime_not_ready", detail=r.detail)
        return state

    def _retry_later(self, what: str, detail: str) -> None:
        """A failed report or sync: say so (log, STATUS=, metric), retry after a backoff."""
        from nodeagent.retry import backoff_s

        self._failures += 1
        self.metrics.set("last_report_success", 0)
        wait = max(
            1.0, backoff_s(self._failures, None, 2.0, self.cfg.daemon.retry_max_s, self.rng())
        )
        self._next_retry = time.monotonic() + wait
        log.warning(f"daemon.{what}_failed", detail=detail, retry_in_s=round(wait, 1))
        self.notifier.status(f"{what} failed ({detail[:120]}); retrying in {wait:.0f} s")

    def _after_report(
        self, failed: bool, detail: str, writes: int, state: NodeState, labels: dict[str, str]
    ) -> None:
        now = time.time()
        self.metrics.set("last_report_timestamp_seconds", round(now, 3))
        if writes:
            self.metrics.inc("api_writes", by=writes)
        if failed:
            self.metrics.inc("api_errors")
            self._retry_later("report", detail)
        else:
            if self._failures:
                log.info("daemon.report_recovered", after_failures=self._failures)
                self.notifier.status("reporting")
            self._failures = 0
            self._next_retry = None
            self.metrics.set("last_report_success", 1)
            if state.readiness is not None:
                r = state.readiness
                self.reported = _Reported(labels, (r.status, r.reason, r.message), state.node)
                for s in ("True", "False", "Unknown"):
                    self.metrics.set(
                        "condition",
                        1 if s == r.status else 0,
                        {"condition": self.cfg.kube.condition_type, "status": s},
                    )
        self._write_textfile()

    def _write_textfile(self) -> None:
        path = self.cfg.daemon.metrics_textfile
        if not path:
            return
        try:
            self.metrics.write_textfile(self.root.path(path))
        except NodeagentError as e:
            log.error("daemon.textfile_failed", error=str(e))
