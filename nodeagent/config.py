"""The agent's configuration: typed, immutable, every key with a default.

File: ``/etc/nodeagent/config.yaml`` (under ``--root``), YAML. Every key and its default
is documented in docs/configuration.md. Loading validates everything: an unknown key, a
wrong type or a bad value is an :class:`~nodeagent.errors.InputError` whose message is
``PATH:LINE: what is wrong``. No file means all defaults.
"""

from __future__ import annotations

from typing import Optional

import attrs

DEFAULT_CONFIG_PATH = "/etc/nodeagent/config.yaml"


@attrs.frozen
class LabelsConfig:
    """Which node labels the agent sets (see docs/labels.md)."""

    # GFD-compatible nvidia.com/* labels.
    gfd: bool = True
    # The simple conventions operators already use: gpu=true, gpu-type=<short model>.
    simple: bool = True
    # Extra labels set as given (e.g. roles: train: "true").
    static: dict[str, str] = attrs.field(factory=dict)
    # Label keys not to set, e.g. those GPU Feature Discovery already publishes on this node.
    skip: tuple[str, ...] = ()
    # Prefix of the agent's own labels that are not GFD's (gpu.lost-count ...).
    prefix: str = "nodeagent.io"


@attrs.frozen
class DockerConfig:
    config_file: str = "/etc/docker/daemon.json"
    # When set, reload by SIGHUP to the pid in this file instead of `systemctl reload`.
    pidfile: Optional[str] = None
    # Docker API endpoint used to verify (ping, info).
    host: str = "unix:///var/run/docker.sock"
    service: str = "docker.service"
    # argv to reload / restart docker; empty means `systemctl reload|restart <service>`.
    reload_command: tuple[str, ...] = ()
    restart_command: tuple[str, ...] = ()


@attrs.frozen
class ContainerdConfig:
    config_file: str = "/etc/containerd/config.toml"
    drop_in: str = "/etc/containerd/conf.d/99-nvidia.toml"
    # Write the nvidia runtime into a drop-in plus an `imports` entry (true) or into config.toml.
    use_drop_in: bool = True
    address: str = "/run/containerd/containerd.sock"
    service: str = "containerd.service"
    # argv to restart containerd; empty means `systemctl restart <service>`. Never SIGHUP:
    # containerd exits on SIGHUP.
    restart_command: tuple[str, ...] = ()


@attrs.frozen
class RuntimeConfig:
    """How the container runtime is configured (docs/runtime.md)."""

    engine: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "docker", "containerd", "none"))
    )
    name: str = "nvidia"
    path: str = "nvidia-container-runtime"
    set_as_default: bool = True
    restart_mode: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "reload", "restart", "none"))
    )
    allow_restart: bool = False
    verify_timeout_s: float = 60.0
    docker: DockerConfig = attrs.field(factory=DockerConfig)
    containerd: ContainerdConfig = attrs.field(factory=ContainerdConfig)


@attrs.frozen
class Config:
    """The whole configuration. ``Config()`` is the all-defaults config."""

    # Node name; default: the kubelet's --hostname-override, else the lower-cased hostname.
    node_name: Optional[str] = None
    # Absolute path of libnvidia-ml.so.1 to load instead of the dynamic loader's search.
    nvml_library: Optional[str] = None
    # Whether a node with no driver or no GPU makes apply/detect fail (exit 3) or not (exit 0).
    no_gpu_is_error: bool = True
    lock_file: str = "/run/nodeagent/nodeagent.lock"
    backup_dir: str = "/var/lib/nodeagent/backups"
    backup_keep: int = 10
    labels: LabelsConfig = attrs.field(factory=LabelsConfig)
    runtime: RuntimeConfig = attrs.field(factory=RuntimeConfig)
