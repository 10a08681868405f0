"""CDI truth: whether the runtime consumes CDI, the ``nvidia.com/gpu`` spec it would read,
and whether that spec still matches the GPUs NVML sees.

The Container Device Interface (cncf-tags/container-device-interface, SPEC.md) is a JSON
or YAML file per vendor in the spec directories (``/etc/cdi``, ``/var/run/cdi`` by
default): ``cdiVersion``, ``kind`` (``vendor/class``), ``devices[]`` each with a ``name``
and ``containerEdits`` (``deviceNodes[].path/hostPath``, ``mounts[].hostPath/
containerPath``, ``hooks[].path``, ``env``), and spec-wide ``containerEdits``. A runtime
that consumes CDI resolves ``nvidia.com/gpu=NAME`` through it; a spec naming a GPU that
was swapped out, or mounting ``libcuda.so.<old driver>``, fails every such container.
docs/runtime.md ("CDI") has the sources.

Three parts, kept apart:

* :func:`docker_use`, :func:`containerd_use` — pure: whether the runtime consumes CDI and
  from which directories, from what its daemon (or config) says.
* :func:`read_facts` — the only I/O: the spec files of the directories, read through the
  one host reader under ``--root`` (regular files, size-capped), and which host paths the
  specs name that do not exist.
* :func:`judge` — pure: :class:`CDIFacts` and the GPU inventory → a :class:`Verdict`.

May import the host reader and the GPU inventory; never the engines, the walk or the API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from nodeagent import StrEnum
from nodeagent.errors import InputError, NodeagentError, describe
from nodeagent.gpu.inventory import STATE_OK, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import decode, read_bytes

GPU_KIND = "nvidia.com/gpu"
# Both docker and containerd read these when no other directories are configured.
DEFAULT_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
# What `nvidia-ctk cdi generate` and the nvidia-cdi-refresh unit write by default.
DEFAULT_SPEC_FILE = "/var/run/cdi/nvidia.yaml"
MAX_SPEC_BYTES = 4 * 1024 * 1024  # a spec for 8 GPUs with every driver library is ~40 KiB
# A driver library mount: libcuda.so.580.126.09, libnvidia-ml.so.580.126.09, ...
_DRIVER_LIB = re.compile(r"/lib(?:cuda|nvidia-[a-z0-9-]+)\.so\.(\d+\.\d+(?:\.\d+)?)$")
_UUID_NAME = re.compile(r"^GPU-[0-9a-fA-F-]+$")
_MIG_NAME = re.compile(r"^(\d+):(\d+)$")


class State(StrEnum):
    """The verdict on the node's CDI spec for ``nvidia.com/gpu``."""

    NOT_USED = "not-used"  # the runtime does not consume CDI: nothing to judge
    FRESH = "fresh"
    MISSING = "missing"
    INVALID = "invalid"
    STALE = "stale"


class Reason(StrEnum):
    """GPUReady's reason for a CDI spec that fails containers."""

    MISSING = "CDISpecMissing"
    INVALID = "CDISpecInvalid"
    STALE = "CDISpecStale"


REASONS = {State.MISSING: Reason.MISSING, State.INVALID: Reason.INVALID, State.STALE: Reason.STALE}


# --- does the runtime consume CDI ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Use:
    """Whether the runtime resolves CDI devices, from which directories, and how we know."""

    used: bool
    spec_dirs: tuple[str, ...] = ()
    source: str = ""  # "docker 28.5.2: CDISpecDirs", ... for messages

    @classmethod
    def no(cls, source: str) -> Use:
        return cls(False, (), source)


