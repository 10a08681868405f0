"""The agent's configuration: typed, immutable, every key with a default.

File: ``/etc/nodeagent/config.yaml`` (under ``--root``), YAML. Every key, its default and
its allowed values are documented in docs/configuration.md. Loading validates everything:
an unknown key, a wrong type or a bad value is an :class:`~nodeagent.errors.InputError`
whose message is ``PATH:LINE: what is wrong``. No file means all defaults.

The rules live on the dataclasses themselves (each field's ``check``, run by
``__post_init__``), so a ``Config`` built in code obeys them too; the loader only adds the
line number.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, TypeVar, Union

from nodeagent.errors import InputError
from nodeagent.host.reader import read_text
from nodeagent.kube.keys import key_problem, label_key_problem, value_problem

DEFAULT_CONFIG_PATH = "/etc/nodeagent/config.yaml"
# Every key with a comment is a few KiB; the cap keeps a hostile file's parse well under a
# second (PyYAML's pure-Python composer takes seconds per MiB).
MAX_CONFIG_BYTES = 64 * 1024

# --- rules ----------------------------------------------------------------------------------


class FieldError(ValueError):
    """A field's value breaks its rule.

    ``field`` is the dataclass field, ``problem`` the rest of the sentence after the
    field's name (``must be ..., not ...``), ``at`` the map key or list index inside the
    value that is wrong (the loader points at its line), if any.
    """

    def __init__(self, field: str, problem: str, at: Union[str, int, None] = None) -> None:
        super().__init__(f"'{field}' {problem}")
        self.field = field
        self.problem = problem
        self.at = at


# A rule: None when the value is allowed, else the problem (``must be ..., not ...``).
Check = Callable[[Any], Optional[str]]
T = TypeVar("T")


def _field(default: T, check: Check, *, each: bool = False) -> T:
    """A dataclass field whose value (each entry of it, if ``each``) must pass ``check``.

    None is always allowed: a field that may be None says so in its type."""
    return dataclasses.field(default=default, metadata={"check": check, "each": each})


def _validate(obj: object) -> None:
    """Run every field's check; raise :class:`FieldError` for the first that fails."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        check: Optional[Check] = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or value is None:
            continue
        if f.metadata["each"]:
            for i, item in enumerate(value):
                problem = check(item)
                if problem:
                    raise FieldError(f.name, f"entries {problem}", at=i)
        else:
            problem = check(value)
            if problem:
                raise FieldError(f.name, problem)


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or half-open interval a number must lie in; ``str()`` is its notation."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        return (
            f"{'(' if self.low_open else '['}{self.low:g}, "
            f"{self.high:g}{')' if self.high_open else ']'}"
        )

    def __call__(self, value: object) -> Optional[str]:
        kind = "an integer" if self.integer else "a number"
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {kind}, not {shown}"
        if self.integer and not isinstance(value, int):
            return f"must be {kind}, not {shown}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number in {self}, not {shown}"
        below = value < self.low or (self.low_open and value == self.low)
        above = value > self.high or (self.high_open and value == self.high)
        if below or above:
            return f"must be in {self}, not {shown}"
        return None


def _one_of(options: tuple[str, ...]) -> Check:
    def check(value: object) -> Optional[str]:
        if value in options:
            return None
        return f"must be one of {', '.join(options)}, not {value!r}"

    return check


def host_path_problem(value: object) -> Optional[str]:
    """None if ``value`` is an absolute host path with no ``..`` component."""
    if isinstance(value, str) and "\0" not in value:
        p = PurePosixPath(value)
        if p.is_absolute() and ".." not in p.parts:
            return None
    return f"must be an absolute path without '..', not {value!r}"


_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RUNTIME_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_COMMAND_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*")
# systemd unit names (systemd.unit(5)); never starting with '-', which systemctl would read
# as an option.
_UNIT_RE = re.compile(r"[A-Za-z0-9:_@\\][A-Za-z0-9:_.@\\-]{0,254}")


