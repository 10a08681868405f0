"""One interface for every container runtime the agent configures.

Modelled on nvidia-container-toolkit's config engines and nodeadm's daemons: each runtime
(docker, containerd) implements :class:`Engine`. The walk is always the same:

    current = engine.read()          # I/O: read the runtime's config file(s)
    plan    = engine.plan(current)   # pure: what to change and how to make it take effect
    engine.apply(plan)               # the only side effects: lock, backup, write, reload/restart
    engine.verify()                  # I/O: the running daemon shows the nvidia runtime

so ``--dry-run`` is ``plan`` + :meth:`Plan.diff` and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from nodeagent.host.change import FileChange

# Plan.activation values: what makes a written change take effect.
ACTIVATE_NONE = "none"  # nothing changed, or the runtime is stopped (reads the file at start)
ACTIVATE_RELOAD = "reload"  # dockerd SIGHUP / systemctl reload
ACTIVATE_RESTART = "restart"  # systemctl restart


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an engine will do. Empty ``changes`` means nothing to do (no write, no signal)."""

    engine: str
    changes: tuple[FileChange, ...] = ()
    activation: str = ACTIVATE_NONE
    # Why that activation (e.g. "only runtimes/default-runtime changed: reloadable").
    reason: str = ""
    # Problems that do not stop the write but the operator must hear (runtime binary absent).
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    def diff(self) -> str:
        return "".join(c.diff() for c in self.changes if c.changed)


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    """What actually happened: files written, how the daemon was told, whether it took."""

    engine: str
    written: tuple[str, ...] = ()  # host paths actually written; () = nothing changed
    activation: str = ACTIVATE_NONE  # what was done, and succeeded: none / reload / restart
    verified: bool = False
    message: str = ""


def daemon_stopped(facts: object) -> bool:
    """Whether an engine's facts (``read()``) say its daemon is simply not running: then a
    configured file is all there is to check, the daemon reads it when it starts."""
    return getattr(facts, "running", True) is False


class Engine(Protocol):
    """A container runtime's configuration engine (docker, containerd)."""

    name: str

    def read(self) -> object:
        """Read the current configuration; raise InputError naming the file if malformed."""

    def plan(self, current: object) -> Plan:
        """Pure: the change that makes ``current`` carry the nvidia runtime."""

    def mismatches(self, current: object) -> tuple[str, ...]:
        """Pure: where the nvidia runtime, as configured, disagrees with the runtime the
        kubelet's other pods use on what must match (the cgroup driver, the runtime type);
        one line each. Configuring again brings them in line."""

    def apply(self, plan: Plan) -> ApplyResult:
        """Lock, back up, write atomically, reload or restart, verify, roll back on failure."""

    def verify(self) -> bool:
        """Whether the running daemon shows the nvidia runtime (and as default, if asked)."""

    def rollback(self) -> ApplyResult:
        """Restore the newest backup of every file the engine writes, then reload/restart."""
