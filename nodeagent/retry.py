"""Bounded waiting and retrying, one policy for every long wait.

Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and
Jitter"), a deadline on the whole wait, a server's ``Retry-After`` honoured when it gives
one, every attempt logged. Built on tenacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

from nodeagent.log import get_logger

if TYPE_CHECKING:
    import tenacity

log = get_logger(__name__)

T = TypeVar("T")

# HTTP statuses that are worth another try (any other is final); 409 is handled by the
# caller (re-read, re-apply).
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class Retryable(Exception):
    """Raise inside a retried call to ask for another try (optionally after a delay)."""

    def __init__(self, message: str, retry_after_s: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_seconds(headers: Mapping[str, str]) -> Optional[float]:
    """``Retry-After`` in seconds (delta-seconds form; the API server sends that), or None."""
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return None
    return None


def status_is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS


def backoff_s(
    attempt: int, exc: Optional[BaseException], initial: float, maximum: float, rng: float
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's Retry-After when it sent
    one (capped), else full-jitter exponential backoff, ``rng`` in [0, 1)."""
    if isinstance(exc, Retryable) and exc.retry_after_s is not None:
        return min(exc.retry_after_s, maximum)
    return float(rng * min(maximum, initial * 2 ** (attempt - 1)))


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    initial_s: float = 0.2,
    max_wait_s: float = 10.0,
    retry_on: tuple[type[BaseException], ...] = (Retryable,),
    rng: Optional[Callable[[], float]] = None,
) -> T:
    """Call ``fn`` until it returns, retrying on ``retry_on`` within ``deadline_s``.

    No wait reaches past the deadline; the last exception is re-raised when it passes.
    """

    import random
    import time

    import tenacity  # lazy: commands that never wait do not pay for it

    rand = rng or random.random
    deadline = time.monotonic() + deadline_s

    def wait(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        # Never sleep past the deadline: the last try happens at it, not after it.
        left = max(0.0, deadline - time.monotonic())
        return min(left, backoff_s(state.attempt_number, exc, initial_s, max_wait_s, rand()))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "retry.wait",
            what=what,
            attempt=state.attempt_number,
            sleep_s=round(state.upcoming_sleep, 3),
            error=str(exc),
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=wait,
        stop=tenacity.stop_after_delay(deadline_s),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


def wait_until(
    probe: Callable[[], bool], *, what: str, deadline_s: float, initial_s: float = 0.1
) -> bool:
    """Whether ``probe`` returned True within ``deadline_s``, asked with the same backoff
    (and logging) as every other wait."""

    def attempt() -> None:
        if not probe():
            raise Retryable(f"{what}: not yet")

    try:
        call_with_retry(attempt, what=what, deadline_s=deadline_s, initial_s=initial_s)
    except Retryable:
        return False
    return True