def _dns_label(value: object) -> Optional[str]:
    if isinstance(value, str) and len(value) <= 63 and _DNS_LABEL_RE.fullmatch(value):
        return None
    return (
        "must be a DNS label (at most 63 lower-case letters, digits and '-', "
        f"alphanumeric at both ends), not {value!r}"
    )


def _dns_subdomain(value: object) -> Optional[str]:
    if (
        isinstance(value, str)
        and len(value) <= 253
        and all(_DNS_LABEL_RE.fullmatch(part) for part in value.split("."))
    ):
        return None
    return (
        "must be a DNS subdomain (lower-case DNS labels joined by '.', at most 253 "
        f"characters), not {value!r}"
    )


def _qualified_name(value: object) -> Optional[str]:
    problem = key_problem(value) if isinstance(value, str) else "it is not a string"
    if problem is None:
        return None
    return f"must be a qualified name like example.com/Name ({problem}), not {value!r}"


def _runtime_name(value: object) -> Optional[str]:
    if isinstance(value, str) and _RUNTIME_NAME_RE.fullmatch(value):
        return None
    return f"must be letters, digits, '_', '.' and '-', not {value!r}"


def _command(value: object) -> Optional[str]:
    if isinstance(value, str) and "/" not in value:
        if _COMMAND_RE.fullmatch(value):
            return None
    elif host_path_problem(value) is None:
        return None
    return f"must be a command name or an absolute path without '..', not {value!r}"


def _unit_name(value: object) -> Optional[str]:
    if isinstance(value, str) and _UNIT_RE.fullmatch(value):
        return None
    return f"must be a systemd unit name like docker.service, not {value!r}"


def _metrics_listen(value: object) -> Optional[str]:
    if value == "":
        return None
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isascii() and port.isdigit() and int(port) < 65536:
            return None
    return f"must be HOST:PORT or empty, not {value!r}"


def _textfile(value: object) -> Optional[str]:
    if value == "":
        return None
    if isinstance(value, str) and value.endswith(".prom") and host_path_problem(value) is None:
        return None
    return f"must be empty or an absolute path ending in .prom without '..', not {value!r}"


# The limits of the numbers (docs/configuration.md lists them).
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
XID = Range(1, 65535, integer=True)


# --- the configuration ----------------------------------------------------------------------


# labels.conventions entries (nodeagent.labels.clouds.Convention) and labels.mig_strategy.
LABEL_CONVENTIONS = ("ack", "gke", "eks", "jdcloud", "aks")
MIG_STRATEGIES = ("none", "single", "mixed")


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
    # Prefix of the agent's own labels (per-product counts, unhealthy GPUs, MIG profiles).
    prefix: str = "nodeagent.io"
    # Clouds whose GPU node labels to set too (docs/labels.md, "Cloud conventions").
    conventions: tuple[str, ...] = _field((), _one_of(LABEL_CONVENTIONS), each=True)
    # The device plugin's MIG strategy: GFD's mig.strategy labels (docs/labels.md).
    mig_strategy: str = _field("none", _one_of(MIG_STRATEGIES))
    # The device plugin shares GPUs through MPS: nvidia.com/mps.capable as GFD sets it.
    mps_sharing: bool = False

    def __post_init__(self) -> None:
        _validate(self)
        # The agent's own labels are PREFIX/NAME: the prefix must be one a node may use.
        problem = label_key_problem(f"{self.prefix}/x")
        if problem:
            raise FieldError("prefix", f"{self.prefix!r}: {problem}")
        for key, value in self.static.items():
            problem = label_key_problem(key)
            if problem:
                raise FieldError("static", f"key {key!r}: {problem}", at=key)
            problem = value_problem(value)
            if problem:
                raise FieldError("static", f"value {value!r} of {key!r}: {problem}", at=key)
        for i, key in enumerate(self.skip):
            problem = key_problem(key)
            if problem:
                raise FieldError("skip", f"entry {key!r}: not a valid label key: {problem}", at=i)


