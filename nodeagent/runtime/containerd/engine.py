"""containerd: the nvidia runtime in a drop-in (or config.toml), checked, restarted, verified.

containerd 1.x *replaces* a whole plugin section when an imported file defines it (checked
on Debian's 1.6: a drop-in holding only the nvidia runtime drops ``sandbox_image``, runc's
``SystemdCgroup`` and runc itself). So the drop-in carries a copy of the effective CRI
section (config.toml, then each import in order, as containerd merges them) plus the nvidia
runtime, and every ``apply`` re-derives it, so an edit to config.toml's CRI section flows
into the drop-in on the next run. The drop-in is never more readable than the files it
copies (they may hold registry passwords).

The nvidia runtime is a copy of the runtime it is based on (:func:`base_runtime`, runc on
almost every host) with ``BinaryName`` set; its ``runtime_type`` and ``SystemdCgroup`` follow
that runtime on every configure, so GPU pods use the kubelet's cgroup driver.

containerd has no reload and exits on SIGHUP: a change takes effect by a restart, which
does not stop running containers (their shims outlive the daemon). Before restarting, the
new files are checked with ``containerd --config F config dump``; a config containerd would
refuse is never restarted into. docs/runtime.md explains the choices.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import tomlkit
import tomlkit.exceptions

from nodeagent.config import Config
from nodeagent.errors import InputError, NodeagentError, StepFailed
from nodeagent.host.change import FileChange
from nodeagent.host.paths import HostRoot, unix_socket_path
from nodeagent.host.reader import (
    FileMeta,
    HostText,
    Layout,
    decode,
    os_error,
    read_bytes,
    read_text,
)
from nodeagent.host.reader import type_name as _json_type_name
from nodeagent.host.service import ServiceControl, succeeded
from nodeagent.host.writer import Restore, Session, Writer, undo_all
from nodeagent.log import get_logger
from nodeagent.retry import wait_until
from nodeagent.runtime.engine import (
    ACTIVATE_NONE,
    ACTIVATE_RESTART,
    ApplyResult,
    Plan,
)

log = get_logger(__name__)

# The CRI runtime plugin's name by config schema version (containerd 1.5+: 2; 2.x: 3).
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNC_V2 = "io.containerd.runc.v2"
# The runtimes the nvidia runtime may be based on, in order of preference (then any other).
LOW_LEVEL = ("runc", "crun")
# The options of the nvidia runtime that must match its base runtime (and so the kubelet).
FOLLOWED = ("runtime_type", "options.SystemdCgroup")
DROP_IN_HEADER = (
    "# Written by nodeagent; do not edit. containerd replaces a whole plugin section when an\n"
    "# imported file defines it, so this holds a copy of the CRI runtime section of\n"
    "# config.toml (and its other imports) plus the nvidia runtime. Edit config.toml and\n"
    "# run `nodeagent runtime configure` again; to undo: `nodeagent rollback`.\n"
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class TomlFile:
    """One TOML file as read: its host path, what the reader saw (None if absent), and its
    plain data (shape-checked where the agent looks)."""

    host_path: str
    current: Optional[HostText]
    data: dict[str, Any]

    @property
    def text(self) -> Optional[str]:
        return self.current.text if self.current is not None else None

    @property
    def meta(self) -> Optional[FileMeta]:
        return self.current.meta if self.current is not None else None


@dataclasses.dataclass(frozen=True)
class ContainerdFacts:
    """Everything ``plan`` needs, read from the host by ``read``."""

    config: TomlFile
    version: int
    imports: tuple[TomlFile, ...]  # the other files config.toml imports, in merge order
    merged: tuple[TomlFile, ...]  # every import containerd merges, the drop-in included
    drop_in: TomlFile
    drop_in_imported: bool  # config.toml's imports already name the drop-in (or a glob of it)
    imported_after: tuple[str, ...]  # imports merged after the drop-in (they would win)
    runtime_path: str  # host path of the runtime binary, absolute
    runtime_found: bool
    running: bool
    can_restart: bool


@dataclasses.dataclass(frozen=True)
class OptionMismatch:
    """The nvidia runtime and its base runtime disagree on an option that must match."""

    key: str  # "runtime_type" or "options.SystemdCgroup"
    runtime: str  # the nvidia runtime's name
    value: object  # its value (None: unset)
    base: str  # the runtime it follows (runc, ...)
    base_value: object

    def __str__(self) -> str:
        return (
            f"runtime '{self.runtime}' has {self.key} = {_show(self.value)} but "
            f"'{self.base}' has {_show(self.base_value)}"
        )


def _show(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


# --- reading and shape checks ---------------------------------------------------------------


def parse_toml(text: Optional[str], host_path: str) -> dict[str, Any]:
    """Plain data of a TOML file; InputError ``PATH:LINE:COL: msg`` if it is malformed."""
    if text is None or not text.strip():
        return {}
    try:
        data: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as e:
        raise InputError(f"{host_path}:{e.line}:{e.col}: malformed TOML: {_parse_msg(e)}") from None
    except tomlkit.exceptions.TOMLKitError as e:
        raise InputError(f"{host_path}: malformed TOML: {e}") from None
    except RecursionError:
        raise InputError(f"{host_path}: TOML nested too deeply; refusing to read it") from None
    return data


def _parse_msg(e: tomlkit.exceptions.ParseError) -> str:
    # tomlkit appends " at line L col C"; the position is already in front.
    return str(e).split(" at line ")[0]


def key_path(*parts: str) -> str:
    """A TOML key path as the operator would write it: ``plugins."io.containerd…".containerd``."""
    return ".".join(p if _BARE_KEY.match(p) else tomlkit.dumps({"k": p})[4:].strip() for p in parts)


def _type_name(value: object) -> str:
    return "a table" if isinstance(value, dict) else _json_type_name(value)


def _expect(value: object, kind: type, shown: str, keys: Sequence[str]) -> None:
    """``SHOWN: 'KEY.PATH' must be KIND, not TYPE`` unless ``value`` is a ``kind``."""
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        what = {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
            kind, "an integer"
        )
        raise InputError(f"{shown}: '{key_path(*keys)}' must be {what}, not {_type_name(value)}")


def check_shape(data: Mapping[str, Any], shown: str) -> None:
    """Raise InputError naming the key path when a key the agent reads or writes has the
    wrong type: ``version``, ``imports``, ``plugins`` and the CRI sections under it."""
    if "version" in data:
        version = data["version"]
        _expect(version, int, shown, ["version"])
        if version not in CRI_PLUGIN:
            raise InputError(f"{shown}: config version {version!r} is not 2 or 3")
    if "imports" in data:
        _expect(data["imports"], list, shown, ["imports"])
        for i, entry in enumerate(data["imports"]):
            if not isinstance(entry, str):
                raise InputError(
                    f"{shown}: 'imports[{i}]' must be a string, not {_type_name(entry)}"
                )
    if "plugins" not in data:
        return
    plugins = data["plugins"]
    _expect(plugins, dict, shown, ["plugins"])
    for plugin in CRI_PLUGIN.values():
        if plugin in plugins:
            _check_cri(plugins[plugin], shown, ["plugins", plugin])


def _check_cri(cri: object, shown: str, at: list[str]) -> None:
    _expect(cri, dict, shown, at)
    assert isinstance(cri, dict)
    if "containerd" not in cri:
        return
    ctd = cri["containerd"]
    at = [*at, "containerd"]
    _expect(ctd, dict, shown, at)
    if "default_runtime_name" in ctd:
        _expect(ctd["default_runtime_name"], str, shown, [*at, "default_runtime_name"])
    if "runtimes" not in ctd:
        return
    runtimes = ctd["runtimes"]
    _expect(runtimes, dict, shown, [*at, "runtimes"])
    for name, entry in runtimes.items():
        here = [*at, "runtimes", name]
        _expect(entry, dict, shown, here)
        if "runtime_type" in entry:
            _expect(entry["runtime_type"], str, shown, [*here, "runtime_type"])
        if "options" in entry:
            options = entry["options"]
            _expect(options, dict, shown, [*here, "options"])
            if "SystemdCgroup" in options:
                _expect(options["SystemdCgroup"], bool, shown, [*here, "options", "SystemdCgroup"])
            if "BinaryName" in options:
                _expect(options["BinaryName"], str, shown, [*here, "options", "BinaryName"])


def config_version(data: dict[str, Any], host_path: str) -> int:
    """The config schema version; a non-empty v1 config (no ``version``) is refused. An
    empty or comment-only file is version 2 (what nodeagent writes into it)."""
    version = data.get("version")
    if version is None:
        if data:
            raise InputError(
                f"{host_path}: a version 1 config (no 'version' key); nodeagent writes "
                "version 2 and 3 configs: migrate it with `containerd config migrate` "
                "or add 'version = 2' if it holds no v1 plugin sections"
            )
        return 2
    return int(version)


def resolve_imports(config_host_path: str, entries: Sequence[str]) -> list[str]:
    """Host paths of ``imports`` entries as containerd resolves them: a relative path is
    relative to config.toml's directory, but a relative *glob* is expanded from
    containerd's working directory, ``/`` under systemd (seen with containerd 1.6:
    ``conf.d/*.toml`` matches ``/conf.d/*.toml``). Globs are kept as patterns."""
    base = PurePosixPath(config_host_path).parent
    out = []
    for entry in entries:
        p = PurePosixPath(entry)
        if not p.is_absolute():
            p = (PurePosixPath("/") if is_glob(entry) else base) / p
        out.append(posixpath.normpath(str(p)))  # like Go's filepath.Clean: no '..' left
    return out


def is_glob(pattern: str) -> bool:
    """containerd expands an import as a glob only when it holds ``*``."""
    return "*" in pattern


# --- the pure part ----------------------------------------------------------------------------


def _cri_of(data: Mapping[str, Any], plugin: str) -> Optional[dict[str, Any]]:
    found = (data.get("plugins") or {}).get(plugin)
    return found if isinstance(found, dict) else None


def effective_cri(config: TomlFile, imports: Sequence[TomlFile], plugin: str) -> dict[str, Any]:
    """The CRI section containerd would use: the last file that defines it wins whole."""
    section: dict[str, Any] = _cri_of(config.data, plugin) or {}
    for imp in imports:
        theirs = _cri_of(imp.data, plugin)
        if theirs is not None:
            section = theirs
    return copy.deepcopy(section)


def _is_nvidia(runtime: str, name: str) -> bool:
    return runtime == name or runtime.startswith("nvidia")


def base_runtime(runtimes: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """Pure: the runtime the nvidia runtime ``name`` copies and follows: runc, else crun,
    else the first other non-nvidia runtime; containerd's built-in runc when there is none.

    It never depends on ``default_runtime_name``, which nodeagent itself sets: following the
    default would make the nvidia runtime follow a different runtime after the first run.
    """
    others = [r for r in LOW_LEVEL if r in runtimes] + sorted(
        r for r in runtimes if r not in LOW_LEVEL and not _is_nvidia(r, name)
    )
    for r in others:
        entry = runtimes[r]
        if isinstance(entry, dict):
            return r, entry
    return "runc", {"runtime_type": RUNC_V2}


def _followed(entry: Mapping[str, Any]) -> dict[str, object]:
    """The values of the options that must match, as containerd reads them."""
    options = entry.get("options")
    return {
        "runtime_type": entry.get("runtime_type") or RUNC_V2,  # "" is unset: runc v2
        "options.SystemdCgroup": options.get("SystemdCgroup")
        if isinstance(options, dict)
        else None,
    }


def desired_cri(cri: dict[str, Any], name: str, binary: str, set_default: bool) -> dict[str, Any]:
    """Pure: the CRI section with the nvidia runtime (and as the default, if asked).

    A new nvidia entry copies its base runtime; an existing one keeps its own keys but
    takes ``runtime_type`` and ``options.SystemdCgroup`` from the base runtime. Without
    ``set_default``, a default that is the nvidia runtime is demoted to the base runtime.
    """
    out = copy.deepcopy(cri)
    ctd = out.setdefault("containerd", {})
    runtimes = ctd.setdefault("runtimes", {})
    if not runtimes:
        # A section that names no runtime means containerd's built-in runc; replacing the
        # section must keep it, or pods without a RuntimeClass lose their runtime.
        runtimes["runc"] = {"runtime_type": RUNC_V2}
    base_name, base = base_runtime(runtimes, name)
    if name in runtimes:
        entry = copy.deepcopy(runtimes[name])
        want = _followed(base)
        entry["runtime_type"] = want["runtime_type"]
        options = entry.setdefault("options", {})
        if want["options.SystemdCgroup"] is None:
            options.pop("SystemdCgroup", None)
        else:
            options["SystemdCgroup"] = want["options.SystemdCgroup"]
    else:
        entry = copy.deepcopy(base)
        if not entry.get("runtime_type"):
            entry["runtime_type"] = RUNC_V2
        options = entry.setdefault("options", {})
    options["BinaryName"] = binary
    runtimes[name] = entry
    if set_default:
        ctd["default_runtime_name"] = name
    elif ctd.get("default_runtime_name") == name:
        runtimes.setdefault(base_name, base)
        ctd["default_runtime_name"] = base_name
    return out


def cri_mismatches(cri: Mapping[str, Any], name: str) -> tuple[OptionMismatch, ...]:
    """Pure: where the nvidia runtime ``name`` in a CRI section disagrees with its base
    runtime on the options that must match (none when it has no nvidia runtime)."""
    ctd = cri.get("containerd")
    runtimes = ctd.get("runtimes") if isinstance(ctd, dict) else None
    if not isinstance(runtimes, dict) or not isinstance(runtimes.get(name), dict):
        return ()
    base_name, base = base_runtime(runtimes, name)
    ours, theirs = _followed(runtimes[name]), _followed(base)
    return tuple(
        OptionMismatch(key, name, ours[key], base_name, theirs[key])
        for key in FOLLOWED
        if ours[key] != theirs[key]
    )


def runtime_mismatches(facts: ContainerdFacts, name: str) -> tuple[OptionMismatch, ...]:
    """Pure: the mismatches in the CRI section containerd will load from these files
    (config.toml, then every import in merge order, the drop-in included)."""
    return cri_mismatches(
        effective_cri(facts.config, facts.merged, CRI_PLUGIN[facts.version]), name
    )


def render_drop_in(version: int, plugin: str, cri: dict[str, Any]) -> str:
    return DROP_IN_HEADER + tomlkit.dumps({"version": version, "plugins": {plugin: cri}})


def _ensure_version(doc: tomlkit.TOMLDocument, version: int) -> None:
    # A file with no version is version 1 to containerd and to nodeagent; an empty or
    # comment-only one gets the version of what is added to it.
    if "version" not in doc:
        doc["version"] = version


def with_import(config_text: Optional[str], entry: str, version: int = 2) -> str:
    """config.toml's text with ``entry`` appended to ``imports``, formatting kept."""
    if config_text is None or not config_text.strip():
        return f"version = {version}\nimports = [{_toml_str(entry)}]\n"
    doc = tomlkit.parse(config_text)
    _ensure_version(doc, version)
    imports = doc.get("imports")
    if imports is None:
        doc["imports"] = [entry]
    else:
        imports.append(entry)
    return tomlkit.dumps(doc)


def without_import(config_text: str, entry: str) -> str:
    doc = tomlkit.parse(config_text)
    imports = doc.get("imports")
    if imports is not None and entry in imports:
        imports.remove(entry)
        if not imports:
            del doc["imports"]
    return tomlkit.dumps(doc)


def with_runtime_in_place(
    config_text: Optional[str], plugin: str, cri: dict[str, Any], version: int = 2
) -> str:
    """config.toml's text with the CRI section's runtimes and default set in place."""
    doc = tomlkit.parse(config_text or "")
    _ensure_version(doc, version)
    plugins = doc.setdefault("plugins", tomlkit.table(is_super_table=True))
    section = plugins.setdefault(plugin, tomlkit.table(is_super_table=True))
    ctd = section.setdefault("containerd", tomlkit.table())
    want = cri["containerd"]
    default = want.get("default_runtime_name")
    if default is not None and ctd.get("default_runtime_name") != default:
        ctd["default_runtime_name"] = default
    runtimes = ctd.setdefault("runtimes", tomlkit.table(is_super_table=True))
    for rname, entry in want["runtimes"].items():
        if rname not in runtimes or runtimes[rname].unwrap() != entry:
            runtimes[rname] = entry
    return tomlkit.dumps(doc)


def _toml_str(s: str) -> str:
    return tomlkit.dumps({"k": s}).split("=", 1)[1].strip()


def _matches(pattern: str, host_path: str) -> bool:
    return pattern == host_path or (is_glob(pattern) and fnmatch.fnmatchcase(host_path, pattern))


def narrowest(metas: Sequence[Optional[FileMeta]]) -> Optional[FileMeta]:
    """The owner of the first file and the permission bits every one of them allows."""
    found = [m for m in metas if m is not None]
    if not found:
        return None
    mode = 0o7777
    for m in found:
        mode &= m.mode
    return FileMeta(uid=found[0].uid, gid=found[0].gid, mode=mode)


class ContainerdEngine:
    """The containerd config engine. Paths in ``config`` are host paths under ``root``."""

    name = "containerd"

    def __init__(self, config: Config, root: HostRoot) -> None:
        self.config = config
        self.root = root
        self.rt = config.runtime
        self.cc = config.runtime.containerd

    # --- facts --------------------------------------------------------------------------

    def _local(self, host_path: str) -> Path:
        """The file on this machine: symlinks followed as the host sees them, in the root."""
        return self.root.resolve(host_path)[0]

    def _read(self, host_path: str) -> TomlFile:
        current = read_text(self._local(host_path), host_path)
        data = parse_toml(current.text if current is not None else None, host_path)
        check_shape(data, host_path)
        return TomlFile(host_path=host_path, current=current, data=data)

    def _read_drop_in(self) -> TomlFile:
        try:
            return self._read(self.cc.drop_in)
        except InputError as e:
            raise InputError(
                f"{e} (nodeagent's own drop-in: `nodeagent rollback` removes it)"
            ) from None

    def read(self) -> ContainerdFacts:
        config = self._read(self.cc.config_file)
        version = config_version(config.data, config.host_path)
        entries: list[str] = config.data.get("imports") or []
        drop_in = self._read_drop_in()
        imports: list[TomlFile] = []
        merged: list[TomlFile] = []
        after: list[str] = []
        imported = False
        for entry, pattern in zip(entries, resolve_imports(config.host_path, entries)):
            names_drop_in = _matches(pattern, self.cc.drop_in)
            found = self._expand(pattern)
            if not found and not is_glob(pattern) and pattern != self.cc.drop_in:
                raise InputError(
                    f"{config.host_path}: imports {entry!r}: {pattern} does not exist "
                    "(containerd refuses to start)"
                )
            for host_path in found:
                if host_path == self.cc.drop_in:
                    if drop_in.current is not None:
                        merged.append(drop_in)
                    continue
                imp = self._read(host_path)
                imports.append(imp)
                merged.append(imp)
                # Merged after the drop-in: a later entry, or later in the same glob.
                if imported or (names_drop_in and host_path > self.cc.drop_in):
                    after.append(host_path)
            imported = imported or names_drop_in
        sock = unix_socket_path(self.cc.address)
        binary = self.root.which(self.rt.path)
        if binary is not None:
            runtime_path = "/" + str(binary.relative_to(self.root.root))
        elif self.rt.path.startswith("/"):
            runtime_path = self.rt.path
        else:
            runtime_path = f"/usr/bin/{self.rt.path}"
        return ContainerdFacts(
            config=config,
            version=version,
            imports=tuple(imports),
            merged=tuple(merged),
            drop_in=drop_in,
            drop_in_imported=imported,
            imported_after=tuple(dict.fromkeys(after)),
            runtime_path=runtime_path,
            runtime_found=binary is not None,
            running=sock is not None and Path(sock).is_socket(),
            can_restart=self.root.is_real_host or bool(self.cc.restart_command),
        )

    def _expand(self, pattern: str) -> list[str]:
        """Host paths an import names, globs expanded against the root's files and sorted
        like Go's filepath.Glob (containerd's own expansion)."""
        shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
        where = f"{self.cc.config_file}: 'imports' entry {shown}"
        try:
            if not is_glob(pattern):
                return [pattern] if os.path.lexists(self._local(pattern)) else []
            self.root.path(pattern)  # absolute, no '..': the glob stays inside the root
            matches = list(self.root.root.glob(pattern.lstrip("/")))
        except InputError as e:  # from the root: '..', a symlink loop, a name too long
            raise InputError(f"{self.cc.config_file}: 'imports' entry: {e}") from None
        except OSError as e:  # a name too long, a directory it may not read ...
            raise InputError(f"{where}: {e.strerror or e}") from None
        found = sorted(str(p.relative_to(self.root.root)) for p in matches)
        return ["/" + p for p in found]

    # --- the pure part ------------------------------------------------------------------

    def mismatches(self, current: object) -> tuple[str, ...]:
        assert isinstance(current, ContainerdFacts)
        return tuple(str(m) for m in runtime_mismatches(current, self.rt.name))

    def plan(self, current: object) -> Plan:
        assert isinstance(current, ContainerdFacts)
        f = current
        plugin = CRI_PLUGIN[f.version]
        cri = desired_cri(
            effective_cri(f.config, f.imports, plugin),
            self.rt.name,
            f.runtime_path,
            self.rt.set_as_default,
        )
        changes: list[FileChange] = []
        warnings: list[str] = []
        if self.cc.use_drop_in:
            for imp in f.imports:
                if imp.host_path in f.imported_after and _cri_of(imp.data, plugin) is not None:
                    raise InputError(
                        f"{imp.host_path}: defines the CRI section and is imported after "
                        f"{self.cc.drop_in}, so containerd would drop the nvidia runtime; "
                        "rename one of them or set runtime.containerd.drop_in"
                    )
            # The drop-in first, then the import that makes containerd read it: a crash
            # between the two leaves a drop-in nothing imports yet.
            drop_in = FileChange(
                path=self.root.path(f.drop_in.host_path),
                host_path=f.drop_in.host_path,
                old=f.drop_in.text,
                new=render_drop_in(f.version, plugin, cri),
                layout=f.drop_in.current.layout if f.drop_in.current is not None else Layout(),
                limit=narrowest([f.config.meta, *(i.meta for i in f.imports)]),
                mode=f.drop_in.meta.mode if f.drop_in.meta is not None else None,
            )
            if drop_in.changed:
                changes.append(drop_in)
            if not f.drop_in_imported:
                new = with_import(f.config.text, self._entry(), f.version)
                changes.append(self._change(f.config, new))
        else:
            for imp in f.imports:
                if _cri_of(imp.data, plugin) is not None:
                    raise InputError(
                        f"{imp.host_path}: defines the CRI section, which replaces "
                        f"config.toml's whole: an in-place edit would not take; use the "
                        "drop-in (runtime.containerd.use_drop_in: true)"
                    )
            merged = effective_cri(f.config, (), plugin)
            wanted = desired_cri(merged, self.rt.name, f.runtime_path, self.rt.set_as_default)
            if wanted != merged or "version" not in f.config.data:
                new = with_runtime_in_place(f.config.text, plugin, wanted, f.version)
                changes.append(self._change(f.config, new))
        if not changes:
            return Plan(engine=self.name, reason="the nvidia runtime is already configured")
        if not f.runtime_found:
            warnings.append(
                f"{f.runtime_path}: runtime binary not found under {self.root.root} "
                "(install nvidia-container-toolkit); containerd would start but fail every "
                "container of this runtime"
            )
        activation, reason = self._activation(f)
        return Plan(
            engine=self.name,
            changes=tuple(changes),
            activation=activation,
            reason=reason,
            warnings=tuple(warnings),
        )

    def _change(self, file: TomlFile, new: Optional[str]) -> FileChange:
        return FileChange.of(self.root.path(file.host_path), file.host_path, file.current, new)

    def _entry(self) -> str:
        """The ``imports`` entry: relative when the drop-in sits under config.toml's
        directory (containerd resolves it there, so a --root tree stays self-contained)."""
        base = PurePosixPath(self.cc.config_file).parent
        drop_in = PurePosixPath(self.cc.drop_in)
        try:
            return str(drop_in.relative_to(base))
        except ValueError:
            return str(drop_in)

    def _activation(self, f: ContainerdFacts) -> tuple[str, str]:
        mode = self.rt.restart_mode
        if mode == "none":
            return ACTIVATE_NONE, "restart_mode none: write only"
        if not f.running:
            return ACTIVATE_NONE, "containerd is not running: it reads the files when it starts"
        if not f.can_restart:
            return ACTIVATE_NONE, "--root is not / and no restart_command is configured"
        if mode == "reload":
            raise InputError(
                "restart_mode reload: containerd cannot reload its config (it exits on "
                "SIGHUP); use auto or restart"
            )
        return (
            ACTIVATE_RESTART,
            "containerd reads its config only at start (containers keep running)",
        )

    # --- the imperative shell -----------------------------------------------------------

    def _service(self) -> ServiceControl:
        return ServiceControl(unit=self.cc.service, restart_command=self.cc.restart_command)

    def _writer(self) -> Writer:
        return Writer(
            self.root, self.config.lock_file, self.config.backup_dir, self.config.backup_keep
        )

    def apply(self, plan: Plan) -> ApplyResult:
        if not plan.changed:
            return ApplyResult(engine=self.name, verified=True, message="unchanged")
        with self._writer().session() as session:
            if session.raced(plan.changes):
                plan = self.plan(self.read())  # another writer got there first
                if not plan.changed:
                    return ApplyResult(
                        engine=self.name,
                        verified=True,
                        message="unchanged (another nodeagent run made this change)",
                    )
            changes = [c for c in plan.changes if c.changed]
            restores = session.apply_all(changes)
            written = tuple(c.host_path for c in changes)
            problem = self.check_files()
            if problem:
                undo_all(restores)
                raise StepFailed(f"containerd would not load the new config, restored: {problem}")
            if plan.activation == ACTIVATE_NONE:
                return ApplyResult(engine=self.name, written=written, message=plan.reason)
            if self._restart() and self._wait_verified():
                return ApplyResult(
                    engine=self.name, written=written, activation=ACTIVATE_RESTART, verified=True
                )
            undo_all(restores)
            back = self._restart() and self._wait_answering()
            raise StepFailed(
                "containerd did not come back with the nvidia runtime after a restart; "
                "restored the previous files and restarted it "
                + ("(it is running again)" if back else "(it is NOT answering: check its log)")
            )

    def _restart(self) -> bool:
        return succeeded(self._service().restart, self.cc.service)

    def _tool(self, name: str) -> Optional[str]:
        """The root's own binary; under a --root without one, this machine's (it is only
        ever given the root's files)."""
        found = self.root.which(name) or (None if self.root.is_real_host else shutil.which(name))
        return str(found) if found else None

    @contextlib.contextmanager
    def _dump_config(self) -> Iterator[Path]:
        """The config.toml ``containerd config dump`` reads: the file itself on /; under
        another --root a temp copy whose ``imports`` name the root's files (removed after),
        so containerd never reads this machine's /etc."""
        if self.root.is_real_host:
            yield self.root.path(self.cc.config_file)
            return
        with tempfile.TemporaryDirectory(prefix="nodeagent-containerd.") as tmp:
            yield Path(self._contained(Path(tmp), self.cc.config_file, {}))

    def _contained(self, tmp: Path, host_path: str, copies: dict[str, str]) -> str:
        """The path containerd should load for ``host_path``: the root's file, or a copy in
        ``tmp`` with its imports resolved into the root (globs expanded against it)."""
        if host_path in copies:
            return copies[host_path]  # imported twice (or a cycle): one copy
        local = self._local(host_path)
        current = read_text(local, host_path)
        data = parse_toml(current.text if current is not None else None, host_path)
        entries = data.get("imports")
        if current is None or not isinstance(entries, list) or not entries:
            return str(local)  # nothing to rewrite (a missing file: containerd names it)
        dest = tmp / f"{len(copies)}-{local.name}"
        copies[host_path] = str(dest)
        out: list[str] = []
        for pattern in resolve_imports(host_path, [str(e) for e in entries]):
            found = self._expand(pattern) if is_glob(pattern) else [pattern]
            out.extend(self._contained(tmp, p, copies) for p in found)
        doc = tomlkit.parse(current.text)
        doc["imports"] = out
        dest.write_text(tomlkit.dumps(doc))
        return str(dest)

    def dump(self) -> tuple[Optional[dict[str, Any]], str]:
        """containerd's own merged view of the files (``config dump``), or why not."""
        binary = self._tool("containerd")
        if binary is None:
            return None, "containerd binary not found"
        try:
            with self._dump_config() as config:
                argv = [binary, "--config", str(config), "config", "dump"]
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                )
        except NodeagentError as e:
            return None, str(e)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{binary} config dump: {e}"
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return None, lines[-1] if lines else f"config dump exit {proc.returncode}"
        try:
            return parse_toml(proc.stdout, "containerd config dump"), ""
        except InputError as e:
            return None, str(e)

    def check_files(self) -> str:
        """'' when containerd reads the files and sees the runtime as wanted, else why not.
        Without a containerd binary (image baking) there is nothing to ask: ''."""
        data, why = self.dump()
        if data is None:
            return "" if why == "containerd binary not found" else why
        return self._runtime_problem(data)

    def _runtime_problem(self, data: dict[str, Any]) -> str:
        """Pure: '' when the dumped config has the runtime (as default, if asked)."""
        cri = _cri_of(data, self._plugin(data)) or {}
        ctd = cri.get("containerd") or {}
        runtime = (ctd.get("runtimes") or {}).get(self.rt.name)
        if not runtime:
            return f"containerd config dump shows no '{self.rt.name}' runtime"
        default = ctd.get("default_runtime_name")
        if self.rt.set_as_default and default != self.rt.name:
            return f"containerd config dump shows default runtime {default!r}"
        if not self.rt.set_as_default and default == self.rt.name:
            return f"containerd config dump shows '{self.rt.name}' as the default runtime"
        return ""

    @staticmethod
    def _plugin(dumped: dict[str, Any]) -> str:
        version = dumped.get("version")
        return CRI_PLUGIN.get(version if isinstance(version, int) else 2, CRI_PLUGIN[2])

    def _ctr(self, *args: str) -> tuple[bool, str]:
        ctr = self._tool("ctr")
        sock = unix_socket_path(self.cc.address)
        if ctr is None or sock is None:
            return False, "ctr not found"
        if not Path(sock).is_socket():  # ctr would wait 10 s to say the same
            return False, f"{sock}: no socket (containerd is not running)"
        argv = [ctr, "--address", sock, *args]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        return proc.returncode == 0, proc.stdout

    def verify(self) -> bool:
        """containerd answers, its CRI plugin loaded (a default runtime it cannot find fails
        the plugin), and its config shows the nvidia runtime."""
        ok, out = self._ctr("plugins", "ls")
        if not ok:
            return False
        data, _ = self.dump()
        if data is None:
            return False
        kind, _, ident = self._plugin(data).rpartition(".")
        cri_ok = any(
            line.split()[:2] == [kind, ident] and line.split()[-1] == "ok"
            for line in out.splitlines()
            if line.strip()
        )
        return cri_ok and self._runtime_problem(data) == ""

    def _wait_verified(self) -> bool:
        return wait_until(
            self.verify, what="containerd verify", deadline_s=self.rt.verify_timeout_s
        )

    def _wait_answering(self) -> bool:
        return wait_until(
            lambda: self._ctr("version")[0],
            what="containerd version",
            deadline_s=self.rt.verify_timeout_s,
        )

    # --- rollback -----------------------------------------------------------------------

    def rollback(self) -> ApplyResult:
        """Undo: drop-in mode removes the ``imports`` entry nodeagent added, then the
        drop-in (a crash between leaves a config containerd loads); in-place mode restores
        config.toml's newest backup. Then restart, if running. Rolling back twice is
        rolling back once: what a rollback replaces is kept as ``.undone``, never restored."""
        with self._writer().session() as session:
            if self.cc.use_drop_in:
                changes, done = self._undo_drop_in(session)
            else:
                changes, done = self._undo_in_place(session)
            if not changes:
                return ApplyResult(engine=self.name, message=done)
            restores: list[Restore] = []
            try:
                for c in changes:
                    self._keep_undone(session, c.host_path)
                    restores.append(session.apply(c, backup=False))
            except BaseException:
                undo_all(restores)
                raise
            written = tuple(c.host_path for c in changes)
            running = self._running()
            activation = ACTIVATE_NONE
            how = "containerd is not running: it reads them when it starts"
            if self.rt.restart_mode == "none":
                how = "restart_mode none: containerd keeps the runtime until it restarts"
            elif running and not (self.root.is_real_host or self.cc.restart_command):
                how = "--root is not / and no restart_command is configured"
            elif running:
                if not (self._restart() and self._wait_answering()):
                    raise StepFailed(
                        f"{done}; but containerd is not answering after the restart (check its log)"
                    )
                activation = ACTIVATE_RESTART
                how = "restarted containerd"
        return ApplyResult(
            engine=self.name,
            written=written,
            activation=activation,
            verified=activation == ACTIVATE_RESTART,
            message=f"{done}; {how}",
        )

    def _running(self) -> bool:
        sock = unix_socket_path(self.cc.address)
        return sock is not None and Path(sock).is_socket()

    def _keep_undone(self, session: Session, host_path: str) -> None:
        """Save what a rollback replaces (``.undone``: for the operator, never restored)."""
        real, shown = session.real_path(host_path)
        data = read_bytes(real, shown)
        if data is None:
            return
        try:
            meta = FileMeta.of_stat(os.stat(real))
        except OSError as e:
            raise os_error(shown, e) from None
        session.backups.save(real, data, meta, suffix="undone")

    def _undo_drop_in(self, session: Session) -> tuple[list[FileChange], str]:
        """The import entry out of config.toml first, then the drop-in removed."""
        changes: list[FileChange] = []
        done: list[str] = []
        config = read_text(self._local(self.cc.config_file), self.cc.config_file)
        entry = self._entry()
        if config is not None:
            data = parse_toml(config.text, self.cc.config_file)
            check_shape(data, self.cc.config_file)
            if entry in (data.get("imports") or []):
                new = self._config_without_entry(session, config, entry)
                changes.append(
                    FileChange.of(
                        self.root.path(self.cc.config_file), self.cc.config_file, config, new
                    )
                )
                done.append(
                    f"removed {self.cc.config_file} (nodeagent created it)"
                    if new is None
                    else f"removed nodeagent's imports entry from {self.cc.config_file}"
                )
        real, shown = session.real_path(self.cc.drop_in)
        present = read_bytes(real, shown)  # never parsed: a broken drop-in is removed too
        if present is not None:
            changes.append(
                FileChange(
                    path=self.root.path(self.cc.drop_in),
                    host_path=self.cc.drop_in,
                    old=present.decode("utf-8", errors="replace"),
                    new=None,
                )
            )
            done.append(f"removed {self.cc.drop_in}")
        if not changes:
            return [], "nothing of nodeagent's to undo (no drop-in, no imports entry)"
        return changes, " and ".join(done)

    def _config_without_entry(
        self, session: Session, config: HostText, entry: str
    ) -> Optional[str]:
        """config.toml without nodeagent's entry: its newest backup exactly (or no file at
        all) when nodeagent's edit is the only difference, else just the entry removed."""
        newest = session.backups.newest(session.real_path(self.cc.config_file)[0])
        if newest is not None:
            try:
                before = None if newest.absent else _backup_text(newest.path)
                version = config_version(parse_toml(before, str(newest.path)), str(newest.path))
            except InputError:
                pass  # not a file nodeagent could have edited: remove the entry only
            else:
                if with_import(before, entry, version) == config.text:
                    return before
        return without_import(config.text, entry)

    def _undo_in_place(self, session: Session) -> tuple[list[FileChange], str]:
        """config.toml back to its newest backup (a backup of no file: removed)."""
        real, shown = session.real_path(self.cc.config_file)
        newest = session.backups.newest(real)
        if newest is None:
            raise StepFailed(
                f"{self.cc.config_file}: no backup to restore (nodeagent never changed it here)"
            )
        now = read_bytes(real, shown)  # never parsed: a malformed file is restored too
        if newest.absent:
            if now is None:
                return [], f"nothing to undo: {self.cc.config_file} is already absent, as before"
            return [self._restore_change(now, None, Layout())], f"removed {self.cc.config_file}"
        raw = read_bytes(newest.path, str(newest.path))
        if raw is None:
            raise StepFailed(f"{newest.path}: the backup vanished")
        text = decode(raw, str(newest.path))
        # Never restore what containerd (or the next configure) would refuse.
        check_shape(parse_toml(text, str(newest.path)), str(newest.path))
        if now == raw:
            return [], (
                f"nothing to undo: {self.cc.config_file} already is its newest backup "
                f"({newest.path.name})"
            )
        layout = Layout.of(text)
        return (
            [self._restore_change(now, layout.normalize(text), layout)],
            f"restored {self.cc.config_file} from {newest.path.name}",
        )

    def _restore_change(
        self, now: Optional[bytes], new: Optional[str], layout: Layout
    ) -> FileChange:
        return FileChange(
            path=self.root.path(self.cc.config_file),
            host_path=self.cc.config_file,
            old=None if now is None else now.decode("utf-8", errors="replace"),
            new=new,
            layout=layout,
        )


def _backup_text(path: Path) -> Optional[str]:
    """A backup's text with LF line breaks (as the reader hands files over)."""
    raw = read_bytes(path, str(path))
    if raw is None:
        return None
    text = decode(raw, str(path))
    return Layout.of(text).normalize(text)
