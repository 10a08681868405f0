"""Every container runtime engine the agent knows, by name: the one list.

The CLI's ``--runtime`` choices, ``check``'s unit and hints and auto-selection
(:mod:`nodeagent.runtime.select`) read :data:`SPECS`; config validation
(``runtime.engine``) reads the engine sections of :class:`~nodeagent.config.RuntimeConfig`,
which must name the same engines (the config layer sits below this one; a test holds the
two together). A new engine is one module, one entry here and its settings section.

Holds data and lookups only: it creates engines, it never reads or writes the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from nodeagent.config import Config, RuntimeConfig
from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.host.service import listening
from nodeagent.runtime.engine import Activation, Engine


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine: how to make it and how to find its daemon on a host."""

    name: str
    factory: Callable[[Config, HostRoot], Engine[Any]]
    # The daemon's executable: the engine is "installed" when it is on the root's PATH.
    binary: str
    # The config key holding the daemon's socket address, and how to read it.
    address_key: str
    address: Callable[[RuntimeConfig], str]
    # The daemon's systemd unit (configurable: runtime.<name>.service).
    unit: Callable[[RuntimeConfig], str]
    # How the daemon takes a new configuration without nodeagent (for fix hints).
    takes_config_by: Activation

    def running(self, rt: RuntimeConfig) -> bool:
        """Whether the daemon runs: its socket exists at the configured address on this
        machine (:func:`~nodeagent.host.service.listening`)."""
        return listening(self.address(rt))

    def installed(self, root: HostRoot) -> bool:
        return root.which(self.binary) is not None

    def start_hint(self, rt: RuntimeConfig) -> str:
        """How an operator starts a stopped daemon and finds why it stopped."""
        unit = self.unit(rt)
        return f"`systemctl start {unit}`; `journalctl -u {unit}`"

    def take_config_hint(self, rt: RuntimeConfig) -> str:
        """How an operator makes a running daemon take the configured nvidia runtime."""
        how = self.takes_config_by
        return f"`nodeagent apply` {how.value}s it (or `systemctl {how} {self.unit(rt)}`)"


def _docker(cfg: Config, root: HostRoot) -> Engine[Any]:
    # Imported when made: a command that uses one engine never pays for the other's
    # libraries (tomlkit for containerd).
    from nodeagent.runtime.docker.engine import DockerEngine

    return DockerEngine(cfg, root)


def _containerd(cfg: Config, root: HostRoot) -> Engine[Any]:
    from nodeagent.runtime.containerd.engine import ContainerdEngine

    return ContainerdEngine(cfg, root)


# In auto-selection order (docs/runtime.md, "Choosing the runtime").
SPECS: tuple[EngineSpec, ...] = (
    EngineSpec(
        name="docker",
        factory=_docker,
        binary="dockerd",
        address_key="runtime.docker.host",
        address=lambda rt: rt.docker.host,
        unit=lambda rt: rt.docker.service,
        takes_config_by=Activation.RELOAD,
    ),
    EngineSpec(
        name="containerd",
        factory=_containerd,
        binary="containerd",
        address_key="runtime.containerd.address",
        address=lambda rt: rt.containerd.address,
        unit=lambda rt: rt.containerd.service,
        takes_config_by=Activation.RESTART,
    ),
)


def names() -> tuple[str, ...]:
    """The engines' names, in auto-selection order."""
    return tuple(s.name for s in SPECS)


def spec(name: str) -> EngineSpec:
    """The engine called ``name``; InputError if there is none."""
    for s in SPECS:
        if s.name == name:
            return s
    raise InputError(f"unknown runtime engine {name!r} (known: {', '.join(names())})")


def make_engine(name: str, cfg: Config, root: HostRoot) -> Engine[Any]:
    """The engine called ``name``, configured by ``cfg``, for the host under ``root``."""
    return spec(name).factory(cfg, root)
