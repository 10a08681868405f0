"""The systemd side of sd_notify(3) for tests: a datagram socket that collects what the
agent sends (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket collecting what the agent sends."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nfy.", dir="/tmp"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[dict[str, str]] = []

    def wait_for(
        self, key: str, value: Optional[str] = None, timeout: float = 30
    ) -> dict[str, str]:
        """The next message (after those seen) carrying ``key`` (= ``value``)."""
        end = time.monotonic() + timeout
        for m in self.messages:
            if key in m and (value is None or m[key] == value) and not m.get("_seen"):
                m["_seen"] = "1"
                return m
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            m = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append(m)
            if key in m and (value is None or m[key] == value):
                m["_seen"] = "1"
                return m
        raise AssertionError(f"no {key}={value} from the agent; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