def parse_version(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"28.5.2+dfsg4"`` → ``(28, 5)``; None when there is no version in it."""
    m = re.match(r"\s*v?(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2])) if m else None


def docker_use(
    spec_dirs: Optional[Sequence[str]],
    version: Optional[str],
    features_cdi: Optional[bool],
) -> Use:
    """Pure: whether dockerd consumes CDI.

    ``spec_dirs`` is ``docker info``'s ``CDISpecDirs`` when the API has the field (empty:
    CDI off); otherwise the version decides with daemon.json's ``features.cdi``: 28.2 and
    later default it on, 25 to 28.1 need it true, older dockers have no CDI.
    """
    if spec_dirs is not None:
        if not spec_dirs:
            return Use.no(f"docker {version or '?'}: CDISpecDirs is empty (CDI off)")
        return Use(True, tuple(spec_dirs), f"docker {version or '?'}: CDISpecDirs")
    v = parse_version(version)
    if v is None:  # docker not answering: only an explicit setting tells
        if features_cdi:
            return Use(True, DEFAULT_SPEC_DIRS, "daemon.json: features.cdi true")
        return Use.no("docker is not answering and daemon.json does not enable CDI")
    if v < (25, 0):
        return Use.no(f"docker {version}: no CDI before 25")
    default_on = v >= (28, 2)
    on = features_cdi if features_cdi is not None else default_on
    how = "features.cdi" if features_cdi is not None else "default"
    if not on:
        return Use.no(f"docker {version}: CDI off ({how})")
    return Use(True, DEFAULT_SPEC_DIRS, f"docker {version}: CDI on ({how})")


def containerd_use(enable_cdi: Optional[bool], spec_dirs: Sequence[str], source: str) -> Use:
    """Pure: whether containerd's CRI plugin consumes CDI, from its merged config's
    ``enable_cdi`` (None: this containerd has no such setting, 1.6) and ``cdi_spec_dirs``
    (empty: the defaults)."""
    if not enable_cdi:
        why = "enable_cdi is false" if enable_cdi is False else "no enable_cdi (no CDI)"
        return Use.no(f"{source}: {why}")
    return Use(True, tuple(spec_dirs) or DEFAULT_SPEC_DIRS, f"{source}: enable_cdi")


def containerd_files_use(cri: Optional[Mapping[str, Any]], version: int) -> Use:
    """Pure: :func:`containerd_use` from the files' merged CRI section when containerd
    cannot be asked (image baking): ``enable_cdi`` defaults to false in config version 2
    (containerd 1.7) and true in version 3 (containerd 2.x)."""
    section = cri or {}
    enabled = section.get("enable_cdi")
    dirs = section.get("cdi_spec_dirs")
    ok_dirs = isinstance(dirs, list) and all(isinstance(d, str) for d in dirs)
    return containerd_use(
        enabled if isinstance(enabled, bool) else version >= 3,
        dirs if ok_dirs and isinstance(dirs, list) else (),
        "containerd's config files",
    )


# --- the specs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Device:
    """One CDI device: its name and the host paths its edits need."""

    name: str
    host_paths: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Spec:
    """A spec file that parsed and has the right shape."""

    path: str  # host path
    kind: str
    cdi_version: str
    devices: tuple[Device, ...]
    host_paths: tuple[str, ...] = ()  # the spec-wide edits' host paths

    def all_host_paths(self) -> tuple[str, ...]:
        out = list(self.host_paths)
        for d in self.devices:
            out.extend(d.host_paths)
        return tuple(dict.fromkeys(out))


@dataclasses.dataclass(frozen=True)
class Broken:
    """A spec file that does not parse, or not into a CDI spec: ``why`` names the key."""

    path: str
    why: str


def _shape(cond: object, shown: str, key: str, what: str) -> None:
    if not cond:
        raise InputError(f"{shown}: '{key}' must be {what}")


def _edits(edits: Any, shown: str, at: str) -> tuple[str, ...]:
    """The host paths a ``containerEdits`` needs (device nodes, mounts, hooks)."""
    if edits is None:
        return ()
    _shape(isinstance(edits, dict), shown, at, "an object")
    paths: list[str] = []
    for i, node in enumerate(edits.get("deviceNodes") or ()):
        key = f"{at}.deviceNodes[{i}]"
        _shape(isinstance(node, dict), shown, key, "an object")
        _shape(isinstance(node.get("path"), str) and node["path"], shown, f"{key}.path", "a path")
        host = node.get("hostPath") or node["path"]
        _shape(isinstance(host, str), shown, f"{key}.hostPath", "a string")
        paths.append(host)
    for i, mount in enumerate(edits.get("mounts") or ()):
        key = f"{at}.mounts[{i}]"
        _shape(isinstance(mount, dict), shown, key, "an object")
        for field in ("hostPath", "containerPath"):
            value = mount.get(field)
            _shape(isinstance(value, str) and value, shown, f"{key}.{field}", "a path")
        paths.append(mount["hostPath"])
    for i, hook in enumerate(edits.get("hooks") or ()):
        key = f"{at}.hooks[{i}]"
        _shape(isinstance(hook, dict), shown, key, "an object")
        _shape(isinstance(hook.get("hookName"), str), shown, f"{key}.hookName", "a string")
        _shape(isinstance(hook.get("path"), str) and hook["path"], shown, f"{key}.path", "a path")
        paths.append(hook["path"])
    env = edits.get("env")
    if env is not None:
        ok = isinstance(env, list) and all(isinstance(e, str) for e in env)
        _shape(ok, shown, f"{at}.env", "a list of strings")
    for key in ("deviceNodes", "mounts", "hooks"):
        if key in edits and edits[key] is not None:
            _shape(isinstance(edits[key], list), shown, f"{at}.{key}", "a list")
    return tuple(p for p in paths if p.startswith("/"))


def parse_spec(text: str, shown: str) -> Spec:
    """Pure: a CDI spec from its JSON or YAML text; InputError naming the file and the key
    when it does not parse or has the wrong shape."""
    import yaml  # lazy: only a runtime that consumes CDI pays for it

    try:
        doc = json.loads(text) if shown.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{shown}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "malformed"
        raise InputError(f"{shown}{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{shown}: nested too deeply; refusing to read it") from None
    _shape(isinstance(doc, dict), shown, "(top level)", "an object")
    version = doc.get("cdiVersion")
    _shape(isinstance(version, str) and version, shown, "cdiVersion", "a version string")
    kind = doc.get("kind")
    ok = isinstance(kind, str) and kind.count("/") == 1 and all(kind.split("/"))
    _shape(ok, shown, "kind", "'vendor/class' (e.g. nvidia.com/gpu)")
    devices = doc.get("devices")
    _shape(isinstance(devices, list) and devices, shown, "devices", "a non-empty list")
    out: list[Device] = []
    for i, dev in enumerate(devices):
        _shape(isinstance(dev, dict), shown, f"devices[{i}]", "an object")
        name = dev.get("name")
        _shape(isinstance(name, str) and name, shown, f"devices[{i}].name", "a name")
        _shape("containerEdits" in dev, shown, f"devices[{i}].containerEdits", "present")
        out.append(
            Device(name, _edits(dev["containerEdits"], shown, f"devices[{i}].containerEdits"))
        )
    return Spec(
        path=shown,
        kind=kind,
        cdi_version=version,
        devices=tuple(out),
        host_paths=_edits(doc.get("containerEdits"), shown, "containerEdits"),
    )


def _ours(path: str) -> bool:
    """A file that does not parse is NVIDIA's when its name says so (nvidia.yaml,
    nvidia-*.json): its kind cannot be read."""
    return os.path.basename(path).startswith("nvidia")


# --- reading (the only I/O) --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CDIFacts:
    """What the runtime step read about CDI: who consumes it, the ``nvidia.com/gpu`` spec
    files (and broken NVIDIA files) in its directories, in the directories' order, and the
    host paths they name that do not exist."""

    use: Use
    specs: tuple[Spec, ...] = ()
    broken: tuple[Broken, ...] = ()
    absent: frozenset[str] = frozenset()


def spec_files(root: HostRoot, dirs: Iterable[str]) -> list[str]:
    """Host paths of the spec files in ``dirs`` (CDI reads ``*.json`` and ``*.yaml``), in
    directory order, sorted within one."""
    found: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(root.path(d)))
        except (OSError, InputError):
            continue  # an absent directory holds no spec
        found.extend(f"{d.rstrip('/')}/{n}" for n in names if n.endswith(SPEC_SUFFIXES))
    return found


def read_spec(root: HostRoot, host_path: str) -> Spec | Broken | None:
    """One spec file through the one reader: parsed, broken, or None when absent."""
    try:
        data = read_bytes(root.path(host_path), host_path, max_bytes=MAX_SPEC_BYTES)
        if data is None:
            return None
        return parse_spec(decode(data, host_path), host_path)
    except NodeagentError as e:
        return Broken(host_path, describe(e))


def read_facts(root: HostRoot, use: Use) -> CDIFacts:
    """The spec files of the runtime's directories, and the host paths they need that are
    absent under ``root``. Nothing to read when the runtime does not consume CDI."""
    if not use.used:
        return CDIFacts(use)
    specs: list[Spec] = []
    broken: list[Broken] = []
    for host_path in spec_files(root, use.spec_dirs):
        found = read_spec(root, host_path)
        if isinstance(found, Spec) and found.kind == GPU_KIND:
            specs.append(found)
        elif isinstance(found, Broken) and _ours(host_path):
            broken.append(found)
    absent = frozenset(p for s in specs for p in s.all_host_paths() if not _exists(root, p))
    return CDIFacts(use, tuple(specs), tuple(broken), absent)


def _exists(root: HostRoot, host_path: str) -> bool:
    try:
        return os.path.lexists(root.resolve(host_path)[0])
    except (OSError, InputError):
        return False


# --- the verdict (pure) ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The CDI verdict: its state, one line on why, and the spec file a regeneration
    rewrites (the stale file; None: the configured default path)."""

    state: State
    message: str
    path: Optional[str] = None

    @property
    def reason(self) -> Optional[Reason]:
        """GPUReady's reason when this verdict makes it False."""
        return REASONS.get(self.state)


