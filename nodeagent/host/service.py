"""Telling a runtime daemon to pick up its new configuration: reload or restart.

By default through systemd (``systemctl reload|restart UNIT``); a configured argv replaces
that (tests and hosts without systemd), and a configured pidfile makes reload a SIGHUP to
the pid in it — only when that pid is a live process named ``process`` (``dockerd``): a
stale pidfile whose pid now belongs to something else is never signalled. Restarts never
loop: callers restart at most once, plus once to roll back, which fits docker.service's
``StartLimitBurst=3`` per 60 s; a unit already in ``failed`` state gets ``systemctl
reset-failed`` first so that budget is not already spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from pathlib import Path
from typing import Callable, Optional

from nodeagent.errors import InputError, StepFailed
from nodeagent.host.reader import read_optional, read_text
from nodeagent.log import get_logger

log = get_logger(__name__)

PID_MAX = 4_194_304  # the kernel's largest pid_max


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
    pidfile_shown: str = ""  # the pidfile's host path, for messages
    process: str = "dockerd"  # the name the pidfile's process must have to be signalled
    timeout_s: float = 90.0

    def reload(self) -> None:
        """Ask the daemon to re-read its config without stopping it."""
        if self.reload_command:
            self._run(self.reload_command)
        elif self.pidfile is not None:
            self._sighup()
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

    def _sighup(self) -> None:
        """SIGHUP the pidfile's process, through a pidfd so that the process checked is
        the process signalled (a pid freed and reused in between cannot be hit)."""
        shown = self.pidfile_shown or str(self.pidfile)
        pid = self._pid(shown)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise StepFailed(f"{shown}: pid {pid} is not running; not signalling it") from None
        except OSError as e:
            raise StepFailed(f"{shown}: pid {pid}: {e.strerror}; not signalling it") from None
        try:
            name = process_name(pid)
            if name != self.process:
                what = f"'{name}'" if name is not None else "a process whose name is unreadable"
                raise StepFailed(
                    f"{shown}: pid {pid} is {what}, not {self.process}; not signalling it"
                )
            log.info("runtime.reload.sighup", unit=self.unit, pid=pid)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGHUP)
            except ProcessLookupError:
                raise StepFailed(f"{shown}: pid {pid} exited; not signalled") from None
            except OSError as e:
                raise StepFailed(f"{shown}: cannot signal pid {pid}: {e.strerror}") from None
        finally:
            os.close(pidfd)

    def _pid(self, shown: str) -> int:
        assert self.pidfile is not None
        try:
            found = read_text(self.pidfile, shown, max_bytes=64)
        except InputError as e:
            raise StepFailed(str(e)) from None
        if found is None:
            raise StepFailed(f"{shown}: absent; cannot reload {self.unit} by signal")
        text = found.text.strip()
        if not text.isascii() or not text.isdigit() or not 0 < int(text) <= PID_MAX:
            raise StepFailed(f"{shown}: {text[:20]!r} is not a process id; not signalling it")
        return int(text)

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
        except OSError as e:
            raise StepFailed(f"{argv[0]}: cannot run it: {e.strerror}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise StepFailed(
                f"{' '.join(argv)} failed (exit {proc.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )


def process_name(pid: int, proc: Path = Path("/proc")) -> Optional[str]:
    """The process's name (``comm``; the executable's basename when comm is cut short at
    15 characters), None when it cannot be read (gone, or another pid namespace)."""
    comm = read_optional(proc / str(pid) / "comm", max_bytes=64)
    if comm is None:
        return None
    name = comm.strip()
    if len(name) >= 15:
        with contextlib.suppress(OSError):
            name = os.path.basename(os.readlink(proc / str(pid) / "exe"))
    return name
