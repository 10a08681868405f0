"""systemd's notify protocol (sd_notify(3)) without libsystemd.

A ``Type=notify`` service tells the service manager it is ready, what it is doing, that it
is alive, that it reloads or stops, by sending newline-separated ``KEY=value`` assignments
as one datagram to the ``AF_UNIX`` socket named in ``$NOTIFY_SOCKET``: a path, or with a
leading ``@`` a name in the abstract namespace (the ``@`` stands for a NUL byte).

Like libsystemd, a notification never makes the service fail: with no ``$NOTIFY_SOCKET``
every call is a no-op returning False, and an error sending (the socket gone, the manager's
queue full past the send timeout) is logged and returned as False, never raised.

The watchdog: with ``WatchdogSec=`` systemd passes ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``, the process meant to ping); the service sends ``WATCHDOG=1`` more often
than that, sd_watchdog_enabled(3) recommends every half interval
(:meth:`Notifier.watchdog_interval_s`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Optional

from nodeagent.log import get_logger

log = get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# The manager reads a notification into a buffer of PIPE_BUF bytes (NOTIFY_BUFFER_MAX in
# systemd's src/core/manager.c) and drops a longer datagram whole, READY=1 and all; a long
# STATUS is cut to fit instead.
MAX_DATAGRAM = 4096

# How long a send may wait for room in the manager's receive queue before giving up.
DEFAULT_SEND_TIMEOUT_S = 2.0

_ELLIPSIS = "…"

_KEY_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


class Notifier:
    """Sends notifications to the service manager over one reused ``SOCK_DGRAM`` socket.

    Build it with :meth:`from_env`; ``Notifier(None)`` is a disabled notifier. Safe to use
    from several threads (the watchdog pinger and the main loop).
    """

    def __init__(
        self,
        socket_address: Optional[str],
        *,
        watchdog_usec: Optional[int] = None,
        watchdog_pid: Optional[int] = None,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> None:
        """``socket_address`` as in ``$NOTIFY_SOCKET`` (an absolute path or ``@name``);
        None or an address of another kind (relative, ``vsock:``) disables the notifier."""
        self._address: Optional[bytes] = _parse_address(socket_address)
        self.socket_address = socket_address if self._address is not None else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._send_timeout_s = send_timeout_s
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._failing = False  # the last send failed: log again only after one succeeds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.

        The environment is read once, here. An unparsable ``$WATCHDOG_USEC`` or
        ``$WATCHDOG_PID`` means no watchdog (as in sd_watchdog_enabled(3)), with a warning.
        """
        address = environ.get(NOTIFY_SOCKET_ENV) or None
        if address is not None and _parse_address(address) is None:
            log.warning("sdnotify.unsupported_socket", notify_socket=address)
        usec = _parse_positive(environ, WATCHDOG_USEC_ENV)
        pid = _parse_positive(environ, WATCHDOG_PID_ENV)
        if pid is None and environ.get(WATCHDOG_PID_ENV):
            usec = None  # a WATCHDOG_PID that names no process: no watchdog for us
        return cls(address, watchdog_usec=usec, watchdog_pid=pid)

    @property
    def enabled(self) -> bool:
        """A usable ``$NOTIFY_SOCKET`` was given: notifications are sent."""
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``fields`` as one datagram, ``KEY=value`` lines in the order given.

        ``notify(READY="1", STATUS="up")`` sends ``READY=1\\nSTATUS=up``. Every value is
        made one line (line breaks become spaces, NULs are dropped) so it cannot smuggle in
        another assignment; a STATUS too long for the manager's buffer is cut. Returns True
        when the datagram was sent; False when disabled or on an OSError, which is logged
        (once per run of failures) and never raised. A key not of the form ``[A-Z_][A-Z0-9_]*``
        is a programming error: ValueError.
        """
        for key in fields:
            if not _KEY_RE.fullmatch(key):
                raise ValueError(f"sd_notify: invalid assignment name {key!r}")
        if self._address is None:
            return False
        data = _encode({k: _one_line(v) for k, v in fields.items()})
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = self._open_socket()
                self._sock.sendto(data, self._address)
            except OSError as e:
                if not self._failing:
                    log.warning(
                        "sdnotify.send_failed",
                        notify_socket=self.socket_address,
                        fields=sorted(fields),
                        error=str(e),
                    )
                self._failing = True
                return False
            if self._failing:
                log.info("sdnotify.send_recovered", notify_socket=self.socket_address)
            self._failing = False
            return True

    def ready(self, status: str) -> bool:
        """Start-up (or a reload) is finished: ``READY=1`` with a STATUS line."""
        return self.notify(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        """What the service is doing, shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def stopping(self, status: str = "") -> bool:
        """Shutdown has begun: ``STOPPING=1`` (with a STATUS line when given)."""
        if status:
            return self.notify(STOPPING="1", STATUS=status)
        return self.notify(STOPPING="1")

    def reloading(self) -> bool:
        """A reload has begun: ``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in
        µs), which systemd >= 253 requires of ``Type=notify-reload`` services and older
        versions ignore. Send :meth:`ready` when the reload is done."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING="1", MONOTONIC_USEC=str(now_usec))

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.notify(WATCHDOG="1")

    def watchdog_interval_s(self) -> Optional[float]:
        """How often to ping: half of ``$WATCHDOG_USEC`` in seconds. None when there is no
        watchdog to ping: the variable unset, 0 or invalid, ``$WATCHDOG_PID`` invalid or
        naming another process (checked now, so a forked child does not ping on its
        parent's behalf), or the notifier disabled."""
        if self._address is None or not self._watchdog_usec or self._watchdog_usec <= 0:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Blocking, but a send waits at most this long for room in the manager's queue
        # (then EAGAIN, an OSError): SO_SNDTIMEO, not settimeout(), which would spin on
        # an unconnected datagram socket.
        secs = int(self._send_timeout_s)
        usecs = int((self._send_timeout_s - secs) * 1_000_000)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", secs, usecs))
        return sock


def _parse_address(address: Optional[str]) -> Optional[bytes]:
    """The ``sockaddr_un`` path for ``$NOTIFY_SOCKET``, or None if unusable."""
    if not address:
        return None
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return os.fsencode(address)
    return None


def _parse_positive(environ: Mapping[str, str], name: str) -> Optional[int]:
    """``environ[name]`` as a positive decimal integer; None if unset, empty or 0; None
    with a warning if it is anything else."""
    raw = environ.get(name)
    if not raw or raw == "0":
        return None
    try:
        value = int(raw, 10)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("sdnotify.bad_env", variable=name, value=raw)
        return None
    return value


def _one_line(value: str) -> str:
    return " ".join(value.replace("\0", "").splitlines())


def _encode(fields: Mapping[str, str]) -> bytes:
    data = _join(fields)
    status = fields.get("STATUS")
    if len(data) <= MAX_DATAGRAM or status is None:
        return data
    raw = status.encode("utf-8", "replace")
    keep = len(raw) - (len(data) - MAX_DATAGRAM) - len(_ELLIPSIS.encode())
    if keep < 0:
        return data  # too long without any STATUS: the manager will drop it
    # Cut at a byte count; "ignore" drops a character split by the cut.
    cut = raw[:keep].decode("utf-8", "ignore") + _ELLIPSIS
    return _join({**fields, "STATUS": cut})


def _join(fields: Mapping[str, str]) -> bytes:
    return "\n".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8", "replace")
