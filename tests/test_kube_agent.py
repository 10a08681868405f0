"""The agent's API side against the test API server (real HTTPS, client certificates,
NodeRestriction): waiting for registration, labels, the condition, events, retries, and the
controller that lifts the startup taint."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import pytest

from nodeagent.config import KubeConfig
from nodeagent.errors import InputError, StepFailed
from nodeagent.gpu.inventory import Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.kube import kubeletargs
from nodeagent.kube.client import APIRefused, KubeAPI, NodeAPI
from nodeagent.kube.controller import Controller, Rules
from nodeagent.kube.node import ConditionStatus, Node, Taint
from nodeagent.kube.readiness import Facts, Readiness, assess
from nodeagent.kube.report import Report
from tests.kubeapi import Fault, KubeAPIServer

NODE = "gpu-1"
CONDITION_TYPE = KubeConfig().condition_type
STARTUP_TAINT_KEY = KubeConfig().startup_taint_key
LABELS = {"nvidia.com/gpu.present": "true", "gpu": "true", "gpu-type": "H100"}


def node_api(srv: KubeAPIServer, tmp_path: Path, name: str = NODE, **kw: Any) -> NodeAPI:
    kc = srv.node_kubeconfig(tmp_path / f"{name}.kubeconfig", name)
    kw.setdefault("deadline_s", 10.0)
    return NodeAPI(kc, name, **kw)


def ready(status: str = "True", reason: str = "GPUReady") -> Any:
    def fn(capacity: Optional[Mapping[str, str]]) -> Readiness:
        return Readiness(ConditionStatus(status), reason, f"{reason} (test)")

    return fn


def own(api: NodeAPI) -> Node:
    """The agent's Node as its own API reads it (it must exist)."""
    node = api.get_node()
    assert node is not None
    return node


def report(labels: Mapping[str, str] = LABELS, readiness: Any = None) -> Report:
    return Report(
        labels=labels,
        readiness=readiness or ready(),
        condition_type=CONDITION_TYPE,
        host=NODE,
    )


