"""The test API server's own behaviour: authn, discovery, CRUD, patches, watch, authz, faults."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.kubeapi import Fault, KubeAPIServer
from tests.kubeapi import smp as smp_mod
from tests.kubeapi.client import RawClient
from tests.kubeapi.quantity import canonical
from tests.kubeapi.schema import NODE

NODES = "/api/v1/nodes"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"


def as_user(srv: KubeAPIServer, user: str, *groups: str) -> RawClient:
    return RawClient(srv.url, srv.ca_path, cert=srv.client_cert(user, groups))


@pytest.fixture
def admin(srv: KubeAPIServer) -> Iterator[RawClient]:
    c = as_user(srv, "admin", "system:masters")
    try:
        yield c
    finally:
        c.close()


def stored(srv: KubeAPIServer, name: str) -> dict[str, Any]:
    """The node as stored (it must exist)."""
    node = srv.get_node(name)
    assert node is not None, f"node {name} is gone"
    return node


def node_body(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


# --- authentication ----------------------------------------------------------------------------


def test_client_certificate_authenticates_cn_and_orgs(srv: KubeAPIServer, admin: RawClient) -> None:
    assert admin.get(NODES).status == 200
    rec = srv.requests[-1]
    assert (rec.user, rec.groups, rec.status) == ("admin", ("system:masters",), 200)


def test_bearer_token_authenticates(srv: KubeAPIServer) -> None:
    c = RawClient(srv.url, srv.ca_path, token=srv.token("tok-user", ["system:masters"]))
    assert c.get(NODES).status == 200
    assert srv.requests[-1].user == "tok-user"


def test_no_credentials_is_401_with_status_body(srv: KubeAPIServer) -> None:
    r = RawClient(srv.url, srv.ca_path).get(NODES)
    assert r.status == 401
    assert r.json == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    assert srv.requests[-1].user is None and srv.requests[-1].status == 401


def test_unknown_token_is_401(srv: KubeAPIServer) -> None:
    r = RawClient(srv.url, srv.ca_path, token="not-a-token").get("/version")
    assert r.status == 401


def test_cert_from_another_ca_fails_the_handshake(srv: KubeAPIServer, tmp_path: Path) -> None:
    # Deviation: kube-apiserver answers 401; Python's CERT_OPTIONAL rejects in the handshake.
    other = KubeAPIServer(tmp_path / "other")
    c = RawClient(srv.url, srv.ca_path, cert=other.client_cert("admin", ["system:masters"]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c.get(NODES)


def test_client_rejects_server_with_wrong_ca(srv: KubeAPIServer, tmp_path: Path) -> None:
    other = KubeAPIServer(tmp_path / "other")
    c = RawClient(srv.url, other.ca_path, cert=srv.client_cert("admin", ["system:masters"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        c.get(NODES)


def test_kubeconfig_cert_and_token(srv: KubeAPIServer, tmp_path: Path) -> None:
    for auth in ("cert", "token"):
        path = srv.kubeconfig(
            tmp_path / f"{auth}.kubeconfig", user="bob", groups=["system:masters"], auth=auth
        )
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(path)))
        assert api.list_node().items == []
        assert srv.requests[-1].user == "bob"


# --- discovery ---------------------------------------------------------------------------------


def test_version_and_legacy_discovery(srv: KubeAPIServer, admin: RawClient) -> None:
    v = admin.get("/version").json
    assert (v["major"], v["minor"], v["gitVersion"]) == ("1", "32", "v1.32.0")
    api = admin.get("/api").json
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    assert api["serverAddressByClientCIDRs"][0]["serverAddress"] == f"127.0.0.1:{srv.port}"
    resources = {r["name"]: r for r in admin.get("/api/v1").json["resources"]}
    assert resources["nodes"]["kind"] == "Node" and not resources["nodes"]["namespaced"]
    assert "watch" in resources["nodes"]["verbs"] and resources["nodes"]["shortNames"] == ["no"]
    assert resources["nodes/status"]["verbs"] == ["get", "patch", "update"]
    assert resources["events"]["namespaced"]
    assert admin.get("/apis").json == {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


def test_aggregated_discovery_when_asked(admin: RawClient) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    r = admin.request("GET", "/api", headers={"Accept": accept})
    assert (
        r.headers["content-type"]
        == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    resources = {x["resource"]: x for x in r.json["items"][0]["versions"][0]["resources"]}
    assert resources["nodes"]["scope"] == "Cluster"
    assert resources["nodes"]["subresources"][0]["subresource"] == "status"


def test_unknown_paths_are_404(admin: RawClient) -> None:
    r = admin.get("/api/v1/secrets")
    assert (r.status, r.json["reason"]) == (404, "NotFound")
    assert r.json["message"] == "the server could not find the requested resource"
    assert admin.get("/nope").status == 404
    assert admin.get("/api/v1/namespaces/default/nodes").status == 404


def test_discovery_allowed_for_any_user_resources_not(srv: KubeAPIServer) -> None:
    c = as_user(srv, "mallory")
    assert c.get("/api/v1").status == 200
    r = c.get(NODES)
    assert r.status == 403
    assert r.json["message"] == (
        'nodes is forbidden: User "mallory" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )
    assert r.json["details"] == {"kind": "nodes"}


# --- nodes CRUD --------------------------------------------------------------------------------


def test_create_sets_system_fields_and_conflicts_on_duplicate(admin: RawClient) -> None:
    r = admin.request("POST", NODES, node_body("gpu-1", a="b"))
    assert r.status == 201
    meta = r.json["metadata"]
    assert (
        meta["uid"] and meta["creationTimestamp"].endswith("Z") and int(meta["resourceVersion"]) > 0
    )
    assert r.json["status"]["nodeInfo"]["machineID"] == ""  # non-omitempty zero values, like Go
    dup = admin.request("POST", NODES, node_body("gpu-1"))
    assert dup.status == 409
    assert dup.json["reason"] == "AlreadyExists"
    assert dup.json["message"] == 'nodes "gpu-1" already exists'
    assert dup.json["details"] == {"name": "gpu-1", "kind": "nodes"}


def test_create_validates_labels_and_taints(admin: RawClient) -> None:
    body = node_body("gpu-1", **{"bad key!": "v"})
    body["spec"] = {"taints": [{"key": "k", "effect": "Sometimes"}]}
    r = admin.request("POST", NODES, body)
    assert r.status == 422 and r.json["reason"] == "Invalid"
    assert r.json["message"].startswith(
        'Node "gpu-1" is invalid: [metadata.labels: Invalid value: "bad key!"'
    )
    fields = [c["field"] for c in r.json["details"]["causes"]]
    assert "spec.taints[0].effect" in fields


def test_get_missing_is_404(admin: RawClient) -> None:
    r = admin.get(f"{NODES}/ghost")
    assert r.status == 404 and r.json["message"] == 'nodes "ghost" not found'


def test_list_selectors_and_resource_version(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("a", labels={"gpu": "true"})
    srv.create_node("b", labels={"gpu": "false"})
    srv.create_node("c")
    full = admin.get(NODES).json
    assert full["kind"] == "NodeList" and full["metadata"]["resourceVersion"] == str(
        srv.resource_version
    )
    assert [n["metadata"]["name"] for n in full["items"]] == ["a", "b", "c"]
    assert "kind" not in full["items"][0]  # list items carry no TypeMeta

    def names(**q: str) -> list[str]:
        return [n["metadata"]["name"] for n in admin.get(NODES, **q).json["items"]]

    assert names(labelSelector="gpu=true") == ["a"]
    assert names(labelSelector="gpu!=true") == ["b", "c"]
    assert names(labelSelector="gpu") == ["a", "b"]
    assert names(labelSelector="gpu in (true,false),gpu!=false") == ["a"]
    assert names(fieldSelector="metadata.name=b") == ["b"]
    assert names(fieldSelector="metadata.name!=b") == ["a", "c"]
    bad = admin.get(NODES, fieldSelector="spec.nope=1")
    assert (bad.status, bad.json["message"]) == (400, "field label not supported: spec.nope")


def test_list_pagination(srv: KubeAPIServer, admin: RawClient) -> None:
    for n in "abcde":
        srv.create_node(n)
    page = admin.get(NODES, limit="2").json
    assert [n["metadata"]["name"] for n in page["items"]] == ["a", "b"]
    assert page["metadata"]["remainingItemCount"] == 3
    seen = [n["metadata"]["name"] for n in page["items"]]
    while page["metadata"].get("continue"):
        page = admin.get(NODES, limit="2", **{"continue": page["metadata"]["continue"]}).json
        seen += [n["metadata"]["name"] for n in page["items"]]
    assert seen == list("abcde")


def test_list_future_resource_version_times_out(admin: RawClient, srv: KubeAPIServer) -> None:
    srv._api.too_large_rv_wait = 0.2  # real: 3 s
    r = admin.get(NODES, resourceVersion=str(srv.resource_version + 100))
    assert r.status == 504 and r.json["reason"] == "Timeout"


def test_put_with_stale_resource_version_conflicts(srv: KubeAPIServer, admin: RawClient) -> None:
    node = srv.create_node("gpu-1")
    srv.update_node("gpu-1", lambda n: n["metadata"].setdefault("labels", {}).update(x="1"))
    node["metadata"]["labels"] = {"y": "2"}
    r = admin.request("PUT", f"{NODES}/gpu-1", node)
    assert r.status == 409 and r.json["reason"] == "Conflict"
    assert r.json["message"] == (
        'Operation cannot be fulfilled on nodes "gpu-1": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def test_put_main_keeps_status_and_put_status_keeps_spec(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    node = srv.create_node("gpu-1", capacity={"cpu": "4"})
    node["spec"] = {"unschedulable": True}
    node["status"]["capacity"] = {"cpu": "99"}
    r = admin.request("PUT", f"{NODES}/gpu-1", node).json
    assert r["spec"]["unschedulable"] is True and r["status"]["capacity"] == {"cpu": "4"}
    r["spec"] = {}
    r["status"]["capacity"] = {"cpu": "8"}
    r["metadata"]["labels"] = {"via": "status"}
    s = admin.request("PUT", f"{NODES}/gpu-1/status", r).json
    assert s["spec"]["unschedulable"] is True and s["status"]["capacity"] == {"cpu": "8"}
    # As in kube-apiserver, nodes/status resets only spec: metadata changes stick.
    assert s["metadata"]["labels"] == {"via": "status"}


def test_put_name_mismatch_is_400(srv: KubeAPIServer, admin: RawClient) -> None:
    node = srv.create_node("gpu-1")
    r = admin.request("PUT", f"{NODES}/gpu-2", node)
    assert r.status in (400, 404)
    srv.create_node("gpu-2")
    r = admin.request("PUT", f"{NODES}/gpu-2", node)
    assert r.status == 400
    assert (
        r.json["message"]
        == "the name of the object (gpu-1) does not match the name on the URL (gpu-2)"
    )


def test_delete_returns_success_status(srv: KubeAPIServer, admin: RawClient) -> None:
    uid = srv.create_node("gpu-1")["metadata"]["uid"]
    r = admin.request("DELETE", f"{NODES}/gpu-1")
    assert r.json == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": "gpu-1", "kind": "nodes", "uid": uid},
    }
    assert srv.get_node("gpu-1") is None
    assert admin.request("DELETE", f"{NODES}/gpu-1").status == 404


def test_delete_with_finalizer_waits_for_it(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    admin.request(
        "PATCH", f"{NODES}/gpu-1", {"metadata": {"finalizers": ["x/y"]}}, content_type=MERGE
    )
    r = admin.request("DELETE", f"{NODES}/gpu-1").json
    assert r["metadata"]["deletionTimestamp"]
    assert srv.get_node("gpu-1") is not None
    admin.request("PATCH", f"{NODES}/gpu-1", {"metadata": {"finalizers": None}}, content_type=MERGE)
    assert srv.get_node("gpu-1") is None


def test_every_write_bumps_the_global_resource_version(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    rv0 = srv.resource_version
    a = admin.request("POST", NODES, node_body("a")).json["metadata"]["resourceVersion"]
    b = admin.request("PATCH", f"{NODES}/a", {"metadata": {"labels": {"x": "1"}}}, content_type=SMP)
    assert int(a) == rv0 + 1
    assert int(b.json["metadata"]["resourceVersion"]) == rv0 + 2


def test_noop_patch_is_not_a_write(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1", labels={"x": "1"})
    rv = srv.resource_version
    r = admin.request(
        "PATCH", f"{NODES}/gpu-1", {"metadata": {"labels": {"x": "1"}}}, content_type=SMP
    )
    assert r.status == 200 and r.json["metadata"]["resourceVersion"] == str(rv)
    assert srv.resource_version == rv


def test_patch_with_resource_version_is_a_precondition(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    srv.create_node("gpu-1")
    r = admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}},
        content_type=MERGE,
    )
    assert r.status == 409 and r.json["reason"] == "Conflict"


def test_unsupported_patch_media_type_is_415(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    r = admin.request("PATCH", f"{NODES}/gpu-1", {"a": 1}, content_type="application/json")
    assert r.status == 415 and r.json["reason"] == "UnsupportedMediaType"
    assert "application/strategic-merge-patch+json" in r.json["message"]


def test_unknown_fields_warn_or_fail_by_field_validation(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    srv.create_node("gpu-1")
    r = admin.request("PATCH", f"{NODES}/gpu-1", {"spec": {"bogus": 1}}, content_type=MERGE)
    assert r.status == 200 and r.headers["warning"] == '299 - "unknown field \\"spec.bogus\\""'
    assert "bogus" not in r.json["spec"]
    strict = admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"spec": {"bogus": 1}},
        content_type=MERGE,
        query={"fieldValidation": "Strict"},
    )
    assert (
        strict.status == 422
        and 'strict decoding error: unknown field "spec.bogus"' in strict.json["message"]
    )
    body = node_body("gpu-2")
    body["spce"] = {}
    r = admin.request("POST", NODES, body, query={"fieldValidation": "Strict"})
    assert (r.status, r.json["message"]) == (
        400,
        'Node in version "v1" cannot be handled as a Node: '
        'strict decoding error: unknown field "spce"',
    )


def test_quantities_and_times_are_canonicalised(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    patch = {
        "status": {
            "capacity": {"memory": "1024Mi", "cpu": "2000m", "nvidia.com/gpu": 8},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastTransitionTime": "2024-01-01T02:00:00.75+02:00",
                }
            ],
        }
    }
    r = admin.request("PATCH", f"{NODES}/gpu-1/status", patch, content_type=SMP).json
    assert r["status"]["capacity"] == {"memory": "1Gi", "cpu": "2", "nvidia.com/gpu": "8"}
    assert r["status"]["conditions"][0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert r["status"]["conditions"][0]["lastHeartbeatTime"] is None


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("2000", "2k"),
        ("1000m", "1"),
        ("0.5", "500m"),
        ("100Gi", "100Gi"),
        ("1e3", "1e3"),
        ("0", "0"),
    ],
)
def test_quantity_canonical_form(given: str, want: str) -> None:
    assert canonical(given) == want


# --- patches -----------------------------------------------------------------------------------


def smp(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return smp_mod.apply(original, patch, NODE)


def test_smp_maps_merge_and_null_deletes() -> None:
    orig = {"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}}
    out = smp(orig, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out == {"metadata": {"labels": {"b": "2", "c": "3"}, "annotations": {"x": "y"}}}
    assert orig["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_smp_conditions_and_addresses_merge_by_type() -> None:
    orig = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Old"},
                {"type": "DiskPressure", "status": "False"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "Hostname", "address": "h"},
            ],
        }
    }
    out = smp(
        orig,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "GPU", "status": "True"},
                ],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
            }
        },
    )
    # apimachinery's mergeSortedSlice puts patch items (in patch order) ahead of server-only
    # items that it cannot place relative to them: GPU lands before DiskPressure.
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "True", "reason": "Old"},
        {"type": "GPU", "status": "True"},
        {"type": "DiskPressure", "status": "False"},
    ]
    assert out["status"]["addresses"] == [
        {"type": "InternalIP", "address": "10.0.0.2"},
        {"type": "Hostname", "address": "h"},
    ]


def test_smp_taints_have_no_strategy_so_are_replaced() -> None:
    orig = {
        "spec": {
            "taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]
        }
    }
    out = smp(orig, {"spec": {"taints": [{"key": "c", "effect": "NoExecute"}]}})
    assert out["spec"]["taints"] == [{"key": "c", "effect": "NoExecute"}]


def test_smp_finalizers_union_and_delete_from_primitive_list() -> None:
    orig = {"metadata": {"finalizers": ["a", "b"]}}
    assert smp(orig, {"metadata": {"finalizers": ["b", "c"]}})["metadata"]["finalizers"] == [
        "a",
        "b",
        "c",
    ]
    out = smp(orig, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == ["b"]


def test_smp_owner_references_merge_by_uid_and_delete_directive() -> None:
    ref = {"apiVersion": "v1", "kind": "X", "name": "n"}
    orig = {"metadata": {"ownerReferences": [dict(ref, uid="1"), dict(ref, uid="2")]}}
    out = smp(
        orig,
        {"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}, dict(ref, uid="3")]}},
    )
    assert [r["uid"] for r in out["metadata"]["ownerReferences"]] == ["3", "2"]  # see above


def test_smp_patch_replace_and_delete_in_maps() -> None:
    orig = {"metadata": {"labels": {"a": "1", "b": "2"}}}
    out = smp(orig, {"metadata": {"labels": {"$patch": "replace", "z": "9"}}})
    assert out["metadata"]["labels"] == {"z": "9"}
    out = smp(orig, {"metadata": {"labels": {"$patch": "delete"}}})
    assert out["metadata"]["labels"] == {}


def test_smp_patch_replace_element_replaces_merge_list() -> None:
    orig = {
        "status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}
    }
    out = smp(
        orig, {"status": {"conditions": [{"$patch": "replace"}, {"type": "C", "status": "False"}]}}
    )
    assert out["status"]["conditions"] == [{"type": "C", "status": "False"}]


def test_smp_set_element_order() -> None:
    orig = {
        "status": {
            "conditions": [
                {"type": "A", "status": "1"},
                {"type": "B", "status": "1"},
                {"type": "C", "status": "1"},
            ]
        }
    }
    patch = {
        "status": {
            "$setElementOrder/conditions": [{"type": "C"}, {"type": "A"}, {"type": "B"}],
            "conditions": [{"type": "A", "status": "2"}],
        }
    }
    out = smp(orig, patch)
    assert [c["type"] for c in out["status"]["conditions"]] == ["C", "A", "B"]
    assert out["status"]["conditions"][1]["status"] == "2"
    prim = smp(
        {"metadata": {"finalizers": ["a", "b"]}},
        {"metadata": {"$setElementOrder/finalizers": ["b", "a"]}},
    )
    assert prim["metadata"]["finalizers"] == ["b", "a"]


def test_smp_retain_keys() -> None:
    orig = {"spec": {"configSource": {"configMap": {"name": "x"}}}}
    out = smp(orig, {"spec": {"configSource": {"$retainKeys": []}}})
    assert out["spec"]["configSource"] == {}
    with pytest.raises(smp_mod.PatchError) as e:
        smp(orig, {"spec": {"configSource": {"$retainKeys": [], "configMap": {}}}})
    assert e.value.code == 400


def test_smp_missing_merge_key_is_500(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1", conditions=[{"type": "Ready", "status": "True"}])
    r = admin.request(
        "PATCH",
        f"{NODES}/gpu-1/status",
        {"status": {"conditions": [{"status": "False"}]}},
        content_type=SMP,
    )
    assert r.status == 500 and "does not contain declared merge key: type" in r.json["message"]


def test_json_patch_operations(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1", labels={"a": "1"})
    ops = [
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
        {"op": "copy", "from": "/metadata/labels/b", "path": "/metadata/labels/c"},
        {"op": "move", "from": "/metadata/labels/c", "path": "/metadata/labels/d~1e"},
        {"op": "remove", "path": "/metadata/labels/b"},
        {"op": "add", "path": "/spec/taints", "value": []},
        {"op": "add", "path": "/spec/taints/-", "value": {"key": "k", "effect": "NoSchedule"}},
    ]
    r = admin.request("PATCH", f"{NODES}/gpu-1", ops, content_type=JSONPATCH)
    assert r.status == 200
    assert r.json["metadata"]["labels"] == {"a": "9", "d/e": "2"}
    assert r.json["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]


def test_json_patch_failed_test_is_422(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1", labels={"a": "1"})
    rv = srv.resource_version
    ops = [
        {"op": "test", "path": "/metadata/labels/a", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/a"},
    ]
    r = admin.request("PATCH", f"{NODES}/gpu-1", ops, content_type=JSONPATCH)
    assert r.status == 422
    assert r.json == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server rejected our request due to an error in our request",
        "reason": "Invalid",
        "details": {},
        "code": 422,
    }
    assert srv.resource_version == rv
    missing = admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        [{"op": "remove", "path": "/metadata/labels/zz"}],
        content_type=JSONPATCH,
    )
    assert missing.status == 422
    malformed = admin.request("PATCH", f"{NODES}/gpu-1", {"op": "add"}, content_type=JSONPATCH)
    assert malformed.status == 400


def test_merge_patch_replaces_lists_and_null_removes(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node(
        "gpu-1", labels={"a": "1", "b": "2"}, conditions=[{"type": "A", "status": "True"}]
    )
    r = admin.request(
        "PATCH",
        f"{NODES}/gpu-1/status",
        {
            "metadata": {"labels": {"a": None}},
            "status": {"conditions": [{"type": "B", "status": "True"}]},
        },
        content_type=MERGE,
    ).json
    assert r["metadata"]["labels"] == {"b": "2"}
    assert [c["type"] for c in r["status"]["conditions"]] == ["B"]


def test_status_patch_keeps_transition_time_and_ignores_spec(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    srv.create_node("gpu-1")
    cond = {
        "type": "GPUReady",
        "status": "True",
        "lastTransitionTime": "2023-05-06T07:08:09Z",
        "reason": "R",
    }
    r = admin.request(
        "PATCH",
        f"{NODES}/gpu-1/status",
        {"spec": {"unschedulable": True}, "status": {"conditions": [cond]}},
        content_type=SMP,
    ).json
    assert r["status"]["conditions"] == [dict(cond, lastHeartbeatTime=None)]
    assert "unschedulable" not in r["spec"]
    main = admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"status": {"conditions": [dict(cond, type="X")]}},
        content_type=SMP,
    ).json
    assert [c["type"] for c in main["status"]["conditions"]] == ["GPUReady"]


def test_dry_run_does_not_persist(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    rv = srv.resource_version
    r = admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"metadata": {"labels": {"a": "b"}}},
        content_type=SMP,
        query={"dryRun": "All"},
    )
    assert r.json["metadata"]["labels"] == {"a": "b"}
    assert srv.resource_version == rv and "labels" not in stored(srv, "gpu-1")["metadata"]


def test_table_output_for_kubectl_get(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node(
        "gpu-1",
        labels={"node-role.kubernetes.io/worker": ""},
        conditions=[{"type": "Ready", "status": "True"}],
    )
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    r = admin.request("GET", NODES, headers={"Accept": accept}, query={"includeObject": "Object"})
    assert r.json["kind"] == "Table"
    assert [c["name"] for c in r.json["columnDefinitions"]][:5] == [
        "Name",
        "Status",
        "Roles",
        "Age",
        "Version",
    ]
    row = r.json["rows"][0]
    assert row["cells"][:3] == ["gpu-1", "Ready", "worker"]
    assert row["object"]["kind"] == "Node"


def test_protobuf_only_is_406(srv: KubeAPIServer, admin: RawClient) -> None:
    r = admin.request("GET", NODES, headers={"Accept": "application/vnd.kubernetes.protobuf"})
    assert r.status == 406


# --- watch -------------------------------------------------------------------------------------


def collect(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out = []
    for ev in it:
        out.append(ev)
        if len(out) == n:
            break
    return out


def label(srv: KubeAPIServer, name: str, **labels: str) -> None:
    srv.update_node(name, lambda n: n["metadata"].setdefault("labels", {}).update(labels))


def test_watch_from_zero_sends_current_state_then_changes(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    srv.create_node("a")
    it = admin.watch(NODES, {"resourceVersion": "0", "timeoutSeconds": "5"})
    events = collect(it, 1)  # the current state first; the stream is now open
    label(srv, "a", x="1")
    srv.delete_node("a")
    events += collect(it, 2)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["kind"] == "Node"
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


def test_watch_from_resource_version_replays_only_later_changes(
    srv: KubeAPIServer, admin: RawClient
) -> None:
    srv.create_node("a")
    rv = srv.resource_version
    label(srv, "a", x="1")
    srv.create_node("b")
    events = collect(admin.watch(NODES, {"resourceVersion": str(rv), "timeoutSeconds": "5"}), 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
    ]


def test_watch_too_old_resource_version_is_410(tmp_path: Path) -> None:
    with KubeAPIServer(tmp_path / "k", history=3) as srv:
        c = as_user(srv, "admin", "system:masters")
        srv.create_node("a")
        for i in range(5):
            label(srv, "a", x=str(i))
        events = list(c.watch(NODES, {"resourceVersion": "1", "timeoutSeconds": "5"}))
        assert len(events) == 1 and events[0]["type"] == "ERROR"
        status = events[0]["object"]
        assert (status["code"], status["reason"]) == (410, "Expired")
        assert status["message"].startswith("too old resource version: 1 (")


def test_watch_selector_transitions(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("a")
    since = str(srv.resource_version)
    label(srv, "a", gpu="true")  # starts matching: ADDED
    label(srv, "a", other="1")  # still matching: MODIFIED
    label(srv, "a", gpu="false")  # stops matching: DELETED
    events = collect(admin.watch(NODES, {"labelSelector": "gpu=true", "resourceVersion": since}), 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[2]["object"]["metadata"]["labels"]["gpu"] == "false"


def test_watch_field_selector_and_timeout(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("a")
    srv.create_node("b")
    start = time.monotonic()
    events = list(admin.watch(NODES, {"fieldSelector": "metadata.name=b", "timeoutSeconds": "1"}))
    assert 0.9 <= time.monotonic() - start < 4
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]


def test_watch_bookmarks(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.bookmark_interval = 0.2
    srv.create_node("a")
    rv = str(srv.resource_version)
    events = collect(
        admin.watch(
            NODES, {"resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
        ),
        1,
    )
    assert events[0]["type"] == "BOOKMARK"
    assert (
        events[0]["object"]["kind"] == "Node"
        and events[0]["object"]["metadata"]["resourceVersion"] == rv
    )


def test_watch_send_initial_events(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("a")
    q = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "5",
    }
    events = collect(admin.watch(NODES, q), 2)
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_ends_when_server_stops(tmp_path: Path) -> None:
    srv = KubeAPIServer(tmp_path / "k").start()
    try:
        srv.create_node("a")
        c = as_user(srv, "admin", "system:masters")
        it = c.watch(NODES, {"timeoutSeconds": "30"})
        assert [e["type"] for e in collect(it, 1)] == ["ADDED"]
        start = time.monotonic()
        srv.stop()
        assert list(it) == []
        assert time.monotonic() - start < 5
    finally:
        srv.stop()


# --- events ------------------------------------------------------------------------------------


def event_body(name: str, node: str, ns: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Node", "name": node, "uid": node},
        "reason": "GPUReady",
        "message": "all good",
        "type": "Normal",
        "source": {"component": "nodeagent"},
    }


def test_events_create_list_and_field_selectors(srv: KubeAPIServer, admin: RawClient) -> None:
    ev = "/api/v1/namespaces/default/events"
    r = admin.request("POST", ev, event_body("gpu-1.1", "gpu-1"))
    assert r.status == 201
    assert r.json["firstTimestamp"] is None and r.json["reportingComponent"] == ""
    admin.request("POST", ev, event_body("gpu-2.1", "gpu-2"))
    names = [
        e["metadata"]["name"]
        for e in admin.get(
            ev, fieldSelector="involvedObject.name=gpu-2,involvedObject.kind=Node"
        ).json["items"]
    ]
    assert names == ["gpu-2.1"]
    assert len(admin.get("/api/v1/events").json["items"]) == 2
    assert [e["metadata"]["name"] for e in srv.events()] == ["gpu-1.1", "gpu-2.1"]
    patched = admin.request("PATCH", f"{ev}/gpu-1.1", {"count": 2}, content_type=SMP)
    assert patched.json["count"] == 2


def test_event_in_missing_namespace_is_404_and_namespace_must_agree(admin: RawClient) -> None:
    r = admin.request("POST", "/api/v1/namespaces/nope/events", event_body("e", "n", "nope"))
    assert (r.status, r.json["message"]) == (404, 'namespaces "nope" not found')
    body = event_body("e", "n", "kube-system")
    r = admin.request("POST", "/api/v1/namespaces/kube-system/events", body)
    assert r.status == 422 and "involvedObject.namespace" in r.json["message"]


# --- authorization -----------------------------------------------------------------------------


@pytest.fixture
def node1(srv: KubeAPIServer) -> Iterator[RawClient]:
    c = as_user(srv, "system:node:gpu-1", "system:nodes")
    try:
        yield c
    finally:
        c.close()


def test_node_may_read_and_register_itself(srv: KubeAPIServer, node1: RawClient) -> None:
    srv.create_node("other")
    assert node1.get(NODES).status == 200
    assert node1.get(f"{NODES}/other").status == 200
    body = node_body("gpu-1", **{"kubernetes.io/hostname": "gpu-1", "example.com/x": "y"})
    body["spec"] = {"taints": [{"key": "nodeagent/not-ready", "effect": "NoSchedule"}]}
    assert node1.request("POST", NODES, body).status == 201
    r = node1.request("POST", NODES, node_body("gpu-9"))
    assert r.status == 403
    assert (
        r.json["message"]
        == 'nodes "gpu-9" is forbidden: node "gpu-1" is not allowed to modify node "gpu-9"'
    )


def test_node_registering_with_forbidden_labels(node1: RawClient) -> None:
    r = node1.request(
        "POST", NODES, node_body("gpu-1", **{"node-role.kubernetes.io/gpu": "", "k8s.io/x": "1"})
    )
    assert r.status == 403
    assert r.json["message"] == (
        'nodes "gpu-1" is forbidden: node "gpu-1" is not allowed to set the following labels: '
        "k8s.io/x, node-role.kubernetes.io/gpu"
    )


def test_node_may_not_touch_other_nodes(srv: KubeAPIServer, node1: RawClient) -> None:
    srv.create_node("other")
    r = node1.request(
        "PATCH", f"{NODES}/other", {"metadata": {"labels": {"a": "b"}}}, content_type=SMP
    )
    assert r.status == 403 and r.json["reason"] == "Forbidden"
    assert (
        r.json["message"]
        == 'nodes "other" is forbidden: node "gpu-1" is not allowed to modify node "other"'
    )
    assert node1.request("DELETE", f"{NODES}/other").status == 403
    st = node1.request(
        "PATCH", f"{NODES}/other/status", {"status": {"phase": "x"}}, content_type=SMP
    )
    assert st.status == 403


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("example.com/gpu", True),
        ("plain", True),
        ("kubernetes.io/hostname", True),
        ("kubernetes.io/arch", True),
        ("topology.kubernetes.io/zone", True),
        ("node.kubernetes.io/instance-type", True),
        ("node.kubernetes.io/anything", True),
        ("kubelet.kubernetes.io/anything", True),
        ("foo.node.kubernetes.io/x", True),
        ("node-restriction.kubernetes.io/x", False),
        ("foo.node-restriction.kubernetes.io/x", False),
        ("kubernetes.io/foo", False),
        ("foo.kubernetes.io/x", False),
        ("k8s.io/x", False),
        ("sub.k8s.io/x", False),
        ("node-role.kubernetes.io/gpu", False),
    ],
)
def test_node_restriction_labels(
    srv: KubeAPIServer, node1: RawClient, key: str, allowed: bool
) -> None:
    srv.create_node("gpu-1")
    r = node1.request(
        "PATCH", f"{NODES}/gpu-1", {"metadata": {"labels": {key: "v"}}}, content_type=SMP
    )
    if allowed:
        assert r.status == 200, r.json
    else:
        assert r.status == 403
        assert (
            r.json["message"]
            == f'nodes "gpu-1" is forbidden: is not allowed to modify labels: {key}'
        )


def test_node_may_not_remove_or_change_restricted_labels(
    srv: KubeAPIServer, node1: RawClient
) -> None:
    srv.create_node("gpu-1", labels={"node-restriction.kubernetes.io/pool": "a", "mine": "1"})
    r = node1.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"metadata": {"labels": {"node-restriction.kubernetes.io/pool": None}}},
        content_type=SMP,
    )
    assert r.status == 403
    # Unrelated labels stay editable while a restricted one is present.
    assert (
        node1.request(
            "PATCH", f"{NODES}/gpu-1", {"metadata": {"labels": {"mine": "2"}}}, content_type=SMP
        ).status
        == 200
    )
    # Labels via the status subresource are checked too (status keeps metadata changes).
    r = node1.request(
        "PATCH",
        f"{NODES}/gpu-1/status",
        {"metadata": {"labels": {"kubernetes.io/foo": "x"}}},
        content_type=SMP,
    )
    assert r.status == 403


def test_node_may_not_modify_taints_but_may_update_status(
    srv: KubeAPIServer, node1: RawClient
) -> None:
    srv.create_node("gpu-1", taints=[{"key": "a", "effect": "NoSchedule"}])
    r = node1.request("PATCH", f"{NODES}/gpu-1", {"spec": {"taints": []}}, content_type=SMP)
    assert r.status == 403
    assert (
        r.json["message"]
        == 'nodes "gpu-1" is forbidden: node "gpu-1" is not allowed to modify taints'
    )
    cond = {"type": "GPUReady", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}
    r = node1.request(
        "PATCH", f"{NODES}/gpu-1/status", {"status": {"conditions": [cond]}}, content_type=SMP
    )
    assert r.status == 200
    ev = node1.request("POST", "/api/v1/namespaces/default/events", event_body("gpu-1.x", "gpu-1"))
    assert ev.status == 201
    assert node1.request("DELETE", f"{NODES}/gpu-1").status == 200


def test_node_identity_needs_the_nodes_group(srv: KubeAPIServer) -> None:
    c = as_user(srv, "system:node:gpu-1")
    assert c.get(NODES).status == 403


def test_controller_permissions(srv: KubeAPIServer) -> None:
    srv.create_node("gpu-1", taints=[{"key": "a", "effect": "NoSchedule"}])
    c = as_user(srv, "nodeagent-controller", "whatever")
    assert c.get(NODES).status == 200
    assert c.get(f"{NODES}/gpu-1").status == 200
    assert (
        c.request("PATCH", f"{NODES}/gpu-1", {"spec": {"taints": None}}, content_type=SMP).status
        == 200
    )
    assert (
        c.request("POST", "/api/v1/namespaces/default/events", event_body("e.1", "gpu-1")).status
        == 201
    )
    r = c.request("PATCH", f"{NODES}/gpu-1/status", {"status": {}}, content_type=SMP)
    assert r.status == 403
    assert r.json["message"] == (
        'nodes "gpu-1" is forbidden: User "nodeagent-controller" cannot patch resource '
        '"nodes/status" '
        'in API group "" at the cluster scope'
    )
    assert c.request("DELETE", f"{NODES}/gpu-1").status == 403
    assert c.request("POST", NODES, node_body("x")).status == 403
    assert c.request("PUT", f"{NODES}/gpu-1", stored(srv, "gpu-1")).status == 403


def test_grant_extends_a_user(srv: KubeAPIServer) -> None:
    srv.create_node("gpu-1")
    c = as_user(srv, "carol")
    assert c.get(f"{NODES}/gpu-1").status == 403
    srv.grant("carol", ["nodes"], ["get"])
    assert c.get(f"{NODES}/gpu-1").status == 200


# --- faults ------------------------------------------------------------------------------------


@pytest.fixture
def api(srv: KubeAPIServer, tmp_path: Path) -> Any:
    kc = srv.admin_kubeconfig(tmp_path / "admin.kubeconfig")
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kc)))


def test_fault_429_carries_retry_after(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1")
    srv.inject(Fault(method="PATCH", path_regex=r"/nodes/gpu-1$", kind="429", retry_after=7))
    with pytest.raises(k8s.ApiException) as e:
        api.patch_node("gpu-1", {"metadata": {"labels": {"a": "b"}}})
    assert e.value.status == 429
    assert e.value.headers is not None and e.value.headers["Retry-After"] == "7"
    assert '"reason":"TooManyRequests"' in str(e.value.body)
    assert api.patch_node("gpu-1", {"metadata": {"labels": {"a": "b"}}}).metadata.labels == {
        "a": "b"
    }
    rec = [r for r in srv.requests if r.method == "PATCH"]
    assert [(r.status, r.fault, r.user) for r in rec] == [
        (429, "429", "admin"),
        (200, None, "admin"),
    ]


def test_fault_429_on_get_is_retried_by_urllib3(srv: KubeAPIServer, api: Any) -> None:
    srv.inject(Fault(method="GET", path_regex="^/api/v1/nodes$", kind="429", retry_after=1))
    assert api.list_node().items == []
    assert [r.status for r in srv.requests if r.path == NODES] == [429, 200]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_fault_5xx(srv: KubeAPIServer, api: Any, kind: str) -> None:
    srv.inject(Fault(kind=kind))
    with pytest.raises(k8s.ApiException) as e:
        api.list_node()
    assert e.value.status == int(kind)
    assert srv.requests[-1].status == int(kind) and srv.requests[-1].fault == kind
    assert api.list_node().items == []


def test_fault_drop_closes_the_connection(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1")
    srv.inject(Fault(method="PATCH", kind="drop"))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        api.patch_node("gpu-1", {"metadata": {"labels": {"a": "b"}}})
    rec = srv.requests[-1]
    assert (rec.method, rec.status, rec.fault, rec.user) == ("PATCH", 0, "drop", "admin")
    # Idempotent GETs are retried by urllib3 (3 times): drop them all to see the failure.
    srv.inject(Fault(method="GET", kind="drop", count=4))
    with pytest.raises((urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError)):
        api.list_node()
    assert len([r for r in srv.requests if r.fault == "drop"]) == 5


def test_fault_latency_is_slower_but_succeeds(srv: KubeAPIServer, api: Any) -> None:
    srv.inject(Fault(kind="latency", delay_s=0.5, path_regex="/nodes"))
    start = time.monotonic()
    assert api.list_node().items == []
    assert time.monotonic() - start >= 0.5
    assert srv.requests[-1].fault == "latency" and srv.requests[-1].status == 200


def test_fault_matching_and_count(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.inject(Fault(method="GET", path_regex="^/version$", kind="500", count=2))
    assert admin.get("/api").status == 200
    assert [admin.get("/version").status for _ in range(3)] == [500, 500, 200]
    with pytest.raises(ValueError):
        Fault(kind="teapot")


def test_request_log_records_bodies(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    admin.request(
        "PATCH",
        f"{NODES}/gpu-1",
        {"metadata": {"labels": {"a": "b"}}},
        content_type=SMP,
        query={"fieldManager": "t"},
    )
    rec = srv.requests[-1]
    assert (rec.method, rec.path, rec.query, rec.status) == (
        "PATCH",
        f"{NODES}/gpu-1",
        {"fieldManager": "t"},
        200,
    )
    assert rec.content_type == SMP and rec.body == {"metadata": {"labels": {"a": "b"}}}
    assert rec.ts <= time.time()


def test_direct_store_access(srv: KubeAPIServer) -> None:
    node = srv.create_node(
        "gpu-1",
        labels={"a": "b"},
        annotations={"x": "y"},
        taints=[{"key": "k", "effect": "NoSchedule"}],
        capacity={"nvidia.com/gpu": "8"},
        conditions=[{"type": "Ready", "status": "True"}],
    )
    assert node["kind"] == "Node" and node["status"]["allocatable"] == {"nvidia.com/gpu": "8"}
    rv = int(node["metadata"]["resourceVersion"])
    updated = srv.update_node("gpu-1", lambda n: n["metadata"]["labels"].update(c="d"))
    assert int(updated["metadata"]["resourceVersion"]) == rv + 1
    assert stored(srv, "gpu-1")["metadata"]["labels"] == {"a": "b", "c": "d"}
    assert srv.get_node("nope") is None
    with pytest.raises(ValueError):
        srv.create_node("gpu-1")
    with pytest.raises(KeyError):
        srv.update_node("nope", lambda n: None)


def test_method_routing(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    assert admin.request("POST", f"{NODES}/gpu-1", node_body("gpu-1")).status == 405
    assert admin.request("PUT", NODES, node_body("gpu-1")).status == 405
    assert admin.request("DELETE", "/api/v1/namespaces/default").status == 405
    r = admin.request("PATCH", f"{NODES}/gpu-1/proxy", {}, content_type=SMP)
    assert r.status == 404


def test_list_pinned_to_a_name_is_authorized_for_that_name(srv: KubeAPIServer) -> None:
    srv.create_node("gpu-1")
    srv.grant("dave", ["nodes"], ["list"])
    c = as_user(srv, "dave")
    assert c.get(NODES, fieldSelector="metadata.name=gpu-1").status == 200
    r = c.request("GET", NODES, query={"fieldSelector": "metadata.name=gpu-1", "watch": "1"})
    assert r.status == 403
    assert r.json["message"].startswith('nodes "gpu-1" is forbidden: User "dave" cannot watch')


def test_restart_keeps_url_and_objects(srv: KubeAPIServer, admin: RawClient) -> None:
    srv.create_node("gpu-1")
    url = srv.url
    srv.stop()
    with pytest.raises(OSError):
        RawClient(url, srv.ca_path, cert=srv.client_cert("admin", ["system:masters"])).get(NODES)
    srv.start()
    assert srv.url == url
    admin.close()
    assert [n["metadata"]["name"] for n in admin.get(NODES).json["items"]] == ["gpu-1"]
