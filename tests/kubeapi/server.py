"""The public face of the test API server: lifecycle, credentials and kubeconfigs, faults,
the request log, RBAC grants, and direct store access that behaves like a real write.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
import ssl
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from . import status
from .api import API
from .authz import Authorizer, User
from .certs import PKI
from .resources import EVENTS, NAMESPACES, NODES
from .schema import format_time, roundtrip
from .store import Store
from .transport import Fault, Frontend, Listener, RequestRecord

CLUSTER = "kubeapi-test"


class KubeAPIServer:
    """A faithful stand-in for kube-apiserver (nodes, events, namespaces) for tests."""

    def __init__(self, workdir: Path, *, history: int = 1000) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pki = PKI(self.workdir / "pki")
        self._store = Store(history=history)
        self.authorizer = Authorizer()
        self._api = API(self._store, self.authorizer, lambda: self.url.split("//", 1)[1])
        self._frontend = Frontend(self._api)
        self._httpd: Optional[Listener] = None
        self._thread: Optional[threading.Thread] = None
        self._port = 0
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._put_direct(
                NAMESPACES,
                {
                    "metadata": {"name": ns},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        """Listen on 127.0.0.1 and serve in a daemon thread.

        The first start takes an ephemeral port; starting again after :meth:`stop` reuses it
        (an API server restart: same URL, same objects, watches and connections cut).
        """
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._store.reopen()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self._pki.server_cert), str(self._pki.server_key))
        ctx.load_verify_locations(str(self._pki.ca_cert))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["http/1.1"])
        self._httpd = Listener(self._frontend, ctx, self._port)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kubeapi",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: end watches, close connections and the listening socket."""
        self._store.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_all()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (only once started)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def port(self) -> int:
        """The listening port."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def bookmark_interval(self) -> float:
        """Seconds between BOOKMARK events on watches that allow them (real: about a minute)."""
        return self._api.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self._api.bookmark_interval = seconds

    # --- credentials -----------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) that signed the server and client certificates."""
        return self._pki.ca_cert

    def client_cert(self, cn: str, orgs: Sequence[str] = ()) -> tuple[Path, Path]:
        """(cert PEM, key PEM) for user ``cn`` in groups ``orgs``, signed by the CA."""
        return self._pki.client_cert(cn, orgs)

    def expired_client_cert(self, cn: str, orgs: Sequence[str] = ()) -> tuple[Path, Path]:
        """(cert, key) signed by the CA but already expired: the TLS handshake fails."""
        return self._pki.expired_client_cert(cn, orgs)

    def token(self, user: str, groups: Sequence[str] = ()) -> str:
        """A bearer token that authenticates as ``user`` in ``groups``."""
        tok = secrets.token_urlsafe(24)
        self._frontend.add_token(tok, User(user, (*tuple(groups), "system:authenticated")))
        return tok

    def kubeconfig(
        self,
        path: Path,
        *,
        user: str,
        groups: Sequence[str] = (),
        auth: str = "cert",
        ca: Optional[Path] = None,
    ) -> Path:
        """Write a kubeconfig for ``user``/``groups`` using a client cert or a token."""
        if auth == "cert":
            cert, key = self.client_cert(user, groups)
            creds: dict[str, Any] = {"client-certificate": str(cert), "client-key": str(key)}
        elif auth == "token":
            creds = {"token": self.token(user, groups)}
        else:
            raise ValueError(f"auth must be 'cert' or 'token', not {auth!r}")
        context = f"{user}@{CLUSTER}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CLUSTER,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(ca or self.ca_path),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": context, "context": {"cluster": CLUSTER, "user": user}}],
            "current-context": context,
            "preferences": {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def admin_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for user ``admin`` in ``system:masters`` (client certificate)."""
        return self.kubeconfig(path, user="admin", groups=["system:masters"])

    def node_kubeconfig(self, path: Path, node_name: str) -> Path:
        """A kubelet-style kubeconfig: ``system:node:<name>`` in ``system:nodes`` (cert)."""
        return self.kubeconfig(path, user=f"system:node:{node_name}", groups=["system:nodes"])

    def grant(self, user: str, resources: Sequence[str], verbs: Sequence[str]) -> None:
        """RBAC-style: let ``user`` do ``verbs`` on ``resources`` (e.g. ``["nodes/status"]``)."""
        self.authorizer.grant(user, resources, verbs)

    # --- faults and the request log --------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order injected."""
        self._frontend.inject(fault)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request so far, oldest first."""
        return self._frontend.records()

    def clear_requests(self) -> None:
        """Forget the requests logged so far."""
        self._frontend.clear()

    def writes(self) -> int:
        """How many of the requests so far were writes (POST, PUT, PATCH, DELETE)."""
        return sum(1 for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE"))

    # --- direct store access ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion (the last write's)."""
        return self._store.rv

    def _put_direct(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        decoded, unknown = roundtrip(obj, res.schema)
        if unknown:
            raise ValueError(f"unknown fields: {unknown}")
        meta = decoded["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        if not meta.get("creationTimestamp"):
            meta["creationTimestamp"] = format_time(dt.datetime.now(dt.timezone.utc))
        meta.pop("resourceVersion", None)
        causes = res.validate(decoded)
        if causes:
            raise ValueError(status.invalid(res.kind, meta.get("name", ""), causes).message)
        with self._store.lock:
            if self._store.get(res.name, (meta.get("namespace", ""), meta["name"])) is not None:
                raise ValueError(f'{res.name} "{meta["name"]}" already exists')
            return self._typed(res, self._store.create(res.name, decoded))

    @staticmethod
    def _typed(res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": res.kind,
            "apiVersion": "v1",
            **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
        }

    def create_node(
        self,
        name: str,
        labels: Optional[dict[str, str]] = None,
        annotations: Optional[dict[str, str]] = None,
        taints: Optional[list[dict[str, Any]]] = None,
        capacity: Optional[dict[str, Any]] = None,
        allocatable: Optional[dict[str, Any]] = None,
        conditions: Optional[list[dict[str, Any]]] = None,
    ) -> dict[str, Any]:
        """Create a Node directly (no authz/admission), as the stored object."""
        obj: dict[str, Any] = {
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"taints": taints or []},
            "status": {
                "capacity": capacity or {},
                "allocatable": allocatable if allocatable is not None else (capacity or {}),
                "conditions": conditions or [],
            },
        }
        return self._put_direct(NODES, obj)

    def get_node(self, name: str) -> Optional[dict[str, Any]]:
        """The stored Node (a copy), or None."""
        obj = self._store.get("nodes", ("", name))
        return self._typed(NODES, obj) if obj is not None else None

    def update_node(self, name: str, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Mutate a copy of the node with ``fn`` and store it (a real write: new RV, event)."""
        with self._store.lock:
            current = self._store.get("nodes", ("", name))
            if current is None:
                raise KeyError(f'nodes "{name}" not found')
            changed = self._typed(NODES, copy.deepcopy(current))
            fn(changed)
            decoded, unknown = roundtrip(changed, NODES.schema)
            if unknown:
                raise ValueError(f"unknown fields: {unknown}")
            meta = decoded["metadata"]
            meta["name"] = name
            for k in ("uid", "creationTimestamp"):  # system fields are not the caller's to drop
                meta[k] = meta.get(k) or current["metadata"].get(k)
            return self._typed(NODES, self._store.update("nodes", decoded))

    def delete_node(self, name: str) -> None:
        """Delete a Node directly (new RV, DELETED event); KeyError if missing."""
        with self._store.lock:
            if self._store.get("nodes", ("", name)) is None:
                raise KeyError(f'nodes "{name}" not found')
            self._store.delete("nodes", ("", name))

    def node_condition(self, name: str, ctype: str) -> dict[str, Any]:
        """The condition of type ``ctype`` on Node ``name`` as stored; {} when either is
        missing."""
        node = self.get_node(name) or {}
        for c in (node.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return {}

    def nodes(self) -> list[dict[str, Any]]:
        """All stored Nodes, by name."""
        return [self._typed(NODES, o) for o in self._store.objects("nodes")]

    def events(self) -> list[dict[str, Any]]:
        """Events created so far in all namespaces, oldest first."""
        items = self._store.objects("events", by_key=False)
        return [self._typed(EVENTS, e) for e in items]


__all__ = ["Fault", "KubeAPIServer", "RequestRecord"]
