"""The reporter: the one thread of ``nodeagent run`` that talks to the API server.

It wakes on a request (a critical XID, a reload, start-up), on the re-detect interval
(NVML only: the API is called only when what the Node should say changed), on the
jittered heartbeat (read the Node, correct drift), on the retry backoff after a failure,
and when an XID may be recovered from (:class:`~nodeagent.daemon.schedule.ReportSchedule`
says when). While the Node was told it is not ready for a reason only the Node can change
(the device plugin's capacity), it also wakes on each change of the Node, which its
:class:`~nodeagent.daemon.nodewatch.NodeWatch` sees, and re-assesses at once; when that
watch fails it reads the Node on the schedule's backoff instead. An API outage is waited
out here, with bounded, jittered backoff, never by exiting; a cycle that raises anything is
reported and retried the same way.

Thread ownership: the schedule, the last inventory, what the Node was last told and the
Node watch's handle belong to the reporter thread alone; :meth:`Reporter.request` and
:meth:`Reporter.wake` are the only methods other threads call (they set Events; the watch's
thread calls ``wake`` after handing over what it saw, see :mod:`nodeagent.daemon.nodewatch`).
Shared state is read and written through :class:`~nodeagent.daemon.state.State`. Only this
thread writes to the API. May not touch host files but through the walk.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Mapping
from typing import Callable, Optional

from nodeagent.config import Config
from nodeagent.daemon.nodewatch import NodeWatch
from nodeagent.daemon.schedule import ReportSchedule
from nodeagent.daemon.state import State
from nodeagent.daemon.telemetry import Telemetry
from nodeagent.errors import NodeagentError, describe
from nodeagent.gpu.inventory import STATE_OK, Inventory
from nodeagent.host.clock import Clock
from nodeagent.kube.node import ConditionStatus, Node
from nodeagent.kube.readiness import Readiness, waits_on_node
from nodeagent.log import get_logger
from nodeagent.walk.agent import Agent
from nodeagent.walk.steps import NodeStep, RuntimeState, Status

log = get_logger(__name__)


def heartbeat_age_s(node: Optional[Node], condition_type: str, now: float) -> float:
    """Seconds since the condition's lastHeartbeatTime (inf when absent or unreadable)."""
    cond = node.condition(condition_type) if node is not None else None
    since = cond.last_heartbeat_time if cond is not None else None
    return float("inf") if since is None else now - since


@dataclasses.dataclass(frozen=True)
class Reported:
    """What the Node was last told, so an unchanged re-detect makes no API call."""

    labels: Optional[Mapping[str, str]] = None
    readiness: Optional[Readiness] = None
    node: Optional[Node] = None  # as last read, written or seen by the Node watch


