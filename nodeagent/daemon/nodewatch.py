"""The reporter's watch on its own Node, while GPUReady waits on the Node alone.

When the Node was told it is not ready for a reason only the Node can change (the device
plugin has not advertised every GPU yet: :func:`~nodeagent.kube.readiness.waits_on_node`),
the reporter starts a :class:`NodeWatch` from the resourceVersion it last read: watch
requests on the Node's name (:meth:`~nodeagent.kube.client.NodeAPI.watch_node`, the call
that also waits for registration; the Node authorizer lets a node watch its own Node), each
ended by the server after :data:`WATCH_TIMEOUT_S` and made again from the last version seen.
Every Node it sees is handed to the reporter, which re-assesses at once, so GPUReady follows
the capacity within one round trip instead of the next backoff read.

A ``410 Gone`` (the version left the server's history) re-lists: the next request has no
resourceVersion, so the server sends the Node as it is now. Any other failure — the request
refused, or retried until the API deadline in vain (:mod:`nodeagent.retry`, with jitter),
an ``ERROR`` event, the Node deleted, a stream that breaks before delivering anything — ends
the watch and is handed over too; the reporter then falls back to its backoff reads.

Thread ownership: one thread per watch ("node-watch"). It only reads from the API server; it
owns its resourceVersion. The Node it saw last and its failure cross to the reporter under
the watch's lock (:meth:`NodeWatch.take`), with a wake-up of the reporter. The reporter
thread alone starts and stops watches (a stop cuts the request in progress, so the thread
and the server's watch end at once) and writes to the API. Touches no host file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any, Callable, Optional

from nodeagent.errors import describe, one_line
from nodeagent.kube.client import APIRefused, NodeAPI, StreamStop
from nodeagent.kube.node import Node
from nodeagent.log import get_logger

log = get_logger(__name__)

WATCH_TIMEOUT_S = 60  # each watch request's timeoutSeconds; then watched again from its version
GONE = 410  # the resourceVersion has left the server's history: re-list
# A stream that ends this much before its timeout with nothing delivered broke (a reset, a
# proxy): a failure, not a request to make again at once (that could spin).
EARLY_END_S = 1.0


@dataclasses.dataclass(frozen=True)
class Seen:
    """What a watch handed over since the reporter last looked."""

    node: Optional[Node] = None  # the newest Node, None when it saw no change
    failure: Optional[str] = None  # why the watch ended by itself (one line); None: running


class NodeWatch:
    """One watch on the Node ``api`` names, from ``rv``; ``wake`` wakes the reporter."""

    def __init__(
        self,
        api: NodeAPI,
        rv: str,
        wake: Callable[[], None],
        timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self.api = api
        self._wake = wake
        self._timeout_s = timeout_s
        self._rv = rv  # the node-watch thread's own
        self._stopping = threading.Event()  # set by the reporter
        self._stream = StreamStop()  # ends the request in progress when the reporter stops
        self._lock = threading.Lock()  # guards the two below, written by node-watch
        self._node: Optional[Node] = None
        self._failure: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="node-watch", daemon=True)

    # --- the reporter's side ------------------------------------------------------------

    def start(self) -> NodeWatch:
        log.info("daemon.node_watch_started", node=self.api.node_name, resource_version=self._rv)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the watch: the request in progress is cut (its socket shut down), so the
        thread ends at once, and the server's watch with it."""
        self._stopping.set()
        self._stream.stop()

    def join(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for the thread to end; whether it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def take(self) -> Seen:
        """The newest Node seen since the last call (then forgotten), and the failure."""
        with self._lock:
            seen = Seen(self._node, self._failure)
            self._node = None
        return seen

    # --- the node-watch thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as e:  # refused, the API deadline passed, a malformed Node
            if not self._stopping.is_set():
                self._give_up(describe(e))

    def _watch(self) -> None:
        while not self._stopping.is_set():
            opened = time.monotonic()  # the server's timeout runs in real seconds
            delivered = False
            try:
                stream = self.api.watch_node(self._rv, self._timeout_s, self._stream)
                with contextlib.closing(stream) as events:
                    for kind, obj in events:
                        delivered = True
                        if self._stopping.is_set():
                            return
                        if not self._event(kind, obj):
                            break  # re-list (410) or given up
            except APIRefused as e:  # a server may refuse the request itself with 410
                if e.status != GONE:
                    raise
                self._relist()
                continue
            if self._stopping.is_set() or self._failure is not None:
                return  # stopped (the stream was cut), or given up
            took = time.monotonic() - opened
            if not delivered and took < self._timeout_s - EARLY_END_S:
                self._give_up(f"the watch on Node {self.api.node_name} broke after {took:.1f} s")
                return

    def _event(self, kind: str, obj: dict[str, Any]) -> bool:
        """One watch event; False to end this request (a re-list, or a failure)."""
        if kind == "ERROR":
            if obj.get("code") == GONE:
                self._relist()
            else:
                self._give_up(one_line(f"watch error {obj.get('code')}: {obj.get('message')}"))
            return False
        if kind == "DELETED":
            self._give_up(f"Node {self.api.node_name} was deleted")
            return False
        meta = obj.get("metadata") or {}
        self._rv = str(meta.get("resourceVersion") or self._rv)
        if kind in ("ADDED", "MODIFIED"):
            node = Node.from_api(obj)
            with self._lock:
                self._node = node
            self._wake()
        return True  # BOOKMARK: only the version moves on

    def _relist(self) -> None:
        log.info("daemon.node_watch_relist", node=self.api.node_name, resource_version=self._rv)
        self._rv = ""  # the next request starts with the Node as it is now (ADDED)

    def _give_up(self, detail: str) -> None:
        with self._lock:
            self._failure = detail
        self._wake()
