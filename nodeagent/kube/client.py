"""The agent's API calls on its own Node, with the kubelet's credential, behind one class.

Built on the official ``kubernetes`` client (imported here, never on the CLI's fast paths),
with three things it does not do by itself:

* **one retry policy** (:mod:`nodeagent.retry`): 429 (honouring ``Retry-After``), 5xx and
  connection errors are retried with full-jitter backoff inside a deadline; 400, 401, 403,
  404 (except reads) and 422 are final and become one clear line naming the credential or
  the field; 409 is raised as :class:`Conflict` so the caller re-reads and re-applies.
  urllib3's own retries are off, so a PATCH is never silently sent twice.
* **credential rotation**: the kubelet rotates its client certificate
  (``/var/lib/kubelet/pki/kubelet-client-current.pem``); the client is rebuilt whenever the
  kubeconfig, or a certificate, key or token file it names, changes (inode, size, mtime).
* **plain JSON**: responses are read as JSON (``_preload_content=False``), not the
  generated models, so fields the client does not know survive and patches stay data; the
  own Node's calls (:class:`NodeAPI`) return it parsed once as a typed
  :class:`~nodeagent.kube.node.Node`, the controller's calls on any Node the JSON.
* **a true deadline**: every request's socket timeout is bounded by what is left of the
  call's deadline, and "gave up after N s" states the time that really passed.

The kubeconfig is read through the one host reader and shape-checked here
(:func:`read_kubeconfig`) before the kubernetes loader sees it, so a garbage file is one
line (exit 2) for ``run``, ``apply`` and ``check``'s credential probe alike.

Talks to the API server and reads the kubeconfig; writes no host file. May import the host
reader, retry and the Node view; never the walk, the daemon or the runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import ssl
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from nodeagent.errors import InputError, StepFailed
from nodeagent.kube.node import Node
from nodeagent.log import get_logger
from nodeagent.retry import Retryable, call_with_retry, retry_after_seconds, status_is_retryable

log = get_logger(__name__)

T = TypeVar("T")


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# A deadline that is not a finite, positive number of seconds (config validation refuses
# those; this client does not trust it) becomes the default, a huge one the cap.
DEFAULT_DEADLINE_S = 60.0
MAX_DEADLINE_S = 3600.0


def bounded_s(value: float, default: float = DEFAULT_DEADLINE_S) -> float:
    """``value`` as a usable wait: NaN or <= 0 is ``default``, above an hour is an hour."""
    if math.isnan(value) or value <= 0:
        return default
    return min(value, MAX_DEADLINE_S)


class Conflict(Exception):
    """409: the object changed under us; re-read and re-apply."""


class APIRefused(StepFailed):
    """A final answer from the API server (400/401/403/404/422), as one clear line."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _file_stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()  # follows the kubelet's -current.pem symlink
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class Kubeconfig:
    """What the agent needs to know of a kubeconfig: the files its current context names."""

    path: Path
    server: str
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    token_file: Optional[Path] = None

    @property
    def files(self) -> list[Path]:
        """The kubeconfig and every file of its current context (watched for rotation)."""
        named = (self.ca_file, self.cert_file, self.key_file, self.token_file)
        return [self.path, *(p for p in named if p is not None)]


def _named(doc: dict[str, Any], shown: str, section: str, name: object) -> dict[str, Any]:
    """The ``section`` entry (clusters, users, contexts) called ``name``: its inner mapping."""
    from nodeagent.host.reader import expect

    entries = doc.get(section)
    expect(entries, list, shown, section)
    assert isinstance(entries, list)
    for i, entry in enumerate(entries):
        expect(entry, dict, shown, f"{section}[{i}]")
        if entry.get("name") == name:
            key = section[:-1]  # clusters[i].cluster, users[i].user, contexts[i].context
            inner = entry.get(key)
            expect(inner, dict, shown, f"{section}[{i}].{key}")
            assert isinstance(inner, dict)
            return inner
    raise InputError(f"{shown}: no entry in '{section}' named {name!r}")


