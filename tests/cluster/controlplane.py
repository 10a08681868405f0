"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, and on demand the scheduler
and the controller-manager, from the binaries ``build.py`` caches.

The API server runs as a cluster's does where it matters to the agent: client-certificate
authentication from an openssl CA (``tests/kubeapi/certs.py``), ``--authorization-mode=Node,RBAC``,
``--enable-admission-plugins=NodeRestriction``, and an audit log (``audit.py``) the tests read to
count requests and find 403s. Identities are client certificates: the admin
(``O=system:masters``), nodes (``CN=system:node:NAME, O=system:nodes``) and the controller's
service account (``CN=system:serviceaccount:nodeagent-system:nodeagent-controller``); each gets a
kubeconfig in the format the agent reads. ``apply_controller_rbac`` creates exactly the
Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding of ``deploy/controller.yaml``.

Every wait is bounded (``nodeagent.retry.wait_until``); the processes' output goes to
``<workdir>/logs/``; ``stop()`` ends what ``start()`` started (SIGTERM, then SIGKILL), by pid.
This module may not touch the machine outside ``workdir`` and the build cache.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from nodeagent.retry import wait_until
from tests.cluster.audit import POLICY, AuditLog, AuditRecord
from tests.cluster.build import KubeBinaries
from tests.kubeapi.certs import PKI

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_YAML = REPO / "deploy" / "controller.yaml"
#: The kinds of deploy/controller.yaml that make the controller's identity and its rights.
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
CLUSTER = "real-1.20"
READY_DEADLINE_S = 60.0
STOP_GRACE_S = 10.0


class ControlPlaneError(RuntimeError):
    """A part did not start or answer in time (the message names its log)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a client certificate says it is."""

    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("nodeagent-test-admin", ("system:masters",))
CONTROLLER = Identity(
    "system:serviceaccount:nodeagent-system:nodeagent-controller",
    ("system:serviceaccounts", "system:serviceaccounts:nodeagent-system"),
)


def node_identity(name: str) -> Identity:
    """The kubelet's identity for Node ``name`` (NodeRestriction reads it)."""
    return Identity(f"system:node:{name}", ("system:nodes",))