RESTART_MODES = ("auto", "reload", "restart", "none")
# runtime.cdi: leave the runtime's own CDI setting, or turn CDI on / off (docs/runtime.md).
CDI_MODES = ("auto", "enable", "disable")


@dataclasses.dataclass(frozen=True)
class DockerConfig:
    config_file: str = _field("/etc/docker/daemon.json", host_path_problem)
    # When set, reload by SIGHUP to the pid in this file instead of `systemctl reload`.
    pidfile: Optional[str] = _field(None, host_path_problem)
    # Docker API endpoint used to verify (ping, info).
    host: str = "unix:///var/run/docker.sock"
    service: str = _field("docker.service", _unit_name)
    # argv to reload / restart docker; empty means `systemctl reload|restart <service>`.
    reload_command: tuple[str, ...] = ()
    restart_command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


@dataclasses.dataclass(frozen=True)
class ContainerdConfig:
    config_file: str = _field("/etc/containerd/config.toml", host_path_problem)
    drop_in: str = _field("/etc/containerd/conf.d/99-nvidia.toml", host_path_problem)
    # Write the nvidia runtime into a drop-in plus an `imports` entry (true) or into config.toml.
    use_drop_in: bool = True
    address: str = "/run/containerd/containerd.sock"
    service: str = _field("containerd.service", _unit_name)
    # argv to restart containerd; empty means `systemctl restart <service>`. Never SIGHUP:
    # containerd exits on SIGHUP.
    restart_command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


# Marks a RuntimeConfig field as one container runtime engine's settings (``runtime.NAME:``).
# The field's name is the engine's name, its entry in nodeagent.runtime.registry (which this
# layer may not import; tests/test_select.py checks that the two name the same engines).
_ENGINE_SECTION = {"engine": True}


def engine_names() -> tuple[str, ...]:
    """The engines ``runtime.engine`` may name besides ``auto`` and ``none``, in
    auto-selection order: those with a section in :class:`RuntimeConfig`."""
    return tuple(f.name for f in dataclasses.fields(RuntimeConfig) if f.metadata.get("engine"))