class Reporter:
    """The reporter thread. ``reapply`` is called on each re-detect tick (the daemon
    re-runs a failed bootstrap apply there when its backoff allows)."""

    def __init__(
        self,
        state: State,
        telemetry: Telemetry,
        clock: Clock,
        stop: threading.Event,
        reapply: Callable[[], None],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._state = state
        self._telemetry = telemetry
        self._clock = clock
        self._stop = stop
        self._reapply = reapply
        self._rng = rng
        # Set by any thread; the reporter clears them when it wakes.
        self._kick = threading.Event()  # wake now
        self._read_node = threading.Event()  # ... and talk to the API even if nothing changed
        # The reporter thread's own.
        self._schedule = ReportSchedule(clock.monotonic(), state.current().cfg.daemon, rng)
        self._inventory: Optional[Inventory] = None
        self._reported = Reported()
        self._watch: Optional[NodeWatch] = None  # while GPUReady waits on the Node alone
        self._thread: Optional[threading.Thread] = None

    # --- called from other threads ------------------------------------------------------

    def request(self) -> None:
        """Report now, reading the Node even if nothing seems to have changed."""
        self._read_node.set()
        self._kick.set()

    def wake(self) -> None:
        """Wake the thread (to notice the stop event)."""
        self._kick.set()

    def start(self) -> None:
        """Start the thread; the timers start now."""
        self._schedule = ReportSchedule(
            self._clock.monotonic(), self._state.current().cfg.daemon, self._rng
        )
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the reporter thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = self._state.current()
            d = snap.cfg.daemon
            now = self._clock.monotonic()
            recovery_at = snap.health.recovery_due(d.xid_recovery_s)  # wall clock
            recovery_in = None if recovery_at is None else recovery_at - self._clock.time()
            wake_at = self._schedule.wake_at(now, recovery_in)
            self._clock.wait(self._kick, max(0.0, wake_at - now))
            self._kick.clear()
            if self._stop.is_set():
                self._end_watch()
                return
            self._take_watched()
            # Cleared only when seen set: a request made after this test wakes the next cycle.
            requested = self._read_node.is_set()
            if requested:
                self._read_node.clear()
            tick = self._schedule.tick(self._clock.monotonic(), d, requested)
            if tick.redetect:
                self._reapply()
            try:
                self.sync(
                    read_node=tick.read_node,
                    verify_runtime=tick.redetect or self._inventory is None,
                )
            except Exception as e:  # the reporter outlives any one bad cycle, and says so
                log.debug("daemon.sync_crashed", error=describe(e), exc_info=e)
                self._failed("sync", describe(e), d.retry_max_s)
                self._telemetry.write_textfile(d.metrics_textfile)

    def sync(self, *, read_node: bool, verify_runtime: bool) -> None:
        """One cycle: re-detect; talk to the API when ``read_node`` or when what the Node
        should say changed since it was last told."""
        snap = self._state.current()
        agent, cfg = snap.agent, snap.cfg
        inv = agent.detect()
        self._inventory = inv
        self._telemetry.detected(inv, self._node_name(agent))
        runtime = snap.runtime
        if verify_runtime:
            runtime = self._verify_runtime(agent)
            self._state.set_runtime(runtime)
        readable = inv.state == STATE_OK and all(g.usable for g in inv.gpus)
        quiet_s = cfg.daemon.xid_recovery_s
        now = self._clock.time()
        if self._state.change_health(lambda h: h.recover(now, quiet_s, readable)) is not None:
            log.info("daemon.xid_recovered", quiet_s=quiet_s)
        health = self._state.current().health
        self._telemetry.xids_active(inv, (r.gpu for r in health.active))
        if inv.state != STATE_OK and not cfg.no_gpu_is_error:
            return  # a CPU node: nothing to report
        labels = agent.labels(inv)
        told = self._reported
        capacity = told.node.capacity if told.node is not None else None
        xid = health.current
        readiness = agent.readiness_fn(inv, runtime, xid)(capacity)
        if not read_node and labels == told.labels and readiness == told.readiness:
            return
        refresh = cfg.daemon.condition_refresh_s
        heartbeat = bool(refresh) and (
            heartbeat_age_s(told.node, cfg.kube.condition_type, self._clock.time()) >= refresh
        )
        step = agent.step_node(inv, labels, runtime, xid=xid, heartbeat=heartbeat)
        self._after_report(step, labels, cfg)

    @staticmethod
    def _node_name(agent: Agent) -> Optional[str]:
        """The Node's name for the metrics' ``Hostname`` label (what a dashboard joins on
        the Node), or None — the host's name — when it cannot be worked out yet."""
        try:
            return agent.node_name()
        except NodeagentError:
            return None

    def _verify_runtime(self, agent: Agent) -> RuntimeState:
        r, state = agent.step_runtime(configure=False, dry_run=False)
        if r.status is Status.FAILED:
            log.warning("daemon.runtime_not_ready", detail=r.detail)
        return state

    def _failed(self, what: str, detail: str, retry_max_s: float) -> None:
        """A failed report or sync: say so (log, STATUS=, metric), retry after a backoff."""
        self._telemetry.report_success(False)
        wait = self._schedule.failed(self._clock.monotonic(), retry_max_s)
        log.warning(f"daemon.{what}_failed", detail=detail, retry_in_s=round(wait, 1))
        self._telemetry.notifier.status(f"{what} failed ({detail[:120]}); retrying in {wait:.0f} s")

    # --- the Node watch (started, read and ended by this thread only) ----------------------

    def _take_watched(self) -> None:
        """What the Node watch saw since the last cycle: the newest Node becomes the one
        this cycle assesses (its capacity); a watch that failed falls back to the reads
        on the schedule's backoff; a watch on a client a reload replaced is ended."""
        watch = self._watch
        if watch is None:
            return
        seen = watch.take()
        if seen.node is not None:
            self._reported = dataclasses.replace(self._reported, node=seen.node)
        if seen.failure is not None:
            self._watch = None
            wait = self._schedule.not_ready(self._clock.monotonic())
            log.warning("daemon.node_watch_failed", detail=seen.failure, read_in_s=round(wait, 1))
        elif self._state.current().agent.node_api() is not watch.api:
            # a reload built a new client (maybe for another name): watch through it instead
            self._end_watch()
            self._schedule.not_ready(self._clock.monotonic())  # read soon; it watches again

    def _watch_node(self, node: Optional[Node]) -> bool:
        """Keep (or start, from ``node``'s resourceVersion) the watch on the Node; False
        when it cannot (no version to watch from)."""
        if self._watch is not None:
            return True
        rv = node.resource_version if node is not None else None
        if not rv:
            return False
        agent = self._state.current().agent
        self._watch = NodeWatch(agent.node_api(), rv, self.wake).start()
        return True

    def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            log.info("daemon.node_watch_ended", node=self._watch.api.node_name)
            self._watch = None

    def _after_report(self, step: NodeStep, labels: Mapping[str, str], cfg: Config) -> None:
        result, node_state = step
        failed = result.status is Status.FAILED
        self._telemetry.report_ended(result.api_writes, failed)
        if failed:
            self._failed("report", result.detail, cfg.daemon.retry_max_s)
        else:
            ended = self._schedule.succeeded()
            if ended:
                log.info("daemon.report_recovered", after_failures=ended)
                self._telemetry.notifier.status("reporting")
            self._telemetry.report_success(True)
            r = node_state.readiness
            if r is not None:
                self._reported = Reported(labels, r, node_state.node)
                self._telemetry.condition(cfg.kube.condition_type, r.status)
                if r.status is ConditionStatus.TRUE:
                    self._schedule.ready()
                    self._end_watch()
                elif waits_on_node(r) and self._watch_node(node_state.node):
                    pass  # the device plugin's capacity: the watch wakes this thread on it
                else:  # it may be the Node that changes next: read soon
                    self._end_watch()
                    self._schedule.not_ready(self._clock.monotonic())
            else:  # nothing told yet (the kubelet has not joined): look again soon
                self._schedule.waiting(self._clock.monotonic())
        self._telemetry.write_textfile(cfg.daemon.metrics_textfile)
