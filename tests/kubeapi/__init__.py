"""An in-process, faithful Kubernetes API server for tests (nodes, events, namespaces).

Real HTTP/1.1 over TLS with client-certificate and bearer-token authentication, RBAC-like
authorization with the Node authorizer and NodeRestriction, strategic/merge/JSON patch,
watches with resourceVersion semantics, fault injection and a request log; the official
``kubernetes`` Python client and the real ``kubectl`` work against it unchanged.
"""

from __future__ import annotations

from .server import Fault, KubeAPIServer, RequestRecord

__all__ = ["Fault", "KubeAPIServer", "RequestRecord"]