def judge(facts: CDIFacts, inv: Inventory) -> Verdict:
    """Pure: the verdict on the ``nvidia.com/gpu`` spec for the GPUs NVML sees."""
    if not facts.use.used:
        return Verdict(State.NOT_USED, facts.use.source or "the runtime does not consume CDI")
    if facts.broken:
        b = facts.broken[0]
        return Verdict(State.INVALID, b.why, b.path)
    if not facts.specs:
        where = ", ".join(facts.use.spec_dirs)
        return Verdict(State.MISSING, f"no {GPU_KIND} CDI spec in {where} ({facts.use.source})")
    # A device resolves from the last directory that defines it (CDI's spec-directory
    # priority); two specs of one directory defining it make the runtime refuse it.
    seen: dict[str, str] = {}
    for spec in facts.specs:
        for dev in spec.devices:
            other = seen.get(dev.name)
            if other is not None and other != spec.path and _dir(other) == _dir(spec.path):
                return Verdict(
                    State.INVALID,
                    f"{spec.path}: device {GPU_KIND}={dev.name} is also defined in "
                    f"{other} (the runtime refuses both)",
                    spec.path,
                )
            seen[dev.name] = spec.path
    if inv.state != STATE_OK:
        return Verdict(State.FRESH, f"{len(seen)} CDI devices (no GPU readable to compare)")
    used = [s for s in facts.specs if s.path in seen.values()]  # others are shadowed whole
    return _staleness(used, facts.absent, inv, seen) or Verdict(
        State.FRESH,
        f"{', '.join(s.path for s in used)} names all {len(inv.gpus)} GPUs ({facts.use.source})",
    )


