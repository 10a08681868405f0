"""The agent's configuration: typed, immutable, every key with a default.

File: ``/etc/nodeagent/config.yaml`` (under ``--root``), YAML. Every key and its default
is documented in docs/configuration.md. Loading validates everything: an unknown key, a
wrong type or a bad value is an :class:`~nodeagent.errors.InputError` whose message is
``PATH:LINE: what is wrong``. No file means all defaults.
"""

from __future__ import annotations

import dataclasses
import io
import typing
from pathlib import Path
from typing import Any, Optional, Union

from nodeagent.errors import InputError

DEFAULT_CONFIG_PATH = "/etc/nodeagent/config.yaml"


@dataclasses.dataclass(frozen=True)
class LabelsConfig:
    """Which node labels the agent sets (see docs/labels.md)."""

    # GFD-compatible nvidia.com/* labels.
    gfd: bool = True
    # The simple conventions operators already use: gpu=true, gpu-type=<short model>.
    simple: bool = True
    # Extra labels set as given (e.g. roles: train: "true").
    static: dict[str, str] = dataclasses.field(default_factory=dict)
    # Label keys not to set, e.g. those GPU Feature Discovery already publishes on this node.
    skip: tuple[str, ...] = ()
    # Prefix of the agent's own labels that are not GFD's (gpu.lost-count ...).
    prefix: str = "nodeagent.io"


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the container runtime is configured (docs/runtime.md)."""

    engine: str = "auto"
    name: str = "nvidia"
    path: str = "nvidia-container-runtime"
    set_as_default: bool = True
    restart_mode: str = "auto"
    allow_restart: bool = False
    verify_timeout_s: float = 60.0
    docker: DockerConfig = dataclasses.field(default_factory=DockerConfig)
    containerd: ContainerdConfig = dataclasses.field(default_factory=ContainerdConfig)

    def __post_init__(self) -> None:
        _one_of("engine", self.engine, ENGINES)
        _one_of("restart_mode", self.restart_mode, RESTART_MODES)


ENGINES = ("auto", "docker", "containerd", "none")
RESTART_MODES = ("auto", "reload", "restart", "none")


def _one_of(name: str, value: str, options: tuple[str, ...]) -> None:
    """ValueError(msg, name, options, value) when ``value`` is not one of ``options``."""
    if value not in options:
        raise ValueError(f"'{name}' must be in {options!r} (got {value!r})", name, options, value)


@dataclasses.dataclass(frozen=True)
class KubeConfig:
    """How the agent and the controller talk to the cluster (docs/kubernetes.md)."""

    # The credential: the kubelet's own by default (a node identity under NodeRestriction).
    kubeconfig: str = "/etc/kubernetes/kubelet.conf"
    # The kubelet's extra-args file; default: /etc/default/kubelet (Debian, Ubuntu) or
    # /etc/sysconfig/kubelet (RHEL family, Alibaba Cloud Linux), from /etc/os-release.
    kubelet_args_file: Optional[str] = None
    condition_type: str = "nvidia.com/GPUReady"
    # Register the node with the startup taint (NoSchedule) until GPUReady is True.
    startup_taint: bool = True
    startup_taint_key: str = "readiness.k8s.io/nvidia-gpu-not-ready"
    # GPUReady also needs the device plugin to advertise every detected GPU in capacity.
    require_device_plugin: bool = True
    # How long to wait for the kubelet to register the Node.
    wait_for_node_s: float = 300.0
    # Deadline for one API call including its retries.
    api_deadline_s: float = 60.0
    event_namespace: str = "default"
    # The controller's NoSchedule taint for nodes whose GPUReady stays False.
    unhealthy_taint_key: str = "nodeagent.io/gpu-unhealthy"
    # How long GPUReady must be False before the controller taints the node.
    unhealthy_grace_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """What ``nodeagent run`` watches and how often it tells the cluster (docs/operations.md)."""

    # Re-detect the GPUs (and re-check the runtime) this often, seconds.
    redetect_interval_s: float = 60.0
    # Re-read the Node and correct drift (labels, condition) this often, seconds, each
    # interval drawn from [1 - jitter, 1 + jitter] x the value so a fleet never ticks in step.
    heartbeat_interval_s: float = 300.0
    heartbeat_jitter: float = 0.2
    # Re-write the condition's lastHeartbeatTime when it is older than this, seconds, even
    # when nothing changed, so a stale agent is visible; 0 never refreshes an unchanged one.
    condition_refresh_s: float = 3600.0
    # After a critical XID, GPUReady stays False until this many seconds pass with no new
    # critical XID and a re-detect finds every GPU readable; 0 keeps it False until reboot.
    xid_recovery_s: float = 300.0
    # XIDs to treat as critical in addition to the built-in list (docs/xid.md), and XIDs to
    # ignore even when the list has them.
    xid_extra_critical: tuple[int, ...] = ()
    xid_ignore: tuple[int, ...] = ()
    # Prometheus metrics: "HOST:PORT" to serve /metrics on (empty: off), and/or a
    # node-exporter textfile (a path ending in .prom; empty: off).
    metrics_listen: str = "127.0.0.1:9410"
    metrics_textfile: str = ""
    # While the API server is unreachable, the longest wait between two report attempts
    # (full-jitter exponential backoff from 2 s up to this), seconds.
    retry_max_s: float = 60.0
    # Where the daemon keeps what must survive its own restart (active XIDs, boot id).
    state_file: str = "/var/lib/nodeagent/state.json"

    def __post_init__(self) -> None:
        if not 0 <= self.heartbeat_jitter < 1:
            raise ValueError(
                f"'heartbeat_jitter' must be at least 0 and below 1 (got {self.heartbeat_jitter})"
            )
        for name in ("redetect_interval_s", "heartbeat_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"'{name}' must be above 0 (got {getattr(self, name)})")
        if self.metrics_textfile and not self.metrics_textfile.endswith(".prom"):
            raise ValueError(
                f"'metrics_textfile' must end in .prom (got {self.metrics_textfile!r})"
            )
        if self.metrics_listen:
            host, sep, port = self.metrics_listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(
                    f"'metrics_listen' must be HOST:PORT (got {self.metrics_listen!r})"
                )


@dataclasses.dataclass(frozen=True)
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
    labels: LabelsConfig = dataclasses.field(default_factory=LabelsConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    kube: KubeConfig = dataclasses.field(default_factory=KubeConfig)
    daemon: DaemonConfig = dataclasses.field(default_factory=DaemonConfig)


# --- loading --------------------------------------------------------------------------------


def load(path: Path, *, must_exist: bool = False) -> Config:
    """Read and validate the config file at ``path`` (already under ``--root``).

    A missing file gives ``Config()`` unless ``must_exist`` (an explicit ``--config``).
    Raises :class:`InputError` with ``PATH:LINE: what is wrong`` on any problem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if must_exist:
            raise InputError(f"{path}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    return parse(text, str(path))


def parse(text: str, name: str) -> Config:
    """Validate YAML ``text`` (named ``name`` in errors) into a :class:`Config`."""
    import yaml  # lazy: the CLI's --version must not pay for it

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{name}:{line}: invalid YAML: {problem}") from None
    if node is None or node.tag == "tag:yaml.org,2002:null":  # empty, comments, or "---"
        return Config()
    cfg = _build(Config, node, name, "")
    assert isinstance(cfg, Config)
    _check_labels(cfg, node, name)
    return cfg


def _build(cls: type, node: Any, name: str, dotted: str) -> Any:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        what = f"'{dotted}'" if dotted else "the top level"
        raise InputError(f"{name}:{_line(node)}: {what} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{dotted}.{key}" if dotted else str(key)
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"{name}:{_line(key_node)}: unknown key '{where}'{hint}")
        if key in kwargs:
            raise InputError(f"{name}:{_line(key_node)}: duplicate key '{where}'")
        kwargs[key] = _value(hints[key], value_node, name, where)
        lines[key] = _line(key_node)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        bad = _field_in(str(e), lines)
        line = lines.get(bad, _line(node)) if bad else _line(node)
        raise InputError(f"{name}:{line}: {_describe(e, dotted, bad)}") from None


def _value(tp: Any, node: Any, name: str, where: str) -> Any:
    import yaml

    line = _line(node)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, node, name, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, node, name, where)
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise InputError(f"{name}:{line}: '{where}' must be a mapping")
        out: dict[str, str] = {}
        for k, v in node.value:
            out[str(_scalar(str, k, name, where))] = _scalar(str, v, name, f"{where}.{k.value}")
        return out
    if origin is tuple:
        if not isinstance(node, yaml.SequenceNode):
            raise InputError(f"{name}:{line}: '{where}' must be a list")
        return tuple(_scalar(args[0], item, name, where) for item in node.value)
    return _scalar(tp, node, name, where)


