"""Request and response types, request info, content negotiation and query parameters.

What kube-apiserver's ``RequestInfoFactory``, ``negotiation`` and ``ListOptions`` decoding do,
for the core group: which verb, resource, subresource, name and namespace a path means, which
representation (JSON, Table, PartialObjectMetadata) an ``Accept`` header asks for.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from .authz import User
from .status import bad_request, not_acceptable

PATCH_TYPES = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
]
BODY_TYPES = ["application/json", "application/yaml"]
TRUE = {"1", "t", "T", "true", "TRUE", "True"}  # strconv.ParseBool


@dataclasses.dataclass
class Request:
    """An authenticated API request."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    user: User


@dataclasses.dataclass
class Response:
    """A JSON answer, or a stream of newline-delimited watch events."""

    code: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    stream: Optional[Iterator[dict[str, Any]]] = None


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """``request.RequestInfo``: what the path and method name."""

    verb: str
    api_prefix: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    parts: tuple[str, ...] = ()


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """Parse like ``RequestInfoFactory.NewRequestInfo`` (core group only)."""
    verb = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}.get(
        method, "delete" if method == "DELETE" else ""
    )
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 3 or parts[0] != "api":
        return RequestInfo(verb=method.lower())
    version, rest = parts[1], parts[2:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "") in TRUE else "list"
        # A list/watch pinned to one name is authorized as a request for that name.
        terms = [t.strip() for t in query.get("fieldSelector", "").split(",")]
        for prefix in ("metadata.name==", "metadata.name="):
            pinned = [t[len(prefix) :] for t in terms if t.startswith(prefix)]
            if pinned and "/" not in pinned[0]:
                name = pinned[0]
                break
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(verb, "api", version, resource, subresource, name, namespace, tuple(rest))


@dataclasses.dataclass(frozen=True)
class Output:
    """The negotiated representation: ``json``, ``table`` or ``partial`` (+ meta API version)."""

    kind: str
    version: str = "v1"


def negotiate(accept: str) -> Output:
    """Pick the first acceptable media range (JSON flavours only; protobuf is not served)."""
    if not accept.strip():
        return Output("json")
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media, params = pieces[0], dict(p.split("=", 1) for p in pieces[1:] if "=" in p)
        if media in ("*/*", "application/*"):
            return Output("json")
        if media != "application/json":
            continue
        as_kind = params.get("as", "")
        if not as_kind:
            return Output("json")
        if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            if as_kind == "Table":
                return Output("table", params["v"])
            if as_kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                return Output("partial", params["v"])
    raise not_acceptable(
        ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
    )


def content_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip()


def out_type(out: Output) -> str:
    if out.kind == "table":
        return f"application/json;as=Table;v={out.version};g=meta.k8s.io"
    if out.kind == "partial":
        return f"application/json;as=PartialObjectMetadata;v={out.version};g=meta.k8s.io"
    return "application/json"


def parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'invalid resource version "{text}"') from None
    if value < 0:
        raise bad_request(f'invalid resource version "{text}"')
    return value


def int_param(query: Mapping[str, str], name: str) -> int:
    text = query.get(name, "")
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise bad_request(f'{name}: Invalid value: "{text}": must be an integer') from None


def encode_continue(start: str, rv: int) -> str:
    raw = json.dumps(
        {"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[str, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(raw["start"]).rstrip("\x00"), int(raw["rv"])
    except (ValueError, KeyError, TypeError):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None


def dry_run(req: Request) -> bool:
    return req.query.get("dryRun", "") == "All"


def warn_header(warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    return {"Warning": ", ".join('299 - "' + w.replace('"', '\\"') + '"' for w in warnings)}