def _engine_choice(value: object) -> Optional[str]:
    return _one_of(("auto", *engine_names(), "none"))(value)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the container runtime is configured (docs/runtime.md)."""

    engine: str = _field("auto", _engine_choice)
    # The name in daemon.json's `runtimes` and containerd's runtimes table.
    name: str = _field("nvidia", _runtime_name)
    path: str = _field("nvidia-container-runtime", _command)
    set_as_default: bool = True
    restart_mode: str = _field("auto", _one_of(RESTART_MODES))
    allow_restart: bool = False
    verify_timeout_s: float = _field(60.0, Range(0, HOUR, low_open=True))
    # CDI: auto leaves docker's features.cdi / containerd's enable_cdi as the host has them.
    cdi: str = _field("auto", _one_of(CDI_MODES))
    # Where apply writes a regenerated nvidia.com/gpu CDI spec when there is none.
    cdi_spec: str = _field("/var/run/cdi/nvidia.yaml", host_path_problem)
    # The NVIDIA Container Toolkit CLI that generates it (a name on the PATH, or a path).
    nvidia_ctk: str = _field("nvidia-ctk", _command)
    docker: DockerConfig = dataclasses.field(default_factory=DockerConfig, metadata=_ENGINE_SECTION)
    containerd: ContainerdConfig = dataclasses.field(
        default_factory=ContainerdConfig, metadata=_ENGINE_SECTION
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclasses.dataclass(frozen=True)
class KubeConfig:
    """How the agent and the controller talk to the cluster (docs/kubernetes.md)."""

    # The credential: the kubelet's own by default (a node identity under NodeRestriction).
    kubeconfig: str = _field("/etc/kubernetes/kubelet.conf", host_path_problem)
    # The kubelet's extra-args file; default: /etc/default/kubelet (Debian, Ubuntu) or
    # /etc/sysconfig/kubelet (RHEL family, Alibaba Cloud Linux), from /etc/os-release.
    kubelet_args_file: Optional[str] = _field(None, host_path_problem)
    condition_type: str = _field("nvidia.com/GPUReady", _qualified_name)
    # Register the node with the startup taint (NoSchedule) until GPUReady is True.
    startup_taint: bool = True
    startup_taint_key: str = _field("readiness.k8s.io/nvidia-gpu-not-ready", _qualified_name)
    # GPUReady also needs the device plugin to advertise every detected GPU in capacity.
    require_device_plugin: bool = True
    # How long to wait for the kubelet to register the Node.
    wait_for_node_s: float = _field(300.0, Range(0, HOUR, low_open=True))
    # Deadline for one API call including its retries.
    api_deadline_s: float = _field(60.0, Range(0, HOUR, low_open=True))
    event_namespace: str = _field("default", _dns_label)
    # The controller's NoSchedule taint for nodes whose GPUReady stays False.
    unhealthy_taint_key: str = _field("nodeagent.io/gpu-unhealthy", _qualified_name)
    # How long GPUReady must be False before the controller taints the node.
    unhealthy_grace_s: float = _field(60.0, Range(0, WEEK))

    def __post_init__(self) -> None:
        _validate(self)


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """What ``nodeagent run`` watches and how often it tells the cluster (docs/operations.md)."""

    # Re-detect the GPUs (and re-check the runtime) this often, seconds.
    redetect_interval_s: float = _field(60.0, Range(0, DAY, low_open=True))
    # Re-read the Node and correct drift (labels, condition) this often, seconds, each
    # interval drawn from [1 - jitter, 1 + jitter] x the value so a fleet never ticks in step.
    heartbeat_interval_s: float = _field(300.0, Range(0, DAY, low_open=True))
    heartbeat_jitter: float = _field(0.2, Range(0, 1, high_open=True))
    # Re-write the condition's lastHeartbeatTime when it is older than this, seconds, even
    # when nothing changed, so a stale agent is visible; 0 never refreshes an unchanged one.
    condition_refresh_s: float = _field(3600.0, Range(0, DAY))
    # After a critical XID, GPUReady stays False until this many seconds pass with no new
    # critical XID and a re-detect finds every GPU readable; 0 keeps it False until reboot.
    xid_recovery_s: float = _field(300.0, Range(0, WEEK))
    # XIDs to treat as critical in addition to the built-in list (docs/xid.md), and XIDs to
    # ignore even when the list has them.
    xid_extra_critical: tuple[int, ...] = _field((), XID, each=True)
    xid_ignore: tuple[int, ...] = _field((), XID, each=True)
    # Prometheus metrics: "HOST:PORT" to serve /metrics on (empty: off), and/or a
    # node-exporter textfile (a path ending in .prom; empty: off).
    metrics_listen: str = _field("127.0.0.1:9410", _metrics_listen)
    metrics_textfile: str = _field("", _textfile)
    # While the API server is unreachable, the longest wait between two report attempts
    # (full-jitter exponential backoff from 2 s up to this), seconds.
    retry_max_s: float = _field(60.0, Range(1, HOUR))
    # Where the daemon keeps what must survive its own restart (active XIDs, boot id).
    state_file: str = _field("/var/lib/nodeagent/state.json", host_path_problem)
    # The kubelet's pod-resources socket: which pod holds each GPU, as labels of the per-GPU
    # series (docs/operations.md); empty: off.
    pod_resources_socket: str = _field(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        lambda v: None if v == "" else host_path_problem(v),
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration. ``Config()`` is the all-defaults config."""

    # Node name; default: the kubelet's --hostname-override, else the lower-cased hostname.
    node_name: Optional[str] = _field(None, _dns_subdomain)
    # Absolute path of libnvidia-ml.so.1 to load instead of the dynamic loader's search.
    nvml_library: Optional[str] = _field(None, host_path_problem)
    # Whether a node with no driver or no GPU makes apply/detect fail (exit 3) or not (exit 0).
    no_gpu_is_error: bool = True
    lock_file: str = _field("/run/nodeagent/nodeagent.lock", host_path_problem)
    backup_dir: str = _field("/var/lib/nodeagent/backups", host_path_problem)
    # At least 1: rollback needs the newest backup.
    backup_keep: int = _field(10, Range(1, 1000, integer=True))
    labels: LabelsConfig = dataclasses.field(default_factory=LabelsConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    kube: KubeConfig = dataclasses.field(default_factory=KubeConfig)
    daemon: DaemonConfig = dataclasses.field(default_factory=DaemonConfig)

    def __post_init__(self) -> None:
        _validate(self)


# --- loading --------------------------------------------------------------------------------

# A valid config nests 5 nodes deep at most (the top level, runtime, docker, restart_command,
# one argument); the bound keeps the composer's recursion far from Python's limit.
MAX_DEPTH = 10
# Explicit tags allowed: YAML's core schema. Anything else (!!python/object, !!binary,
# !!set, custom tags) is refused.
_CORE = "tag:yaml.org,2002:"
_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))


