"""When the daemon acts next: the reporter's wake-ups and the re-apply backoff, as
arithmetic over the times handed in.

Pure: no clock, no thread, no I/O. :class:`ReportSchedule` belongs to the reporter thread
alone (it is not locked); :class:`ApplyBackoff` is an immutable value, so whichever thread
applies replaces it whole (under the daemon's state lock, :mod:`nodeagent.daemon.state`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

from nodeagent.config import DaemonConfig
from nodeagent.retry import backoff_s

REAPPLY_MAX_S = 3600.0  # the longest wait between two re-applies after failures
JOIN_POLL_S = 2.0  # how often to look for the kubelet's credential before it has joined
NOT_READY_MAX_S = 60.0  # the longest wait between two Node reads while it is not ready
RETRY_MIN_S = 1.0  # never retry a failed report sooner: a broken API is not hammered
RETRY_INITIAL_S = 2.0  # the first retry's backoff cap (full jitter), doubling to retry_max_s
# Woken this long after the XID recovery is due, so the check finds it due (not just short).
RECOVERY_SLACK_S = 0.05


def jittered(interval: float, jitter: float, rng: Callable[[], float] = random.random) -> float:
    """``interval`` scaled by a factor drawn uniformly from [1 - jitter, 1 + jitter]."""
    return interval * (1 - jitter + 2 * jitter * rng())


def first_heartbeat(
    interval: float, jitter: float, rng: Callable[[], float] = random.random
) -> float:
    """The first heartbeat's delay, uniform in [0, (1 + jitter) x interval]: a fleet that
    booted together spreads its heartbeats over a whole interval from the start."""
    return interval * (1 + jitter) * rng()


@dataclasses.dataclass(frozen=True)
class Tick:
    """What one wake-up of the reporter has to do."""

    read_node: bool  # talk to the API even if nothing changed (heartbeat, retry, a request)
    redetect: bool  # the re-detect interval is due (re-check the runtime, maybe re-apply)


class ReportSchedule:
    """The reporter's timers, in monotonic seconds: re-detect, heartbeat, retry backoff."""

    def __init__(
        self, now: float, d: DaemonConfig, rng: Callable[[], float] = random.random
    ) -> None:
        self._rng = rng
        self.next_detect = now + d.redetect_interval_s
        self.next_heartbeat = now + first_heartbeat(d.heartbeat_interval_s, d.heartbeat_jitter, rng)
        self.next_retry: Optional[float] = None
        self.failures = 0  # reports (or syncs) failed in a row
        self._not_ready_reads = 0  # early Node reads since it was last told it is ready

    def wake_at(self, now: float, recovery_in: Optional[float]) -> float:
        """When to wake next; ``recovery_in``: seconds until an XID may be recovered from."""
        due = min(self.next_detect, self.next_heartbeat)
        if self.next_retry is not None:
            due = min(due, self.next_retry)
        if recovery_in is not None:
            due = min(due, now + max(0.0, recovery_in) + RECOVERY_SLACK_S)
        return due

    def tick(self, now: float, d: DaemonConfig, requested: bool) -> Tick:
        """What is due at ``now`` (``requested``: someone asked for an API read); the
        timers that fired are set again from ``d`` (the config in force now)."""
        read_node = requested
        if now >= self.next_heartbeat:
            read_node = True
            self.next_heartbeat = now + jittered(
                d.heartbeat_interval_s, d.heartbeat_jitter, self._rng
            )
        if self.next_retry is not None and now >= self.next_retry:
            read_node = True
        redetect = now >= self.next_detect
        if redetect:
            self.next_detect = now + d.redetect_interval_s
        return Tick(read_node, redetect)

    def failed(self, now: float, retry_max_s: float) -> float:
        """A report or sync failed: the wait before the retry (full jitter, bounded)."""
        self.failures += 1
        wait = max(
            RETRY_MIN_S,
            backoff_s(self.failures, None, RETRY_INITIAL_S, retry_max_s, self._rng()),
        )
        self.next_retry = now + wait
        return wait

    def waiting(self, now: float) -> float:
        """The node step found nothing to tell yet (the kubelet has not joined: no
        credential): look again soon, so GPUReady follows the join within seconds. Costs a
        local stat and an NVML read; nothing is sent until there is a credential."""
        return self._read_within(now, JOIN_POLL_S)

    def not_ready(self, now: float) -> float:
        """The Node was told it is not ready: read it again after 2, 4, 8 … s (at most
        :data:`NOT_READY_MAX_S`) rather than at the next heartbeat, so GPUReady follows
        within seconds. When only the Node can change it (the device plugin advertises
        ``nvidia.com/gpu`` after the kubelet registered) the reporter watches the Node
        instead (:mod:`nodeagent.daemon.nodewatch`), and reads on this backoff only while
        that watch fails; the count goes on from there, so a watch that keeps failing is
        tried again ever more rarely. Reads only; writes only on change."""
        wait = min(NOT_READY_MAX_S, JOIN_POLL_S * float(2**self._not_ready_reads))
        self._not_ready_reads = min(self._not_ready_reads + 1, 16)
        return self._read_within(now, wait)

    def _read_within(self, now: float, wait: float) -> float:
        """Read the Node within ``wait`` seconds (an earlier retry already due stays)."""
        if self.next_retry is None or self.next_retry > now + wait:
            self.next_retry = now + wait
        return wait

    def ready(self) -> None:
        """The Node was told it is ready: no more early reads."""
        self._not_ready_reads = 0

    def succeeded(self) -> int:
        """A report went through: no retry pending. Returns the failures it ends."""
        ended, self.failures, self.next_retry = self.failures, 0, None
        return ended


@dataclasses.dataclass(frozen=True)
class ApplyBackoff:
    """Bootstrap applies that failed in a row, and the monotonic time before which a
    re-detect tick does not re-run one: 1, 2, 4 … re-detect intervals, at most an hour,
    so a runtime that keeps refusing the change is not reloaded every minute."""

    failures: int = 0
    not_before: float = 0.0

    def after(self, ok: bool, now: float, redetect_s: float) -> ApplyBackoff:
        if ok:
            return ApplyBackoff()
        failures = self.failures + 1
        wait = min(REAPPLY_MAX_S, redetect_s * 2 ** min(failures - 1, 16))
        return ApplyBackoff(failures, now + wait)

    def due(self, now: float) -> bool:
        """The last apply failed and its backoff has passed."""
        return self.failures > 0 and now >= self.not_before