def condition(node: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(c for c in node["status"]["conditions"] if c["type"] == CONDITION_TYPE)


def test_registration_order_kubelet_args_first_then_the_node_then_the_report(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    # 1. bootstrap: the kubelet's args carry the labels and the startup taint
    root = HostRoot(tmp_path / "root")
    taint = Taint(STARTUP_TAINT_KEY, "", "NoSchedule")
    change = kubeletargs.plan(root, "/etc/default/kubelet", LABELS, taint)
    assert change.new is not None
    change.path.parent.mkdir(parents=True)
    change.path.write_text(change.new)
    assert srv.get_node(NODE) is None

    # 2. the agent waits for its Node while the "kubelet" registers it from those args
    api = node_api(srv, tmp_path)
    found: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: found.update(node=api.wait_for_node(10)))
    waiter.start()
    time.sleep(0.3)
    value = shlex.split(change.new.split("KUBELET_EXTRA_ARGS=", 1)[1])[0]
    args = value.split()
    flags = dict(a.split("=", 1) for a in args)
    labels = dict(kv.split("=", 1) for kv in flags["--node-labels"].split(","))
    key, effect = flags["--register-with-taints"].split(":")
    srv.create_node(
        NODE,
        labels={**labels, "kubernetes.io/hostname": NODE},
        taints=[{"key": key, "effect": effect}],
        capacity={"nvidia.com/gpu": "8"},
    )
    waiter.join(5)
    assert found["node"].labels["gpu-type"] == "H100"
    assert found["node"].taints == (Taint(STARTUP_TAINT_KEY, "", "NoSchedule"),)

    # 3. the report: labels already there (only the ownership annotation), condition, event
    before = srv.writes()
    done = report().apply(api, found["node"])
    node = srv.get_node(NODE)
    assert node is not None
    assert node["metadata"]["annotations"]["nodeagent.io/owned-labels"] == ",".join(sorted(LABELS))
    assert condition(node)["status"] == "True" and condition(node)["reason"] == "GPUReady"
    assert done.event and [e["reason"] for e in srv.events()] == ["GPUReady"]
    assert srv.writes() - before == 3  # labels+annotation, status, event

    # 4. idempotent: nothing more to write
    again = report().apply(api, Node.from_api(node))
    assert not (again.labels_changed or again.condition_changed or again.event)
    assert srv.writes() - before == 3


def test_stale_labels_go_and_other_tools_labels_stay(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE, labels={"team": "ml", "feature.node.kubernetes.io/x": "1"})
    api = node_api(srv, tmp_path)
    report({"gpu": "true", "gpu-type": "T4"}).apply(api, own(api))
    report({"gpu": "true"}).apply(api, own(api))
    labels = (srv.get_node(NODE) or {})["metadata"]["labels"]
    assert "gpu-type" not in labels
    assert labels["gpu"] == "true" and labels["team"] == "ml"
    assert labels["feature.node.kubernetes.io/x"] == "1"


def test_condition_transition_time_moves_only_when_the_status_does(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path)
    t1, t2 = "2027-01-01T00:00:00Z", "2027-01-01T00:01:00Z"
    report(readiness=ready("False", "DriverNotLoaded")).apply(api, own(api), now=t1)
    report(readiness=ready("False", "GPULost")).apply(api, own(api), now=t2)
    c = condition(srv.get_node(NODE) or {})
    assert c["reason"] == "GPULost" and c["lastTransitionTime"] == "2027-01-01T00:00:00Z"
    assert c["lastHeartbeatTime"] == "2027-01-01T00:01:00Z"
    report().apply(api, own(api), now="2027-01-01T00:02:00Z")
    c = condition(srv.get_node(NODE) or {})
    assert c["status"] == "True" and c["lastTransitionTime"] == "2027-01-01T00:02:00Z"
    # one Event per status change: False, then True (not for the reason-only change)
    assert [e["reason"] for e in srv.events()] == ["DriverNotLoaded", "GPUReady"]
    assert [e["type"] for e in srv.events()] == ["Warning", "Normal"]


def test_the_kubelets_conditions_are_untouched(srv: KubeAPIServer, tmp_path: Path) -> None:
    kubelet_ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status",
                     "lastTransitionTime": "2027-01-01T00:00:00Z",
                     "lastHeartbeatTime": "2027-01-01T00:00:00Z"}  # fmt: skip
    srv.create_node(NODE, conditions=[kubelet_ready])
    api = node_api(srv, tmp_path)
    report().apply(api, own(api))
    conditions = {c["type"]: c for c in (srv.get_node(NODE) or {})["status"]["conditions"]}
    assert set(conditions) == {"Ready", CONDITION_TYPE}  # merged by type, not replaced
    assert conditions["Ready"] == kubelet_ready


def test_device_plugin_capacity_gates_readiness(
    srv: KubeAPIServer, tmp_path: Path, use_profile: Any
) -> None:
    from nodeagent.gpu.nvml import detect

    inv: Inventory = detect(library=use_profile("h100x8"))
    assert len(inv.gpus) == 8
    srv.create_node(NODE, capacity={"cpu": "96", "memory": "2Ti"})  # the kubelet's, no GPUs yet
    api = node_api(srv, tmp_path)
    rep = report(readiness=lambda cap: assess(Facts(inventory=inv, runtime_ok=True, capacity=cap)))
    rep.apply(api, own(api))
    assert condition(srv.get_node(NODE) or {})["reason"] == "DevicePluginNotReady"
    srv.update_node(
        NODE,
        lambda n: (
            n.setdefault("status", {}).setdefault("capacity", {}).update({"nvidia.com/gpu": "8"})
        ),
    )
    rep.apply(api, own(api))
    assert condition(srv.get_node(NODE) or {})["status"] == "True"


def test_node_restriction_refusal_is_one_clear_line(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path)
    with pytest.raises(APIRefused) as e:
        report({"node-restriction.kubernetes.io/gpu": "true"}).apply(api, own(api))
    assert e.value.status == 403
    msg = str(e.value)
    assert "\n" not in msg and "node-restriction.kubernetes.io/gpu" in msg
    assert f"{NODE}.kubeconfig" in msg  # names the credential
    # final: not retried
    patches = [r for r in srv.requests if r.method == "PATCH"]
    assert len(patches) == 1