def load(path: Path, *, must_exist: bool = False) -> Config:
    """Read and validate the config file at ``path`` (already under ``--root``).

    A missing file gives ``Config()`` unless ``must_exist`` (an explicit ``--config``).
    Raises :class:`InputError` with ``PATH:LINE: what is wrong`` on any problem with the
    content; the reader's errors (a FIFO, a directory, not UTF-8, over 64 KiB) as they are.
    """
    shown = str(path)
    current = read_text(path, shown, max_bytes=MAX_CONFIG_BYTES)
    if current is None:
        if must_exist:
            raise InputError(f"{shown}: no such file")
        return Config()
    return parse(current.text, shown)


def parse(text: str, name: str) -> Config:
    """Validate YAML ``text`` (named ``name`` in errors) into a :class:`Config`."""
    node = _compose(text, name)
    if node is None or node.tag == _CORE + "null":  # empty, comments, or "---"
        return Config()
    cfg = _build(Config, node, name, "")
    assert isinstance(cfg, Config)
    return cfg


def _compose(text: str, name: str) -> Any:
    """The YAML node tree of ``text``: one document, no aliases, core tags, bounded depth."""
    import yaml  # lazy: the CLI's --version must not pay for it

    try:
        return yaml.compose(text, Loader=_loader())
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise InputError(
            f"{name}:{line}: invalid YAML: character #x{e.character:04x} is not allowed"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = "; ".join(p for p in (e.context, e.problem) if p) or "cannot parse"
        raise InputError(f"{name}:{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{name}:1: invalid YAML: {str(e).splitlines()[0]}") from None


@functools.cache
def _loader() -> type:
    """PyYAML's SafeLoader, composing only what a config may contain (see _compose)."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Optional[yaml.Node], index: int) -> Optional[yaml.Node]:
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            mark: Any = event.start_mark
            if isinstance(event, yaml.AliasEvent):
                raise yaml.MarkedYAMLError(
                    problem=f"an alias (*{event.anchor}) is not allowed; write the value out",
                    problem_mark=mark,
                )
            tag = getattr(event, "tag", None)
            if tag not in (None, "!") and tag not in _TAGS:
                raise yaml.MarkedYAMLError(
                    problem=f"the tag {_short_tag(tag)} is not allowed",
                    problem_mark=mark,
                )
            if self.depth >= MAX_DEPTH:
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_DEPTH} levels",
                    problem_mark=mark,
                )
            self.depth += 1
            try:
                return super().compose_node(parent, index)  # type: ignore[no-any-return]
            finally:
                self.depth -= 1

    return Loader


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


def _kind(node: Any) -> str:
    """What a YAML node is, in the words of the messages: ``an integer (1)``."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = str(node.tag)
    if tag == _CORE + "null":
        return "null"
    kind = _KINDS.get(tag[len(_CORE) :], f"a {_short_tag(tag)}") if tag.startswith(_CORE) else ""
    return f"{kind or 'a ' + tag} ({_shown(node.value)})"


_KINDS = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "timestamp": "a date",
}


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _key(node: Any, name: str, where: str) -> str:
    """A mapping key: a plain string, or a one-line error naming what it is instead."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "str":
        return str(node.value)
    inside = f" of '{where}'" if where else ""
    raise InputError(f"{name}:{_line(node)}: keys{inside} must be strings, not {_kind(node)}")


def _build(cls: type, node: Any, name: str, dotted: str) -> Any:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        what = f"'{dotted}'" if dotted else "the top level"
        raise InputError(f"{name}:{_line(node)}: {what} must be a mapping, not {_kind(node)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    nodes: dict[str, tuple[Any, Any]] = {}
    for key_node, value_node in node.value:
        key = _key(key_node, name, dotted)
        where = f"{dotted}.{key}" if dotted else key
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"{name}:{_line(key_node)}: unknown key '{where}'{hint}")
        if key in kwargs:
            raise InputError(f"{name}:{_line(key_node)}: duplicate key '{where}'")
        kwargs[key] = _value(hints[key], value_node, name, where)
        nodes[key] = (key_node, value_node)
    try:
        return cls(**kwargs)
    except FieldError as e:
        where = f"{dotted}.{e.field}" if dotted else e.field
        line = _line(node)
        if e.field in nodes:
            key_node, value_node = nodes[e.field]
            line = _line(_entry(value_node, e.at) or key_node)
        raise InputError(f"{name}:{line}: '{where}' {e.problem}") from None


def _entry(node: Any, at: Union[str, int, None]) -> Any:
    """The node of map key or list index ``at`` inside ``node``, if there is one."""
    import yaml

    if isinstance(at, str) and isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == at:
                return k
    if isinstance(at, int) and isinstance(node, yaml.SequenceNode) and at < len(node.value):
        return node.value[at]
    return None


def _value(tp: Any, node: Any, name: str, where: str) -> Any:
    import yaml

    line = _line(node)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "null":
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, node, name, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, node, name, where)
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise InputError(f"{name}:{line}: '{where}' must be a mapping, not {_kind(node)}")
        out: dict[str, str] = {}
        for k, v in node.value:
            key = _key(k, name, where)
            if key in out:
                raise InputError(f"{name}:{_line(k)}: duplicate key '{key}' in '{where}'")
            out[key] = _scalar(str, v, name, f"{where}.{key}")
        return out
    if origin is tuple:
        if not isinstance(node, yaml.SequenceNode):
            raise InputError(f"{name}:{line}: '{where}' must be a list, not {_kind(node)}")
        return tuple(
            _scalar(args[0], item, name, f"{where}[{i}]") for i, item in enumerate(node.value)
        )
    return _scalar(tp, node, name, where)


_SCALAR_TAGS: Mapping[type, tuple[str, ...]] = {
    bool: (_CORE + "bool",),
    int: (_CORE + "int",),
    float: (_CORE + "float", _CORE + "int"),
    str: (_CORE + "str",),
}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar(tp: type, node: Any, name: str, where: str) -> Any:
    import yaml

    expected = _EXPECTED[tp]
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS[tp]:
        raise InputError(f"{name}:{_line(node)}: '{where}' must be {expected}, not {_kind(node)}")
    if tp is str:
        return str(node.value)
    try:  # an explicit tag can still carry a bad value: !!int abc, !!bool maybe
        value = yaml.SafeLoader("").construct_object(node)
        return tp(value)
    except (ValueError, KeyError, TypeError, OverflowError, yaml.YAMLError):
        raise InputError(
            f"{name}:{_line(node)}: '{where}' must be {expected}, not {_shown(node.value)}"
        ) from None


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1
