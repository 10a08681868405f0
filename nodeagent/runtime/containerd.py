"""containerd: the nvidia runtime in a drop-in (or config.toml), checked, restarted, verified.

containerd 1.x *replaces* a whole plugin section when an imported file defines it (checked
on Debian's 1.6: a drop-in holding only the nvidia runtime drops ``sandbox_image``, runc's
``SystemdCgroup`` and runc itself). So the drop-in carries a copy of the effective CRI
section (config.toml, then each import in order, as containerd merges them) plus the nvidia
runtime, and every ``apply`` re-derives it, so an edit to config.toml's CRI section flows
into the drop-in on the next run. The nvidia runtime copies the default runtime's entry
(``SystemdCgroup`` must match the kubelet's cgroup driver) with ``BinaryName`` set.

containerd has no reload and exits on SIGHUP: a change takes effect by a restart, which
does not stop running containers (their shims outlive the daemon). Before restarting, the
new files are checked with ``containerd --config F config dump``; a config containerd would
refuse is never restarted into. docs/runtime.md explains the choices.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import tomlkit
import tomlkit.exceptions

from nodeagent.config import Config
from nodeagent.errors import InputError, StepFailed
from nodeagent.fsutil import Backups, FileMeta, HostLock, read_text_or_none, write_atomic
from nodeagent.log import get_logger
from nodeagent.paths import HostRoot
from nodeagent.retry import wait_until
from nodeagent.runtime.engine import (
    ACTIVATE_NONE,
    ACTIVATE_RESTART,
    ApplyResult,
    FileChange,
    Plan,
)
from nodeagent.runtime.select import unix_socket_path
from nodeagent.runtime.service import ServiceControl, succeeded

log = get_logger(__name__)

# The CRI runtime plugin's name by config schema version (containerd 1.5+: 2; 2.x: 3).
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNC_V2 = "io.containerd.runc.v2"
DROP_IN_HEADER = (
    "# Written by nodeagent; do not edit. containerd replaces a whole plugin section when an\n"
    "# imported file defines it, so this holds a copy of the CRI runtime section of\n"
    "# config.toml (and its other imports) plus the nvidia runtime. Edit config.toml and\n"
    "# run `nodeagent runtime configure` again; to undo: `nodeagent rollback`.\n"
)


@dataclasses.dataclass(frozen=True)
class TomlFile:
    """One TOML file as read: its host path, text (None if absent) and plain data."""

    host_path: str
    text: Optional[str]
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ContainerdFacts:
    """Everything ``plan`` needs, read from the host by ``read``."""

    config: TomlFile
    version: int
    imports: tuple[TomlFile, ...]  # the other files config.toml imports, in merge order
    drop_in: TomlFile
    drop_in_imported: bool  # config.toml's imports already name the drop-in (or a glob of it)
    imported_after: tuple[str, ...]  # imports merged after the drop-in (they would win)
    runtime_path: str  # host path of the runtime binary, absolute
    runtime_found: bool
    running: bool
    can_restart: bool


def parse_toml(text: Optional[str], host_path: str) -> dict[str, Any]:
    """Plain data of a TOML file; InputError ``PATH:LINE:COL: msg`` if it is malformed."""
    if text is None or not text.strip():
        return {}
    try:
        data: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as e:
        raise InputError(f"{host_path}:{e.line}:{e.col}: malformed TOML: {_parse_msg(e)}") from None
    return data


def _parse_msg(e: tomlkit.exceptions.ParseError) -> str:
    # tomlkit appends " at line L col C"; the position is already in front.
    return str(e).split(" at line ")[0]


def config_version(data: dict[str, Any], host_path: str) -> int:
    """The config schema version; a non-empty v1 config (no ``version``) is refused."""
    version = data.get("version")
    if version is None:
        if data:
            raise InputError(
                f"{host_path}: a version 1 config (no 'version' key); nodeagent writes "
                "version 2 and 3 configs: migrate it with `containerd config migrate` "
                "or add 'version = 2' if it holds no v1 plugin sections"
            )
        return 2
    if version not in CRI_PLUGIN:
        raise InputError(f"{host_path}: config version {version!r} is not 2 or 3")
    return int(version)


def resolve_imports(config_host_path: str, entries: list[str]) -> list[str]:
    """Host paths of ``imports`` entries as containerd resolves them: relative entries are
    relative to config.toml's directory. Globs are kept as patterns."""
    base = PurePosixPath(config_host_path).parent
    out = []
    for entry in entries:
        p = PurePosixPath(entry)
        out.append(str(p if p.is_absolute() else base / p))
    return out


