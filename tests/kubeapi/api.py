"""Request processing: request info, authorization, and the REST verbs over the store.

HTTP-agnostic: :meth:`API.handle` takes a :class:`Request` (already authenticated) and
returns a :class:`Response` (a JSON body, or a stream of watch events) or raises
:class:`.status.ApiError`. The order of checks follows kube-apiserver: authorization,
then for writes decode, mutating admission (NodeRestriction), optimistic concurrency,
the subresource's field reset, validation, storage.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import secrets
import time
import uuid
from typing import Any, Callable

import yaml

from . import discovery, jsonpatch, openapi, smp, watch
from .authz import Attributes, Authorizer, admit_node
from .render import partial, render, table, typed, untyped
from .request import (
    BODY_TYPES,
    PATCH_TYPES,
    Output,
    Request,
    RequestInfo,
    Response,
    content_type,
    decode_continue,
    dry_run,
    encode_continue,
    int_param,
    negotiate,
    out_type,
    parse_rv,
    request_info,
    warn_header,
)
from .resources import NAMESPACES, NODES, RESOURCES, Resource
from .schema import DecodeError, format_time, roundtrip
from .status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    invalid,
    invalid_list_options,
    not_found,
    path_not_found,
    status_body,
    too_large_rv,
    unknown_500,
    unprocessable,
    unsupported_media_type,
)
from .store import Key, Store
from .watch import Selection

NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # utilrand's alphanums


def _now() -> str:
    return format_time(dt.datetime.now(dt.timezone.utc))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.setdefault("metadata", {})
    return meta


class API:
    """The REST semantics over a :class:`Store`."""

    def __init__(self, store: Store, authz: Authorizer, address: Callable[[], str]) -> None:
        self.store = store
        self.authz = authz
        self.address = address
        self.bookmark_interval = 60.0
        self.too_large_rv_wait = 3.0  # how long a read at a future resourceVersion waits

    # --- entry point -----------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Authorize and serve one request; errors are raised as :class:`ApiError`."""
        info = request_info(req.method, req.path, req.query)
        self.authz.check(
            Attributes(
                user=req.user,
                verb=info.verb,
                path=req.path,
                resource=info.resource,
                subresource=info.subresource,
                name=info.name,
                namespace=info.namespace,
            )
        )
        if not info.resource:
            return self._non_resource(req)
        res, namespace = self._resolve(info)
        verb = info.verb
        if info.subresource and (info.subresource != "status" or not res.status_subresource):
            raise path_not_found()
        if info.subresource and verb not in ("get", "update", "patch"):
            raise _method_not_allowed()
        if verb in ("get", "list", "watch"):
            if req.method == "HEAD":
                raise _method_not_allowed()
            out = negotiate(req.headers.get("accept", ""))
            if verb == "get":
                return self._get(res, (namespace, info.name), out)
            if verb == "list":
                return self._list(req, res, namespace, out)
            return self._watch(req, res, namespace, out)
        if verb not in res.verbs or (verb in ("update", "patch") and len(info.parts) < 2):
            raise _method_not_allowed()
        if verb == "create":
            if info.parts[1:]:
                raise _method_not_allowed()
            return self._create(req, res, namespace)
        if verb == "update":
            return self._update(req, res, (namespace, info.name), info.subresource)
        if verb == "patch":
            return self._patch(req, res, (namespace, info.name), info.subresource)
        if verb == "delete":
            return self._delete(req, res, (namespace, info.name))
        raise _method_not_allowed()

    def _resolve(self, info: RequestInfo) -> tuple[Resource, str]:
        res = RESOURCES.get(info.resource)
        if info.version != "v1" or res is None:
            raise path_not_found()
        if res is NAMESPACES:
            return res, ""
        if res.namespaced != bool(info.namespace) and not (
            res.namespaced and info.verb in ("list", "watch")
        ):
            raise path_not_found()
        if (
            info.namespace
            and info.verb in ("create",)
            and not self.store.get("namespaces", ("", info.namespace))
        ):
            raise not_found("namespaces", info.namespace)
        return res, info.namespace

    def _non_resource(self, req: Request) -> Response:
        if req.method != "GET":
            raise _method_not_allowed()
        accept = req.headers.get("accept", "")
        path = req.path.rstrip("/") or "/"
        if path == "/version":
            return Response(200, discovery.VERSION)
        if path == "/api":
            if discovery.wants_aggregated(accept):
                return Response(200, discovery.aggregated_api(), discovery.AGGREGATED_TYPE)
            return Response(200, discovery.api_versions(self.address()))
        if path == "/api/v1":
            return Response(200, discovery.api_v1())
        if path == "/apis":
            if discovery.wants_aggregated(accept):
                return Response(200, discovery.aggregated_apis(), discovery.AGGREGATED_TYPE)
            return Response(200, discovery.api_groups())
        if path == "/openapi/v3":
            return Response(200, openapi.index())
        if path == "/openapi/v3/api/v1":
            return Response(200, openapi.api_v1())
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    # --- reads -----------------------------------------------------------------------------

    def _get(self, res: Resource, key: Key, out: Output) -> Response:
        obj = self.store.get(res.name, key)
        if obj is None:
            raise not_found(res.name, key[1])
        return Response(200, render(res, obj, out, self.store.rv), out_type(out))

    def _wait_for_rv(self, requested: int) -> None:
        deadline = time.monotonic() + self.too_large_rv_wait
        with self.store.cond:
            while self.store.rv < requested:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise too_large_rv(requested, self.store.rv)
                self.store.cond.wait(left)

    def _list(self, req: Request, res: Resource, namespace: str, out: Output) -> Response:
        sel = Selection.parse(res, namespace, req.query)
        rv_param = req.query.get("resourceVersion", "")
        match = req.query.get("resourceVersionMatch", "")
        if match and not rv_param:
            raise invalid_list_options(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        if rv_param not in ("", "0"):
            requested = parse_rv(rv_param)
            self._wait_for_rv(requested)
            if match == "Exact" and requested != self.store.rv:
                raise expired(requested, self.store.rv)
        limit = int_param(req.query, "limit")
        token = req.query.get("continue", "")
        with self.store.lock:
            rv = self.store.rv
            items = [o for o in self.store.objects(res.name) if sel.matches(o)]
        meta: dict[str, Any] = {}
        if token:
            start, rv = decode_continue(token)
            items = [o for o in items if "/".join(_key(o)) > start]
        meta["resourceVersion"] = str(rv)
        if limit and len(items) > limit:
            rest = items[limit:]
            items = items[:limit]
            meta["continue"] = encode_continue("/".join(_key(items[-1])), rv)
            meta["remainingItemCount"] = len(rest)
        if out.kind == "table":
            include = req.query.get("includeObject", "Metadata")
            doc = table(res, items, out, rv, include_object=include)
            doc["metadata"] = meta
            return Response(200, doc, out_type(out))
        if out.kind == "partial":
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"meta.k8s.io/{out.version}",
                "metadata": meta,
                "items": [partial(o, out.version) for o in items],
            }
            return Response(200, body, out_type(out))
        body = {
            "kind": res.list_kind,
            "apiVersion": "v1",
            "metadata": meta,
            "items": [untyped(o) for o in items],
        }
        return Response(200, body)

    # --- watch -----------------------------------------------------------------------------

    def _watch(self, req: Request, res: Resource, namespace: str, out: Output) -> Response:
        sel = Selection.parse(res, namespace, req.query)
        events = watch.start(self.store, sel, out, req.query, self.bookmark_interval)
        return Response(200, None, out_type(out), stream=events)

    # --- writes ----------------------------------------------------------------------------

    def _decode_body(self, req: Request, res: Resource) -> Any:
        ctype = content_type(req.headers)
        if ctype not in BODY_TYPES and ctype != "":
            raise unsupported_media_type([*BODY_TYPES, "application/vnd.kubernetes.protobuf"])
        try:
            text = req.body.decode()
            obj = (
                yaml.safe_load(text) if ctype == "application/yaml" else json.loads(text or "null")
            )
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None
        if not isinstance(obj, dict):
            raise bad_request(
                "Object 'Kind' is missing in '" + req.body.decode(errors="replace") + "'"
            )
        if obj.get("apiVersion") not in (None, "", "v1"):
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                "API version (v1)"
            )
        if obj.get("kind") not in (None, "", res.kind):
            raise bad_request(
                f'{res.kind} in version "v1" cannot be handled as a {obj["kind"]}: '
                f"the kind in the data ({obj['kind']}) does not match the expected kind "
                f"({res.kind})"
            )
        return obj

    def _roundtrip(
        self, req: Request, res: Resource, obj: Any, *, patch: Any = None
    ) -> tuple[dict[str, Any], list[str]]:
        """Decode into the Go type; apply ``fieldValidation`` to unknown fields."""
        try:
            decoded, unknown = roundtrip(obj, res.schema)
        except DecodeError as e:
            if patch is not None:
                raise _patch_invalid(patch, str(e)) from None
            raise bad_request(
                f'{res.kind} in version "v1" cannot be handled as a {res.kind}: {e}'
            ) from None
        warnings = [f'unknown field "{u}"' for u in unknown]
        directive = req.query.get("fieldValidation", "Warn")
        if directive == "Strict" and unknown:
            message = "strict decoding error: " + ", ".join(warnings)
            if patch is not None:
                raise _patch_invalid(patch, message)
            raise bad_request(
                f'{res.kind} in version "v1" cannot be handled as a {res.kind}: {message}'
            )
        if directive == "Ignore":
            warnings = []
        return decoded, warnings

    def _check_namespace(self, res: Resource, obj: dict[str, Any], namespace: str) -> None:
        meta = _meta(obj)
        if not res.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        meta["namespace"] = namespace

    def _admit(self, req: Request, res: Resource, op: str, name: str, new: Any, old: Any) -> None:
        if res is NODES:
            admit_node(req.user, op, name, new, old)

    def _validate(self, res: Resource, obj: dict[str, Any]) -> None:
        causes = res.validate(obj)
        if causes:
            raise invalid(res.kind, _meta(obj).get("name", ""), causes)

    def _create(self, req: Request, res: Resource, namespace: str) -> Response:
        body = self._decode_body(req, res)
        obj, warnings = self._roundtrip(req, res, body)
        self._check_namespace(res, obj, namespace)
        meta = _meta(obj)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice(NAME_CHARS) for _ in range(5)
            )
        if meta.get("resourceVersion"):
            # storage.ErrResourceVersionSetOnCreate is not a StatusError: a bare 500.
            raise unknown_500("resourceVersion should not be set on objects to be created")
        with self.store.lock:
            self._admit(req, res, "CREATE", meta.get("name", ""), obj, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            for k in (
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ):
                meta.pop(k, None)
            if res is NAMESPACES:
                obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
                obj.setdefault("status", {})["phase"] = "Active"
            self._validate(res, obj)
            if self.store.get(res.name, (namespace, meta["name"])) is not None:
                raise already_exists(res.name, meta["name"])
            if dry_run(req):
                return Response(201, typed(res, obj), headers=warn_header(warnings))
            stored = self.store.create(res.name, obj)
        return Response(201, typed(res, stored), headers=warn_header(warnings))

    def _finish_update(
        self,
        req: Request,
        res: Resource,
        key: Key,
        old: dict[str, Any],
        new: dict[str, Any],
        subresource: str,
        warnings: list[str],
    ) -> Response:
        """Everything after the new object exists: system fields, admission, RV check, reset."""
        meta, old_meta = _meta(new), old["metadata"]
        if meta.get("name") != key[1]:
            raise bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match the name on "
                f"the URL ({key[1]})"
            )
        self._check_namespace(res, new, key[0])
        if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
            raise invalid(
                res.kind,
                key[1],
                [
                    (
                        "FieldValueInvalid",
                        "metadata.uid",
                        f'Invalid value: "{meta["uid"]}": field is immutable',
                    )
                ],
            )
        self._admit(req, res, "UPDATE", key[1], new, old)
        rv = meta.get("resourceVersion", "")
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(res.name, key[1])
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        meta.pop("managedFields", None)
        if "managedFields" in old_meta:
            meta["managedFields"] = old_meta["managedFields"]
        if res.status_subresource or res is NAMESPACES:
            if subresource == "status":
                new["spec"] = copy.deepcopy(old.get("spec"))
            else:
                new["status"] = copy.deepcopy(old.get("status"))
        self._validate(res, new)
        # Field order as the server encodes it, whatever order the client used.
        new, _ = roundtrip(new, res.schema)
        if dry_run(req):
            return Response(200, typed(res, new), headers=warn_header(warnings))
        stored = self.store.update(res.name, new)
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            stored = self.store.delete(res.name, key)
        return Response(200, typed(res, stored), headers=warn_header(warnings))

    def _update(self, req: Request, res: Resource, key: Key, subresource: str) -> Response:
        body = self._decode_body(req, res)
        obj, warnings = self._roundtrip(req, res, body)
        with self.store.lock:
            old = self.store.get(res.name, key)
            if old is None:
                raise not_found(res.name, key[1])
            return self._finish_update(req, res, key, old, obj, subresource, warnings)

    def _patch(self, req: Request, res: Resource, key: Key, subresource: str) -> Response:
        ctype = content_type(req.headers)
        if ctype not in PATCH_TYPES:
            raise unsupported_media_type(PATCH_TYPES)
        try:
            patch = json.loads(req.body.decode() or "null")
        except ValueError as e:
            raise bad_request(f"error decoding patch: {e}") from None
        with self.store.lock:
            old = self.store.get(res.name, key)
            if old is None:
                raise not_found(res.name, key[1])
            current = typed(res, old)
            try:
                if ctype == "application/json-patch+json":
                    patched = jsonpatch.apply_json_patch(current, patch)
                elif ctype == "application/merge-patch+json":
                    if not isinstance(patch, dict):
                        raise bad_request("Invalid JSON Patch")
                    patched = jsonpatch.merge_patch(current, patch)
                else:
                    patched = smp.apply(current, patch, res.schema)
            except jsonpatch.DecodeError as e:
                raise bad_request(str(e)) from None
            except jsonpatch.OperationError:
                raise unprocessable() from None
            except smp.PatchError as e:
                if e.code == 400:
                    raise bad_request(str(e)) from None
                if e.code == 422:
                    raise unprocessable() from None
                raise unknown_500(str(e)) from None
            new, warnings = self._roundtrip(req, res, patched, patch=patch)
            return self._finish_update(req, res, key, old, new, subresource, warnings)

    def _delete(self, req: Request, res: Resource, key: Key) -> Response:
        options: dict[str, Any] = {}
        if req.body.strip():
            try:
                options = json.loads(req.body.decode())
            except ValueError as e:
                raise bad_request(f"error decoding DeleteOptions: {e}") from None
        pre = options.get("preconditions") or {}
        with self.store.lock:
            old = self.store.get(res.name, key)
            if old is None:
                raise not_found(res.name, key[1])
            meta = old["metadata"]
            for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                if pre.get(field) and pre[field] != meta.get(field):
                    raise conflict(
                        res.name,
                        key[1],
                        f"Precondition failed: {label} in precondition: {pre[field]}, "
                        f"{label} in object meta: {meta.get(field, '')}",
                    )
            self._admit(req, res, "DELETE", key[1], None, old)
            dry = dry_run(req) or options.get("dryRun")
            if meta.get("finalizers"):
                if dry:
                    return Response(200, typed(res, old))
                updated = copy.deepcopy(old)
                updated["metadata"].setdefault("deletionTimestamp", _now())
                updated["metadata"].setdefault("deletionGracePeriodSeconds", 0)
                return Response(200, typed(res, self.store.update(res.name, updated)))
            if not dry:
                self.store.delete(res.name, key)
        body = status_body(
            0, "", "", {"name": key[1], "kind": res.name, "uid": meta.get("uid")}, success=True
        )
        return Response(200, body)


# --- helpers -----------------------------------------------------------------------------------


def _method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


def _patch_invalid(patch: Any, message: str) -> ApiError:
    value = json.dumps(patch, separators=(",", ":"))
    return ApiError(
        422,
        "Invalid",
        f' "" is invalid: patch: Invalid value: "{value}": {message}',
        {
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": f'Invalid value: "{value}": {message}',
                    "field": "patch",
                }
            ]
        },
    )


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


__all__ = ["API", "Request", "Response"]
