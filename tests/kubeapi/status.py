"""``metav1.Status`` bodies and the errors that carry them, worded like apimachinery's.

Each constructor mirrors one of ``k8s.io/apimachinery/pkg/api/errors``' ``New*`` helpers, so
clients see the same code, reason, message and details as from a real kube-apiserver.
"""

from __future__ import annotations

import json
from typing import Any, Optional

OPTIMISTIC_LOCK_MSG = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def status_body(
    code: int,
    reason: str,
    message: str,
    details: Optional[dict[str, Any]] = None,
    *,
    success: bool = False,
) -> dict[str, Any]:
    """A ``Status`` object in the field order the real server writes."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    body["status"] = "Success" if success else "Failure"
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = {k: v for k, v in details.items() if v not in ("", None, [], 0)}
    if code:
        body["code"] = code
    return body


class ApiError(Exception):
    """An error the server answers with a ``Status`` body (and optional extra headers)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Optional[dict[str, Any]] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)

    def encode(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()


def _details(resource: str, name: str = "", group: str = "") -> dict[str, Any]:
    return {"name": name, "group": group, "kind": resource}


def qualified(resource: str, group: str = "") -> str:
    """``GroupResource.String()``: ``nodes`` or ``events.events.k8s.io``."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(resource, group)} "{name}" not found',
        _details(resource, name),
    )


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(resource: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{resource} "{name}" already exists', _details(resource, name)
    )


def conflict(resource: str, name: str, why: str = OPTIMISTIC_LOCK_MSG) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": {why}',
        _details(resource, name),
    )


def forbidden(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """``NewForbidden``: ``nodes "x" is forbidden: <why>`` (or without a name, or a path)."""
    if not resource:
        message = f"forbidden: {why}"
    elif not name:
        message = f"{qualified(resource, group)} is forbidden: {why}"
    else:
        message = f'{qualified(resource, group)} "{name}" is forbidden: {why}'
    return ApiError(403, "Forbidden", message, {"name": name, "group": group, "kind": resource})


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """``NewInvalid``: causes are (type, field, body) like ``field.Error``."""
    errs = [f"{fld}: {msg}" if fld else msg for _, fld, msg in causes]
    agg = errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {agg}',
        {
            "name": name,
            "kind": kind,
            "causes": [{"reason": t, "message": m, "field": f} for t, f, m in causes],
        },
    )


def unprocessable() -> ApiError:
    """``NewGenericServerResponse(422, ...)``: what a failed JSON patch operation yields."""
    return ApiError(
        422, "Invalid", "the server rejected our request due to an error in our request", {}
    )


def unsupported_media_type(accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
        {},
    )


def not_acceptable(accepted: list[str]) -> ApiError:
    return ApiError(
        406,
        "NotAcceptable",
        "only the following media types are accepted: " + ", ".join(accepted),
        {},
    )


def too_large_rv(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


def expired(requested: int, oldest: int) -> ApiError:
    """A resourceVersion older than the watch history (``410 Gone``)."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def invalid_list_options(field: str, detail: str) -> ApiError:
    """``ListOptions.meta.k8s.io "" is invalid``: a forbidden combination of list parameters."""
    err = invalid("ListOptions", "", [("FieldValueForbidden", field, f"Forbidden: {detail}")])
    err.details = dict(err.details or {}, group="meta.k8s.io")
    err.message = f'ListOptions.meta.k8s.io "" is invalid: {field}: Forbidden: {detail}'
    return err


def internal(message: str) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )


def unknown_500(message: str) -> ApiError:
    """A plain error bubbling out of a handler (e.g. a merge list item without its key)."""
    return ApiError(500, "", message)
