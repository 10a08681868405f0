"""Fidelity of the test API server, checked with real ``kubectl`` and the official Python client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from tests.kubeapi import KubeAPIServer
from tests.kubeapi.jsonpatch import apply_json_patch, merge_patch
from tests.kubeapi.schema import NODE as NODE_SCHEMA
from tests.kubeapi.smp import PatchError
from tests.kubeapi.smp import apply as smp_apply

KUBECTL = shutil.which("kubectl")
SMP = "application/strategic-merge-patch+json"


class Kubectl:
    """Runs the real kubectl against the server with a given kubeconfig and a private cache."""

    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.kubeconfig = kubeconfig
        self.cache = cache

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        assert KUBECTL
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


# On a laptop without kubectl these skip; on CI (CI=true) they run, and fail without it.
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None and os.environ.get("CI") != "true", reason="kubectl not installed"
)


@pytest.fixture
def kubectl(srv: KubeAPIServer, tmp_path: Path) -> Kubectl:
    return Kubectl(srv.admin_kubeconfig(tmp_path / "admin.kubeconfig"), tmp_path / "kube-cache")


def stored(srv: KubeAPIServer, name: str) -> dict[str, Any]:
    """The node as stored (it must exist)."""
    node = srv.get_node(name)
    assert node is not None, f"node {name} is gone"
    return node


def ready(status: str, when: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "lastTransitionTime": when, "reason": "Test"}


def patches(srv: KubeAPIServer) -> list[Any]:
    return [r for r in srv.requests if r.method == "PATCH"]


# --- kubectl -----------------------------------------------------------------------------------


@needs_kubectl
def test_get_nodes_prints_the_server_side_table(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1", labels={"node-role.kubernetes.io/gpu": ""}, conditions=[ready("True")])
    srv.create_node("gpu-2", conditions=[ready("False")])
    lines = kubectl.ok("get", "nodes").splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert lines[1].split()[:3] == ["gpu-1", "Ready", "gpu"]
    assert lines[2].split()[:3] == ["gpu-2", "NotReady", "<none>"]


@needs_kubectl
def test_get_node_json(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    stored = srv.create_node("gpu-1", labels={"a": "b"}, capacity={"nvidia.com/gpu": "8"})
    got = json.loads(kubectl.ok("get", "node", "gpu-1", "-o", "json"))
    assert got == stored


@needs_kubectl
def test_label_and_unlabel(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1")
    assert kubectl.ok("label", "node", "gpu-1", "a=b").strip() == "node/gpu-1 labeled"
    assert stored(srv, "gpu-1")["metadata"]["labels"] == {"a": "b"}
    last = patches(srv)[-1]
    # kubectl label (and annotate) send a JSON merge patch, not a strategic one.
    assert (last.content_type, last.query["fieldManager"], last.body) == (
        "application/merge-patch+json",
        "kubectl-label",
        {"metadata": {"labels": {"a": "b"}}},
    )
    assert kubectl.ok("label", "node", "gpu-1", "a-").strip() == "node/gpu-1 unlabeled"
    assert "labels" not in stored(srv, "gpu-1")["metadata"]


@needs_kubectl
def test_annotate(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1")
    kubectl.ok("annotate", "node", "gpu-1", "nodeagent/config-hash=abc")
    assert stored(srv, "gpu-1")["metadata"]["annotations"] == {"nodeagent/config-hash": "abc"}


@needs_kubectl
def test_patch_strategic_merge_and_json(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1", labels={"keep": "1"})
    kubectl.ok(
        "patch", "node", "gpu-1", "--type=strategic", "-p", '{"metadata":{"labels":{"s":"1"}}}'
    )
    kubectl.ok(
        "patch",
        "node",
        "gpu-1",
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"m":"1","keep":null}}}',
    )
    kubectl.ok(
        "patch",
        "node",
        "gpu-1",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/metadata/labels/j","value":"1"}]',
    )
    assert stored(srv, "gpu-1")["metadata"]["labels"] == {"s": "1", "m": "1", "j": "1"}
    types = [r.content_type for r in patches(srv)]
    assert types == [SMP, "application/merge-patch+json", "application/json-patch+json"]
    out = kubectl.ok(
        "patch", "node", "gpu-1", "--type=merge", "-p", '{"metadata":{"labels":{"m":"1"}}}'
    )
    assert out.strip() == "node/gpu-1 patched (no change)"


@needs_kubectl
def test_patch_json_failed_test_op(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1")
    proc = kubectl.run(
        "patch",
        "node",
        "gpu-1",
        "--type=json",
        "-p",
        '[{"op":"test","path":"/metadata/name","value":"x"}]',
    )
    assert proc.returncode != 0
    assert "the server rejected our request due to an error in our request" in proc.stderr


@needs_kubectl
def test_patch_status_subresource(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1", conditions=[ready("False")])
    cond = {
        "type": "GPUReady",
        "status": "True",
        "lastTransitionTime": "2024-05-05T01:02:03Z",
        "reason": "Probed",
    }
    patch = json.dumps({"status": {"conditions": [cond]}})
    kubectl.ok("patch", "node", "gpu-1", "--subresource=status", "--type=strategic", "-p", patch)
    conditions = stored(srv, "gpu-1")["status"]["conditions"]
    # A new merge-list item without $setElementOrder goes before the server-only ones, as in
    # apimachinery's mergeSortedSlice (why node-problem-detector conditions list first).
    assert [c["type"] for c in conditions] == ["GPUReady", "Ready"]
    assert conditions[0]["lastTransitionTime"] == "2024-05-05T01:02:03Z"
    assert patches(srv)[-1].path == "/api/v1/nodes/gpu-1/status"


@needs_kubectl
def test_taint_and_untaint(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1")
    assert kubectl.ok("taint", "nodes", "gpu-1", "k=v:NoSchedule").strip() == "node/gpu-1 tainted"
    assert stored(srv, "gpu-1")["spec"]["taints"] == [
        {"key": "k", "value": "v", "effect": "NoSchedule"}
    ]
    assert kubectl.ok("taint", "nodes", "gpu-1", "k:NoSchedule-").strip() == "node/gpu-1 untainted"
    assert "taints" not in stored(srv, "gpu-1")["spec"]


@needs_kubectl
def test_wait_for_condition_uses_watch(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1", conditions=[ready("False")])

    def become_ready() -> None:
        # Once kubectl is watching (the watch is logged as it opens), make the node Ready.
        deadline = time.monotonic() + 10
        while not any(r.query.get("watch") == "true" for r in srv.requests):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(0.2)
        srv.update_node("gpu-1", lambda n: n["status"].update(conditions=[ready("True")]))

    t = threading.Thread(target=become_ready, daemon=True)
    t.start()
    start = time.monotonic()
    out = kubectl.ok("wait", "--for=condition=Ready", "node/gpu-1", "--timeout=10s")
    t.join()
    assert out.strip() == "node/gpu-1 condition met"
    assert time.monotonic() - start < 10
    (watch,) = [r for r in srv.requests if r.query.get("watch") == "true"]
    assert watch.query["fieldSelector"] == "metadata.name=gpu-1"


@needs_kubectl
def test_wait_times_out_when_condition_never_comes(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1", conditions=[ready("False")])
    proc = kubectl.run("wait", "--for=condition=Ready", "node/gpu-1", "--timeout=1s")
    assert proc.returncode != 0
    assert "timed out waiting for the condition" in proc.stderr


@needs_kubectl
def test_describe_node_shows_conditions_and_events(
    srv: KubeAPIServer, kubectl: Kubectl, api: Any
) -> None:
    node = srv.create_node("gpu-1", capacity={"nvidia.com/gpu": "8"}, conditions=[ready("True")])
    ref = k8s.V1ObjectReference(kind="Node", name="gpu-1", uid=node["metadata"]["uid"])
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name="gpu-1.1"),
        involved_object=ref,
        reason="GPUReady",
        message="8 GPUs healthy",
        type="Normal",
        source=k8s.V1EventSource(component="nodeagent"),
    )
    api.create_namespaced_event("default", event)
    out = kubectl.ok("describe", "node", "gpu-1")
    assert "nvidia.com/gpu:  8" in out
    assert [ln.split()[:2] for ln in out.splitlines() if ln.strip().startswith("Ready")] == [
        ["Ready", "True"]
    ]
    assert "GPUReady" in out.split("Events:")[1] and "8 GPUs healthy" in out
    selectors = [
        r.query.get("fieldSelector", "") for r in srv.requests if r.path == "/api/v1/events"
    ]
    assert any("involvedObject.kind=Node" in s for s in selectors)


@needs_kubectl
def test_create_and_apply_from_file(srv: KubeAPIServer, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "node.yaml"
    manifest.write_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: gpu-9\n  labels: {a: b}\n")
    assert kubectl.ok("create", "-f", str(manifest)).strip() == "node/gpu-9 created"
    assert [r.query.get("fieldValidation") for r in srv.requests if r.method == "POST"] == [
        "Strict"
    ]
    manifest.write_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: gpu-9\n  labels: {a: c}\n")
    assert kubectl.ok("apply", "-f", str(manifest)).strip() == "node/gpu-9 configured"
    assert kubectl.ok("apply", "-f", str(manifest)).strip() == "node/gpu-9 unchanged"
    meta = stored(srv, "gpu-9")["metadata"]
    assert meta["labels"] == {"a": "c"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in meta["annotations"]
    manifest.write_text("apiVersion: v1\nkind: Node\nmetadata:\n  name: gpu-8\nspec:\n  bogus: 1\n")
    proc = kubectl.run("create", "-f", str(manifest))
    assert proc.returncode != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in proc.stderr


@needs_kubectl
def test_delete_node(srv: KubeAPIServer, kubectl: Kubectl) -> None:
    srv.create_node("gpu-1")
    assert kubectl.ok("delete", "node", "gpu-1").strip() == 'node "gpu-1" deleted'
    assert srv.get_node("gpu-1") is None
    proc = kubectl.run("get", "node", "gpu-1")
    assert proc.returncode != 0
    assert 'Error from server (NotFound): nodes "gpu-1" not found' in proc.stderr


@needs_kubectl
def test_node_identity_forbidden_label(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node("gpu-1")
    node = Kubectl(srv.node_kubeconfig(tmp_path / "node.kubeconfig", "gpu-1"), tmp_path / "cache")
    proc = node.run("label", "node", "gpu-1", "node-restriction.kubernetes.io/foo=bar")
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        'Error from server (Forbidden): nodes "gpu-1" is forbidden: '
        "is not allowed to modify labels: "
        "node-restriction.kubernetes.io/foo"
    )
    node.ok("label", "node", "gpu-1", "nodeagent.example.com/gpu=true")
    proc = node.run("taint", "nodes", "gpu-1", "k=v:NoSchedule")
    assert proc.returncode != 0 and 'node "gpu-1" is not allowed to modify taints' in proc.stderr


@needs_kubectl
def test_unprivileged_user_and_token_auth(srv: KubeAPIServer, tmp_path: Path) -> None:
    nobody = Kubectl(
        srv.kubeconfig(tmp_path / "nobody", user="nobody", auth="token"), tmp_path / "cache"
    )
    proc = nobody.run("get", "nodes")
    assert proc.returncode != 0
    assert (
        "Error from server (Forbidden): nodes is forbidden: "
        'User "nobody" cannot list resource "nodes" '
        'in API group "" at the cluster scope'
    ) in proc.stderr
    assert {r.user for r in srv.requests} == {"nobody"}


@needs_kubectl
def test_wrong_ca_is_rejected_by_kubectl(srv: KubeAPIServer, tmp_path: Path) -> None:
    other = KubeAPIServer(tmp_path / "other")
    kc = srv.kubeconfig(
        tmp_path / "wrong-ca", user="admin", groups=["system:masters"], ca=other.ca_path
    )
    proc = Kubectl(kc, tmp_path / "cache").run("get", "nodes", "--request-timeout=5s")
    assert proc.returncode != 0
    assert "certificate signed by unknown authority" in proc.stderr


# --- the official Python client ----------------------------------------------------------------


@pytest.fixture
def api(srv: KubeAPIServer, tmp_path: Path) -> Any:
    kc = srv.admin_kubeconfig(tmp_path / "py.kubeconfig")
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kc)))


def test_python_list_node(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1", labels={"gpu": "true"}, capacity={"nvidia.com/gpu": "8"})
    srv.create_node("cpu-1")
    nodes = api.list_node(label_selector="gpu=true")
    assert [n.metadata.name for n in nodes.items] == ["gpu-1"]
    assert nodes.items[0].status.capacity == {"nvidia.com/gpu": "8"}
    assert nodes.metadata.resource_version == str(srv.resource_version)


def test_python_patch_node_is_strategic(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1", taints=[{"key": "a", "effect": "NoSchedule"}])
    node = api.patch_node("gpu-1", {"metadata": {"labels": {"x": "1"}}, "spec": {"taints": None}})
    assert node.metadata.labels == {"x": "1"} and node.spec.taints is None
    assert patches(srv)[-1].content_type == SMP


def test_python_patch_node_status(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1", conditions=[ready("True")])
    cond = {
        "type": "GPUReady",
        "status": "False",
        "lastTransitionTime": "2024-02-03T04:05:06Z",
        "reason": "NoDevices",
    }
    node = api.patch_node_status("gpu-1", {"status": {"conditions": [cond]}})
    got = {c.type: c for c in node.status.conditions}
    assert set(got) == {"Ready", "GPUReady"}
    assert got["GPUReady"].last_transition_time.isoformat() == "2024-02-03T04:05:06+00:00"
    kept = {c["type"]: c for c in stored(srv, "gpu-1")["status"]["conditions"]}
    assert kept["GPUReady"]["lastTransitionTime"] == "2024-02-03T04:05:06Z"


def test_python_watch(srv: KubeAPIServer, api: Any) -> None:
    srv.create_node("gpu-1")
    srv.create_node("gpu-2")
    w = k8s_watch.Watch()
    events = []
    for ev in w.stream(api.list_node, field_selector="metadata.name=gpu-1", timeout_seconds=5):
        events.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.labels))
        if len(events) == 1:  # the initial state is in; now change things
            api.patch_node("gpu-2", {"metadata": {"labels": {"ignored": "1"}}})
            api.patch_node("gpu-1", {"metadata": {"labels": {"seen": "1"}}})
        if len(events) == 2:
            w.stop()
    assert events == [("ADDED", "gpu-1", None), ("MODIFIED", "gpu-1", {"seen": "1"})]


def test_python_create_namespaced_event(srv: KubeAPIServer, api: Any) -> None:
    node = srv.create_node("gpu-1")
    body = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name="gpu-1."),
        involved_object=k8s.V1ObjectReference(
            kind="Node", name="gpu-1", uid=node["metadata"]["uid"]
        ),
        reason="GPUReady",
        message="8 GPUs healthy",
        type="Normal",
        source=k8s.V1EventSource(component="nodeagent", host="gpu-1"),
    )
    created = api.create_namespaced_event("default", body)
    assert (
        created.metadata.name.startswith("gpu-1.")
        and len(created.metadata.name) == len("gpu-1.") + 5
    )
    (event,) = srv.events()
    assert (event["reason"], event["involvedObject"]["name"], event["source"]["component"]) == (
        "GPUReady",
        "gpu-1",
        "nodeagent",
    )
    listed = api.list_namespaced_event("default", field_selector="involvedObject.name=gpu-1")
    assert [e.reason for e in listed.items] == ["GPUReady"]


# --- strategic merge patch vs the apimachinery code inside kubectl -----------------------------

_REF = {"apiVersion": "v1", "kind": "X", "name": "n"}
_CONDS = [{"type": t, "status": "True"} for t in ("A", "B", "C")]
SMP_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "labels",
        {"metadata": {"labels": {"a": "1", "b": "2"}}},
        {"metadata": {"labels": {"a": None, "c": "3"}}},
    ),
    (
        "new-condition",
        {"status": {"conditions": _CONDS[:1]}},
        {"status": {"conditions": [{"type": "G", "status": "True"}]}},
    ),
    (
        "merge-and-add",
        {"status": {"conditions": _CONDS[:2]}},
        {
            "status": {
                "conditions": [
                    {"type": "C", "status": "False"},
                    {"type": "A", "status": "False", "reason": "r"},
                    {"type": "D", "status": "x"},
                ]
            }
        },
    ),
    (
        "null-in-item",
        {"status": {"conditions": [{"type": "A", "status": "True", "reason": "r"}]}},
        {"status": {"conditions": [{"type": "A", "reason": None}]}},
    ),
    (
        "addresses",
        {
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "1"},
                    {"type": "Hostname", "address": "h"},
                ]
            }
        },
        {"status": {"addresses": [{"type": "Hostname", "address": "h2"}]}},
    ),
    (
        "taints-replaced",
        {
            "spec": {
                "taints": [
                    {"key": "a", "effect": "NoSchedule"},
                    {"key": "b", "effect": "NoSchedule"},
                ]
            }
        },
        {"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}},
    ),
    (
        "taints-null",
        {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}},
        {"spec": {"taints": None}},
    ),
    (
        "finalizers-union",
        {"metadata": {"finalizers": ["a", "b"]}},
        {"metadata": {"finalizers": ["c", "a"]}},
    ),
    (
        "delete-from-primitive",
        {"metadata": {"finalizers": ["a", "b", "c"]}},
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}},
    ),
    (
        "owner-refs",
        {"metadata": {"ownerReferences": [dict(_REF, uid="1"), dict(_REF, uid="2")]}},
        {"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}, dict(_REF, uid="3")]}},
    ),
    (
        "map-replace",
        {"metadata": {"labels": {"a": "1"}, "annotations": {"x": "y"}}},
        {"metadata": {"labels": {"$patch": "replace", "z": "9"}}},
    ),
    (
        "map-delete",
        {"metadata": {"labels": {"a": "1"}, "annotations": {"x": "y"}}},
        {"metadata": {"labels": {"$patch": "delete"}}},
    ),
    (
        "list-replace",
        {"status": {"conditions": _CONDS}},
        {"status": {"conditions": [{"$patch": "replace"}, {"type": "Z", "status": "False"}]}},
    ),
    (
        "set-element-order",
        {"status": {"conditions": _CONDS}},
        {
            "status": {
                "$setElementOrder/conditions": [{"type": "C"}, {"type": "A"}, {"type": "B"}],
                "conditions": [{"type": "A", "status": "False"}],
            }
        },
    ),
    (
        "set-element-order-server-only",
        {"status": {"conditions": _CONDS}},
        {
            "status": {
                "$setElementOrder/conditions": [{"type": "C"}, {"type": "N"}],
                "conditions": [{"type": "N", "status": "x"}],
            }
        },
    ),
    (
        "set-element-order-primitives",
        {"metadata": {"finalizers": ["a", "b", "c"]}},
        {"metadata": {"$setElementOrder/finalizers": ["c", "a", "b"]}},
    ),
    (
        "pod-cidrs",
        {"spec": {"podCIDRs": ["10.0.0.0/24"]}},
        {"spec": {"podCIDRs": ["10.0.1.0/24", "10.0.0.0/24"]}},
    ),
    (
        "no-strategy-list",
        {"status": {"volumesInUse": ["a", "b"]}},
        {"status": {"volumesInUse": ["c"]}},
    ),
    (
        "into-empty",
        {"metadata": {}},
        {"status": {"conditions": [{"type": "A", "status": "True", "$patch": "merge"}]}},
    ),
    (
        "delete-status",
        {"status": {"phase": "Running", "conditions": _CONDS}},
        {"status": {"$patch": "delete"}},
    ),
]


@needs_kubectl
@pytest.mark.parametrize(("case", "original", "patch"), SMP_CASES, ids=[c[0] for c in SMP_CASES])
def test_strategic_merge_matches_kubectls_apimachinery(
    kubectl: Kubectl, tmp_path: Path, case: str, original: dict[str, Any], patch: dict[str, Any]
) -> None:
    doc = {"apiVersion": "v1", "kind": "Node", **original}
    doc["metadata"] = dict(original.get("metadata", {}), name="n")
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(doc))
    want = json.loads(
        kubectl.ok(
            "patch",
            "--local",
            "-f",
            str(path),
            "--type=strategic",
            "-p",
            json.dumps(patch),
            "-o",
            "json",
        )
    )
    assert smp_apply(doc, patch, NODE_SCHEMA) == want


@needs_kubectl
def test_strategic_merge_errors_match(kubectl: Kubectl, tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "n"},
                "status": {"conditions": _CONDS},
            }
        )
    )
    patch = {"status": {"conditions": [{"status": "False"}]}}
    proc = kubectl.run(
        "patch", "--local", "-f", str(path), "--type=strategic", "-p", json.dumps(patch)
    )
    assert proc.returncode != 0
    with pytest.raises(PatchError) as e:
        smp_apply(json.loads(path.read_text()), patch, NODE_SCHEMA)
    assert str(e.value) in proc.stderr


_BASE: dict[str, Any] = {
    "metadata": {"labels": {"a": "1", "b": "2"}},
    "spec": {"taints": [{"key": "t", "effect": "NoSchedule"}]},
}
OTHER_PATCH_CASES: list[tuple[str, str, Any]] = [
    (
        "merge-null-and-nested",
        "merge",
        {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"taints": []}},
    ),
    ("merge-replaces-lists", "merge", {"spec": {"taints": [{"key": "u", "effect": "NoExecute"}]}}),
    (
        "json-ops",
        "json",
        [
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "add", "path": "/spec/taints/-", "value": {"key": "u", "effect": "NoExecute"}},
            {"op": "add", "path": "/spec/taints/0", "value": {"key": "v", "effect": "NoExecute"}},
            {"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/c~1d"},
            {"op": "move", "from": "/metadata/labels/b", "path": "/metadata/labels/e"},
            {"op": "replace", "path": "/spec/taints/1/key", "value": "w"},
            {"op": "remove", "path": "/spec/taints/2"},
        ],
    ),
]


@needs_kubectl
@pytest.mark.parametrize(
    ("case", "kind", "patch"), OTHER_PATCH_CASES, ids=[c[0] for c in OTHER_PATCH_CASES]
)
def test_merge_and_json_patch_match_kubectl(
    kubectl: Kubectl, tmp_path: Path, case: str, kind: str, patch: Any
) -> None:
    doc = {"apiVersion": "v1", "kind": "Node", **_BASE}
    doc["metadata"] = dict(_BASE["metadata"], name="n")
    path = tmp_path / "n.json"
    path.write_text(json.dumps(doc))
    want = json.loads(
        kubectl.ok(
            "patch",
            "--local",
            "-f",
            str(path),
            f"--type={kind}",
            "-p",
            json.dumps(patch),
            "-o",
            "json",
        )
    )
    got = merge_patch(doc, patch) if kind == "merge" else apply_json_patch(doc, patch)
    assert got == want
