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
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from nodeagent.errors import describe
from nodeagent.kube.client import Conflict, KubeAPI
from nodeagent.kube.patches import epoch, find_condition
from nodeagent.log import get_logger
from nodeagent.retry import backoff_s

log = get_logger(__name__)

NO_SCHEDULE = "NoSchedule"

# Backoff after a failed list/watch or patch: full jitter from INITIAL doubling up to MAX.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


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

    taints: Optional[list[dict[str, Any]]]
    wake_at: Optional[float] = None  # epoch seconds
    why: str = ""


def decide(node: Mapping[str, Any], rules: Rules, now: float) -> Decision:
    """Pure: the taints ``node`` should carry given its condition, at time ``now``."""
    taints: Sequence[Mapping[str, Any]] = (node.get("spec") or {}).get("taints") or []
    cond = find_condition((node.get("status") or {}).get("conditions") or [], rules.condition_type)
    keys = {t.get("key") for t in taints}
    status = cond.get("status") if cond else None
    current = [dict(t) for t in taints]
    want = list(current)
    wake = None
    why = ""
    if status == "True":
        ours = (rules.startup_taint_key, rules.unhealthy_taint_key)
        want = [t for t in want if t.get("key") not in ours]
        why = "GPUReady=True"
    elif status == "False" and rules.unhealthy_taint_key not in keys:
        since = epoch(cond.get("lastTransitionTime") if cond else None) or now
        if now - since >= rules.grace_s:
            want.append({"key": rules.unhealthy_taint_key, "effect": NO_SCHEDULE})
            why = f"GPUReady=False for {now - since:.0f} s ({cond.get('reason') if cond else ''})"
        else:
            wake = since + rules.grace_s
    if want == current:
        return Decision(taints=None, wake_at=wake)
    return Decision(taints=want, wake_at=wake, why=why)


def taint_patch(node: Mapping[str, Any], taints: list[dict[str, Any]]) -> dict[str, Any]:
    """The patch: the whole list (no merge key), guarded by the Node's resourceVersion."""
    rv = (node.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv}, "spec": {"taints": taints or None}}


class Controller:
    """The loop: one watch over all Nodes feeding a queue; timers for grace periods."""

    def __init__(
        self,
        api: KubeAPI,
        rules: Rules,
        *,
        watch_timeout_s: int = 300,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.rules = rules
        self.watch_timeout_s = watch_timeout_s
        self.rng = rng
        self.nodes: dict[str, dict[str, Any]] = {}
        self._timers: list[tuple[float, str]] = []
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._failures: dict[str, int] = {}  # node -> patches failed in a row
        self.patches = 0

    def stop(self) -> None:
        self._stop.set()
        self._events.put(("STOP", {}))

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
                        self._events.put(("SYNC", item))
                for kind, obj in self.api.watch_nodes(rv, self.watch_timeout_s):
                    failures = 0
                    if self._stop.is_set():
                        return
                    if kind == "ERROR":
                        rv = ""  # 410 Gone: our version is too old; list again
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        self._events.put((kind, obj))
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
                self._stop.wait(wait)

    def _backoff(self, failures: int) -> float:
        return max(0.1, backoff_s(failures, None, BACKOFF_INITIAL_S, BACKOFF_MAX_S, self.rng()))

    def run(self, until: Optional[float] = None) -> None:
        """Run until :meth:`stop` (or the monotonic time ``until``, for tests)."""
        threading.Thread(target=self._watcher, name="node-watch", daemon=True).start()
        while not self._stop.is_set():
            timeout = 1.0 if until is None else max(0.0, min(1.0, until - time.monotonic()))
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.time()))
            try:
                kind, obj = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, obj = "", {}
            if kind == "STOP":
                break
            if kind == "DELETED":
                name = (obj.get("metadata") or {}).get("name", "")
                self.nodes.pop(name, None)
                self._failures.pop(name, None)
            elif kind:
                name = (obj.get("metadata") or {}).get("name", "")
                self.nodes[name] = obj
                self._reconcile_or_retry(name)
            self._fire_timers()
            if until is not None and time.monotonic() >= until:
                break

    def _fire_timers(self) -> None:
        now = time.time()
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
            heapq.heappush(self._timers, (time.time() + wait, name))
        else:
            self._failures.pop(name, None)

    def reconcile(self, name: str) -> None:
        """Decide for node ``name`` and patch; on a conflict, re-read and decide again."""
        for _ in range(5):
            node = self.nodes.get(name)
            if node is None:
                return
            d = decide(node, self.rules, time.time())
            if d.wake_at is not None:
                heapq.heappush(self._timers, (d.wake_at, name))
            if d.taints is None:
                return
            try:
                self.nodes[name] = self.api.patch_named_node(name, taint_patch(node, d.taints))
                self.patches += 1
                keys = [t["key"] for t in d.taints]
                log.info("controller.taints", node=name, taints=keys, why=d.why)
                return
            except Conflict:  # the Node changed since we saw it: read it, decide again
                fresh = self.api.get_named_node(name)
                if fresh is None:
                    self.nodes.pop(name, None)
                    return
                self.nodes[name] = fresh
        log.warning("controller.gave_up", node=name)
