"""``nodeagent run``: apply once, then keep the Node's truth current until told to stop.

Threads, each with one job (node-problem-detector's split: problem sources apart from the
exporter that writes conditions), and what each owns:

* **main** — signals and systemd: SIGTERM/SIGINT stop (exit within 5 s, whatever the
  others are doing), SIGHUP starts a reload, ``WATCHDOG=1`` pings. The signal handlers
  only set Events; the main thread owns the metrics server and starts the reload thread;
* **reload** (at most one at a time: ``_reloading``) — re-reads the config, swaps it,
  restarts the XID watcher, re-applies;
* **the XID watcher** (:class:`nodeagent.gpu.events.XidWatcher`) — blocks on NVML's event
  set; a critical XID is recorded in the shared state and wakes the reporter at once;
* **the reporter** (:mod:`nodeagent.daemon.reporter`) — the only thread that writes to the
  API server, and talks to the kubelet's pod-resources socket (one ``List`` each time it
  refreshes the per-GPU series, for their pod labels);
* **node-watch** (:mod:`nodeagent.daemon.nodewatch`, started and ended by the reporter) —
  while GPUReady waits on the device plugin's capacity, watches the Node (reads only) and
  hands each change to the reporter.

What they share lives in :class:`~nodeagent.daemon.state.State` (one lock); an apply runs
under ``_applying`` (one at a time); the watcher handle under ``_watcher_lock``; everything
else crosses threads as an Event. Time is read and waited on through the injected
:class:`~nodeagent.host.clock.Clock`.

Host input never makes it exit: an apply (at start, on SIGHUP) or a sync that fails — or
raises anything — is reported (``STATUS=``, the condition's reason, the
``last_apply_success`` metric) and tried again: the bootstrap apply on a re-detect tick
while the last one failed (:class:`~nodeagent.daemon.schedule.ApplyBackoff`), a sync on
the retry backoff. Only a bad config at start exits (2).

Nothing grows with time: the state is the latest inventory, the latest report and the
active XIDs (at most one per GPU).
"""

from __future__ import annotations

import random
import signal
import threading
from typing import Callable, Optional

from nodeagent.config import Config
from nodeagent.daemon.metrics import MetricsServer
from nodeagent.daemon.reporter import Reporter
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.state import State
from nodeagent.daemon.telemetry import Telemetry, apply_status
from nodeagent.errors import NodeagentError, describe
from nodeagent.gpu.events import RecoveryActionEvent, XidEvent, XidWatcher
from nodeagent.gpu.health import XidRecord
from nodeagent.host.clock import REAL, Clock
from nodeagent.host.paths import HostRoot
from nodeagent.log import get_logger
from nodeagent.walk.steps import Phase, RuntimeState, Status

log = get_logger(__name__)

# XID 154, "GPU Recovery Action Changed" (NVIDIA's XID catalog): informational, it always
# follows another XID; the new action is read by a re-detect.
XID_RECOVERY_ACTION_CHANGED = 154

STOP_GRACE_S = 3.0  # what the reporter gets to finish after SIGTERM (systemd waits 5 s+)
MAIN_TICK_S = 1.0  # the main thread's longest sleep between two looks at its Events


