"""The retry policy: jittered backoff, Retry-After honoured, bounded by a deadline."""

from __future__ import annotations

import time

import pytest

from nodeagent.retry import Retryable, call_with_retry, retry_after_seconds


def test_succeeds_after_failures() -> None:
    calls = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Retryable("not yet")
        return "ok"

    assert call_with_retry(fn, what="t", deadline_s=5, initial_s=0.01) == "ok"
    assert len(calls) == 3


def test_retry_after_is_honoured() -> None:
    calls: list[float] = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Retryable("429", retry_after_s=0.3)
        return "ok"

    # rng=0 makes the jittered backoff 0: any wait seen comes from Retry-After.
    call_with_retry(fn, what="t", deadline_s=5, rng=lambda: 0.0)
    assert calls[1] - calls[0] >= 0.3


def test_backoff_is_bounded_by_jitter_ceiling() -> None:
    calls: list[float] = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise Retryable("x")
        return "ok"

    call_with_retry(fn, what="t", deadline_s=5, initial_s=0.05, rng=lambda: 1.0)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    # full jitter with rng=1 gives the ceiling: 0.05, 0.1, 0.2
    for gap, ceiling in zip(gaps, (0.05, 0.1, 0.2)):
        assert ceiling <= gap < ceiling + 0.15


def test_deadline_reraises_the_last_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(Retryable, match="never"):
        call_with_retry(
            lambda: (_ for _ in ()).throw(Retryable("never")),
            what="t",
            deadline_s=0.3,
            initial_s=0.05,
        )
    assert time.monotonic() - t0 < 2


def test_other_errors_are_not_retried() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        raise ValueError("final")

    with pytest.raises(ValueError):
        call_with_retry(fn, what="t", deadline_s=5)
    assert calls == [1]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"Retry-After": "x"}, None),
        ({}, None),
    ],
)
def test_retry_after_header(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_no_wait_reaches_past_the_deadline() -> None:
    calls: list[float] = []

    def always_busy() -> None:
        calls.append(time.monotonic())
        raise Retryable("busy", retry_after_s=30.0)  # the server asks for far more than is left

    start = time.monotonic()
    with pytest.raises(Retryable):
        call_with_retry(always_busy, what="t", deadline_s=0.5, max_wait_s=30.0, rng=lambda: 0.99)
    # The second try happens at the deadline (not 30 s later), and it is the last.
    assert len(calls) == 2
    assert calls[1] - start < 2.0
