"""A :class:`~nodeagent.host.clock.Clock` that moves only when the test says so.

``advance(s)`` moves time on; a thread in ``wait`` returns once its timeout has passed on
this clock (or its event is set). ``settle(*names)`` blocks, in real time, until the named
threads are all asleep in ``wait`` again with time left — so a test can move time, let the
loops do what became due, and then look at the result, with no real sleep and no race.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Optional

POLL_S = 0.002  # how often a waiting thread looks at its event (it cannot wake our condition)


class FakeClock:
    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 1_000.0) -> None:
        self._cond = threading.Condition()
        self._mono = monotonic
        self._wall_offset = wall - monotonic
        # thread name -> (deadline, event) of a wait in progress
        self._sleeping: dict[str, tuple[float, threading.Event]] = {}

    def monotonic(self) -> float:
        with self._cond:
            return self._mono

    def time(self) -> float:
        with self._cond:
            return self._mono + self._wall_offset

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        name = threading.current_thread().name
        with self._cond:
            deadline = math.inf if timeout is None else self._mono + timeout
            try:
                while not event.is_set():
                    if self._mono >= deadline:
                        return False
                    self._sleeping[name] = (deadline, event)
                    self._cond.notify_all()
                    self._cond.wait(POLL_S)
                return True
            finally:
                self._sleeping.pop(name, None)
                self._cond.notify_all()

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._mono += seconds
            self._cond.notify_all()

    def asleep(self, name: str) -> bool:
        """Thread ``name`` waits on this clock, its event unset and time left."""
        with self._cond:
            return self._asleep(name)

    def settle(self, *names: str, timeout_s: float = 30.0) -> None:
        """Block until every thread in ``names`` is asleep (fails after ``timeout_s`` real s)."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while not all(self._asleep(n) for n in names):
                left = end - time.monotonic()
                if left <= 0:
                    awake = [n for n in names if not self._asleep(n)]
                    raise AssertionError(f"threads still busy after {timeout_s} s: {awake}")
                self._cond.wait(min(left, POLL_S))

    def run_for(self, seconds: float, step: float, *names: str) -> None:
        """Move time on by ``seconds`` in ``step``s, letting ``names`` settle after each."""
        self.settle(*names)
        moved = 0.0
        while moved < seconds - 1e-9:
            dt = min(step, seconds - moved)
            self.advance(dt)
            moved += dt
            self.settle(*names)

    def _asleep(self, name: str) -> bool:
        entry = self._sleeping.get(name)
        return entry is not None and entry[0] > self._mono and not entry[1].is_set()