class Daemon:
    """The long-running agent. ``load_config`` re-reads the config file (on SIGHUP)."""

    def __init__(
        self,
        load_config: Callable[[], Config],
        root: HostRoot,
        notifier: Notifier,
        *,
        clock: Clock = REAL,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._load_config = load_config
        self._clock = clock
        self.state = State(load_config(), root)
        self.telemetry = Telemetry(  # its pod source is the reporter's, re-reading the config
            notifier, root, clock, lambda: self.state.current().cfg.daemon.pod_resources_socket
        )
        self._stop = threading.Event()
        self._wake_main = threading.Event()
        self._hup = threading.Event()  # a reload was asked for (SIGHUP)
        self._reloading = threading.Event()  # a reload thread runs
        self._applying = threading.Lock()  # one apply at a time
        self.reporter = Reporter(self.state, self.telemetry, clock, self._stop, self._reapply, rng)
        self._watcher_lock = threading.Lock()
        self._watcher: Optional[XidWatcher] = None
        self._server: Optional[MetricsServer] = None  # the main thread's

    # --- the main thread ----------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM/SIGINT: returns the exit code (0 on a clean stop). Main thread only
        (it installs the signal handlers); :meth:`serve` is the same without them."""
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stop())
        signal.signal(signal.SIGINT, lambda signum, frame: self.stop())
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reload())
        return self.serve()

    def serve(self) -> int:
        """Apply, start the watcher and the reporter, then ping and reload until
        :meth:`stop`; returns the exit code."""
        notifier = self.telemetry.notifier
        self.telemetry.up(True)
        self._start_metrics()
        with self._applying:
            status = self._apply()
        notifier.ready(status)
        self._restart_watcher()
        self.reporter.request()
        self.reporter.start()
        watchdog = notifier.watchdog_interval_s()
        next_ping = self._clock.monotonic()
        while not self._stop.is_set():
            self._clock.wait(self._wake_main, min(watchdog or MAIN_TICK_S, MAIN_TICK_S))
            self._wake_main.clear()
            if watchdog and self._clock.monotonic() >= next_ping:
                notifier.watchdog()
                next_ping = self._clock.monotonic() + watchdog
            if self._hup.is_set() and not self._stop.is_set() and not self._reloading.is_set():
                self._hup.clear()
                # Off the main thread: a re-apply that restarts a runtime may take a minute,
                # and the watchdog pings above must not stop meanwhile.
                self._reloading.set()
                threading.Thread(target=self._reload_once, name="reload", daemon=True).start()
        return self._shutdown()

    def stop(self) -> None:
        """Ask every thread to finish (SIGTERM, SIGINT); :meth:`serve` then returns."""
        self._stop.set()
        self.reporter.wake()
        self._wake_main.set()

    def reload(self) -> None:
        """Ask for a reload (SIGHUP): the config re-read, the bootstrap apply again."""
        self._hup.set()
        self._wake_main.set()

    def _start_metrics(self) -> None:
        listen = self.state.current().cfg.daemon.metrics_listen
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        try:
            self._server = self.telemetry.metrics.serve(host.strip("[]"), int(port))
            log.info("daemon.metrics", address=f"{host}:{self._server.address[1]}")
        except OSError as e:  # metrics are a courtesy: never a reason not to run
            log.error("daemon.metrics_unavailable", listen=listen, error=str(e))

    def _shutdown(self) -> int:
        log.info("daemon.stopping")
        self.telemetry.notifier.stopping("stopping")
        deadline = self._clock.monotonic() + STOP_GRACE_S
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.stop(timeout_s=1.0)
        self.reporter.join(timeout=max(0.1, deadline - self._clock.monotonic()))
        if self._server is not None:
            self._server.close()
        self.telemetry.up(False)
        self.telemetry.write_textfile(self.state.current().cfg.daemon.metrics_textfile)
        return 0

    # --- the reload thread --------------------------------------------------------------

    def _reload_once(self) -> None:
        try:
            self._do_reload()
        except Exception as e:  # a reload must never take the daemon down
            log.exception("daemon.reload_crashed", error=str(e))
        finally:
            self._reloading.clear()
            self._wake_main.set()  # a SIGHUP that came in meanwhile is served now

    def _do_reload(self) -> None:
        notifier = self.telemetry.notifier
        notifier.reloading()
        try:
            cfg = self._load_config()
        except NodeagentError as e:
            log.error("daemon.reload_failed", error=str(e))
            notifier.ready(f"config not reloaded ({e}); running with the previous one")
            return
        self.state.swap_config(cfg)
        log.info("daemon.reloaded")
        self._restart_watcher()
        with self._applying:
            status = self._apply()
        self.reporter.request()
        notifier.ready(status)

    # --- applying (main at start, the reload thread, the reporter) ----------------------

    def _apply(self) -> str:
        """The local steps (detect, runtime, kubelet args) — the Node is the reporter's.
        Returns the ``STATUS=`` line. The caller holds ``_applying``."""
        snap = self.state.current()
        start = self._clock.monotonic()
        try:
            outcome = snap.agent.apply(Phase.BOOTSTRAP)
        except Exception as e:  # the walk catches its steps' errors; this is the last net
            log.debug("daemon.apply_crashed", error=describe(e), exc_info=e)
            elapsed = self._clock.monotonic() - start
            self._applied(False, elapsed, snap.runtime)
            return f"degraded: apply failed: {describe(e)}"[:200]
        ok = not outcome.failed
        self._applied(ok, outcome.elapsed_s, outcome.runtime)
        log.info(
            "daemon.applied",
            ok=ok,
            failed=[str(r.step) for r in outcome.failed],
            changed=[str(r.step) for r in outcome.results if r.status is Status.CHANGED],
            elapsed_s=round(outcome.elapsed_s, 3),
        )
        return apply_status(outcome)

    def _applied(self, ok: bool, elapsed_s: float, runtime: RuntimeState) -> None:
        # Read, then written: safe, as only an apply writes the backoff and ``_applying``
        # admits one at a time.
        snap = self.state.current()
        backoff = snap.reapply.after(
            ok, self._clock.monotonic(), snap.cfg.daemon.redetect_interval_s
        )
        self.state.applied(runtime, backoff)
        self.telemetry.applied(ok, elapsed_s)

    def _reapply(self) -> None:
        """On the reporter's re-detect tick: the bootstrap apply again if the last one
        failed and its backoff has passed (not while a reload runs: it applies anyway)."""
        due = self.state.current().reapply.due(self._clock.monotonic())
        if not due or self._reloading.is_set() or not self._applying.acquire(blocking=False):
            return
        try:
            status = self._apply()
        finally:
            self._applying.release()
        self.telemetry.notifier.status(status)

    # --- the XID watcher ----------------------------------------------------------------

    def _restart_watcher(self) -> None:
        """(Re)start the XID watcher with the current config; not after a stop."""
        cfg = self.state.current().cfg
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.stop(timeout_s=1.0)
                self._watcher = None
            if self._stop.is_set():
                return
            self._watcher = XidWatcher(
                self._on_xid,
                library=cfg.nvml_library,
                on_error=lambda msg: log.warning("daemon.xid_watch_unavailable", error=msg),
                extra_critical=cfg.daemon.xid_extra_critical,
                ignore=cfg.daemon.xid_ignore,
                clock=self._clock,
                on_recovery=self._on_recovery,
            )
            self._watcher.start()

    def _on_recovery(self, ev: RecoveryActionEvent) -> None:
        """The watcher thread's callback: NVIDIA's verdict on a GPU (its recovery action)
        changed. The event carries no value: the reporter re-detects and reports now."""
        log.warning("daemon.recovery_action_changed", gpu=ev.gpu_index, uuid=ev.uuid)
        self.reporter.request()

    def _on_xid(self, ev: XidEvent) -> None:
        """The watcher thread's callback."""
        self.telemetry.xid(ev)
        textfile = self.state.current().cfg.daemon.metrics_textfile
        if not ev.critical:
            log.info("daemon.xid", gpu=ev.gpu_index, xid=ev.xid, critical=False)
            self.telemetry.write_textfile(textfile)  # seen by monitoring even while the API is down
            if ev.xid == XID_RECOVERY_ACTION_CHANGED:
                self.reporter.request()  # re-detect now: NVIDIA's verdict on the GPU changed
            return
        log.warning("daemon.xid", gpu=ev.gpu_index, xid=ev.xid, critical=True, what=ev.description)
        record = XidRecord(ev.gpu_index, ev.xid, self._clock.time())
        self.state.change_health(lambda h: h.record(record))
        self.telemetry.write_textfile(textfile)
        self.reporter.request()
