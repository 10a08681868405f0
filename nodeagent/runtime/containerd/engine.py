"""containerd: the engine — the facts read from the host, the plan, and what ``apply``
hands the host's write sequence; the TOML itself is edited by
:mod:`~nodeagent.runtime.containerd.tomledit`.

containerd 1.x *replaces* a whole plugin section when an imported file defines it (checked
on Debian's 1.6: a drop-in holding only the nvidia runtime drops ``sandbox_image``, runc's
``SystemdCgroup`` and runc itself). So the drop-in carries a copy of the effective CRI
section (config.toml, then each import in order, as containerd merges them) plus the nvidia
runtime, and every ``apply`` re-derives it, so an edit to config.toml's CRI section flows
into the drop-in on the next run. The drop-in is never more readable than the files it
copies (they may hold registry passwords).

The nvidia runtime is a copy of the runtime it is based on
(:func:`~nodeagent.runtime.containerd.tomledit.base_runtime`, runc on almost every host)
with ``BinaryName`` set; its ``runtime_type`` and ``SystemdCgroup`` follow that runtime on
every configure, so GPU pods use the kubelet's cgroup driver.

containerd has no reload and exits on SIGHUP: a change takes effect by a restart, which
does not stop running containers (their shims outlive the daemon). Before restarting, the
new files are checked with ``containerd --config F config dump``; a config containerd would
refuse is never restarted into. docs/runtime.md explains the choices.

Reads and writes host files only through the host reader and writer (the write sequence
in :mod:`nodeagent.host.service`); runs ``containerd config dump`` and ``ctr``, and
restarts containerd only through :mod:`nodeagent.host.service`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import tomlkit

from nodeagent.config import Config
from nodeagent.errors import InputError, NodeagentError, StepFailed, shorten
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
from nodeagent.host.service import (
    Daemon,
    ServiceControl,
    attempt,
    listening,
    restart_verified,
    write_sequence,
)
from nodeagent.host.writer import Restore, Session, Writer, undo_all
from nodeagent.log import get_logger
from nodeagent.retry import wait_until
from nodeagent.runtime import cdi
from nodeagent.runtime.containerd.dump import DumpedConfig
from nodeagent.runtime.containerd.tomledit import (
    CRI_PLUGIN,
    OptionMismatch,
    TomlFile,
    check_shape,
    config_version,
    cri_mismatches,
    cri_of,
    desired_cri,
    effective_cri,
    is_glob,
    matches_import,
    narrowest,
    parse_toml,
    render_drop_in,
    resolve_imports,
    with_import,
    with_runtime_in_place,
    without_import,
)
from nodeagent.runtime.engine import Activation, ApplyResult, Plan

log = get_logger(__name__)


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
    running: bool  # containerd's socket exists (engine.Facts)
    can_restart: bool


@dataclasses.dataclass(frozen=True)
class Dump:
    """What ``containerd config dump`` gave: the merged config, or why not."""

    config: Optional[dict[str, Any]]
    why: str = ""
    no_binary: bool = False  # no containerd to ask (image baking): nothing to check


def runtime_mismatches(facts: ContainerdFacts, name: str) -> tuple[OptionMismatch, ...]:
    """Pure: the mismatches in the CRI section containerd will load from these files
    (config.toml, then every import in merge order, the drop-in included)."""
    return cri_mismatches(
        effective_cri(facts.config, facts.merged, CRI_PLUGIN[facts.version]), name
    )


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
            names_drop_in = matches_import(pattern, self.cc.drop_in)
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
            running=listening(self.cc.address),
            can_restart=self.root.is_real_host or bool(self.cc.restart_command),
        )

    def _expand(self, pattern: str) -> list[str]:
        """Host paths an import names, globs expanded against the root's files and sorted
        like Go's filepath.Glob (containerd's own expansion)."""
        where = f"{self.cc.config_file}: 'imports' entry {shorten(pattern)}"
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

    def mismatches(self, facts: ContainerdFacts) -> tuple[str, ...]:
        return tuple(str(m) for m in runtime_mismatches(facts, self.rt.name))

    def plan(self, facts: ContainerdFacts) -> Plan:
        f = facts
        plugin = CRI_PLUGIN[f.version]
        cri = desired_cri(
            effective_cri(f.config, f.imports, plugin),
            self.rt.name,
            f.runtime_path,
            self.rt.set_as_default,
            self.rt.cdi,
        )
        changes: list[FileChange] = []
        warnings: list[str] = []
        if self.cc.use_drop_in:
            for imp in f.imports:
                if imp.host_path in f.imported_after and cri_of(imp.data, plugin) is not None:
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
                if cri_of(imp.data, plugin) is not None:
                    raise InputError(
                        f"{imp.host_path}: defines the CRI section, which replaces "
                        f"config.toml's whole: an in-place edit would not take; use the "
                        "drop-in (runtime.containerd.use_drop_in: true)"
                    )
            merged = effective_cri(f.config, (), plugin)
            wanted = desired_cri(
                merged, self.rt.name, f.runtime_path, self.rt.set_as_default, self.rt.cdi
            )
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

    def _activation(self, f: ContainerdFacts) -> tuple[Activation, str]:
        mode = self.rt.restart_mode
        if mode == "none":
            return Activation.NONE, "restart_mode none: write only"
        if not f.running:
            return Activation.NONE, "containerd is not running: it reads the files when it starts"
        if not f.can_restart:
            return Activation.NONE, "--root is not / and no restart_command is configured"
        if mode == "reload":
            raise InputError(
                "restart_mode reload: containerd cannot reload its config (it exits on "
                "SIGHUP); use auto or restart"
            )
        return (
            Activation.RESTART,
            "containerd reads its config only at start (containers keep running)",
        )

    # --- the imperative shell -----------------------------------------------------------

    def _service(self) -> ServiceControl:
        return ServiceControl(unit=self.cc.service, restart_command=self.cc.restart_command)

    def _writer(self) -> Writer:
        return Writer.of(self.root, self.config)

    def _daemon(self) -> Daemon:
        return Daemon(
            name=self.name,
            control=self._service(),
            shows_runtime=self._wait_verified,
            answers=self._wait_answering,
        )

    def apply(self, plan: Plan) -> ApplyResult:
        if not plan.changed:
            return ApplyResult(engine=self.name, verified=True, message="unchanged")
        done = write_sequence(
            self._writer(),
            plan,
            replan=lambda: self.plan(self.read()),
            take_effect=self._take_effect,
        )
        if done is None:
            return ApplyResult(
                engine=self.name,
                verified=True,
                message="unchanged (another nodeagent run made this change)",
            )
        return done

    def _take_effect(self, plan: Plan, restores: Sequence[Restore]) -> ApplyResult:
        """Never restart into files containerd would refuse; restart, verified, else the
        old files back."""
        written = tuple(c.host_path for c in plan.changes if c.changed)
        problem = self.check_files()
        if problem is not None:
            undo_all(restores)
            raise StepFailed(f"containerd would not load the new config, restored: {problem}")
        if plan.activation == Activation.NONE:
            return ApplyResult(engine=self.name, written=written, message=plan.reason)
        done = restart_verified(self._daemon(), restores, "files")
        return ApplyResult.activated(self.name, written, done)

    def _restart(self) -> bool:
        return attempt(self._service().restart) is None

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

    def dump(self) -> Dump:
        """containerd's own merged view of the files (``config dump``), or why not."""
        binary = self._tool("containerd")
        if binary is None:
            return Dump(None, "containerd binary not found", no_binary=True)
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
            return Dump(None, str(e))
        except (OSError, subprocess.TimeoutExpired) as e:
            return Dump(None, f"{binary} config dump: {e}")
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return Dump(None, lines[-1] if lines else f"config dump exit {proc.returncode}")
        try:
            return Dump(parse_toml(proc.stdout, "containerd config dump"))
        except InputError as e:
            return Dump(None, str(e))

    def check_files(self) -> Optional[str]:
        """None when containerd reads the files and sees the runtime as wanted, else why
        not. Without a containerd binary (image baking) there is nothing to ask: None."""
        dumped = self.dump()
        if dumped.config is None:
            return None if dumped.no_binary else dumped.why
        try:
            loaded = DumpedConfig.of(dumped.config)
        except InputError as e:
            return str(e)
        return loaded.problem(self.rt.name, self.rt.set_as_default)

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
        data = self.dump().config
        if data is None:
            return False
        try:
            loaded = DumpedConfig.of(data)
        except InputError:
            return False
        cri_ok = any(
            line.split()[:2] == list(loaded.plugin_id) and line.split()[-1] == "ok"
            for line in out.splitlines()
            if line.strip()
        )
        return cri_ok and loaded.problem(self.rt.name, self.rt.set_as_default) is None

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

    # --- CDI ----------------------------------------------------------------------------

    def cdi_use(self, facts: ContainerdFacts) -> cdi.Use:
        """Whether containerd's CRI plugin consumes CDI: ``enable_cdi`` and
        ``cdi_spec_dirs`` of its merged config (``config dump``), or of the files when
        containerd cannot be asked."""
        dumped = self.dump()
        if dumped.config is not None:
            try:
                merged = DumpedConfig.of(dumped.config)
            except InputError:
                pass  # a version the dump reader does not know: read the files instead
            else:
                return cdi.containerd_use(
                    merged.enable_cdi, merged.cdi_spec_dirs, "containerd config dump"
                )
        plugin = CRI_PLUGIN[facts.version]
        return cdi.containerd_files_use(
            effective_cri(facts.config, facts.merged, plugin), facts.version
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
            running = listening(self.cc.address)
            activation = Activation.NONE
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
                activation = Activation.RESTART
                how = "restarted containerd"
        return ApplyResult(
            engine=self.name,
            written=written,
            activation=activation,
            verified=activation == Activation.RESTART,
            message=f"{done}; {how}",
        )

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