def effective_cri(config: TomlFile, imports: tuple[TomlFile, ...], plugin: str) -> dict[str, Any]:
    """The CRI section containerd would use: the last file that defines it wins whole."""
    section: dict[str, Any] = (config.data.get("plugins") or {}).get(plugin) or {}
    for imp in imports:
        theirs = (imp.data.get("plugins") or {}).get(plugin)
        if theirs is not None:
            section = theirs
    return copy.deepcopy(section)


def desired_cri(cri: dict[str, Any], name: str, binary: str, set_default: bool) -> dict[str, Any]:
    """Pure: the CRI section with the nvidia runtime (and as the default, if asked)."""
    out = copy.deepcopy(cri)
    ctd = out.setdefault("containerd", {})
    runtimes = ctd.setdefault("runtimes", {})
    default_name = ctd.get("default_runtime_name", "runc")
    if not runtimes:
        # A section that names no runtime means containerd's built-in runc; replacing the
        # section must keep it, or pods without a RuntimeClass lose their runtime.
        runtimes["runc"] = {"runtime_type": RUNC_V2}
    if name in runtimes:
        entry = copy.deepcopy(runtimes[name])
    else:
        base_name = default_name if default_name != name and default_name in runtimes else "runc"
        entry = copy.deepcopy(runtimes.get(base_name) or {"runtime_type": RUNC_V2})
    entry.setdefault("runtime_type", RUNC_V2)
    options = entry.setdefault("options", {})
    options["BinaryName"] = binary
    runtimes[name] = entry
    if set_default:
        ctd["default_runtime_name"] = name
    return out


def render_drop_in(version: int, plugin: str, cri: dict[str, Any]) -> str:
    return DROP_IN_HEADER + tomlkit.dumps({"version": version, "plugins": {plugin: cri}})


def with_import(config_text: Optional[str], entry: str) -> str:
    """config.toml's text with ``entry`` appended to ``imports``, formatting kept."""
    if config_text is None or not config_text.strip():
        return f"version = 2\nimports = [{_toml_str(entry)}]\n"
    doc = tomlkit.parse(config_text)
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


def with_runtime_in_place(config_text: Optional[str], plugin: str, cri: dict[str, Any]) -> str:
    """config.toml's text with the CRI section's runtimes and default set in place."""
    doc = tomlkit.parse(config_text or "version = 2\n")
    plugins = doc.setdefault("plugins", tomlkit.table(is_super_table=True))
    section = plugins.setdefault(plugin, tomlkit.table(is_super_table=True))
    ctd = section.setdefault("containerd", tomlkit.table())
    want = cri["containerd"]
    if "default_runtime_name" in want:
        ctd["default_runtime_name"] = want["default_runtime_name"]
    runtimes = ctd.setdefault("runtimes", tomlkit.table(is_super_table=True))
    for rname, entry in want["runtimes"].items():
        if rname not in runtimes or runtimes[rname].unwrap() != entry:
            runtimes[rname] = entry
    return tomlkit.dumps(doc)


def _toml_str(s: str) -> str:
    return tomlkit.dumps({"k": s}).split("=", 1)[1].strip()


def _matches(pattern: str, host_path: str) -> bool:
    return pattern == host_path or fnmatch.fnmatchcase(host_path, pattern)


