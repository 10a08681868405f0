"""docker: the nvidia runtime in daemon.json, reloaded not restarted, verified, rolled back.

The walk (see :mod:`nodeagent.runtime.engine`): ``read`` gathers the facts (the file, how
dockerd is started, whether it runs, whether the runtime binary exists); ``plan`` is pure;
``apply`` is the only place that writes or signals. docs/runtime.md explains the choices.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from nodeagent.config import Config
from nodeagent.errors import InputError, StepFailed
from nodeagent.fsutil import Backups, FileMeta, HostLock, read_text_or_none, write_atomic
from nodeagent.log import get_logger
from nodeagent.paths import HostRoot
from nodeagent.retry import wait_until
from nodeagent.runtime import dockerflags, jsonedit
from nodeagent.runtime.engine import (
    ACTIVATE_NONE,
    ACTIVATE_RELOAD,
    ACTIVATE_RESTART,
    ApplyResult,
    FileChange,
    Plan,
)
from nodeagent.runtime.select import unix_socket_path
from nodeagent.runtime.service import ServiceControl, succeeded

log = get_logger(__name__)

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


@dataclasses.dataclass(frozen=True)
class DockerFacts:
    """Everything ``plan`` needs, read from the host by ``read``."""

    text: Optional[str]  # daemon.json as it is, None if absent
    doc: jsonedit.JSONDoc
    flag_sources: tuple[dockerflags.FlagSource, ...]
    running: bool  # docker's API socket exists
    can_signal: bool  # we may reload/restart this docker (see DockerEngine.read)
    runtime_found: bool


def desired(data: dict[str, Any], name: str, path: str, set_default: bool) -> dict[str, Any]:
    """Pure: ``data`` with ``runtimes.<name>`` (and ``default-runtime``) set, keys in place."""
    out = copy.deepcopy(data)
    runtimes = out.setdefault("runtimes", {})
    entry = dict(runtimes.get(name) or {})
    entry["path"] = path
    entry.setdefault("runtimeArgs", [])
    runtimes[name] = entry
    if set_default:
        out["default-runtime"] = name
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}


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

    def read(self) -> DockerFacts:
        text = read_text_or_none(self.path)
        doc = jsonedit.parse(text or "", self.host_path)
        runtimes = doc.data.get("runtimes")
        if runtimes is not None and not isinstance(runtimes, dict):
            line, col = jsonedit.key_position(text or "", "runtimes")
            raise InputError(f"{self.host_path}:{line}:{col}: 'runtimes' must be an object")
        if isinstance(runtimes, dict) and not isinstance(runtimes.get(self.rt.name, {}), dict):
            line, col = jsonedit.key_position(text or "", self.rt.name)
            raise InputError(
                f"{self.host_path}:{line}:{col}: 'runtimes.{self.rt.name}' must be an object"
            )
        sock = unix_socket_path(self.dc.host)
        running = sock is not None and Path(sock).is_socket()
        # With --root pointing elsewhere (image baking), the docker answering on this
        # machine is not the one whose file we edit: only explicit controls may touch it.
        explicit = bool(self.dc.pidfile or self.dc.reload_command or self.dc.restart_command)
        return DockerFacts(
            text=text,
            doc=doc,
            flag_sources=tuple(dockerflags.collect(self.root)),
            running=running,
            can_signal=self.root.is_real_host or explicit,
            runtime_found=self.root.which(self.rt.path) is not None,
        )

    # --- the pure part ------------------------------------------------------------------

    def plan(self, current: object) -> Plan:
        assert isinstance(current, DockerFacts)
        f = current
        other = dockerflags.config_file_flag(f.flag_sources)
        if other and other[1] != self.host_path:
            raise InputError(
                f"{other[0]}: dockerd reads {other[1]} (--config-file), not {self.host_path}; "
                "set runtime.docker.config_file to it"
            )
        new_data = desired(f.doc.data, self.rt.name, self.rt.path, self.rt.set_as_default)
        keys = changed_keys(f.doc.data, new_data)
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
        change = FileChange(path=self.path, host_path=self.host_path, old=f.text, new=new_text)
        activation, reason = self._activation(f, keys)
        return Plan(
            engine=self.name,
            changes=(change,),
            activation=activation,
            reason=reason,
            warnings=tuple(warnings),
        )

    def _activation(self, f: DockerFacts, keys: set[str]) -> tuple[str, str]:
        mode = self.rt.restart_mode
        if mode == "none":
            return ACTIVATE_NONE, "restart_mode none: write only"
        if not f.running:
            return ACTIVATE_NONE, "docker is not running: it reads the file when it starts"
        if not f.can_signal:
            return ACTIVATE_NONE, "--root is not / and no pidfile or command is configured"
        if mode == "restart":
            return ACTIVATE_RESTART, "restart_mode restart"
        if keys <= RELOADABLE_KEYS:
            return ACTIVATE_RELOAD, f"only reloadable keys change ({', '.join(sorted(keys))})"
        if mode == "reload":
            raise InputError(
                f"restart_mode reload, but {', '.join(sorted(keys - RELOADABLE_KEYS))} "
                "need a restart"
            )
        return ACTIVATE_RESTART, "keys that need a restart change"

    # --- the imperative shell -----------------------------------------------------------

    def _service(self) -> ServiceControl:
        return ServiceControl(
            unit=self.dc.service,
            reload_command=self.dc.reload_command,
            restart_command=self.dc.restart_command,
            pidfile=self.root.path(self.dc.pidfile) if self.dc.pidfile else None,
        )

    def apply(self, plan: Plan) -> ApplyResult:
        if not plan.changed:
            return ApplyResult(engine=self.name, verified=True, message="unchanged")
        backups = Backups(self.root.path(self.config.backup_dir), self.config.backup_keep)
        with HostLock(self.root.path(self.config.lock_file)):
            if read_text_or_none(self.path) != plan.changes[0].old:
                # Another writer (another agent) got there first: plan again under the lock.
                plan = self.plan(self.read())
                if not plan.changed:
                    return ApplyResult(engine=self.name, verified=True, message="unchanged")
            (change,) = plan.changes
            if plan.activation == ACTIVATE_RESTART:
                self._refuse_surprise_restart(change.old)
            backup = backups.save(self.path)
            meta = FileMeta.of(self.path, FileMeta(uid=0, gid=0, mode=0o644))
            write_atomic(self.path, change.new, meta)
            log.info("docker.written", path=self.host_path, backup=str(backup or ""))
            if plan.activation == ACTIVATE_NONE:
                return ApplyResult(
                    engine=self.name,
                    written=(self.host_path,),
                    message=plan.reason,
                )
            return self._activate(plan.activation, change, backup)

    def _activate(self, activation: str, change: FileChange, backup: Optional[Path]) -> ApplyResult:
        svc = self._service()
        if activation == ACTIVATE_RELOAD:
            if self._try(svc.reload) and self._wait_verified():
                return ApplyResult(
                    engine=self.name,
                    written=(self.host_path,),
                    activation=ACTIVATE_RELOAD,
                    verified=True,
                )
            log.warning("docker.reload_did_not_take")
            if self.rt.restart_mode != "auto" or self._live_containers_at_risk(change.new):
                self._restore(change, backup)
                svc.reload()
                raise StepFailed(
                    f"docker did not take the new {self.host_path} on reload (see docker's "
                    "log); the old file is restored. A restart would stop running containers: "
                    "run with --allow-restart to allow it"
                )
        if self._try(svc.restart) and self._wait_verified():
            return ApplyResult(
                engine=self.name,
                written=(self.host_path,),
                activation=ACTIVATE_RESTART,
                verified=True,
                message="reload did not take; restarted" if activation == ACTIVATE_RELOAD else "",
            )
        # Docker did not come back with the runtime: put the old file back, restart once
        # more (one restart + one rollback restart fits docker.service's StartLimitBurst=3).
        self._restore(change, backup)
        back = self._try(svc.restart) and self._wait_ping()
        raise StepFailed(
            f"docker did not come back with the nvidia runtime after a restart; restored the "
            f"previous {self.host_path} and restarted docker "
            + ("(it is running again)" if back else "(it is NOT answering: check its log)")
        )

    def _restore(self, change: FileChange, backup: Optional[Path]) -> None:
        if change.old is None:
            self.path.unlink(missing_ok=True)
        else:
            meta = FileMeta.of(backup) if backup else FileMeta.of(self.path)
            write_atomic(self.path, change.old, meta)
        log.warning("docker.rolled_back", path=self.host_path)

    def _client(self) -> Any:
        import docker  # lazy: planning and --dry-run never import the SDK

        return docker.DockerClient(base_url=self.dc.host, timeout=5)

    def _live_containers_at_risk(self, text: Optional[str]) -> bool:
        """Whether a restart now would stop running containers (live-restore off)."""
        if self.rt.allow_restart:
            return False
        doc = jsonedit.parse(text or "", self.host_path)
        if doc.data.get("live-restore") is True:
            return False
        try:
            client = self._client()
            try:
                return bool(client.containers.list())
            finally:
                client.close()
        except Exception as e:  # docker not answering: nothing runs through it
            log.info("docker.containers_unknown", error=str(e))
            return False

    def _refuse_surprise_restart(self, text: Optional[str]) -> None:
        if self._live_containers_at_risk(text):
            raise StepFailed(
                "docker must restart for this change, live-restore is off and containers are "
                "running: a restart would stop them. Run with --allow-restart (or set "
                "runtime.allow_restart), or enable live-restore first"
            )

    def verify(self) -> bool:
        """One look: docker answers and lists the runtime (as default, if asked)."""
        try:
            client = self._client()
            try:
                client.ping()
                info = client.info()
            finally:
                client.close()
        except Exception as e:
            log.info("docker.verify.unreachable", error=str(e))
            return False
        ok = self.rt.name in (info.get("Runtimes") or {})
        if self.rt.set_as_default:
            ok = ok and info.get("DefaultRuntime") == self.rt.name
        return ok

    def _try(self, action: Callable[[], None]) -> bool:
        return succeeded(action, self.dc.service)

    def _wait_verified(self) -> bool:
        return wait_until(self.verify, what="docker verify", deadline_s=self.rt.verify_timeout_s)

    def _ping(self) -> bool:
        try:
            client = self._client()
            try:
                client.ping()
            finally:
                client.close()
        except Exception as e:
            log.info("docker.ping.failed", error=str(e))
            return False
        return True

    def _wait_ping(self) -> bool:
        return wait_until(self._ping, what="docker ping", deadline_s=self.rt.verify_timeout_s)

    def rollback(self) -> ApplyResult:
        """Restore the newest backup of daemon.json and make docker take it.

        dockerd's reload only applies keys *present* in the file: a removed
        ``default-runtime`` or runtime stays in effect until a restart. So a rollback that
        removes keys restarts docker (subject to the live-host rule), else reloads.
        """
        backups = Backups(self.root.path(self.config.backup_dir), self.config.backup_keep)
        with HostLock(self.root.path(self.config.lock_file)):
            newest = backups.newest(self.path)
            if newest is None:
                raise StepFailed(f"no backup of {self.host_path} to restore")
            old = newest.read_text()
            old_doc = jsonedit.parse(old, str(newest))  # never restore what dockerd can't read
            current = read_text_or_none(self.path)
            if current == old:
                return ApplyResult(engine=self.name, message=f"{self.host_path} already restored")
            cur_data = jsonedit.parse(current or "", self.host_path).data
            removed = sorted(set(cur_data) - set(old_doc.data))
            facts = self.read()
            activation = ACTIVATE_NONE
            note = ""
            if facts.running and facts.can_signal and self.rt.restart_mode != "none":
                activation = ACTIVATE_RESTART if removed else ACTIVATE_RELOAD
                if removed and self._live_containers_at_risk(old):
                    activation = ACTIVATE_NONE
                    note = (
                        f"; docker keeps {', '.join(removed)} until it restarts (a reload does "
                        "not unset removed keys); run with --allow-restart to restart now"
                    )
            backups.save(self.path)
            write_atomic(self.path, old, FileMeta.of(newest))
            svc = self._service()
            if activation != ACTIVATE_NONE:
                action = svc.reload if activation == ACTIVATE_RELOAD else svc.restart
                try:
                    action()
                except StepFailed as e:
                    msg = f"restored {self.host_path}, but the {activation} failed: {e}"
                    raise StepFailed(msg) from None
            if activation != ACTIVATE_NONE and not self._wait_ping():
                raise StepFailed(f"restored {self.host_path}, but docker is not answering")
        return ApplyResult(
            engine=self.name,
            written=(self.host_path,),
            activation=activation,
            message=f"restored {self.host_path} from {newest.name}; {activation}{note}",
        )
