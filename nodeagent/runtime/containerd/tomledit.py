"""containerd's TOML: parse, shape-check and edit config.toml, its imports and the drop-in.

Pure: text and plain data in, text and plain data out — the effective CRI section (the
last file that defines it wins whole), the nvidia runtime copied from its base runtime,
the ``imports`` entry added or removed with the file's formatting kept, the drop-in
rendered, and what ``containerd config dump`` must show. Every malformed input is an
``InputError`` naming the file and the key path. No file I/O, no process, no engine.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Optional

import tomlkit
import tomlkit.exceptions

from nodeagent.errors import InputError
from nodeagent.host.reader import FileMeta, HostText
from nodeagent.host.reader import type_name as _json_type_name

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
    if "enable_cdi" in cri:
        _expect(cri["enable_cdi"], bool, shown, [*at, "enable_cdi"])
    if "cdi_spec_dirs" in cri:
        _expect(cri["cdi_spec_dirs"], list, shown, [*at, "cdi_spec_dirs"])
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


def cri_of(data: Mapping[str, Any], plugin: str) -> Optional[dict[str, Any]]:
    found = (data.get("plugins") or {}).get(plugin)
    return found if isinstance(found, dict) else None


def effective_cri(config: TomlFile, imports: Sequence[TomlFile], plugin: str) -> dict[str, Any]:
    """The CRI section containerd would use: the last file that defines it wins whole."""
    section: dict[str, Any] = cri_of(config.data, plugin) or {}
    for imp in imports:
        theirs = cri_of(imp.data, plugin)
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


def desired_cri(
    cri: dict[str, Any], name: str, binary: str, set_default: bool, cdi_mode: str = "auto"
) -> dict[str, Any]:
    """Pure: the CRI section with the nvidia runtime (and as the default, if asked), and
    ``enable_cdi`` true or false for ``cdi_mode`` enable / disable (auto: untouched).

    A new nvidia entry copies its base runtime; an existing one keeps its own keys but
    takes ``runtime_type`` and ``options.SystemdCgroup`` from the base runtime. Without
    ``set_default``, a default that is the nvidia runtime is demoted to the base runtime.
    """
    out = copy.deepcopy(cri)
    if cdi_mode in ("enable", "disable"):
        out["enable_cdi"] = cdi_mode == "enable"
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
    if "enable_cdi" in cri and section.get("enable_cdi") != cri["enable_cdi"]:
        section["enable_cdi"] = cri["enable_cdi"]
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


def matches_import(pattern: str, host_path: str) -> bool:
    """Whether the resolved ``imports`` entry ``pattern`` names ``host_path``."""
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
