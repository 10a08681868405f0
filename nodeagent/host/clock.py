"""The clock the long-running parts read and wait on, injected (node-problem-detector's
``clock.Clock``): :class:`Clock` is what they need of time, :data:`REAL` the system's.

A loop that takes a ``Clock`` instead of calling :mod:`time` can be driven by a fake one in
tests: its waits end when the test moves time on, not after real seconds.

Holds no state and touches nothing but :mod:`time` and the events it is handed.
"""

from __future__ import annotations

import threading
import time
from typing import Optional, Protocol


class Clock(Protocol):
    """Monotonic time for intervals, wall time for what others read, and a wait."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back (intervals, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps shared with other hosts)."""
        ...

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        """Block until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
        ...


class RealClock:
    """The system's clock: :func:`time.monotonic`, :func:`time.time`, ``Event.wait``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        return event.wait(timeout)


REAL: Clock = RealClock()