def test_a_node_may_not_patch_another_node(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node("other")
    api = node_api(srv, tmp_path)
    with pytest.raises(APIRefused, match="forbidden"):
        api.patch_named_node("other", {"metadata": {"labels": {"x": "y"}}})


@pytest.mark.parametrize(
    ("fault", "min_elapsed"),
    [
        (Fault(method="PATCH", kind="429", count=1, retry_after=1), 0.9),
        (Fault(method="PATCH", kind="500", count=2), 0.0),
        (Fault(method="PATCH", kind="503", count=1), 0.0),
        (Fault(method="PATCH", kind="drop", count=1), 0.0),
        (Fault(method="PATCH", kind="latency", count=1, delay_s=0.5), 0.45),
    ],
    ids=["429-retry-after", "500-twice", "503", "dropped-connection", "latency"],
)
def test_faults_are_survived(
    srv: KubeAPIServer, tmp_path: Path, fault: Fault, min_elapsed: float
) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path)
    node = own(api)
    srv.inject(fault)
    t0 = time.monotonic()
    report().apply(api, node)
    assert time.monotonic() - t0 >= min_elapsed
    n = srv.get_node(NODE) or {}
    assert n["metadata"]["labels"]["gpu"] == "true"
    assert condition(n)["status"] == "True"


def test_an_outage_longer_than_the_deadline_is_reported(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path, deadline_s=1.5)
    node = own(api)
    srv.inject(Fault(method="PATCH", kind="503", count=1000))
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match="gave up after") as e:
        report().apply(api, node)
    said = float(str(e.value).split("gave up after ")[1].split(" s")[0])
    assert said == round(time.monotonic() - t0) and said >= 1  # the time it really took


@pytest.mark.parametrize(
    ("given", "used"),
    [(float("nan"), 60.0), (float("inf"), 3600.0), (1e12, 3600.0), (-1.0, 60.0), (5.0, 5.0)],
)
def test_a_deadline_is_always_finite(tmp_path: Path, given: float, used: float) -> None:
    api = NodeAPI(tmp_path / "kc", NODE, deadline_s=given)
    assert api.deadline_s == used
    api.deadline_s = given
    assert api.deadline_s == used


def test_each_request_timeout_is_bounded_by_the_deadline(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path, deadline_s=1.0, request_timeout_s=30.0)
    srv.inject(Fault(method="GET", kind="latency", delay_s=20, count=10))
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match="gave up after"):
        api.get_node()
    assert time.monotonic() - t0 < 3  # not the 30 s socket timeout, nor the 20 s latency