class ContainerdEngine:
    """The containerd config engine. Paths in ``config`` are host paths under ``root``."""

    name = "containerd"

    def __init__(self, config: Config, root: HostRoot) -> None:
        self.config = config
        self.root = root
        self.rt = config.runtime
        self.cc = config.runtime.containerd

    # --- facts --------------------------------------------------------------------------

    def _read(self, host_path: str) -> TomlFile:
        text = read_text_or_none(self.root.path(host_path))
        return TomlFile(host_path=host_path, text=text, data=parse_toml(text, host_path))

    def read(self) -> ContainerdFacts:
        config = self._read(self.cc.config_file)
        version = config_version(config.data, config.host_path)
        entries = config.data.get("imports") or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise InputError(f"{config.host_path}: 'imports' must be a list of paths")
        imports: list[TomlFile] = []
        after: list[str] = []
        imported = False
        for pattern in resolve_imports(config.host_path, entries):
            names_drop_in = _matches(pattern, self.cc.drop_in)
            for host_path in self._expand(pattern):
                if host_path == self.cc.drop_in:
                    continue
                imports.append(self._read(host_path))
                # Merged after the drop-in: a later entry, or later in the same glob.
                if imported or (names_drop_in and host_path > self.cc.drop_in):
                    after.append(host_path)
            imported = imported or names_drop_in
        drop_in = self._read(self.cc.drop_in)
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
            drop_in=drop_in,
            drop_in_imported=imported,
            imported_after=tuple(dict.fromkeys(after)),
            runtime_path=runtime_path,
            runtime_found=binary is not None,
            running=sock is not None and Path(sock).is_socket(),
            can_restart=self.root.is_real_host or bool(self.cc.restart_command),
        )

    def _expand(self, pattern: str) -> list[str]:
        """Host paths a (possibly glob) import names, sorted like Go's filepath.Glob."""
        if not any(c in pattern for c in "*?["):
            return [pattern] if self.root.path(pattern).exists() else []
        local = self.root.path(pattern)
        found = sorted(local.parent.glob(local.name)) if local.parent.is_dir() else []
        return [str(PurePosixPath(pattern).parent / p.name) for p in found]

    # --- the pure part ------------------------------------------------------------------

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
            new_drop_in = render_drop_in(f.version, plugin, cri)
            if f.drop_in.text != new_drop_in:
                changes.append(self._change(f.drop_in, new_drop_in))
            if not f.drop_in_imported:
                changes.append(self._change(f.config, with_import(f.config.text, self._entry())))
            for imp in f.imports:
                if imp.host_path in f.imported_after and plugin in (imp.data.get("plugins") or {}):
                    raise InputError(
                        f"{imp.host_path}: defines the CRI section and is imported after "
                        f"{self.cc.drop_in}, so containerd would drop the nvidia runtime; "
                        "rename one of them or set runtime.containerd.drop_in"
                    )
        else:
            merged = effective_cri(f.config, (), plugin)
            if desired_cri(merged, self.rt.name, f.runtime_path, self.rt.set_as_default) != merged:
                new = with_runtime_in_place(f.config.text, plugin, cri)
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

    def _change(self, file: TomlFile, new: str) -> FileChange:
        return FileChange(
            path=self.root.path(file.host_path), host_path=file.host_path, old=file.text, new=new
        )

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

    def _backups(self) -> Backups:
        return Backups(self.root.path(self.config.backup_dir), self.config.backup_keep)

    def apply(self, plan: Plan) -> ApplyResult:
        if not plan.changed:
            return ApplyResult(engine=self.name, verified=True, message="unchanged")
        with HostLock(self.root.path(self.config.lock_file)):
            if any(read_text_or_none(c.path) != c.old for c in plan.changes):
                plan = self.plan(self.read())  # another writer got there first
                if not plan.changed:
                    return ApplyResult(engine=self.name, verified=True, message="unchanged")
            backups = self._backups()
            for c in plan.changes:
                backups.save(c.path)
            # The drop-in first, then the import that makes containerd read it.
            for c in sorted(plan.changes, key=lambda c: c.host_path == self.cc.config_file):
                write_atomic(c.path, c.new, FileMeta.of(c.path, FileMeta(uid=0, gid=0, mode=0o644)))
                log.info("containerd.written", path=c.host_path)
            written = tuple(c.host_path for c in plan.changes)
            problem = self.check_files()
            if problem:
                self._restore(plan.changes)
                raise StepFailed(f"containerd would not load the new config, restored: {problem}")
            if plan.activation == ACTIVATE_NONE:
                return ApplyResult(engine=self.name, written=written, message=plan.reason)
            if self._restart() and self._wait_verified():
                return ApplyResult(
                    engine=self.name, written=written, activation=ACTIVATE_RESTART, verified=True
                )
            self._restore(plan.changes)
            back = self._restart() and self._wait_answering()
            raise StepFailed(
                "containerd did not come back with the nvidia runtime after a restart; "
                "restored the previous files and restarted it "
                + ("(it is running again)" if back else "(it is NOT answering: check its log)")
            )

    def _restore(self, changes: tuple[FileChange, ...]) -> None:
        for c in changes:
            if c.old is None:
                c.path.unlink(missing_ok=True)
            else:
                write_atomic(c.path, c.old, FileMeta.of(c.path))
        log.warning("containerd.rolled_back", paths=[c.host_path for c in changes])

    def _restart(self) -> bool:
        return succeeded(self._service().restart, self.cc.service)

    def _tool(self, name: str) -> Optional[str]:
        found = self.root.which(name) or (None if self.root.is_real_host else shutil.which(name))
        return str(found) if found else None

    def dump(self) -> tuple[Optional[dict[str, Any]], str]:
        """containerd's own merged view of the files (``config dump``), or why not."""
        binary = self._tool("containerd")
        if binary is None:
            return None, "containerd binary not found"
        argv = [binary, "--config", str(self.root.path(self.cc.config_file)), "config", "dump"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{' '.join(argv)}: {e}"
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return None, lines[-1] if lines else f"config dump exit {proc.returncode}"
        return parse_toml(proc.stdout, "containerd config dump"), ""

    def check_files(self) -> str:
        """'' when containerd reads the files and sees the runtime as wanted, else why not.
        Without a containerd binary (image baking) there is nothing to ask: ''."""
        data, why = self.dump()
        if data is None:
            return "" if why == "containerd binary not found" else why
        return self._runtime_problem(data)

    def _runtime_problem(self, data: dict[str, Any]) -> str:
        """Pure: '' when the dumped config has the runtime (as default, if asked)."""
        cri = (data.get("plugins") or {}).get(self._plugin(data)) or {}
        ctd = cri.get("containerd") or {}
        runtime = (ctd.get("runtimes") or {}).get(self.rt.name)
        if not runtime:
            return f"containerd config dump shows no '{self.rt.name}' runtime"
        if self.rt.set_as_default and ctd.get("default_runtime_name") != self.rt.name:
            return (
                f"containerd config dump shows default runtime {ctd.get('default_runtime_name')!r}"
            )
        return ""

    @staticmethod
    def _plugin(dumped: dict[str, Any]) -> str:
        return CRI_PLUGIN.get(int(dumped.get("version") or 2), CRI_PLUGIN[2])

    def _ctr(self, *args: str) -> tuple[bool, str]:
        ctr = self._tool("ctr")
        sock = unix_socket_path(self.cc.address)
        if ctr is None or sock is None:
            return False, "ctr not found"
        argv = [ctr, "--address", sock, *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        return proc.returncode == 0, proc.stdout

    def verify(self) -> bool:
        """containerd answers, its CRI plugin loaded (a default runtime it cannot find fails
        the plugin), and its config shows the nvidia runtime."""
        ok, out = self._ctr("plugins", "ls")
        data, _ = self.dump()
        if not ok or data is None:
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

    def rollback(self) -> ApplyResult:
        """Undo: drop-in mode removes the drop-in and the ``imports`` entry nodeagent added;
        in-place mode restores config.toml's newest backup. Then restart, if running."""
        backups = self._backups()
        with HostLock(self.root.path(self.config.lock_file)):
            f = self.read()
            restored: list[tuple[Path, str, Optional[str]]] = []  # (path, host path, new text)
            if self.cc.use_drop_in:
                if f.drop_in.text is not None:
                    restored.append((self.root.path(self.cc.drop_in), self.cc.drop_in, None))
                entry = self._entry()
                if f.config.text is not None and entry in (f.config.data.get("imports") or []):
                    new = without_import(f.config.text, entry)
                    restored.append((self.root.path(self.cc.config_file), self.cc.config_file, new))
            else:
                path = self.root.path(self.cc.config_file)
                newest = backups.newest(path)
                if newest is None:
                    raise StepFailed(f"no backup of {self.cc.config_file} to restore")
                old = newest.read_text()
                parse_toml(old, str(newest))  # never restore what containerd can't read
                if old != f.config.text:
                    restored.append((path, self.cc.config_file, old))
            if not restored:
                return ApplyResult(engine=self.name, message="nothing of nodeagent's to undo")
            for path, host_path, text in restored:
                backups.save(path)
                if text is None:
                    path.unlink()
                else:
                    write_atomic(path, text, FileMeta.of(path))
                log.info("containerd.rollback.written", path=host_path, removed=text is None)
            written = tuple(h for _, h, _ in restored)
            activation = ACTIVATE_NONE
            if f.running and f.can_restart and self.rt.restart_mode != "none":
                activation = ACTIVATE_RESTART
                if not (self._restart() and self._wait_answering()):
                    raise StepFailed("restored containerd's config, but it is not answering")
        return ApplyResult(
            engine=self.name,
            written=written,
            activation=activation,
            message=f"removed the nvidia runtime from {', '.join(written)}; {activation}",
        )