_SCALAR_TAGS = {
    bool: ("tag:yaml.org,2002:bool",),
    int: ("tag:yaml.org,2002:int",),
    float: ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int"),
    str: ("tag:yaml.org,2002:str",),
}


def _scalar(tp: Any, node: Any, name: str, where: str) -> Any:
    import yaml

    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS[tp]:
        shown = (
            node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__[:-4].lower()
        )
        raise InputError(f"{name}:{_line(node)}: '{where}' must be {expected}, not {shown!r}")
    value = yaml.SafeLoader(io.StringIO("")).construct_object(node)
    return tp(value)


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _field_in(message: str, names: dict[str, int]) -> Optional[str]:
    # attrs validators name the attribute: "'restart_mode' must be in (...)".
    for n in names:
        if f"'{n}'" in message:
            return n
    return None


def _describe(e: Exception, dotted: str, bad: Optional[str]) -> str:
    msg = str(e)
    if isinstance(e, ValueError) and e.args and len(e.args) >= 4 and bad:
        # _one_of raises ValueError(msg, field, options, value)
        where = f"{dotted}.{bad}" if dotted else bad
        return f"'{where}' must be one of {', '.join(map(str, e.args[2]))}, not {e.args[3]!r}"
    if bad and dotted:
        return msg.replace(f"'{bad}'", f"'{dotted}.{bad}'", 1)
    return msg


def _check_labels(cfg: Config, root_node: Any, name: str) -> None:
    from nodeagent.labels import label_key_problem

    for key in cfg.labels.static:
        problem = label_key_problem(key)
        if problem:
            line = _find_line(root_node, ("labels", "static", key))
            raise InputError(f"{name}:{line}: labels.static: '{key}': {problem}")


def _find_line(node: Any, keys: tuple[str, ...]) -> int:
    for key in keys:
        for k, v in node.value:
            if k.value == key:
                node = v
                found = k
                break
        else:
            return _line(node)
    return _line(found)
