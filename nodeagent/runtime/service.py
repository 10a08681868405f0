"""Telling a runtime daemon to pick up its new configuration: reload or restart.

By default through systemd (``systemctl reload|restart UNIT``); a configured argv replaces
that (tests and hosts without systemd), and a configured pidfile makes reload a SIGHUP to
the pid in it. Restarts never loop: callers restart at most once, plus once to roll back,
which fits docker.service's ``StartLimitBurst=3`` per 60 s; a unit already in ``failed``
state gets ``systemctl reset-failed`` first so that budget is not already spent.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Callable, Optional

from nodeagent.errors import StepFailed
from nodeagent.log import get_logger

log = get_logger(__name__)


def succeeded(action: Callable[[], None], unit: str) -> bool:
    """Run a reload/restart; a failure is logged and reported as False, because what
    counts is whether the daemon then shows the runtime (and rollback must still run)."""
    try:
        action()
    except StepFailed as e:
        log.warning("runtime.service_action_failed", unit=unit, error=str(e))
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ServiceControl:
    unit: str
    reload_command: tuple[str, ...] = ()
    restart_command: tuple[str, ...] = ()
    pidfile: Optional[Path] = None  # on this machine (already under --root)
    timeout_s: float = 90.0

    def reload(self) -> None:
        """Ask the daemon to re-read its config without stopping it."""
        if self.reload_command:
            self._run(self.reload_command)
        elif self.pidfile is not None:
            pid = self._pid()
            log.info("runtime.reload.sighup", unit=self.unit, pid=pid)
            os.kill(pid, signal.SIGHUP)
        else:
            self._run(("systemctl", "reload", self.unit))

    def restart(self) -> None:
        """Stop and start the daemon (running containers die unless live-restore is on)."""
        if self.restart_command:
            self._run(self.restart_command)
            return
        if self._systemctl_state() == "failed":
            self._run(("systemctl", "reset-failed", self.unit))
        self._run(("systemctl", "restart", self.unit))

    def _pid(self) -> int:
        assert self.pidfile is not None
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError) as e:
            raise StepFailed(f"{self.pidfile}: cannot read the daemon's pid: {e}") from None

    def _systemctl_state(self) -> str:
        import subprocess

        try:
            out = subprocess.run(
                ("systemctl", "is-active", self.unit),
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return out.stdout.strip() or "unknown"

    def _run(self, argv: tuple[str, ...]) -> None:
        import subprocess  # lazy: planning never runs anything

        log.info("runtime.service.command", unit=self.unit, argv=list(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError:
            raise StepFailed(f"{argv[0]}: not found (needed to control {self.unit})") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{' '.join(argv)}: no answer in {self.timeout_s:.0f} s") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise StepFailed(
                f"{' '.join(argv)} failed (exit {proc.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )
