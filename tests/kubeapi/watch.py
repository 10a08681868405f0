"""Selections (namespace + label/field selectors) and watch streams over the store's history.

Watch semantics follow kube-apiserver: resourceVersion unset or ``0`` sends the current
matching objects as ``ADDED`` first; a specific resourceVersion replays only later changes
(``410 Expired`` as a single ``ERROR`` event once it has left the history);
``sendInitialEvents`` ends the initial burst with a ``k8s.io/initial-events-end`` bookmark;
an object entering or leaving the selection is ``ADDED``/``DELETED``; ``BOOKMARK`` events
come every ``bookmark_interval`` when allowed; the stream ends at ``timeoutSeconds`` or when
the server stops.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from .render import table, typed
from .request import TRUE, Output, int_param, parse_rv
from .resources import Resource
from .schema import roundtrip
from .selectors import Requirement, parse_fields, parse_labels
from .status import expired, invalid_list_options
from .store import Change, Store, TooOld

DEFAULT_TIMEOUT = 1800.0  # kube-apiserver picks 30-60 min when the client sets none


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which objects a list or watch is about: a namespace ("" for all) and selectors."""

    res: Resource
    namespace: str
    labels: Requirement
    fields: Requirement

    @classmethod
    def parse(cls, res: Resource, namespace: str, query: Mapping[str, str]) -> Selection:
        """From ``labelSelector``/``fieldSelector`` (400 for an unsupported field)."""
        return cls(
            res,
            namespace,
            parse_labels(query.get("labelSelector", "")),
            parse_fields(query.get("fieldSelector", ""), res.selectable()),
        )

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(self.res.fields(obj))


def translate(sel: Selection, c: Change) -> Optional[tuple[str, dict[str, Any]]]:
    """A change as this watcher sees it: entering/leaving the selection is ADDED/DELETED."""
    if c.resource != sel.res.name:
        return None
    was = c.old is not None and sel.matches(c.old)
    if c.type == "DELETED":
        return ("DELETED", c.new) if was else None
    if sel.matches(c.new):
        return ("MODIFIED" if was else "ADDED", c.new)
    return ("DELETED", c.new) if was else None


def bookmark(res: Resource, rv: int, initial_end: bool = False) -> dict[str, Any]:
    """A BOOKMARK event: an otherwise empty object carrying only the resourceVersion."""
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    obj, _ = roundtrip({"metadata": meta}, res.schema)
    return {"type": "BOOKMARK", "object": typed(res, obj)}


@dataclasses.dataclass
class _Options:
    timeout: float
    bookmarks: bool
    bookmark_interval: float
    initial_events: bool


def start(
    store: Store, sel: Selection, out: Output, query: Mapping[str, str], bookmark_interval: float
) -> Iterator[dict[str, Any]]:
    """Check the watch parameters (raising before anything streams) and return the events."""
    bookmarks = query.get("allowWatchBookmarks", "") in TRUE
    initial_events = query.get("sendInitialEvents", "") in TRUE
    if initial_events and (query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
        raise invalid_list_options(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true and "
            "resourceVersionMatch=NotOlderThan",
        )
    opts = _Options(
        timeout=float(int_param(query, "timeoutSeconds") or DEFAULT_TIMEOUT),
        bookmarks=bookmarks,
        bookmark_interval=bookmark_interval,
        initial_events=initial_events,
    )
    rv_param = query.get("resourceVersion", "")
    with store.lock:
        cursor = store.rv
        initial: list[dict[str, Any]] = []
        error: Optional[dict[str, Any]] = None
        if initial_events or rv_param in ("", "0"):
            initial = [o for o in store.objects(sel.res.name) if sel.matches(o)]
        else:
            cursor = parse_rv(rv_param)
            try:
                store.changes_after(cursor)
            except TooOld as e:
                error = expired(e.requested, e.oldest).body()
    return _stream(store, sel, out, cursor, initial, error, opts)


def _stream(
    store: Store,
    sel: Selection,
    out: Output,
    cursor: int,
    initial: list[dict[str, Any]],
    error: Optional[dict[str, Any]],
    opts: _Options,
) -> Iterator[dict[str, Any]]:
    first = [True]

    def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        if out.kind == "table":  # column definitions only in the first event
            rv = int(obj["metadata"]["resourceVersion"])
            body = table(sel.res, [obj], out, rv, include_columns=first[0])
            first[0] = False
            return {"type": kind, "object": body}
        return {"type": kind, "object": typed(sel.res, obj)}

    if error is not None:
        yield {"type": "ERROR", "object": error}
        return
    for obj in initial:
        yield event("ADDED", obj)
    if opts.initial_events:
        yield bookmark(sel.res, cursor, initial_end=True)
    deadline = time.monotonic() + opts.timeout
    next_bookmark = time.monotonic() + opts.bookmark_interval
    while True:
        with store.cond:
            while not store.closed and store.rv <= cursor:
                now = time.monotonic()
                wake = min(deadline, next_bookmark) if opts.bookmarks else deadline
                if now >= wake:
                    break
                store.cond.wait(wake - now)
            if store.closed:
                return
            try:
                changes = store.changes_after(cursor)
            except TooOld as e:  # this watcher fell behind the bounded history
                changes, error = [], expired(e.requested, e.oldest).body()
            cursor = store.rv
        if error is not None:  # yielded outside the lock: a slow client must not hold it
            yield {"type": "ERROR", "object": error}
            return
        for change in changes:
            seen = translate(sel, change)
            if seen:
                yield event(*seen)
        now = time.monotonic()
        if opts.bookmarks and now >= next_bookmark:
            yield bookmark(sel.res, cursor)
            next_bookmark = now + opts.bookmark_interval
        if now >= deadline:
            return
