"""What the daemon's threads share: one immutable :class:`Snapshot`, replaced under one lock.

Who writes what (every write goes through :class:`State`, under its lock):

* the reload thread — the config and the :class:`~nodeagent.walk.agent.Agent` built from
  it (:meth:`State.swap_config`);
* whichever thread applies (main at start, the reload thread, the reporter's re-apply; one
  at a time, the daemon's apply lock) — the runtime state and the re-apply backoff;
* the reporter — the runtime state after it re-verifies the runtime;
* the XID watcher (a critical XID) and the reporter (a recovery) — the XID memory, which is
  saved to ``daemon.state_file`` under the same lock, so the file follows the changes in
  order.

Readers take :meth:`State.current` once and use that snapshot: a reload in the middle of a
cycle never gives them half an old config and half a new one. Touches one host file, the
XID state file, through the one reader and the one writer.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Optional

from nodeagent.config import Config
from nodeagent.daemon.schedule import ApplyBackoff
from nodeagent.errors import NodeagentError
from nodeagent.gpu.health import Health
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_optional, read_text
from nodeagent.host.writer import existing_meta, own_meta, write_file
from nodeagent.log import get_logger
from nodeagent.walk.agent import Agent
from nodeagent.walk.steps import RuntimeState

log = get_logger(__name__)


def boot_id(root: HostRoot) -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``); "" when unreadable."""
    return (read_optional(root.path("/proc/sys/kernel/random/boot_id")) or "").strip()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One consistent view of the shared state."""

    cfg: Config
    agent: Agent
    runtime: RuntimeState  # what the last apply or runtime check found
    health: Health  # the critical XIDs not yet recovered from
    reapply: ApplyBackoff  # when a failed bootstrap apply is re-run


class State:
    """The shared state of one daemon (see the module docstring for who writes what)."""

    def __init__(self, cfg: Config, root: HostRoot) -> None:
        self._root = root
        self._boot_id = boot_id(root)
        self._lock = threading.Lock()
        self._now = Snapshot(
            cfg=cfg,
            agent=Agent(cfg, root),
            runtime=RuntimeState(),
            health=self._load_health(cfg),
            reapply=ApplyBackoff(),
        )

    def current(self) -> Snapshot:
        with self._lock:
            return self._now

    def swap_config(self, cfg: Config) -> None:
        """A reload: the new config and a new Agent for it; the old Agent is closed."""
        with self._lock:
            old = self._now.agent
            self._now = dataclasses.replace(self._now, cfg=cfg, agent=Agent(cfg, self._root))
            old.close()

    def set_runtime(self, runtime: RuntimeState) -> None:
        with self._lock:
            self._now = dataclasses.replace(self._now, runtime=runtime)

    def applied(self, runtime: RuntimeState, reapply: ApplyBackoff) -> None:
        """An apply ended: what it found of the runtime, and when to re-run it if it failed."""
        with self._lock:
            self._now = dataclasses.replace(self._now, runtime=runtime, reapply=reapply)

    def change_health(self, change: Callable[[Health], Health]) -> Optional[Health]:
        """Replace the XID memory by ``change(current)``; saved when it changed. Returns
        the new memory, or None when ``change`` left it as it was."""
        with self._lock:
            before = self._now.health
            after = change(before)
            if after is before:
                return None
            self._now = dataclasses.replace(self._now, health=after)
            self._save_health(self._now.cfg, after)
            return after

    # --- the state file (daemon.state_file) -----------------------------------------------

    def _load_health(self, cfg: Config) -> Health:
        host_path = cfg.daemon.state_file
        try:
            found = read_text(self._root.path(host_path), host_path)
        except NodeagentError as e:  # unreadable state: start clean, and say so
            log.error("daemon.state_unreadable", error=str(e))
            found = None
        health = Health.from_json(found.text, self._boot_id) if found else Health()
        if health.active:
            log.warning(
                "daemon.xid_state_restored",
                xids=[(r.gpu, r.xid) for r in health.active],
                file=host_path,
            )
        return health

    def _save_health(self, cfg: Config, health: Health) -> None:
        host_path = cfg.daemon.state_file
        data = (health.to_json(self._boot_id) + "\n").encode()
        try:
            real, _ = self._root.resolve(host_path)
            write_file(real, data, existing_meta(real, own_meta()), host_path)
        except NodeagentError as e:  # the state is a courtesy across restarts: keep running
            log.error("daemon.state_not_saved", error=str(e))