def read_kubeconfig(path: Path, shown: Optional[str] = None) -> Kubeconfig:
    """The kubeconfig at ``path``, read by the one host reader and shape-checked: a mapping
    whose ``current-context`` names a context whose cluster and user exist. Raises
    :class:`InputError` naming the file (and the key) for anything else."""
    import yaml

    from nodeagent.host.reader import expect, read_text

    shown = shown or str(path)
    text = read_text(path, shown)
    if text is None:
        raise InputError(f"{shown}: kubeconfig not found (set kube.kubeconfig)")
    try:
        doc = yaml.safe_load(text.text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{shown}{where}: invalid YAML: {e.problem or e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise InputError(f"{shown}: invalid YAML: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{shown}: a kubeconfig is a mapping, not {_type(doc)}")
    current = doc.get("current-context")
    if not current:
        raise InputError(f"{shown}: no current-context")
    expect(current, str, shown, "current-context")
    ctx = _named(doc, shown, "contexts", current)
    cluster = _named(doc, shown, "clusters", ctx.get("cluster"))
    user = _named(doc, shown, "users", ctx.get("user"))
    server = cluster.get("server")
    expect(server, str, shown, "clusters[].cluster.server", "the API server's URL")

    def file(section: dict[str, Any], key: str, where: str) -> Optional[Path]:
        value = section.get(key)
        if value is None or value == "":
            return None
        expect(value, str, shown, f"{where}.{key}", "a file path")
        p = Path(value)
        return p if p.is_absolute() else path.parent / p

    return Kubeconfig(
        path=path,
        server=str(server),
        ca_file=file(cluster, "certificate-authority", "clusters[].cluster"),
        cert_file=file(user, "client-certificate", "users[].user"),
        key_file=file(user, "client-key", "users[].user"),
        token_file=file(user, "tokenFile", "users[].user"),
    )


def _type(value: object) -> str:
    from nodeagent.host.reader import type_name

    return type_name(value)


def certificate_not_after(path: Path) -> Optional[datetime.datetime]:
    """When a PEM certificate expires, or None if it cannot be read."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, ValueError):
        return None
    stamp = ssl.cert_time_to_seconds(decoded["notAfter"])
    return datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc)


class StreamStop:
    """Ends a watch stream from another thread: the reader blocked on it returns at once
    (urllib3's ``shutdown``). Set before the stream opens, it ends it as soon as it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resp: Any = None
        self._stopped = False

    def attach(self, resp: Any) -> None:
        """The stream's response (the watching thread, as the stream opens)."""
        with self._lock:
            self._resp = resp
            if self._stopped:
                _shutdown(resp)

    def detach(self) -> None:
        """The stream is over (the watching thread, before its connection goes back to the
        pool, where another request may take it): stopping no longer touches it."""
        with self._lock:
            self._resp = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._resp is not None:
                _shutdown(self._resp)


def _shutdown(resp: Any) -> None:
    """Shut the response's socket down (urllib3 >= 2.3), else close it; a response already
    closed is left as it is."""
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        getattr(resp, "shutdown", resp.close)()


class KubeAPI:
    """A credential (re-read when it rotates) and the one retry policy for every call."""

    def __init__(
        self,
        kubeconfig: Optional[Path],
        *,
        deadline_s: float = 60.0,
        request_timeout_s: float = 10.0,
        event_namespace: str = "default",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.source = str(kubeconfig) if kubeconfig else "the in-cluster service account"
        self.deadline_s = deadline_s
        self.request_timeout_s = bounded_s(request_timeout_s, 10.0)
        # The monotonic end of this thread's call in progress (the controller calls from two).
        self._calls = threading.local()
        self.event_namespace = event_namespace
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._files: list[Path] = []
        self._core: Any = None
        self._api_client: Any = None
        self._cert_file: Optional[str] = None  # of the credential in use, for TLS errors
        self._server = ""

    @property
    def deadline_s(self) -> float:
        """How long one call may take, retries included (finite, positive, at most 1 h)."""
        return self._deadline_s

    @deadline_s.setter
    def deadline_s(self, value: float) -> None:
        self._deadline_s = bounded_s(value)

    # --- the client and its credential --------------------------------------------------

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(_file_stamp(p) for p in self._files)

    def core(self) -> Any:
        """A CoreV1Api, rebuilt when the credential on disk changed."""
        if self._core is not None and self._current_stamp() == self._stamp:
            return self._core
        self._build()
        return self._core

    def _build(self) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        if self.kubeconfig is None:  # in the cluster: the pod's service account
            self._files = [SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt"]
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except Exception as e:
                raise InputError(f"in-cluster credential: {e} (or pass --kubeconfig)") from None
            self._finish(cfg)
            return
        self._files = read_kubeconfig(self.kubeconfig).files
        for f in self._files[1:]:
            if not os.access(f, os.R_OK):
                raise InputError(f"{self.kubeconfig}: credential file {f} is missing or unreadable")
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), client_configuration=cfg
            )
        except Exception as e:  # the loader raises bare Exceptions and ConfigExceptions
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{self.kubeconfig}: invalid kubeconfig: {line}") from None
        self._finish(cfg)

    def _finish(self, cfg: Any) -> None:
        from kubernetes import client

        cfg.retries = False  # one retry policy: ours
        if self._api_client is not None:
            self._api_client.close()
        self._api_client = client.ApiClient(cfg)
        self._core = _Core(self._api_client)
        self._stamp = self._current_stamp()
        self._cert_file = cfg.cert_file
        self._server = cfg.host
        log.info("kube.client.built", server=cfg.host, credential=self.source)

    def close(self) -> None:
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
            self._core = None

    # --- one policy for every call ------------------------------------------------------

    def _call(self, what: str, fn: Callable[[Any], T], *, missing_ok: bool = False) -> Optional[T]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError, SSLError

        def attempt() -> Optional[T]:
            core = self.core()
            try:
                return fn(core)
            except ApiException as e:
                status = int(e.status or 0)
                if status == 0 and isinstance(e.__context__, SSLError):
                    # the kubernetes client turns urllib3's SSLError into status 0, raised
                    # while handling it
                    raise StepFailed(self._tls_problem(e.__context__)) from None
                if status == 404 and missing_ok:
                    return None
                if status == 409:
                    raise Conflict(_status_message(e)) from None
                if status_is_retryable(status) or status == 0:
                    raise Retryable(
                        f"{what}: {status} {e.reason}",
                        retry_after_seconds(dict(e.headers or {})),
                    ) from None
                raise self._refused(what, status, _status_message(e)) from None
            except SSLError as e:
                raise StepFailed(self._tls_problem(e)) from None
            except (HTTPError, OSError) as e:
                raise Retryable(f"{what}: {type(e).__name__}: {e}") from None

        start = time.monotonic()
        self._calls.end = start + self.deadline_s
        try:
            return call_with_retry(attempt, what=what, deadline_s=self.deadline_s)
        except Retryable as e:
            took = time.monotonic() - start
            raise StepFailed(f"{what}: gave up after {took:.0f} s: {e}") from None
        finally:
            self._calls.end = None

    def _refused(self, what: str, status: int, message: str) -> APIRefused:
        if status == 401:
            return APIRefused(
                f"{what}: the API server rejected the credential in {self.source} "
                f"(401 Unauthorized: {message})",
                status,
            )
        if status == 403:
            return APIRefused(
                f"{what}: forbidden for the credential in {self.source}: {message}", status
            )
        return APIRefused(f"{what}: {status}: {message}", status)

    def _tls_problem(self, e: BaseException) -> str:
        text = str(e)
        cert = self._cert_file
        if cert:
            not_after = certificate_not_after(Path(cert))
            if not_after is not None and not_after < datetime.datetime.now(datetime.timezone.utc):
                return (
                    f"{self.source}: client certificate expired at "
                    f"{not_after:%Y-%m-%dT%H:%M:%SZ} ({cert}); the kubelet rotates it while it runs"
                )
        if _verify_failed(e):
            return (
                f"{self.source}: the API server's certificate is not trusted by the "
                f"kubeconfig's certificate-authority ({_short(text)})"
            )
        return f"{self.source}: TLS with {self._server or '?'} failed: {_short(text)}"

    def _timeout_s(self) -> float:
        """This request's socket timeout: the request timeout, but never past the deadline
        of the call in progress (a tenth of a second at least, to fail rather than hang)."""
        end: Optional[float] = getattr(self._calls, "end", None)
        if end is None:
            return self.request_timeout_s
        return max(0.1, min(self.request_timeout_s, end - time.monotonic()))

    def _kw(self) -> dict[str, Any]:
        """Raw JSON back (no model decoding), a connect and read timeout on every call."""
        timeout = self._timeout_s()
        return {"_preload_content": False, "_request_timeout": (timeout, timeout)}

    # --- calls on any Node (the controller) --------------------------------------------

    def list_nodes(self) -> tuple[list[dict[str, Any]], str]:
        """Every Node and the list's resourceVersion (to watch from)."""
        out = self._call(
            "list nodes",
            lambda core: _json(core.list_node(**self._kw())),
        )
        assert out is not None
        return list(out.get("items") or []), str(
            (out.get("metadata") or {}).get("resourceVersion", "")
        )

    def get_named_node(self, name: str) -> Optional[dict[str, Any]]:
        """Node ``name``, or None when it does not exist."""
        return self._call(
            f"get node {name}",
            lambda core: _json(core.read_node(name, **self._kw())),
            missing_ok=True,
        )

    def patch_named_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A strategic-merge patch on Node ``name``. A ``metadata.resourceVersion`` in the
        patch is a precondition: a changed Node raises :class:`Conflict`."""
        out = self._call(
            f"patch node {name}",
            lambda core: _json(core.patch_node(name, patch, **self._kw())),
        )
        assert out is not None
        return out

    def watch_nodes(
        self,
        rv: str,
        timeout_s: int,
        field_selector: Optional[str] = None,
        stop: Optional[StreamStop] = None,
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """One watch request on Nodes from ``rv``; yields (type, object) until it ends, or
        until ``stop`` is stopped. A broken stream just ends (the caller watches again from
        the last version)."""

        def open_stream(core: Any) -> Any:
            return core.list_node(
                field_selector=field_selector,
                watch=True,
                resource_version=rv or None,
                timeout_seconds=timeout_s,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(self._timeout_s(), timeout_s + 5),
            )

        resp = self._call("watch nodes", open_stream)
        if resp is None:
            return
        if stop is not None:
            stop.attach(resp)
        ended = False
        try:
            buf = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event.get("type", ""), event.get("object") or {}
            ended = True
        except Exception as e:  # the stream broke: the caller re-watches
            log.info("kube.watch.ended", error=str(e))
        finally:
            if stop is not None:
                stop.detach()
            if not ended:  # left mid-stream (the caller is done): end the server's watch too
                resp.close()
            resp.release_conn()


class NodeAPI(KubeAPI):
    """GET/PATCH/WATCH of one Node and Events about it, with the node's own credential."""

    def __init__(self, kubeconfig: Path, node_name: str, **kwargs: Any) -> None:
        super().__init__(kubeconfig, **kwargs)
        self.node_name = node_name

    def get_node(self) -> Optional[Node]:
        """The Node, or None when it does not exist (yet)."""
        doc = self.get_named_node(self.node_name)
        return None if doc is None else Node.from_api(doc)

    def patch_node(self, patch: dict[str, Any]) -> Node:
        """A strategic-merge patch on the Node (labels, annotations); the Node after it."""
        return Node.from_api(self.patch_named_node(self.node_name, patch))

    def patch_node_status(self, patch: dict[str, Any]) -> Node:
        """A strategic-merge patch on ``nodes/NAME/status`` (conditions merge by type)."""
        out = self._call(
            f"patch node {self.node_name} status",
            lambda core: _json(core.patch_node_status(self.node_name, patch, **self._kw())),
        )
        assert out is not None
        return Node.from_api(out)

    def create_event(self, event: dict[str, Any]) -> None:
        """Record a core/v1 Event (its namespace, else ``event_namespace``)."""
        ns = event.get("metadata", {}).get("namespace") or self.event_namespace
        self._call(
            "create event",
            lambda core: _json(core.create_namespaced_event(ns, event, **self._kw())),
        )

    def watch_node(
        self, rv: str, timeout_s: int, stop: Optional[StreamStop] = None
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """One watch request on this Node (its name as the field selector) from ``rv``,
        ending after ``timeout_s``: :meth:`watch_nodes`, which a Node's credential may do."""
        return self.watch_nodes(rv, timeout_s, f"metadata.name={self.node_name}", stop)

    def wait_for_node(self, deadline_s: float) -> Node:
        """The Node, waiting for it to be registered: one watch on its name, re-established
        (bounded, logged) when the server ends it, until ``deadline_s`` passes."""
        deadline_s = bounded_s(deadline_s)
        end = time.monotonic() + deadline_s
        rv = ""
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise StepFailed(
                    f"node {self.node_name} did not appear within {deadline_s:.0f} s "
                    "(is the kubelet running and registering under this name?)"
                )
            for kind, obj in self.watch_node(rv, max(1, int(remaining))):
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if kind in ("ADDED", "MODIFIED"):
                    return Node.from_api(obj)
                if kind == "ERROR":  # 410 Gone: start again from the current state
                    rv = ""
            log.info(
                "kube.wait_for_node.rewatch", node=self.node_name, remaining_s=round(remaining)
            )


class _Core:
    """The five core/v1 calls the agent makes, on the client's ApiClient (credential, TLS,
    token refresh) without its generated ``CoreV1Api``: that module validates ~900
    methods with pydantic and costs the daemon ~22 MiB of resident memory for nothing
    (docs/benchmarks.md). Same contract as the generated methods with
    ``_preload_content=False``: the raw urllib3 response, ``ApiException`` on non-2xx.
    Works with both generators of the client: kubernetes >= 37 (``param_serialize``) and
    the python-legacy one before it (the packages bundle 35 for CPython 3.9)."""

    SMP = "application/strategic-merge-patch+json"

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[dict[str, Any]] = None,
        body: Any = None,
        content_type: str = "application/json",
        _request_timeout: Any = None,
        _preload_content: bool = False,
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        client = self.api_client
        if not hasattr(client, "param_serialize"):
            # kubernetes <= 35 (python-legacy generator; what CPython 3.9 gets): call_api
            # returns the raw urllib3 response and raises ApiException on non-2xx itself.
            return client.call_api(
                path,
                method,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=_request_timeout,
            )
        request = client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    @staticmethod
    def _q(name: str) -> str:
        from urllib.parse import quote

        return quote(name, safe="")

    def list_node(
        self,
        *,
        field_selector: Optional[str] = None,
        watch: bool = False,
        resource_version: Optional[str] = None,
        timeout_seconds: Optional[int] = None,
        allow_watch_bookmarks: bool = False,
        **kw: Any,
    ) -> Any:
        query: dict[str, Any] = {
            "fieldSelector": field_selector,
            "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds,
        }
        if watch:
            query["watch"] = "true"
            if allow_watch_bookmarks:
                query["allowWatchBookmarks"] = "true"
        return self._request("GET", "/api/v1/nodes", query=query, **kw)

    def read_node(self, name: str, **kw: Any) -> Any:
        return self._request("GET", f"/api/v1/nodes/{self._q(name)}", **kw)

    def patch_node(self, name: str, body: Any, **kw: Any) -> Any:
        path = f"/api/v1/nodes/{self._q(name)}"
        return self._request("PATCH", path, body=body, content_type=self.SMP, **kw)

    def patch_node_status(self, name: str, body: Any, **kw: Any) -> Any:
        path = f"/api/v1/nodes/{self._q(name)}/status"
        return self._request("PATCH", path, body=body, content_type=self.SMP, **kw)

    def create_namespaced_event(self, namespace: str, body: Any, **kw: Any) -> Any:
        return self._request(
            "POST", f"/api/v1/namespaces/{self._q(namespace)}/events", body=body, **kw
        )


def _json(resp: Any) -> dict[str, Any]:
    data = resp.data
    return dict(json.loads(data)) if data else {}


def _status_message(e: Any) -> str:
    try:
        body = json.loads(e.body)
        return str(body.get("message") or e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


def _short(text: str) -> str:
    """The informative line of a TLS error ("[SSL: X] what (_ssl.c:N)"), shortened."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def _verify_failed(e: BaseException) -> bool:
    """Whether a TLS failure is the server's certificate not verifying: the ssl module's
    own exception somewhere in what urllib3 wrapped (its args, cause or context)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ssl.SSLCertVerificationError):
            return True
        todo += [a for a in x.args if isinstance(a, BaseException)]
        todo += [c for c in (x.__cause__, x.__context__) if c is not None]
    return False
