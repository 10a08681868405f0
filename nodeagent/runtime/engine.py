"""The one interface every container runtime engine implements, and what it returns.

Modelled on nvidia-container-toolkit's config engines and nodeadm's daemons: each runtime
(docker, containerd) implements :class:`Engine`, generic over the facts it reads. The walk
is always the same:

    facts   = engine.read()          # I/O: the runtime's config file(s), is its daemon running
    plan    = engine.plan(facts)     # pure: what to change and how to make it take effect
    engine.apply(plan)               # the only side effects (the write sequence in host/)
    engine.verify()                  # I/O: the running daemon shows the nvidia runtime

so ``--dry-run`` is ``plan`` + :meth:`Plan.diff` and nothing else.

:class:`Activation` (none / reload / restart, and ``.past_tense``: written / reloaded /
restarted) is defined with the service control in :mod:`nodeagent.host.service` and is
read from here. Holds data and a protocol only: no I/O, no engine, no service control.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypeVar

from nodeagent.host.change import FileChange
from nodeagent.host.service import Activated, Activation
from nodeagent.runtime.cdi import Use

__all__ = ["Activation", "ApplyResult", "Engine", "F", "Facts", "Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an engine will do. Empty ``changes`` means nothing to do (no write, no signal)."""

    engine: str
    changes: tuple[FileChange, ...] = ()
    activation: Activation = Activation.NONE
    # Why that activation (e.g. "only reloadable keys change (runtimes)").
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
    activation: Activation = Activation.NONE  # what was done, and succeeded
    verified: bool = False
    message: str = ""

    @classmethod
    def activated(cls, engine: str, written: tuple[str, ...], done: Activated) -> ApplyResult:
        """Files written and then taken by the daemon as ``done`` says."""
        return cls(engine, written, done.activation, done.verified, done.message)


class Facts(Protocol):
    """What every engine's facts tell, whatever else they hold."""

    @property
    def running(self) -> bool:
        """Whether the runtime's daemon is running: its socket exists at the configured
        address on this machine (:func:`nodeagent.host.service.listening`; docs/runtime.md).
        A stopped daemon reads its configuration when it starts."""
        ...


F = TypeVar("F", bound=Facts)


class Engine(Protocol[F]):
    """A container runtime's configuration engine, over the facts ``F`` it reads."""

    @property
    def name(self) -> str:
        """The engine's name in the registry (:mod:`nodeagent.runtime.registry`)."""
        ...

    def read(self) -> F:
        """Read the current configuration; raise InputError naming the file if malformed."""
        ...

    def plan(self, facts: F) -> Plan:
        """Pure: the change that makes ``facts`` carry the nvidia runtime."""
        ...

    def mismatches(self, facts: F) -> tuple[str, ...]:
        """Pure: where the nvidia runtime, as configured, disagrees with the runtime the
        kubelet's other pods use on what must match (the cgroup driver, the runtime type);
        one line each. Configuring again brings them in line."""
        ...

    def apply(self, plan: Plan) -> ApplyResult:
        """Write the plan and make it take effect, verified; the old files back on failure."""
        ...

    def verify(self) -> bool:
        """Whether the running daemon shows the nvidia runtime (and as default, if asked)."""
        ...

    def rollback(self) -> ApplyResult:
        """Put back what the engine last changed, then reload/restart as needed."""
        ...

    def cdi_use(self, facts: F) -> Use:
        """Whether the runtime consumes CDI devices, and from which spec directories
        (asks the running daemon, or its merged config)."""
        ...