def test_a_kubeconfig_that_is_a_list_is_one_line(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text("- apiVersion: v1\n")
    with pytest.raises(InputError) as e:
        NodeAPI(kc, NODE).get_node()
    assert str(e.value) == f"{kc}: a kubeconfig is a mapping, not a list"


def test_missing_and_malformed_kubeconfig_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kubeconfig not found"):
        NodeAPI(tmp_path / "nope", NODE).get_node()
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text("apiVersion: v1\nclusters: 5\n")
    with pytest.raises(InputError) as e:
        NodeAPI(bad, NODE).get_node()
    assert str(e.value) == f"{bad}: no current-context"


def test_a_wrong_ca_is_one_clear_line(srv: KubeAPIServer, tmp_path: Path) -> None:
    other = KubeAPIServer(tmp_path / "other")  # a different CA, never started
    kc = srv.kubeconfig(tmp_path / "wrong-ca", user=f"system:node:{NODE}",
                        groups=["system:nodes"], ca=other.ca_path)  # fmt: skip
    with pytest.raises(StepFailed) as e:
        NodeAPI(kc, NODE, deadline_s=5).get_node()
    assert "not trusted" in str(e.value) and "\n" not in str(e.value)


def test_an_expired_client_certificate_is_one_clear_line(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    import yaml

    kc = srv.node_kubeconfig(tmp_path / "kc", NODE)
    user = yaml.safe_load(kc.read_text())["users"][0]["user"]
    cert, key = srv.expired_client_cert(f"system:node:{NODE}", ["system:nodes"])
    Path(user["client-certificate"]).write_bytes(cert.read_bytes())
    Path(user["client-key"]).write_bytes(key.read_bytes())
    with pytest.raises(StepFailed) as e:
        NodeAPI(kc, NODE, deadline_s=5).get_node()
    msg = str(e.value)
    assert "client certificate expired at" in msg and "\n" not in msg
    assert user["client-certificate"] in msg


def test_a_rotated_certificate_is_picked_up(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    kc = srv.node_kubeconfig(tmp_path / "kc", NODE)
    api = NodeAPI(kc, NODE, deadline_s=5)
    api.get_node()
    # the kubelet rotates: -current.pem now holds a certificate of another identity
    text = kc.read_text()
    new_cert, new_key = srv.client_cert("system:node:gpu-2", ["system:nodes"])
    import yaml

    doc = yaml.safe_load(text)
    old_cert = Path(doc["users"][0]["user"]["client-certificate"])
    old_key = Path(doc["users"][0]["user"]["client-key"])
    old_cert.write_bytes(new_cert.read_bytes())
    old_key.write_bytes(new_key.read_bytes())
    api.get_node()
    users = [r.user for r in srv.requests if r.path.endswith(f"/nodes/{NODE}")]
    assert users[-2:] == [f"system:node:{NODE}", "system:node:gpu-2"]


def admin_api(srv: KubeAPIServer, tmp_path: Path) -> KubeAPI:
    kc = srv.kubeconfig(tmp_path / "controller.kubeconfig", user="nodeagent-controller")
    return KubeAPI(kc, deadline_s=5)


def run_controller(ctl: Controller) -> threading.Thread:
    t = threading.Thread(target=ctl.run, daemon=True)
    t.start()
    return t


def test_controller_lifts_the_startup_taint_within_a_second(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    other = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    srv.create_node(NODE, taints=[{"key": STARTUP_TAINT_KEY, "effect": "NoSchedule"}, other])
    # lastTransitionTime has whole seconds: a 2 s grace is between 1 and 2 s in effect
    rules = Rules(CONDITION_TYPE, STARTUP_TAINT_KEY, "nodeagent.io/gpu-unhealthy", grace_s=2.0)
    ctl = Controller(admin_api(srv, tmp_path), rules, watch_timeout_s=30)
    t = run_controller(ctl)
    try:
        time.sleep(0.3)
        api = node_api(srv, tmp_path)
        report().apply(api, own(api))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            if (srv.get_node(NODE) or {})["spec"].get("taints") == [other]:
                break
            time.sleep(0.02)
        assert (srv.get_node(NODE) or {})["spec"]["taints"] == [other]

        # sick: False for longer than the grace period -> the unhealthy taint, no polling
        report(readiness=ready("False", "GPULost")).apply(api, own(api))
        time.sleep(0.2)
        assert (srv.get_node(NODE) or {})["spec"]["taints"] == [other]  # still in grace
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            keys = [t["key"] for t in (srv.get_node(NODE) or {})["spec"].get("taints") or []]
            if "nodeagent.io/gpu-unhealthy" in keys:
                break
            time.sleep(0.05)
        assert keys == ["dedicated", "nodeagent.io/gpu-unhealthy"]
        lists = [r for r in srv.requests if r.method == "GET" and r.path == "/api/v1/nodes"
                 and not r.query.get("watch")]  # fmt: skip
        assert len(lists) == 1  # one list, then the watch: no polling
    finally:
        ctl.stop()
        t.join(5)


def test_kubectl_sees_what_the_agent_wrote(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    api = node_api(srv, tmp_path)
    report().apply(api, own(api))
    admin = srv.admin_kubeconfig(tmp_path / "admin")
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(admin), "wait", f"--for=condition={CONDITION_TYPE}=True",
         f"node/{NODE}", "--timeout=5s"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    labels = subprocess.run(
        ["kubectl", "--kubeconfig", str(admin), "get", "node", NODE, "-L", "gpu-type",
         "--no-headers"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert labels.returncode == 0, labels.stderr
    assert "H100" in labels.stdout


def test_token_auth_works_like_a_certificate(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE)
    kc = srv.kubeconfig(tmp_path / "token.kc", user=f"system:node:{NODE}",
                        groups=["system:nodes"], auth="token")  # fmt: skip
    api = NodeAPI(kc, NODE, deadline_s=5)
    report().apply(api, own(api))
    assert condition(srv.get_node(NODE) or {})["status"] == "True"
    assert {r.user for r in srv.requests if r.method == "PATCH"} == {f"system:node:{NODE}"}


def test_controller_rereads_on_conflict_and_keeps_the_other_taint(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    startup = {"key": STARTUP_TAINT_KEY, "effect": "NoSchedule"}
    srv.create_node(NODE, taints=[startup])
    api = node_api(srv, tmp_path)
    report().apply(api, own(api))
    rules = Rules(CONDITION_TYPE, STARTUP_TAINT_KEY, "nodeagent.io/gpu-unhealthy", grace_s=60)
    ctl = Controller(admin_api(srv, tmp_path), rules)
    ctl.nodes[NODE] = Node.from_api(srv.get_node(NODE))  # what the controller saw ...
    other = {"key": "maintenance", "effect": "NoSchedule"}
    srv.update_node(NODE, lambda n: n["spec"]["taints"].append(other))  # ... then changed
    ctl.reconcile(NODE)
    assert (srv.get_node(NODE) or {})["spec"]["taints"] == [other]
    conflicts = [r for r in srv.requests if r.method == "PATCH" and r.status == 409]
    assert len(conflicts) == 1


# --- the controller outlives a refusing, failing or absent API server ---------------------


def wait_for(what: str, probe: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if probe():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def startup_tainted_ready_node(srv: KubeAPIServer, tmp_path: Path) -> None:
    srv.create_node(NODE, taints=[{"key": STARTUP_TAINT_KEY, "effect": "NoSchedule"}])
    api = node_api(srv, tmp_path)
    report().apply(api, own(api))


def untainted() -> Any:
    return lambda srv: not (srv.get_node(NODE) or {})["spec"].get("taints")


RULES = Rules(CONDITION_TYPE, STARTUP_TAINT_KEY, "nodeagent.io/gpu-unhealthy", grace_s=60)


def test_controller_backs_off_on_403_until_it_is_granted(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    startup_tainted_ready_node(srv, tmp_path)
    kc = srv.kubeconfig(tmp_path / "ungranted.kubeconfig", user="taint-lifter")
    ctl = Controller(KubeAPI(kc, deadline_s=2), RULES, rng=lambda: 0.5)
    t = run_controller(ctl)
    try:
        wait_for("403s", lambda: sum(r.status == 403 for r in srv.requests) >= 3, 10)
        assert t.is_alive()
        srv.grant("taint-lifter", ["nodes"], ["get", "list", "watch", "patch"])
        wait_for("taint lifted", lambda: untainted()(srv), 10)
    finally:
        ctl.stop()
        t.join(5)
    lists = [r for r in srv.requests if r.path == "/api/v1/nodes" and not r.query.get("watch")]
    waits = [b.ts - a.ts for a, b in zip(lists, lists[1:])]
    assert waits and all(w >= 0.1 for w in waits)  # backed off between tries, never a spin


@pytest.mark.parametrize(
    "fault",
    [
        Fault(method="GET", path_regex="^/api/v1/nodes$", kind="503", count=6),
        Fault(method="PATCH", kind="500", count=6),
    ],
    ids=["list-503", "patch-500"],
)
def test_controller_outlasts_5xx(srv: KubeAPIServer, tmp_path: Path, fault: Fault) -> None:
    startup_tainted_ready_node(srv, tmp_path)
    srv.inject(fault)
    api = admin_api(srv, tmp_path)
    api.deadline_s = 0.5  # each call gives up fast: the controller's own backoff retries
    ctl = Controller(api, RULES, rng=lambda: 0.5)
    t = run_controller(ctl)
    try:
        wait_for("taint lifted after the faults", lambda: untainted()(srv), 30)
        assert t.is_alive()
    finally:
        ctl.stop()
        t.join(5)
    assert sum(r.fault is not None for r in srv.requests) == 6  # every fault was met


def test_controller_process_survives_an_outage_and_stops_on_sigterm(
    srv: KubeAPIServer, tmp_path: Path
) -> None:
    import signal
    import sys

    kc = srv.kubeconfig(tmp_path / "controller.kubeconfig", user="nodeagent-controller")
    srv.stop()  # unreachable from the start
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "-v", "--log-format", "json", "controller",
         "--kubeconfig", str(kc)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # mid-retry: the API call's own deadline is 60 s
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert took < 3, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in err
    import json

    logged = [json.loads(line) for line in err.splitlines()]
    assert any(d["event"] == "retry.wait" for d in logged)  # the client retrying, logged
    srv.start()
