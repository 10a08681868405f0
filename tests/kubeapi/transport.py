"""The HTTP/1.1-over-TLS transport: connections, authentication, faults and the request log.

Connections are accepted on the listening thread and the TLS handshake happens in each
connection's own (daemon) thread, so a slow or failing client never blocks the others.
Users come from the verified client certificate (CN = user, O = groups) or a bearer token;
every request is logged (with its final status) before its answer is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import ssl
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit

from . import status
from .api import API
from .authz import User
from .request import Request, Response
from .status import ApiError

FAULT_KINDS = ("429", "500", "503", "drop", "latency")


@dataclasses.dataclass
class Fault:
    """A queued misbehaviour for the next ``count`` requests matching ``method`` and ``path_regex``.

    ``kind``: ``429`` (Status body; ``Retry-After`` when ``retry_after`` is set), ``500``,
    ``503``, ``drop`` (close the connection without answering) or ``latency`` (sleep
    ``delay_s``, then serve normally).
    """

    method: Optional[str] = None
    path_regex: str = ".*"
    kind: str = "500"
    count: int = 1
    retry_after: Optional[int] = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and bool(
            re.search(self.path_regex, path)
        )


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it and its final status (0: connection dropped)."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    user: Optional[str]
    content_type: Optional[str]
    body: Any
    ts: float
    groups: tuple[str, ...] = ()
    fault: Optional[str] = None
    user_agent: Optional[str] = None


class Frontend:
    """The HTTP layer's state: the API behind it, bearer tokens, queued faults, the request log."""

    def __init__(self, api: API) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._tokens: dict[str, User] = {}
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []

    def add_token(self, token: str, user: User) -> None:
        with self._lock:
            self._tokens[token] = user

    def user_for_token(self, token: str) -> Optional[User]:
        with self._lock:
            return self._tokens.get(token)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take_fault(self, method: str, path: str) -> Optional[Fault]:
        """The first queued fault matching this request, its count spent by one."""
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def log(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


class Listener(ThreadingHTTPServer):
    """A threading HTTP server over TLS; it tracks connections so stop can cut them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, frontend: Frontend, context: ssl.SSLContext, port: int) -> None:
        self.frontend = frontend
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Small responses must not wait for the client's delayed ACK (Nagle): ~40 ms each.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.connections_lock:
            self.connections.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects and TLS failures are the client's business; stay quiet."""

    def close_all(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection: TLS handshake, then HTTP/1.1 keep-alive requests until it closes."""

    protocol_version = "HTTP/1.1"
    server: Listener
    timeout = 120

    def handle(self) -> None:
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr; :attr:`KubeAPIServer.requests` is the log."""

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    # --- plumbing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _user(self) -> Optional[User]:
        """x509 first (CN = user, O = groups), then a bearer token, like the union authenticator."""
        cert = self.request.getpeercert()
        if cert:
            cn, orgs = "", []
            for rdn in cert.get("subject", ()):
                for attr, value in rdn:
                    if attr == "commonName":
                        cn = value
                    elif attr == "organizationName":
                        orgs.append(value)
            if cn:
                return User(cn, (*orgs, "system:authenticated"))
        auth = self.headers.get("Authorization", "")
        # the scheme is case-insensitive, as in kube-apiserver: the kubernetes client's
        # in-cluster config sends "bearer <token>"
        if auth[: len("Bearer ")].lower() == "bearer ":
            found = self.server.frontend.user_for_token(auth[len("Bearer ") :].strip())
            if found:
                return found
        return None

    def _headers(self, code: int, content_type: str, extra: dict[str, str]) -> list[str]:
        return [
            f"{self.protocol_version} {code} {self.responses.get(code, ('',))[0]}",
            f"Audit-Id: {uuid.uuid4()}",
            "Cache-Control: no-cache, private",
            f"Content-Type: {content_type}",
            "X-Content-Type-Options: nosniff",
            *(f"{k}: {v}" for k, v in extra.items()),
            f"Date: {self.date_time_string()}",
        ]

    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """Headers and body in one write: one TLS record, no Nagle/delayed-ACK stall."""
        self.log_request(code)
        lines = [*self._headers(code, content_type, headers), f"Content-Length: {len(body)}"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + (body if self.command != "HEAD" else b""))
        self.wfile.flush()

    def _send_error(self, err: ApiError) -> None:
        self._send(err.code, err.encode(), "application/json", err.headers)

    def _stream(self, resp: Response) -> int:
        assert resp.stream is not None
        self.log_request(200)
        lines = [*self._headers(200, resp.content_type, {}), "Transfer-Encoding: chunked"]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.wfile.flush()
        try:
            for event in resp.stream:
                line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        return 200

    def _serve(self) -> None:
        frontend = self.server.frontend
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        body = self._read_body()
        user = self._user()
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        code, fault_kind, recorded = 0, None, False

        def record() -> None:
            frontend.log(
                RequestRecord(
                    method=self.command,
                    path=path,
                    query=query,
                    status=code,
                    user=user.name if user else None,
                    content_type=self.headers.get("Content-Type"),
                    body=parsed,
                    ts=time.time(),
                    groups=tuple(g for g in user.groups if g != "system:authenticated")
                    if user
                    else (),
                    fault=fault_kind,
                    user_agent=self.headers.get("User-Agent"),
                )
            )

        # The log entry is written before the answer goes out, so a client that has its
        # response can already see its request in ``requests``.
        try:
            fault = frontend.take_fault(self.command, path)
            if fault is not None:
                fault_kind = fault.kind
                if fault.kind == "latency":
                    time.sleep(fault.delay_s)
                elif fault.kind == "drop":
                    record()
                    recorded = True
                    self._drop()
                    return
                else:
                    err = _fault_error(fault)
                    code = err.code
                    record()
                    recorded = True
                    self._send_error(err)
                    return
            if user is None:
                err = status.unauthorized()
                code = err.code
                record()
                recorded = True
                self._send_error(err)
                return
            req = Request(
                method=self.command,
                path=path,
                query=query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                user=user,
            )
            try:
                resp = frontend.api.handle(req)
            except ApiError as e:
                code = e.code
                record()
                recorded = True
                self._send_error(e)
                return
            code = resp.code
            record()
            recorded = True
            if resp.stream is not None:
                self._stream(resp)
                return
            payload = resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode()
            self._send(resp.code, payload, resp.content_type, resp.headers)
        except OSError:
            self.close_connection = True
        except Exception as e:  # a bug in the fake must still answer like a server would
            traceback.print_exc()
            err = status.internal(f"{type(e).__name__}: {e}")
            code = err.code
            if not recorded:
                record()
                recorded = True
            self._send_error(err)
        finally:
            if not recorded:
                record()

    def _drop(self) -> None:
        """Close the connection without a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)


def _fault_error(fault: Fault) -> ApiError:
    """The Status answer for a 429/500/503 fault."""
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(fault.retry_after)
    details = {"retryAfterSeconds": fault.retry_after} if fault.retry_after else {}
    if fault.kind == "429":
        return ApiError(
            429, "TooManyRequests", "Too many requests, please try again later.", details, headers
        )
    if fault.kind == "503":
        return ApiError(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            details,
            headers,
        )
    err = status.internal("injected fault")
    err.headers = headers
    return err