def _dir(path: str) -> str:
    return os.path.dirname(path)


def _staleness(
    specs: Sequence[Spec], absent: frozenset[str], inv: Inventory, seen: Mapping[str, str]
) -> Optional[Verdict]:
    first = specs[0].path
    uuids = {g.uuid for g in inv.gpus if g.uuid}
    mig_uuids = {m.uuid for g in inv.gpus for m in g.mig_devices}
    indices = {str(g.index) for g in inv.gpus}
    by_uuid = any(_UUID_NAME.match(n) for n in seen)
    for g in inv.gpus:
        if str(g.index) not in seen and (g.uuid not in seen):
            return Verdict(
                State.STALE,
                f"GPU {g.index} ({g.uuid}): the CDI spec {first} does not name it",
                first,
            )
        if by_uuid and g.uuid and g.uuid not in seen:
            return Verdict(
                State.STALE,
                f"GPU {g.index} ({g.uuid}): the CDI spec {seen.get(str(g.index), first)} "
                "does not name its UUID (a swapped GPU?)",
                seen.get(str(g.index), first),
            )
    for name, path in seen.items():
        mig = _MIG_NAME.match(name)
        gone = (
            (name.isdigit() and name not in indices)
            or (_UUID_NAME.match(name) is not None and name not in uuids)
            or (name.startswith("MIG-") and name not in mig_uuids)
            or (mig is not None and mig[1] not in indices)
        )
        if gone:
            return Verdict(
                State.STALE,
                f"{path}: names device {GPU_KIND}={name}, which NVML does not see",
                path,
            )
    for spec in specs:
        for p in spec.all_host_paths():
            m = _DRIVER_LIB.search(p)
            if m and inv.driver_version and m[1] != inv.driver_version:
                return Verdict(
                    State.STALE,
                    f"{spec.path}: mounts {p}, but the driver is {inv.driver_version}",
                    spec.path,
                )
            if p in absent:
                return Verdict(State.STALE, f"{spec.path}: {p} does not exist", spec.path)
    return None


def judge_generated(root: HostRoot, text: str, shown: str, inv: Inventory) -> Verdict:
    """The verdict on a regenerated spec's text before it is written at ``shown``: it must
    parse, be of kind ``nvidia.com/gpu``, and be fresh for ``inv`` (its host paths are
    looked up under ``root``)."""
    try:
        spec = parse_spec(text, shown)
    except InputError as e:
        return Verdict(State.INVALID, describe(e), shown)
    if spec.kind != GPU_KIND:
        return Verdict(State.INVALID, f"{shown}: kind is {spec.kind!r}, not {GPU_KIND}", shown)
    absent = frozenset(p for p in spec.all_host_paths() if not _exists(root, p))
    facts = CDIFacts(Use(True, (os.path.dirname(shown),), "generated"), (spec,), (), absent)
    return judge(facts, inv)


def generate_argv(binary: str) -> list[str]:
    """``nvidia-ctk cdi generate`` to stdout, devices named by index and by UUID (so a
    swapped GPU shows as a UUID the spec does not name)."""
    return [
        binary,
        "cdi",
        "generate",
        "--device-name-strategy=index",
        "--device-name-strategy=uuid",
    ]
