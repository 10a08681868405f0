"""Runtime daemons: telling one to take its new configuration, and the write sequence.

:func:`write_sequence` is the one order every engine writes in: under the host lock, plan
again if another writer raced us, refuse before writing if told to, write every file (a
restore handle each), then make the change take effect — and put the old files back when it
does not. :func:`restart_verified` is the restart with its verify and undo that both
engines end in. Engines only edit and plan; they hand this module their changes and their
:class:`Daemon`.

Reload and restart go by default through systemd (``systemctl reload|restart UNIT``); a
configured argv replaces that (tests and hosts without systemd), and a configured pidfile
makes reload a SIGHUP to the pid in it — only when that pid is a live process named
``process`` (``dockerd``): a stale pidfile whose pid now belongs to something else is never
signalled. Restarts never loop: callers restart at most once, plus once to roll back,
which fits docker.service's ``StartLimitBurst=3`` per 60 s; a unit already in ``failed``
state gets ``systemctl reset-failed`` first so that budget is not already spent.

May use the host reader and writer; knows nothing of config files' formats or engines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, Protocol, TypeVar

from nodeagent import StrEnum
from nodeagent.errors import InputError, NodeagentError, StepFailed
from nodeagent.host.change import FileChange
from nodeagent.host.paths import unix_socket_path
from nodeagent.host.reader import read_optional, read_text
from nodeagent.host.writer import Restore, Writer
from nodeagent.log import get_logger

log = get_logger(__name__)

PID_MAX = 4_194_304  # the kernel's largest pid_max


def listening(address: str) -> bool:
    """Whether a daemon is running at ``address`` (``unix:///run/x.sock`` or a bare path):
    its socket exists. The address is this machine's, never taken under ``--root``: it is
    where the agent connects to verify, so "running" and "verified" are about one daemon."""
    path = unix_socket_path(address)
    return path is not None and Path(path).is_socket()


class Activation(StrEnum):
    """What makes a written change take effect (planned), or what was done (applied).

    Re-exported by :mod:`nodeagent.runtime.engine`, where plans and results carry it."""

    NONE = "none"  # nothing changed, or the daemon is stopped (it reads the file at start)
    RELOAD = "reload"  # dockerd SIGHUP / systemctl reload
    RESTART = "restart"  # systemctl restart

    @property
    def past_tense(self) -> str:
        """What an applied change was: ``written`` (only), ``reloaded`` or ``restarted``."""
        return _PAST_TENSE[self]


_PAST_TENSE = {
    Activation.NONE: "written",
    Activation.RELOAD: "reloaded",
    Activation.RESTART: "restarted",
}


def attempt(action: Callable[[], None]) -> Optional[str]:
    """Run a reload/restart: None when it succeeded, else its one-line error (logged).
    A failure is not raised: what counts is whether the daemon then shows the runtime,
    and putting the old files back must still run."""
    try:
        action()
    except StepFailed as e:
        log.warning("runtime.service_action_failed", error=str(e))
        return str(e)
    return None


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


# --- the write sequence ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Daemon:
    """A runtime daemon as the write sequence drives it (an engine builds one)."""

    name: str  # "docker", for messages
    control: ServiceControl
    # Wait, bounded by the verify timeout, until it shows the nvidia runtime as configured.
    shows_runtime: Callable[[], bool]
    # Wait, bounded likewise, until it answers at all.
    answers: Callable[[], bool]


@dataclasses.dataclass(frozen=True)
class Activated:
    """How written files took effect: what was done and succeeded, and whether it took."""

    activation: Activation
    verified: bool
    message: str


class Planned(Protocol):
    """What the write sequence reads of an engine's plan."""

    @property
    def changes(self) -> tuple[FileChange, ...]: ...


P = TypeVar("P", bound=Planned)
R = TypeVar("R")


def write_sequence(
    writer: Writer,
    plan: P,
    replan: Callable[[], P],
    take_effect: Callable[[P, Sequence[Restore]], R],
    before_write: Callable[[P], None] = lambda plan: None,
) -> Optional[R]:
    """Write ``plan`` under the host lock and make it take effect; None when nothing is
    left to write (another writer got there first).

    In order: lock; when a file is no longer what the plan was made from, ``replan`` (from
    a fresh read, under the lock); ``before_write`` may refuse (raise) with nothing
    written; every changed file is written, each with its restore handle (a failure
    part-way puts back what was written); ``take_effect`` reloads or restarts, verifies,
    and undoes with the handles when that fails. The lock is held to the end, so no other
    writer edits the files while the daemon takes them.
    """
    with writer.session() as session:
        if session.raced(plan.changes):
            log.info("runtime.replan", paths=[c.host_path for c in plan.changes])
            plan = replan()
        changes = [c for c in plan.changes if c.changed]
        if not changes:
            return None
        before_write(plan)
        restores = session.apply_all(changes)
        return take_effect(plan, restores)


def undo(restores: Sequence[Restore]) -> Optional[str]:
    """Put the old files back, newest first: None when done, else the first failure (the
    others are still put back)."""
    failed: list[str] = []
    for r in reversed(restores):
        try:
            r.undo()
        except NodeagentError as e:
            failed.append(str(e))
    return failed[0] if failed else None


def restart_verified(
    daemon: Daemon, restores: Sequence[Restore], shown: str, why: str = ""
) -> Activated:
    """Restart ``daemon`` and wait until it shows the runtime. When it does not: the old
    files back (``shown`` names them), one more restart, and StepFailed saying whether the
    daemon runs again. One restart plus one rollback restart fits docker.service's
    ``StartLimitBurst=3``. ``why`` is what led here (a reload that did not take)."""
    name = daemon.name
    failed = attempt(daemon.control.restart)
    if failed is None and daemon.shows_runtime():
        return Activated(
            Activation.RESTART,
            verified=True,
            message=(f"{why}; " if why else "") + f"restarted {name}; it shows the nvidia runtime",
        )
    what = (
        f"restarting {name} failed ({failed})"
        if failed is not None
        else f"{name} did not come back with the nvidia runtime after a restart"
    )
    undo_failed = undo(restores)
    if undo_failed is not None:
        raise StepFailed(f"{what}; could NOT restore the previous {shown}: {undo_failed}")
    again = attempt(daemon.control.restart)
    if again is not None:
        state = f"restarting {name} with it failed too ({again})"
    elif daemon.answers():
        state = f"restarted {name} with it (it is running again)"
    else:
        state = f"restarted {name} with it, but it is NOT answering: check its log"
    raise StepFailed(f"{what}; restored the previous {shown}; {state}")
