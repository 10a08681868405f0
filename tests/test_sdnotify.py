"""sd_notify: real AF_UNIX datagram sockets (path and abstract) receive what systemd would."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.daemon import sdnotify
from nodeagent.daemon.sdnotify import MAX_DATAGRAM, Notifier


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify")
    sock = _receiver(address)
    try:
        yield address, sock
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    address = f"@nodeagent-test/{uuid.uuid4().hex}"
    sock = _receiver(address)
    try:
        yield address, sock
    finally:
        sock.close()


@pytest.fixture(autouse=True)
def _close_notifier_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every socket a Notifier opened in the test (no ResourceWarning)."""
    opened: list[socket.socket] = []
    real = Notifier._open_socket

    def spy(self: Notifier) -> socket.socket:
        sock = real(self)
        opened.append(sock)
        return sock

    monkeypatch.setattr(Notifier, "_open_socket", spy)
    yield
    for sock in opened:
        sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(65536).decode()


class _Recorder:
    """Stands in for the module logger: records (level, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event))


def test_disabled_without_notify_socket() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready("up") is False
    assert n.watchdog() is False
    assert n.notify(X_ANY="1") is False
    assert n.watchdog_interval_s() is None


def test_empty_relative_or_vsock_address_is_disabled() -> None:
    for address in ("", "relative/notify", "vsock:2:1234"):
        assert not Notifier.from_env({"NOTIFY_SOCKET": address}).enabled


def test_ready_reaches_a_path_socket(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready("node configured") is True
    assert _recv(sock) == "READY=1\nSTATUS=node configured"


def test_ready_reaches_an_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.ready("up") is True
    assert _recv(sock) == "READY=1\nSTATUS=up"


def test_fields_go_in_one_datagram_in_order(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier(address)
    assert n.notify(STATUS="s", READY="1", X_NODEAGENT_PHASE="labels")
    assert _recv(sock) == "STATUS=s\nREADY=1\nX_NODEAGENT_PHASE=labels"


def test_each_message_helper(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier(address)
    assert n.status("waiting for the API server")
    assert _recv(sock) == "STATUS=waiting for the API server"
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert n.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert n.stopping("draining")
    assert _recv(sock) == "STOPPING=1\nSTATUS=draining"


def test_reloading_carries_the_monotonic_clock(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_status_is_one_line(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier(address)
    # A newline in a value must not become a second assignment.
    assert n.status("kubelet failed:\nREADY=1\r\nretrying\x00")
    assert _recv(sock) == "STATUS=kubelet failed: READY=1 retrying"


def test_long_status_is_cut_to_fit_the_managers_buffer(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    n = Notifier(address)
    assert n.ready("é" * 5000)  # two bytes each: the cut must not split one
    got = sock.recv(65536)
    assert len(got) <= MAX_DATAGRAM
    text = got.decode()  # valid UTF-8
    assert text.startswith("READY=1\nSTATUS=éé")
    assert text.endswith("…")


def test_invalid_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="invalid assignment name"):
        Notifier("/nonexistent").notify(**{"READY=1\nX": "1"})
    with pytest.raises(ValueError):
        Notifier(None).notify(ready="1")
    with pytest.raises(ValueError):
        Notifier(None).notify(**{"READY\n": "1"})


def test_one_socket_is_reused(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    n = Notifier(address)
    n.watchdog()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert n.watchdog()
        _recv(sock)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert n._sock is not None and not n._sock.get_inheritable()  # SOCK_CLOEXEC


def test_vanished_socket_gives_false_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _Recorder()
    monkeypatch.setattr(sdnotify, "log", rec)
    address = str(tmp_path / "notify")
    sock = _receiver(address)
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.ready("up")
    sock.close()
    os.unlink(address)

    assert n.watchdog() is False
    assert n.status("x") is False
    assert rec.events == [("warning", "sdnotify.send_failed")]

    # The manager re-creates its socket (daemon-reexec): sending works again, unconnected.
    sock = _receiver(address)
    try:
        assert n.watchdog() is True
        assert _recv(sock) == "WATCHDOG=1"
    finally:
        sock.close()
    assert rec.events[-1] == ("info", "sdnotify.send_recovered")
    assert n.watchdog() is False
    assert rec.events.count(("warning", "sdnotify.send_failed")) == 2


def test_socket_that_never_existed_gives_false() -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": f"@nodeagent-test/absent-{uuid.uuid4().hex}"})
    assert n.enabled
    assert n.ready("up") is False


def test_full_manager_queue_does_not_block(path_socket: tuple[str, socket.socket]) -> None:
    # Nobody reads: once the receive queue is full a send waits send_timeout_s, then fails.
    address, _ = path_socket
    n = Notifier(address, send_timeout_s=0.2)
    assert n.watchdog() is True
    for _ in range(10_000):
        t0 = time.monotonic()
        if not n.watchdog():
            break
    else:
        pytest.fail("the queue never filled")
    assert 0.15 <= time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "self"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "other"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "nonsense"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "0"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": ""}, 1.5),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
    env = {k: pids.get(v, v) for k, v in env.items()}
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_interval_s() == expected


def test_no_watchdog_interval_without_notify_socket() -> None:
    # Nowhere to send the pings: no reason to run a pinger.
    n = Notifier.from_env({"WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval_s() is None
    assert n.watchdog() is False
