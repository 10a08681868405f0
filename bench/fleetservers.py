"""The two API servers a fleet runs against, behind one small interface (:class:`Server`):

* :class:`RealServer`: kube-apiserver 1.20.2 and etcd 3.4 (tests/cluster/), Node,RBAC
  authorization, NodeRestriction, a ``Metadata`` audit log of every request;
* :class:`TestServer`: the test API server (tests/kubeapi/) in a process of its own
  (``bench/kubeapi_serve.py``), so its CPU and memory are its own, not the agents'.

Each says where it listens, which CA its clients' certificates come from, which processes are
the server (for /proc sampling), and what it logged: every completed request as a
:class:`Logged` (wall time, user, verb, resource, HTTP code) — the real one from its audit log,
the test one from its request log. Starts and stops only its own processes, by pid; writes
only under its workdir.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Optional, Protocol

from bench.fleetpki import CA
from tests.cluster.audit import AuditRecord
from tests.cluster.build import binaries
from tests.cluster.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
STOP_S = 15.0
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
METHOD_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class Logged:
    """One completed request as the server logged it."""

    ts: float  # wall clock, seconds since the epoch
    user: str
    verb: str  # get, list, watch, create, patch, ... ("" when the log does not say)
    resource: str  # "nodes", "nodes/status", "events"; "" for other URLs
    code: int

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS


class Server(Protocol):
    """An API server under test."""

    name: str  # as the table's column says it
    url: str
    ca: CA

    def pids(self) -> dict[str, int]:
        """The server's processes by part (``kube-apiserver``, ``etcd`` / ``kubeapi``)."""
        ...

    def logged(self) -> list[Logged]:
        """Every request completed so far, in the order logged."""
        ...


def _stamp(text: str) -> float:
    """An audit stageTimestamp (RFC 3339, microseconds, UTC) as epoch seconds."""
    when = datetime.datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return when.timestamp()


class RealServer:
    """A started :class:`ControlPlane` (the caller's, or one :func:`real_server` starts)."""

    name = "kube-apiserver 1.20.2 + etcd 3.4"

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.url = plane.url
        self.ca = CA(plane.pki.ca_cert, plane.pki.ca_key)

    def pids(self) -> dict[str, int]:
        return {
            name: part.proc.pid
            for name, part in self.plane.parts.items()
            if name in ("kube-apiserver", "etcd") and part.proc is not None
        }

    def logged(self) -> list[Logged]:
        self.plane.settled()  # every answered request is in the file
        out = []
        with self.plane.audit.path.open("rb") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if event.get("stage") != "ResponseComplete":
                    continue
                r = AuditRecord.from_event(event)
                what = "/".join(p for p in (r.resource, r.subresource) if p)
                ts = _stamp(str(event.get("stageTimestamp", "")))
                out.append(Logged(ts, r.user, r.verb, what, r.code))
        return out


@contextmanager
def real_server(workdir: Path) -> Iterator[RealServer]:
    """etcd and kube-apiserver from the cached build (tests/cluster/build.py), stopped after."""
    plane = ControlPlane(workdir, binaries())
    try:
        plane.start()
        yield RealServer(plane)
    finally:
        plane.stop()


def _route(path: str) -> tuple[str, bool]:
    """(resource, names one object) of a core/v1 path: ``nodes``, ``nodes/status``,
    ``events``; ("", False) for any other URL."""
    parts = path.strip("/").split("/")
    if parts[:2] != ["api", "v1"] or len(parts) < 3:
        return "", False
    rest = parts[2:]
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    return "/".join(rest[:1] + rest[2:3]), len(rest) >= 2


def _verb(method: str, named: bool, query: dict[str, str]) -> str:
    if method in METHOD_VERB:
        return METHOD_VERB[method]
    if method != "GET":
        return ""
    if query.get("watch") in ("true", "1"):
        return "watch"
    return "get" if named else "list"


class TestServer:
    """The test API server in a child process (``python -m bench.kubeapi_serve``)."""

    name = "tests/kubeapi (Python)"
    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = (self.dir / "kubeapi.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.kubeapi_serve", str(self.dir / "srv")],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.url = self._line("its URL")
        pki = self.dir / "srv" / "pki"
        self.ca = CA(pki / "ca.crt", pki / "ca.key")

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def _line(self, what: str) -> str:
        line = self._pipes()[1].readline().strip()  # bounded: the child answers or exits
        if not line:
            code = self.proc.poll()
            raise RuntimeError(f"{self.dir / 'kubeapi.log'}: the test API server gave no {what} "
                               f"(exit {code})")  # fmt: skip
        return line

    def pids(self) -> dict[str, int]:
        return {"kubeapi": self.proc.pid}

    def logged(self) -> list[Logged]:
        dump = self.dir / "requests.jsonl"
        stdin, _ = self._pipes()
        stdin.write(f"dump {dump}\n")
        stdin.flush()
        self._line("dump answer")
        out = []
        for line in dump.read_text().splitlines():
            row = json.loads(line)
            resource, named = _route(row["path"])
            verb = _verb(row["method"], named, row["query"])
            out.append(Logged(row["ts"], row["user"], verb, resource, int(row["status"])))
        return out

    def stop(self) -> None:
        """End of stdin stops it; SIGKILL by pid if it does not go in time."""
        stdin, stdout = self._pipes()
        stdin.close()
        try:
            self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_S)
        stdout.close()
        self._log.close()


@contextmanager
def kubeapi_server(workdir: Path) -> Iterator[TestServer]:
    """The test API server in its own process, stopped after."""
    srv: Optional[TestServer] = None
    try:
        srv = TestServer(workdir)
        yield srv
    finally:
        if srv is not None:
            srv.stop()
