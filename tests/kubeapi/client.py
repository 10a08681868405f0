"""A minimal raw HTTPS client for poking the test server with exact methods, headers and bodies."""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit


@dataclasses.dataclass
class RawResponse:
    """Status, headers (lower-case names) and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One keep-alive HTTPS connection, authenticating with a client cert and/or a token."""

    def __init__(
        self,
        url: str,
        ca: Path,
        *,
        cert: Optional[tuple[Path, Path]] = None,
        token: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        split = urlsplit(url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 443
        self.ctx = ssl.create_default_context(cafile=str(ca))
        if cert:
            self.ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.token = token
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPSConnection] = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ctx, timeout=self.timeout
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _headers(self, extra: Optional[dict[str, str]]) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Optional[dict[str, str]] = None,
        content_type: str = "application/json",
        headers: Optional[dict[str, str]] = None,
    ) -> RawResponse:
        """Send one request; a non-bytes ``body`` is JSON-encoded."""
        if query:
            path = f"{path}?{urlencode(query)}"
        hdrs = self._headers(headers)
        data: Optional[bytes] = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if resp.will_close:
            self.close()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)

    def get(self, path: str, **query: str) -> RawResponse:
        return self.request("GET", path, query=query or None)

    def watch(
        self,
        path: str,
        query: Optional[dict[str, str]] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> Iterator[dict[str, Any]]:
        """Stream watch events (one JSON object per line) on a fresh connection."""
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.ctx, timeout=self.timeout
        )
        try:
            q = dict(query or {}, watch="true")
            conn.request("GET", f"{path}?{urlencode(q)}", headers=self._headers(headers))
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch failed: {resp.status} {resp.read()!r}")
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
