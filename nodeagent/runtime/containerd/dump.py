"""containerd's own merged view of its config (``containerd config dump``), read by version.

The same setting sits at a different key path in each config version (under ``plugins``):

- version 2 (what containerd 1.6 and 1.7 dump): ``"io.containerd.grpc.v1.cri"`` holds the
  runtimes and the default (``.containerd``), ``enable_cdi``, ``cdi_spec_dirs`` and
  ``sandbox_image``;
- version 3 (containerd 2.x): ``"io.containerd.cri.v1.runtime"`` holds the runtimes, the
  default and the CDI keys; the sandbox image is ``"io.containerd.cri.v1.images"``'s
  ``pinned_images.sandbox``.

containerd 2.x migrates a version 2 file in memory before it dumps, so its dump is always
version 3; 1.x dumps version 2. :class:`DumpedConfig` answers by meaning, so neither the
engine nor a test spells a version's key path.

Pure: the parsed dump in, typed values out. No file I/O, no process (the engine runs the
dump); imports only :mod:`~nodeagent.runtime.containerd.tomledit` of the agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from nodeagent.errors import InputError
from nodeagent.runtime.containerd.tomledit import (
    CRI_PLUGIN,
    OptionMismatch,
    cri_mismatches,
)

SHOWN = "containerd config dump"


@dataclasses.dataclass(frozen=True)
class _Paths:
    """Where one config version keeps what the agent reads (key paths under ``plugins``)."""

    runtime: str  # the plugin with containerd.runtimes, the default runtime and CDI
    sandbox_image: tuple[str, ...]
    plugin_id: tuple[str, str]  # that plugin as `ctr plugins ls` lists it: type, id


_PATHS = {
    2: _Paths(
        runtime=CRI_PLUGIN[2],
        sandbox_image=(CRI_PLUGIN[2], "sandbox_image"),
        plugin_id=("io.containerd.grpc.v1", "cri"),
    ),
    3: _Paths(
        runtime=CRI_PLUGIN[3],
        sandbox_image=("io.containerd.cri.v1.images", "pinned_images", "sandbox"),
        plugin_id=("io.containerd.cri.v1", "runtime"),
    ),
}


@dataclasses.dataclass(frozen=True)
class DumpedRuntime:
    """One entry of ``containerd.runtimes`` as containerd loaded it."""

    name: str
    runtime_type: str  # "" when unset
    binary_name: str  # options.BinaryName; "" when unset (runc from PATH)
    systemd_cgroup: bool  # options.SystemdCgroup; unset is false, as containerd reads it
    privileged_without_host_devices: bool

    def followed(self) -> dict[str, Any]:
        """The keys a runtime's follower must match, in the config's own shape."""
        return {
            "runtime_type": self.runtime_type,
            "options": {"SystemdCgroup": self.systemd_cgroup},
        }


@dataclasses.dataclass(frozen=True)
class DumpedConfig:
    """What containerd loaded, whatever the config version."""

    version: int
    root: str
    state: str
    default_runtime_name: Optional[str]  # None when unset (containerd's runc)
    runtimes: dict[str, DumpedRuntime]
    sandbox_image: Optional[str]
    enable_cdi: Optional[bool]  # None: this containerd has no such setting (1.6)
    cdi_spec_dirs: tuple[str, ...]
    plugin_id: tuple[str, str]  # the CRI runtime plugin in `ctr plugins ls`: type, id

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> DumpedConfig:
        """Read a parsed dump; InputError when its version is neither 2 nor 3."""
        version = data.get("version", 2)
        paths = _PATHS.get(version) if isinstance(version, int) else None
        if paths is None or isinstance(version, bool):
            raise InputError(f"{SHOWN}: config version {version!r} is not 2 or 3")
        plugins = _table(data, "plugins")
        cri = _table(plugins, paths.runtime)
        ctd = _table(cri, "containerd")
        sandbox: object = plugins
        for key in paths.sandbox_image:
            sandbox = sandbox.get(key) if isinstance(sandbox, dict) else None
        enable_cdi = cri.get("enable_cdi")
        dirs = cri.get("cdi_spec_dirs")
        return cls(
            version=version,
            root=_str(data.get("root")) or "",
            state=_str(data.get("state")) or "",
            default_runtime_name=_str(ctd.get("default_runtime_name")) or None,
            runtimes={
                name: _runtime(name, entry)
                for name, entry in _table(ctd, "runtimes").items()
                if isinstance(entry, dict)
            },
            sandbox_image=_str(sandbox),
            enable_cdi=enable_cdi if isinstance(enable_cdi, bool) else None,
            cdi_spec_dirs=tuple(d for d in dirs if isinstance(d, str))
            if isinstance(dirs, list)
            else (),
            plugin_id=paths.plugin_id,
        )

    def systemd_cgroup(self, runtime: str) -> Optional[bool]:
        """``runtime``'s SystemdCgroup (None: containerd has no such runtime)."""
        found = self.runtimes.get(runtime)
        return None if found is None else found.systemd_cgroup

    def mismatches(self, name: str) -> tuple[OptionMismatch, ...]:
        """Where the runtime ``name`` disagrees with the runtime it follows (runc ...)."""
        table = {n: r.followed() for n, r in self.runtimes.items()}
        return cri_mismatches({"containerd": {"runtimes": table}}, name)

    def problem(self, name: str, set_default: bool) -> Optional[str]:
        """None when containerd has the runtime ``name`` (as the default if ``set_default``,
        else not as the default); else what it shows instead."""
        if name not in self.runtimes:
            return f"{SHOWN} shows no '{name}' runtime"
        default = self.default_runtime_name
        if set_default and default != name:
            return f"{SHOWN} shows default runtime {default!r}"
        if not set_default and default == name:
            return f"{SHOWN} shows '{name}' as the default runtime"
        return None


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    found = data.get(key)
    return found if isinstance(found, dict) else {}


def _str(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


def _runtime(name: str, entry: Mapping[str, Any]) -> DumpedRuntime:
    options = _table(entry, "options")
    return DumpedRuntime(
        name=name,
        runtime_type=_str(entry.get("runtime_type")) or "",
        binary_name=_str(options.get("BinaryName")) or "",
        systemd_cgroup=options.get("SystemdCgroup") is True,
        privileged_without_host_devices=entry.get("privileged_without_host_devices") is True,
    )
