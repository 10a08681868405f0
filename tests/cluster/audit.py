"""The real API server's audit log, read as typed records: who did what, and what it answered.

kube-apiserver writes one JSON line per request (``--audit-log-path``, a ``Metadata`` policy
that omits the ``RequestReceived`` and ``ResponseStarted`` stages, so each request is one
``ResponseComplete`` line). The tests count requests and writes with it and prove there was
never a 403. This module only reads the log file; it may not talk to the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The policy the control plane starts with (``--audit-policy-file``).
POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
"""

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class AuditRecord:
    """One completed request as the API server logged it."""

    audit_id: str
    user: str
    groups: tuple[str, ...]
    verb: str
    resource: str  # "" for a non-resource URL (/readyz, /version, ...)
    subresource: str
    namespace: str
    name: str
    code: int
    uri: str
    user_agent: str

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    def __str__(self) -> str:
        what = "/".join(p for p in (self.resource, self.name, self.subresource) if p) or self.uri
        return f"{self.user} {self.verb} {what} -> {self.code}"

    @classmethod
    def from_event(cls, event: dict[str, object]) -> AuditRecord:
        """A record from one audit.k8s.io/v1 Event (a JSON object of the log)."""
        user = event.get("user") or {}
        ref = event.get("objectRef") or {}
        status = event.get("responseStatus") or {}
        assert isinstance(user, dict) and isinstance(ref, dict) and isinstance(status, dict)
        return cls(
            audit_id=str(event.get("auditID", "")),
            user=str(user.get("username", "")),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            verb=str(event.get("verb", "")),
            resource=str(ref.get("resource", "")),
            subresource=str(ref.get("subresource", "")),
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int(status.get("code", 0) or 0),
            uri=str(event.get("requestURI", "")),
            user_agent=str(event.get("userAgent", "")),
        )


class AuditLog:
    """The audit log file, read from a mark on (``mark()`` then ``since(mark)``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position in the log: :meth:`since` returns what was logged after it."""
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int = 0) -> list[AuditRecord]:
        """The completed requests logged after ``mark`` (a torn last line is left for later)."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(mark)
            data = f.read()
        out = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:  # the line being written
                continue
            if event.get("stage") == "ResponseComplete":
                out.append(AuditRecord.from_event(event))
        return out


def by_user(records: Iterable[AuditRecord], *users: str) -> list[AuditRecord]:
    """The records of ``users``."""
    return [r for r in records if r.user in users]


def writes(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """The records that changed (or tried to change) something."""
    return [r for r in records if r.is_write]


def refused(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """The requests answered 403 Forbidden."""
    return [r for r in records if r.code == 403]


def show(records: Sequence[AuditRecord]) -> str:
    """One line per record, for an assertion's message."""
    return "\n".join(str(r) for r in records) or "(none)"
