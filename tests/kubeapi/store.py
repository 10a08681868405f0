"""The object store: objects per resource, a global integer resourceVersion, a change history.

Like etcd behind a real server, every write takes the next revision and is recorded as a
change (``ADDED``/``MODIFIED``/``DELETED`` with the old and new object) so watches can replay
from any resourceVersion still in the bounded history; older ones are "too old" (410).
A write that changes nothing is not a write (no new revision, no event), as in
``GuaranteedUpdate``. All access is under one re-entrant lock, which request handlers also
hold across read-modify-write.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading
from typing import Any, Optional

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


@dataclasses.dataclass(frozen=True)
class Change:
    """One committed write."""

    rv: int
    type: str
    resource: str
    old: Optional[dict[str, Any]]
    new: dict[str, Any]


class TooOld(Exception):
    """The requested resourceVersion has left the history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


def _bare(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy without TypeMeta: stored objects are kind-less, as encoded items of a list."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("kind", "apiVersion")}


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class Store:
    """Objects, revisions and history; ``cond`` wakes watchers on every commit."""

    def __init__(self, history: int = 1000) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 0
        self._objects: dict[str, dict[Key, dict[str, Any]]] = collections.defaultdict(dict)
        self._history: collections.deque[Change] = collections.deque()
        self._max_history = history
        self._floor = 0  # every change with rv > floor is still in the history
        self.closed = False

    # reads

    def get(self, resource: str, key: Key) -> Optional[dict[str, Any]]:
        """A copy of the stored object, or None."""
        with self.lock:
            obj = self._objects[resource].get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def objects(
        self, resource: str, namespace: Optional[str] = None, *, by_key: bool = True
    ) -> list[dict[str, Any]]:
        """Objects in etcd key order (namespace, name), or in creation order."""
        with self.lock:
            items = list(self._objects[resource].items())
            if by_key:
                items.sort()
            return [copy.deepcopy(o) for k, o in items if namespace is None or k[0] == namespace]

    # writes

    def _commit(
        self, kind: str, resource: str, old: Optional[dict[str, Any]], new: dict[str, Any]
    ) -> dict[str, Any]:
        self.rv += 1
        new = _bare(new)
        new.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        key = key_of(new)
        if kind == "DELETED":
            self._objects[resource].pop(key, None)
        else:
            self._objects[resource][key] = new
        self._history.append(Change(self.rv, kind, resource, old, copy.deepcopy(new)))
        while len(self._history) > self._max_history:
            self._floor = self._history.popleft().rv
        self.cond.notify_all()
        return copy.deepcopy(new)

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (ADDED)."""
        with self.lock:
            return self._commit("ADDED", resource, None, obj)

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` over the current object; a no-op returns the current one unchanged."""
        with self.lock:
            old = self._objects[resource][key_of(obj)]
            candidate = _bare(obj)
            candidate.setdefault("metadata", {})["resourceVersion"] = old["metadata"][
                "resourceVersion"
            ]
            if candidate == old:
                return copy.deepcopy(old)
            return self._commit("MODIFIED", resource, copy.deepcopy(old), obj)

    def delete(self, resource: str, key: Key) -> dict[str, Any]:
        """Remove an object (DELETED, carrying the deletion's revision)."""
        with self.lock:
            old = self._objects[resource][key]
            return self._commit("DELETED", resource, copy.deepcopy(old), old)

    # history

    def changes_after(self, rv: int) -> list[Change]:
        """Changes with revision > ``rv``; raises :class:`TooOld` if some were evicted."""
        with self.lock:
            if rv < self._floor:
                raise TooOld(rv, self._floor + 1)
            return [c for c in self._history if c.rv > rv]

    def close(self) -> None:
        """End all watches (the server is stopping)."""
        with self.lock:
            self.closed = True
            self.cond.notify_all()

    def reopen(self) -> None:
        """Accept watches again (the server is restarting)."""
        with self.lock:
            self.closed = False
