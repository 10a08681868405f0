"""docker: the nvidia runtime in daemon.json, reloaded not restarted, verified, rolled back.

The walk (see :mod:`nodeagent.runtime.engine`): ``read`` gathers the facts (the file, how
dockerd is started, whether it runs, whether the runtime binary exists); ``plan`` is pure;
``apply`` hands the plan to the host's write sequence (:func:`nodeagent.host.service.
write_sequence`: lock, re-read and compare, back up, write, restore handles) and decides
only what is docker's own: reload or restart, and when a reload that did not take may fall
back to a restart. docs/runtime.md explains the choices.

Edits and plans daemon.json; reads and writes host files only through the host reader and
writer, and drives dockerd only through :mod:`nodeagent.host.service`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

from nodeagent.config import Config
from nodeagent.errors import InputError, StepFailed
from nodeagent.host.change import FileChange
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import (
    FileMeta,
    HostText,
    decode,
    expect,
    read_bytes,
    read_text,
)
from nodeagent.host.service import (
    Daemon,
    ServiceControl,
    attempt,
    listening,
    restart_verified,
    undo,
    write_sequence,
)
from nodeagent.host.writer import Restore, Writer
from nodeagent.log import get_logger
from nodeagent.retry import wait_until
from nodeagent.runtime import cdi
from nodeagent.runtime.docker import flags as dockerflags
from nodeagent.runtime.docker import jsonedit
from nodeagent.runtime.engine import Activation, ApplyResult, Plan

log = get_logger(__name__)
T = TypeVar("T")

# daemon.json keys dockerd re-reads on SIGHUP (docker/cli docs/reference/dockerd.md,
# "Configuration reload behavior"); a change to any other key needs a restart.
RELOADABLE_KEYS = frozenset(
    {
        "debug",
        "labels",
        "live-restore",
        "max-concurrent-downloads",
        "max-concurrent-uploads",
        "max-download-attempts",
        "default-runtime",
        "runtimes",
        "authorization-plugins",
        "insecure-registries",
        "registry-mirrors",
        "shutdown-timeout",
        "features",
    }
)
# dockerd's own default runtime: what `--no-default` puts back in `default-runtime`.
DOCKER_DEFAULT_RUNTIME = "runc"
# `features.cdi` is read when dockerd starts (it sets up its CDI cache then): a change is
# not taken by a reload, so it counts as this key, which is not reloadable.
CDI_FEATURE_KEY = "features.cdi"
# The first docker with CDI (opt-in through features.cdi; on by default from 28.2).
DOCKER_CDI_SINCE = (25, 0)


@dataclasses.dataclass(frozen=True)
class DockerFacts:
    """Everything ``plan`` needs, read from the host by ``read``."""

    current: Optional[HostText]  # daemon.json as read, None if absent
    doc: jsonedit.JSONDoc
    flag_sources: tuple[dockerflags.FlagSource, ...]
    running: bool  # docker's API socket exists (engine.Facts)
    can_signal: bool  # we may reload/restart this docker (see DockerEngine._can_signal)
    runtime_found: bool
    # dockerd's version when runtime.cdi is enable and docker answers (else None).
    server_version: Optional[str] = None


def check_shape(data: dict[str, Any], text: str, shown: str, name: str) -> None:
    """Raise ``InputError`` (``SHOWN:LINE:COL: 'KEYPATH' must be …, not …``) unless every
    key the engine reads or writes has the type dockerd expects."""

    def at(*keys: str) -> str:
        line, col = jsonedit.key_position(text, *keys)
        return f"{shown}:{line}:{col}"

    if "runtimes" in data:
        runtimes = data["runtimes"]
        expect(runtimes, dict, at("runtimes"), "runtimes")
        if name in runtimes:
            entry = runtimes[name]
            keypath = f"runtimes.{name}"
            expect(entry, dict, at("runtimes", name), keypath)
            if "path" in entry:
                expect(entry["path"], str, at("runtimes", name, "path"), f"{keypath}.path")
            if "runtimeArgs" in entry:
                where = at("runtimes", name, "runtimeArgs")
                args = entry["runtimeArgs"]
                expect(args, list, where, f"{keypath}.runtimeArgs", "a list of strings")
                for i, arg in enumerate(args):
                    expect(arg, str, where, f"{keypath}.runtimeArgs[{i}]")
    if "default-runtime" in data:
        expect(data["default-runtime"], str, at("default-runtime"), "default-runtime")
    if "live-restore" in data:
        expect(data["live-restore"], bool, at("live-restore"), "live-restore")
    if "features" in data:
        expect(data["features"], dict, at("features"), "features")
        if "cdi" in data["features"]:
            expect(data["features"]["cdi"], bool, at("features", "cdi"), CDI_FEATURE_KEY)


def desired(
    data: dict[str, Any], name: str, path: str, set_default: bool, cdi_mode: str = "auto"
) -> dict[str, Any]:
    """Pure: ``data`` with ``runtimes.<name>`` set, keys in place; ``default-runtime`` set
    to it, or — when it must not be the default but is — put back to docker's own
    (a changed value is reloadable; a removed key would stay in effect until a restart);
    ``features.cdi`` true or false for ``cdi_mode`` enable / disable (auto: untouched)."""
    out = copy.deepcopy(data)
    if cdi_mode in ("enable", "disable"):
        features = out.setdefault("features", {})
        features["cdi"] = cdi_mode == "enable"
    runtimes = out.setdefault("runtimes", {})
    entry = dict(runtimes.get(name) or {})
    entry["path"] = path
    entry.setdefault("runtimeArgs", [])
    runtimes[name] = entry
    if set_default:
        out["default-runtime"] = name
    elif out.get("default-runtime") == name:
        out["default-runtime"] = DOCKER_DEFAULT_RUNTIME
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """The top-level keys that differ, plus ``features.cdi`` when that changes."""
    keys = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    if _features_cdi(old) != _features_cdi(new):
        keys.add(CDI_FEATURE_KEY)
    return keys


def _features_cdi(data: dict[str, Any]) -> Optional[bool]:
    features = data.get("features")
    value = features.get("cdi") if isinstance(features, dict) else None
    return value if isinstance(value, bool) else None


class DockerEngine:
    """The docker config engine. ``config`` paths are host paths under ``root``."""

    name = "docker"

    def __init__(self, config: Config, root: HostRoot) -> None:
        self.config = config
        self.root = root
        self.rt = config.runtime
        self.dc = config.runtime.docker
        self.host_path = self.dc.config_file
        self.path = root.path(self.host_path)

    # --- facts --------------------------------------------------------------------------

    def _load(self) -> tuple[Optional[HostText], jsonedit.JSONDoc]:
        """daemon.json as read (symlinks followed inside the root) and parsed, every key
        the engine touches shape-checked; InputError naming the file otherwise."""
        real, _ = self.root.resolve(self.host_path)
        current = read_text(real, self.host_path)
        text = current.text if current is not None else ""
        doc = jsonedit.parse(text, self.host_path)
        check_shape(doc.data, text, self.host_path, self.rt.name)
        return current, doc

    def _can_signal(self) -> bool:
        # With --root pointing elsewhere (image baking), the docker answering on this
        # machine is not the one whose file we edit: only explicit controls may touch it.
        explicit = bool(self.dc.pidfile or self.dc.reload_command or self.dc.restart_command)
        return self.root.is_real_host or explicit

    def read(self) -> DockerFacts:
        current, doc = self._load()
        running = listening(self.dc.host)
        return DockerFacts(
            current=current,
            doc=doc,
            flag_sources=tuple(dockerflags.collect(self.root)),
            running=running,
            can_signal=self._can_signal(),
            runtime_found=self.root.which(self.rt.path) is not None,
            server_version=self._server_version() if self.rt.cdi == "enable" and running else None,
        )

    def _server_version(self) -> Optional[str]:
        found = self._ask("version.unreachable", lambda c: c.version().get("Version"))
        return found if isinstance(found, str) else None

    # --- the pure part ------------------------------------------------------------------

    def mismatches(self, facts: DockerFacts) -> tuple[str, ...]:
        """None for docker: every runtime runs under dockerd's one cgroup driver."""
        return ()

    def plan(self, facts: DockerFacts) -> Plan:
        f = facts
        other = dockerflags.config_file_flag(f.flag_sources)
        if other is not None and other.path != self.host_path:
            raise InputError(
                f"{other.where}: dockerd reads {other.path} (--config-file), not {self.host_path}; "
                "set runtime.docker.config_file to it"
            )
        new_data = desired(
            f.doc.data, self.rt.name, self.rt.path, self.rt.set_as_default, self.rt.cdi
        )
        keys = changed_keys(f.doc.data, new_data)
        version = cdi.parse_version(f.server_version)
        too_old = version is not None and version < DOCKER_CDI_SINCE
        if CDI_FEATURE_KEY in keys and self.rt.cdi == "enable" and too_old:
            raise InputError(
                f"runtime.cdi enable: docker {f.server_version} has no CDI (docker 25 or "
                "later); upgrade docker or set runtime.cdi: auto"
            )
        warnings: list[str] = []
        if not keys:
            return Plan(engine=self.name, reason="the nvidia runtime is already configured")
        problems = dockerflags.conflicts(f.flag_sources, keys)
        if problems:
            raise InputError(problems[0])
        if not f.runtime_found:
            msg = (
                f"{self.rt.path}: runtime binary not found under {self.root.root} "
                "(install nvidia-container-toolkit); docker would accept the config and then "
                "fail every container started with it"
            )
            if f.running and f.can_signal and self.rt.restart_mode != "none":
                raise StepFailed(msg)
            warnings.append(msg)
        new_text = jsonedit.render(dataclasses.replace(f.doc, data=new_data))
        change = FileChange.of(self.path, self.host_path, f.current, new_text)
        activation, reason = self._activation(f, keys)
        return Plan(
            engine=self.name,
            changes=(change,),
            activation=activation,
            reason=reason,
            warnings=tuple(warnings),
        )

    def _activation(self, f: DockerFacts, keys: set[str]) -> tuple[Activation, str]:
        mode = self.rt.restart_mode
        if mode == "none":
            return Activation.NONE, "restart_mode none: write only"
        if not f.running:
            return Activation.NONE, "docker is not running: it reads the file when it starts"
        if not f.can_signal:
            return Activation.NONE, "--root is not / and no pidfile or command is configured"
        if mode == "restart":
            return Activation.RESTART, "restart_mode restart"
        if keys <= RELOADABLE_KEYS:
            return Activation.RELOAD, f"only reloadable keys change ({', '.join(sorted(keys))})"
        if mode == "reload":
            raise InputError(
                f"restart_mode reload, but {', '.join(sorted(keys - RELOADABLE_KEYS))} "
                "need a restart"
            )
        return Activation.RESTART, "keys that need a restart change"

    # --- the imperative shell -----------------------------------------------------------

    def _writer(self) -> Writer:
        return Writer.of(self.root, self.config)

    def _service(self) -> ServiceControl:
        pidfile = self.root.resolve(self.dc.pidfile)[0] if self.dc.pidfile else None
        return ServiceControl(
            unit=self.dc.service,
            reload_command=self.dc.reload_command,
            restart_command=self.dc.restart_command,
            pidfile=pidfile,
            pidfile_shown=self.dc.pidfile or "",
            process="dockerd",
        )

    def _daemon(self, default: Optional[str]) -> Daemon:
        """dockerd, verified as showing the runtime with ``default`` (if not None)."""
        return Daemon(
            name=self.name,
            control=self._service(),
            shows_runtime=lambda: self._wait_verified(default),
            answers=self._wait_ping,
        )

    def apply(self, plan: Plan) -> ApplyResult:
        if not plan.changed:
            return ApplyResult(engine=self.name, message="unchanged")
        done = write_sequence(
            self._writer(),
            plan,
            replan=lambda: self.plan(self.read()),
            take_effect=self._take_effect,
            before_write=self._refuse_surprise_restart,
        )
        if done is None:
            return ApplyResult(
                engine=self.name, message="unchanged (another run had already configured it)"
            )
        return done

    def _take_effect(self, plan: Plan, restores: Sequence[Restore]) -> ApplyResult:
        """Reload (falling back to a restart when the mode and the live-host rule allow)
        or restart, verified; the old file back when it does not take."""
        written = (self.host_path,)
        if plan.activation == Activation.NONE:
            return ApplyResult(
                engine=self.name,
                written=written,
                message=f"docker not reloaded or restarted: {plan.reason}",
            )
        (change,) = plan.changes
        daemon = self._daemon(self._expected_default(change.new))
        why = ""
        if plan.activation == Activation.RELOAD:
            failed = attempt(daemon.control.reload)
            if failed is None and daemon.shows_runtime():
                return ApplyResult(
                    engine=self.name,
                    written=written,
                    activation=Activation.RELOAD,
                    verified=True,
                    message="reloaded docker; it shows the nvidia runtime",
                )
            why = (
                f"reloading docker failed ({failed})"
                if failed is not None
                else f"docker did not take the new {self.host_path} on reload (see docker's log)"
            )
            log.warning("docker.reload_did_not_take", why=why)
            mode = self.rt.restart_mode
            if mode != "auto" or self._live_containers_at_risk(change.new):
                undo_failed = undo(restores)
                if undo_failed is not None:
                    raise StepFailed(f"{why}; could NOT restore the old file: {undo_failed}")
                # A reload that ran may have applied part of the file: re-read the old one.
                again = None if failed is not None else attempt(daemon.control.reload)
                state = "" if again is None else f" (reloading docker with it failed: {again})"
                hint = (
                    "restart_mode reload allows no restart"
                    if mode == "reload"
                    else "a restart would stop running containers: run with --allow-restart "
                    "to allow it"
                )
                raise StepFailed(f"{why}; the old file is restored{state}. {hint}")
        done = restart_verified(daemon, restores, self.host_path, why)
        return ApplyResult.activated(self.name, written, done)

    def _expected_default(self, text: Optional[str]) -> Optional[str]:
        """The ``default-runtime`` the file names (dockerd must then report it)."""
        value = jsonedit.parse(text or "", self.host_path).data.get("default-runtime")
        return value if isinstance(value, str) else None

    def _ask(self, what: str, question: Callable[[Any], T]) -> Optional[T]:
        """``question``'s answer from the docker API, or None (logged as ``docker.WHAT``)
        when docker does not answer."""
        try:
            import docker  # lazy: planning and --dry-run never import the SDK

            client = docker.DockerClient(base_url=self.dc.host, timeout=5)
            try:
                return question(client)
            finally:
                client.close()
        except Exception as e:
            log.info(f"docker.{what}", error=str(e))
            return None

    def _live_containers_at_risk(self, text: Optional[str]) -> bool:
        """Whether a restart now would stop running containers (live-restore off in
        ``text``, the file docker would restart with)."""
        if self.rt.allow_restart:
            return False
        if jsonedit.parse(text or "", self.host_path).data.get("live-restore") is True:
            return False
        # docker not answering: nothing runs through it
        return bool(self._ask("containers_unknown", lambda c: c.containers.list()))

    def _refuse_surprise_restart(self, plan: Plan) -> None:
        """Before writing: refuse a restart that would stop running containers."""
        if plan.activation != Activation.RESTART:
            return
        (change,) = plan.changes
        if self._live_containers_at_risk(change.new):
            raise StepFailed(
                "docker must restart for this change, live-restore is off and containers are "
                "running: a restart would stop them. Run with --allow-restart (or set "
                "runtime.allow_restart), or enable live-restore first"
            )

    def _info(self) -> Optional[dict[str, Any]]:
        def info(client: Any) -> dict[str, Any]:
            client.ping()
            found: dict[str, Any] = client.info()
            return found

        return self._ask("verify.unreachable", info)

    def _shows(self, default: Optional[str]) -> bool:
        """Whether docker answers and lists the runtime, with ``default`` (if given) as
        its default runtime."""
        info = self._info()
        if info is None:
            return False
        ok = self.rt.name in (info.get("Runtimes") or {})
        if default is not None:
            ok = ok and info.get("DefaultRuntime") == default
        return ok

    def verify(self) -> bool:
        """One look: docker answers and lists the runtime (as default, if asked)."""
        return self._shows(self.rt.name if self.rt.set_as_default else None)

    def cdi_use(self, facts: DockerFacts) -> cdi.Use:
        """Whether the running dockerd consumes CDI: ``docker info``'s ``CDISpecDirs``
        when its API has the field, else its version and daemon.json's ``features.cdi``
        (:func:`nodeagent.runtime.cdi.docker_use`)."""
        info = self._info() if facts.running else None
        dirs = info.get("CDISpecDirs") if info is not None else None
        version = info.get("ServerVersion") if info is not None else None
        return cdi.docker_use(
            [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else None,
            version if isinstance(version, str) else None,
            _features_cdi(facts.doc.data),
        )

    def _wait_verified(self, default: Optional[str]) -> bool:
        return wait_until(
            lambda: self._shows(default),
            what="docker verify",
            deadline_s=self.rt.verify_timeout_s,
        )

    def _ping(self) -> bool:
        return self._ask("ping.failed", lambda c: bool(c.ping())) is not None

    def _wait_ping(self) -> bool:
        return wait_until(self._ping, what="docker ping", deadline_s=self.rt.verify_timeout_s)

    def rollback(self) -> ApplyResult:
        """Put daemon.json back as its newest backup holds it, and make docker take it.

        A backup that records an absent file (nodeagent created daemon.json) removes it.
        What rollback replaces is kept as an ``.undone`` copy that no later rollback
        restores, so rolling back twice is rolling back once. The current file may be
        malformed (that is when rollback is needed): it is never parsed to decide
        anything but what docker must do. dockerd's reload only applies keys *present* in
        the file: a removed ``default-runtime`` or runtime stays in effect until a
        restart. So a rollback that removes keys — or replaces a malformed file, whose
        effect on docker is unknown — restarts docker (subject to the live-host rule),
        else reloads.
        """
        writer = self._writer()
        shown = self.host_path
        with writer.session() as s:
            real, _ = s.real_path(self.host_path)
            newest = writer.backups.newest(real)
            if newest is None:
                return ApplyResult(
                    engine=self.name, message=f"{shown}: no backup; nothing to roll back"
                )
            target: Optional[bytes] = None
            old_data: dict[str, Any] = {}
            if not newest.absent:
                backup_shown = str(newest.path)
                target = read_bytes(newest.path, backup_shown)
                if target is None:
                    raise StepFailed(f"{backup_shown}: the backup vanished; nothing changed")
                # never restore what dockerd cannot read
                old_data = jsonedit.parse(decode(target, backup_shown), backup_shown).data
            current = read_bytes(real, shown)
            if current == target:
                state = (
                    f"is already absent, as its newest backup ({newest.path.name}) records"
                    if target is None
                    else f"already matches its newest backup ({newest.path.name})"
                )
                return ApplyResult(
                    engine=self.name, message=f"{shown} {state}; nothing to roll back"
                )
            cur_data: Optional[dict[str, Any]] = {}
            if current is not None:
                try:
                    cur_data = jsonedit.parse(decode(current, shown), shown).data
                except InputError:
                    cur_data = None  # malformed: what docker runs with is unknown
            activation, note = self._rollback_activation(cur_data, old_data, target)
            meta = FileMeta.of_stat(os.stat(real)) if current is not None else FileMeta()
            writer.backups.save(real, current, meta, suffix="undone")
            backup_meta = FileMeta.of_stat(os.stat(newest.path)) if target is not None else meta
            Restore(real, shown, target, backup_meta).undo()
            done = (
                f"removed {shown} (nodeagent had created it; {newest.path.name})"
                if target is None
                else f"restored {shown} from {newest.path.name}"
            )
            if activation != Activation.NONE:
                svc = self._service()
                failed = attempt(svc.reload if activation == Activation.RELOAD else svc.restart)
                if failed is not None:
                    raise StepFailed(
                        f"{done}, but the {activation} failed ({failed}); docker keeps its "
                        "current settings until it restarts"
                    )
                if not self._wait_ping():
                    raise StepFailed(f"{done}, but docker is not answering after the {activation}")
                note = (
                    "; reloaded docker" if activation == Activation.RELOAD else "; restarted docker"
                )
        return ApplyResult(
            engine=self.name,
            written=(self.host_path,),
            activation=activation,
            message=done + note,
        )

    def _rollback_activation(
        self,
        cur: Optional[dict[str, Any]],
        old: dict[str, Any],
        target: Optional[bytes],
    ) -> tuple[Activation, str]:
        """(reload / restart / none, the note that says what docker keeps) for a rollback
        from ``cur`` (None: malformed) to ``old``."""
        if cur is not None and not changed_keys(cur, old):
            return Activation.NONE, "; docker's settings do not change: nothing to reload"
        if cur is None:
            keeps = "whatever it last loaded (the replaced file was malformed)"
            needs_restart = True
        else:
            removed = sorted(set(cur) - set(old))
            keeps = f"{', '.join(removed)}" if removed else "its current settings"
            needs_restart = bool(removed) or not changed_keys(cur, old) <= RELOADABLE_KEYS
        until = f"docker keeps {keeps} until it restarts"
        if self.rt.restart_mode == "none":
            return Activation.NONE, f"; restart_mode none: {until}"
        if not listening(self.dc.host):
            return Activation.NONE, "; docker is not running: it reads the file when it starts"
        if not self._can_signal():
            return Activation.NONE, f"; --root is not / and no pidfile or command: {until}"
        if not needs_restart:
            return Activation.RELOAD, ""
        old_text = target.decode("utf-8") if target is not None else ""
        if self.rt.restart_mode == "reload":
            return Activation.NONE, f"; restart_mode reload: {until}"
        if self._live_containers_at_risk(old_text):
            return Activation.NONE, (
                f"; {until} (a reload does not unset removed keys; containers are running "
                "and live-restore is off): run with --allow-restart to restart now"
            )
        return Activation.RESTART, ""
