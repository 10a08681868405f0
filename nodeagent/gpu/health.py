"""The daemon's memory of critical XIDs: pure data and the rules that clear it.

A critical XID makes the node unready at once; it is forgotten only when the recovery
check passes — ``xid_recovery_s`` without a new critical XID *and* a re-detect finding
every GPU readable (0 means never: only a reboot clears it). The state is tied to the
boot it happened in (``/proc/sys/kernel/random/boot_id``), persisted by the daemon, so a
restarted agent never reports True by forgetting an XID, and a rebooted node starts clean.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class XidRecord:
    gpu: Optional[int]
    xid: int
    at: float  # wall-clock seconds (time.time()): survives the daemon's restart


@dataclasses.dataclass(frozen=True)
class Health:
    """The critical XIDs not yet recovered from, one per GPU (the latest)."""

    active: tuple[XidRecord, ...] = ()

    def record(self, rec: XidRecord) -> Health:
        kept = tuple(r for r in self.active if r.gpu != rec.gpu)
        return Health(active=(*kept, rec))

    @property
    def current(self) -> Optional[XidRecord]:
        """The most recent active XID (the one the condition names)."""
        return max(self.active, key=lambda r: r.at) if self.active else None

    def recovery_due(self, recovery_s: float) -> Optional[float]:
        """When (wall clock) the recovery check may clear the state; None: never/nothing."""
        if not self.active or recovery_s <= 0:
            return None
        return max(r.at for r in self.active) + recovery_s

    def recover(self, now: float, recovery_s: float, gpus_readable: bool) -> Health:
        """Cleared when quiet for ``recovery_s`` and every GPU reads again; else unchanged."""
        due = self.recovery_due(recovery_s)
        if due is not None and now >= due and gpus_readable:
            return Health()
        return self

    def to_json(self, boot_id: str) -> str:
        return json.dumps(
            {"boot_id": boot_id, "xids": [dataclasses.asdict(r) for r in self.active]},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, boot_id: str) -> Health:
        """The saved state if it is from this boot; empty otherwise (a reboot resets GPUs)."""
        try:
            doc: Any = json.loads(text)
            if doc.get("boot_id") != boot_id:
                return cls()
            return cls(
                active=tuple(
                    XidRecord(
                        gpu=None if r.get("gpu") is None else int(r["gpu"]),
                        xid=int(r["xid"]),
                        at=float(r["at"]),
                    )
                    for r in doc.get("xids", [])
                )
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()
