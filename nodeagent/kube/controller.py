"""``nodeagent controller``: the taints a node may not touch itself, kept in step with GPUReady.

NodeRestriction forbids a node to modify its taints after registration, so the agent on the
node only sets the condition, and this small in-cluster controller (one replica, a credential
that may get/list/watch/patch nodes and nothing else; deploy/) does the rest:

* the startup taint (``readiness.k8s.io/nvidia-gpu-not-ready``) comes off when the condition
  is True — the same contract as the kubernetes-sigs Node Readiness Controller, so either
  can run;
* an unhealthy taint (``nodeagent.io/gpu-unhealthy:NoSchedule``) goes on when the condition
  has been False for longer than a grace period, and comes off when it is True again.

One watch, no polling: the grace period is a timer per node, woken in the same loop. Every
patch carries the Node's ``resourceVersion`` as a precondition (``spec.taints`` has no patch
merge key, so a patch replaces the whole list): a taint another controller added in between
is a 409, and the node is re-read and decided again, never lost.

An API server that refuses (403), fails (5xx) or cannot be reached never ends the
controller: the watch and each node's patch back off (full jitter, bounded) and try again,
logged. SIGTERM stops it at once, even mid-retry (:class:`Terminated`).

Two threads: the watch thread only lists and watches, and hands the API's Node objects to
the main thread through a queue (and the ``_wake`` Event); the main thread (:meth:`run`)
parses each into a :class:`~nodeagent.kube.node.Node` once and owns everything else — the
Nodes seen, the grace timers, the failure counts — and is the only one that patches. Time
is read and waited on through the injected :class:`~nodeagent.host.clock.Clock`. Talks to
the API server only; touches no host file.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import random
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

from nodeagent.errors import describe
from nodeagent.host.clock import REAL, Clock
from nodeagent.kube.client import Conflict, KubeAPI
from nodeagent.kube.node import ConditionStatus, MalformedNode, Node, Taint
from nodeagent.log import get_logger
from nodeagent.retry import backoff_s

log = get_logger(__name__)

NO_SCHEDULE = "NoSchedule"

# Backoff after a failed list/watch or patch: full jitter from INITIAL doubling up to MAX.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_IDLE_S = 1.0  # the main thread looks at its stop flag at least this often
CONFLICT_TRIES = 5  # decide-and-patch rounds for one node before giving up until its next event


class Terminated(BaseException):
    """Raised into the main thread by the SIGTERM handler: out of any wait at once (an API
    call's retries included). A BaseException, so no ``except Exception`` swallows it."""


@dataclasses.dataclass(frozen=True)
class Rules:
    condition_type: str
    startup_taint_key: str
    unhealthy_taint_key: str
    grace_s: float


@dataclasses.dataclass(frozen=True)
class Decision:
    """New ``spec.taints`` (None: leave them) and when to look at the node again."""

    taints: Optional[tuple[Taint, ...]]
    wake_at: Optional[float] = None  # epoch seconds
    why: str = ""


def decide(node: Node, rules: Rules, now: float) -> Decision:
    """Pure: the taints ``node`` should carry given its condition, at time ``now``."""
    cond = node.condition(rules.condition_type)
    current = node.taints
    want = current
    wake = None
    why = ""
    if cond is not None and cond.status is ConditionStatus.TRUE:
        ours = (rules.startup_taint_key, rules.unhealthy_taint_key)
        want = tuple(t for t in current if t.key not in ours)
        why = "GPUReady=True"
    elif (
        cond is not None
        and cond.status is ConditionStatus.FALSE
        and not node.has_taint(rules.unhealthy_taint_key)
    ):
        since = cond.last_transition_time or now
        if now - since >= rules.grace_s:
            want = (*current, Taint(rules.unhealthy_taint_key, effect=NO_SCHEDULE))
            why = f"GPUReady=False for {now - since:.0f} s ({cond.reason})"
        else:
            wake = since + rules.grace_s
    if want == current:
        return Decision(taints=None, wake_at=wake)
    return Decision(taints=want, wake_at=wake, why=why)


def taint_patch(node: Node, taints: Sequence[Taint]) -> dict[str, Any]:
    """The patch: the whole list (no merge key), guarded by the Node's resourceVersion."""
    return {
        "metadata": {"resourceVersion": node.resource_version},
        "spec": {"taints": [t.to_api() for t in taints] or None},
    }


class Controller:
    """The loop: one watch over all Nodes feeding a queue; timers for grace periods."""

    def __init__(
        self,
        api: KubeAPI,
        rules: Rules,
        *,
        watch_timeout_s: int = 300,
        rng: Callable[[], float] = random.random,
        clock: Clock = REAL,
    ) -> None:
        self.api = api
        self.rules = rules
        self.watch_timeout_s = watch_timeout_s
        self.rng = rng
        self.clock = clock
        # The watch thread puts, the main thread takes; ``_wake`` is set after every put.
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # The main thread's own.
        self.nodes: dict[str, Node] = {}
        self._timers: list[tuple[float, str]] = []  # (epoch seconds, node), a heap
        self._failures: dict[str, int] = {}  # node -> patches failed in a row
        self.patches = 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # --- the watch thread ---------------------------------------------------------------

    def _watcher(self) -> None:
        """Feed the queue: list, then watch from the list's version, re-watch when the server
        ends a watch, re-list on 410 Gone. A failure (after the client's own retries: an
        outage, a 403, a 5xx) backs off and starts again; it never ends the controller."""
        rv = ""
        failures = 0
        while not self._stop.is_set():
            try:
                if not rv:
                    items, rv = self.api.list_nodes()
                    failures = 0
                    for item in items:
                        self._put("SYNC", item)
                for kind, obj in self.api.watch_nodes(rv, self.watch_timeout_s):
                    failures = 0
                    if self._stop.is_set():
                        return
                    if kind == "ERROR":
                        rv = ""  # 410 Gone: our version is too old; list again
                        break
                    # The watch protocol's own field (bookmarks carry nothing else).
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        self._put(kind, obj)
            except Exception as e:
                failures += 1
                wait = self._backoff(failures)
                log.warning(
                    "controller.watch_failed",
                    error=describe(e),
                    attempt=failures,
                    retry_in_s=round(wait, 2),
                )
                rv = ""  # list again: events may have been missed meanwhile
                self.clock.wait(self._stop, wait)

    def _put(self, kind: str, obj: dict[str, Any]) -> None:
        self._events.put((kind, obj))
        self._wake.set()

    def _backoff(self, failures: int) -> float:
        return max(0.1, backoff_s(failures, None, BACKOFF_INITIAL_S, BACKOFF_MAX_S, self.rng()))

    # --- the main thread ----------------------------------------------------------------

    def run(self, until: Optional[float] = None) -> None:
        """Run until :meth:`stop` (or the monotonic time ``until``, for tests)."""
        threading.Thread(target=self._watcher, name="node-watch", daemon=True).start()
        while not self._stop.is_set():
            timeout = MAX_IDLE_S
            if until is not None:
                timeout = max(0.0, min(timeout, until - self.clock.monotonic()))
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - self.clock.time()))
            self.clock.wait(self._wake, timeout)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._take_events()
            self._fire_timers()
            if until is not None and self.clock.monotonic() >= until:
                break

    def _take_events(self) -> None:
        """Everything the watch thread queued: each Node parsed once, then reconciled."""
        while True:
            try:
                kind, obj = self._events.get_nowait()
            except queue.Empty:
                return
            try:
                node = Node.from_api(obj)
            except MalformedNode as e:  # one bad Node must not stop the others
                log.warning("controller.node_unreadable", error=str(e))
                continue
            if kind == "DELETED":
                self.nodes.pop(node.name, None)
                self._failures.pop(node.name, None)
            else:
                self.nodes[node.name] = node
                self._reconcile_or_retry(node.name)

    def _fire_timers(self) -> None:
        now = self.clock.time()
        while self._timers and self._timers[0][0] <= now:
            _, name = heapq.heappop(self._timers)
            if name in self.nodes:
                self._reconcile_or_retry(name)

    def _reconcile_or_retry(self, name: str) -> None:
        """:meth:`reconcile`; when it fails, log it and look at the node again later."""
        try:
            self.reconcile(name)
        except Exception as e:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            wait = self._backoff(failures)
            log.warning(
                "controller.reconcile_failed",
                node=name,
                error=describe(e),
                attempt=failures,
                retry_in_s=round(wait, 2),
            )
            heapq.heappush(self._timers, (self.clock.time() + wait, name))
        else:
            self._failures.pop(name, None)

    def reconcile(self, name: str) -> None:
        """Decide for node ``name`` and patch; on a conflict, re-read and decide again."""
        for _ in range(CONFLICT_TRIES):
            node = self.nodes.get(name)
            if node is None:
                return
            d = decide(node, self.rules, self.clock.time())
            if d.wake_at is not None:
                heapq.heappush(self._timers, (d.wake_at, name))
            if d.taints is None:
                return
            try:
                patched = self.api.patch_named_node(name, taint_patch(node, d.taints))
                self.nodes[name] = Node.from_api(patched)
                self.patches += 1
                keys = [t.key for t in d.taints]
                log.info("controller.taints", node=name, taints=keys, why=d.why)
                return
            except Conflict:  # the Node changed since we saw it: read it, decide again
                fresh = self.api.get_named_node(name)
                if fresh is None:
                    self.nodes.pop(name, None)
                    return
                self.nodes[name] = Node.from_api(fresh)
        log.warning("controller.gave_up", node=name)