@dataclasses.dataclass(frozen=True)
class Response:
    """An admin request's answer: the HTTP status and the JSON body ({} when not JSON)."""

    status: int
    body: dict[str, Any]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Part:
    """One process of the control plane, its output in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started_at = 0.0  # time.monotonic() at start

    def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_GRACE_S)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class ControlPlane:
    """etcd + kube-apiserver under ``workdir``; the scheduler and controller-manager on demand."""

    def __init__(self, workdir: Path, bins: KubeBinaries) -> None:
        self.dir = workdir
        self.bins = bins
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = PKI(workdir / "pki")
        self.audit = AuditLog(self.logs / "audit.log")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.parts: dict[str, Part] = {}
        self._sa_key = workdir / "pki" / "service-account.key"
        self.started_in_s = 0.0  # etcd start to /readyz ok, measured by start()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> ControlPlane:
        begin = time.monotonic()
        self._openssl("genrsa", "-out", str(self._sa_key), "2048")
        self._start_etcd()
        self._start_apiserver()
        self.started_in_s = time.monotonic() - begin
        return self

    def stop(self) -> None:
        """Stop every part, newest first (the API server before etcd)."""
        for part in reversed(list(self.parts.values())):
            part.stop()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self, lines: int = 30) -> str:
        """Each part's state and the tail of its log (for a failure's message)."""
        out = []
        for name, part in self.parts.items():
            state = "running" if part.running() else f"exited {part.proc and part.proc.poll()}"
            out.append(f"--- {name} ({state}; {part.log}) ---\n{part.tail(lines)}")
        return "\n".join(out)

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]}: {proc.stderr.strip()}")

    def _launch(self, name: str, argv: Sequence[str]) -> Part:
        part = Part(name, argv, self.logs / f"{name}.log")
        self.parts[name] = part
        part.start()
        return part

    def _wait(self, part: Part, what: str, probe: Any) -> None:
        def ok() -> bool:
            if not part.running():
                raise ControlPlaneError(f"{part.log}: {part.name} exited: {part.tail(10)}")
            return bool(probe())

        if not wait_until(ok, what=what, deadline_s=READY_DEADLINE_S):
            raise ControlPlaneError(
                f"{part.log}: {what} not within {READY_DEADLINE_S:.0f} s: {part.tail(10)}"
            )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        part = self._launch(
            "etcd",
            [
                str(self.bins.etcd),
                "--name", "default",
                "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", self.etcd_url,
                "--advertise-client-urls", self.etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                "--logger", "zap",
                "--log-level", "warn",
            ],
        )  # fmt: skip

        def healthy() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", client, timeout=2)
            try:
                conn.request("GET", "/health")
                return b'"health":"true"' in conn.getresponse().read()
            except OSError:
                return False
            finally:
                conn.close()

        self._wait(part, "etcd /health", healthy)

    def _start_apiserver(self) -> None:
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(POLICY)
        part = self._launch(
            "kube-apiserver",
            [
                str(self.bins.path("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--tls-cert-file={self.pki.server_cert}",
                f"--tls-private-key-file={self.pki.server_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-key-file={self._sa_key}",
                f"--service-account-signing-key-file={self._sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--api-audiences=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/24",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit.path}",
                "--audit-log-maxsize=0",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
            ],
        )
        self._wait(part, "kube-apiserver /readyz", lambda: self.get("/readyz").status == 200)

    def start_scheduler(self) -> None:
        """kube-scheduler with its own identity (``system:kube-scheduler``)."""
        self._start_component("kube-scheduler", "system:kube-scheduler")

    def start_controller_manager(self) -> None:
        """kube-controller-manager (``system:kube-controller-manager``); it signs SA tokens."""
        self._start_component(
            "kube-controller-manager",
            "system:kube-controller-manager",
            f"--service-account-private-key-file={self._sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=true",
        )

    def _start_component(self, name: str, user: str, *extra: str) -> None:
        """A control-plane component with identity ``user``: its kubeconfig for the API and
        for delegated authn/authz, no leader election, its own serving port; up once it has
        run 2 s (a bad flag or credential ends it sooner)."""
        kc = self.kubeconfig(Identity(user))
        part = self._launch(
            name,
            [
                str(self.bins.path(name)),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--port=0",
                f"--cert-dir={self.dir / (name.removeprefix('kube-') + '-certs')}",
                *extra,
            ],
        )
        self._wait(part, f"{name} running", lambda: self._running_for(part, 2.0))

    @staticmethod
    def _running_for(part: Part, seconds: float) -> bool:
        """Still up ``seconds`` after its start (a bad flag or credential ends it sooner)."""
        return part.running() and time.monotonic() - part.started_at >= seconds

    # --- identities ---------------------------------------------------------------------

    def kubeconfig(self, who: Identity, path: Optional[Path] = None) -> Path:
        """A kubeconfig for ``who`` (a client certificate from the CA), as the agent reads them."""
        cert, key = self.pki.client_cert(who.user, who.groups)
        path = path or self.dir / "kubeconfigs" / f"{who.user.replace(':', '_')}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CLUSTER,
                    "cluster": {"server": self.url, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [{"name": who.user, "user": {"client-certificate": str(cert),
                                                  "client-key": str(key)}}],
            "contexts": [{"name": who.user, "context": {"cluster": CLUSTER, "user": who.user}}],
            "current-context": who.user,
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # --- admin requests -----------------------------------------------------------------

    def _context(self, who: Identity) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.client_cert(who.user, who.groups)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        *,
        content_type: str = "application/json",
        who: Identity = ADMIN,
    ) -> Response:
        """One HTTPS request as ``who`` (the admin unless said), its JSON answer."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self._context(who), timeout=20
        )
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError:
            return Response(0, {})
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return Response(resp.status, parsed if isinstance(parsed, dict) else {})

    def get(self, path: str, who: Identity = ADMIN) -> Response:
        return self.request("GET", path, who=who)

    def must(self, response: Response, *ok: int) -> dict[str, Any]:
        """``response``'s body when its status is one of ``ok`` (default 200/201)."""
        if response.status not in (ok or (200, 201)):
            raise ControlPlaneError(f"{self.url}: HTTP {response.status}: {response.body}")
        return response.body

    def create_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] = {},
        taints: Sequence[Mapping[str, str]] = (),
        capacity: Mapping[str, str] = {},
        who: Identity = ADMIN,
    ) -> dict[str, Any]:
        """Register Node ``name`` as the kubelet would (labels, taints, capacity in status)."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"taints": [dict(t) for t in taints]},
            "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
        }
        return self.must(self.request("POST", "/api/v1/nodes", node, who=who))

    def node(self, name: str) -> Optional[dict[str, Any]]:
        r = self.get(f"/api/v1/nodes/{name}")
        return None if r.status == 404 else self.must(r, 200)

    def set_capacity(self, name: str, capacity: Mapping[str, str]) -> None:
        """What a device plugin does through the kubelet: ``status.capacity`` (and allocatable)."""
        patch = {"status": {"capacity": dict(capacity), "allocatable": dict(capacity)}}
        self.must(
            self.request(
                "PATCH",
                f"/api/v1/nodes/{name}/status",
                patch,
                content_type="application/merge-patch+json",
            ),
            200,
        )

    def events(self, node: str, namespace: str = "default") -> list[dict[str, Any]]:
        """The Events about Node ``node``, oldest first (etcd lists them by name: sorted here
        by resourceVersion, which etcd's revision makes increase with every write)."""
        items = self.must(self.get(f"/api/v1/namespaces/{namespace}/events"), 200)["items"]
        mine = [e for e in items if e["involvedObject"].get("name") == node]
        return sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def apply_controller_rbac(self, source: Path = CONTROLLER_YAML) -> list[str]:
        """Create the Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding of
        ``source``, exactly as written there; returns ``Kind/name`` of each."""
        made = []
        for doc in yaml.safe_load_all(source.read_text()):
            if not doc or doc.get("kind") not in RBAC_KINDS:
                continue
            meta = doc["metadata"]
            kind, ns = doc["kind"], meta.get("namespace", "")
            path = {
                "Namespace": "/api/v1/namespaces",
                "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
                "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            }[kind]
            self.must(self.request("POST", path, doc), 201, 409)
            made.append(f"{kind}/{meta['name']}")
        return made

    # --- the audit log ------------------------------------------------------------------

    def settled(self, since: int = 0) -> list[AuditRecord]:
        """The audit records after ``since``, once everything answered before now is logged.

        The server logs a request as it completes, so a client may read its answer a moment
        before the line is written: a marker request (a GET of a ConfigMap nobody has) goes
        last, and its line is waited for.
        """
        marker = f"audit-marker-{uuid.uuid4().hex[:12]}"
        self.get(f"/api/v1/namespaces/default/configmaps/{marker}")
        found: list[AuditRecord] = []

        def logged() -> bool:
            found[:] = self.audit.since(since)
            return any(r.name == marker for r in found)

        if not wait_until(logged, what="the audit log's marker line", deadline_s=20.0):
            raise ControlPlaneError(f"{self.audit.path}: marker {marker} not logged in 20 s")
        return [r for r in found if r.name != marker]
