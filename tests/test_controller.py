"""The controller: which taints a node should carry given its GPUReady condition (pure),
and its loop on a fake clock — the grace period and the retry backoff without sleeping."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, cast

import pytest
import yaml

from nodeagent.errors import StepFailed
from nodeagent.kube.client import Conflict, KubeAPI
from nodeagent.kube.controller import Controller, Decision, Rules, decide, taint_patch
from nodeagent.kube.node import Node
from tests.fakeclock import FakeClock

RULES = Rules(
    condition_type="nvidia.com/GPUReady",
    startup_taint_key="readiness.k8s.io/nvidia-gpu-not-ready",
    unhealthy_taint_key="nodeagent.io/gpu-unhealthy",
    grace_s=60.0,
)
STARTUP = {"key": RULES.startup_taint_key, "effect": "NoSchedule"}
UNHEALTHY = {"key": RULES.unhealthy_taint_key, "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T0_STAMP = "2027-01-15T08:00:00Z"


def node_doc(
    taints: list[dict[str, Any]], status: Optional[str], since: str = T0_STAMP
) -> dict[str, Any]:
    conditions = []
    if status is not None:
        conditions.append(
            {
                "type": RULES.condition_type,
                "status": status,
                "reason": "X",
                "lastTransitionTime": since,
            }
        )
    return {
        "metadata": {"name": "gpu-1", "resourceVersion": "42"},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }


def node(taints: list[dict[str, Any]], status: Optional[str], since: str = T0_STAMP) -> Node:
    return Node.from_api(node_doc(taints, status, since))


def taints(d: Decision) -> Optional[list[dict[str, str]]]:
    """The decision's taints as the API spells them."""
    return None if d.taints is None else [t.to_api() for t in d.taints]


def test_true_lifts_the_startup_taint_and_keeps_others() -> None:
    d = decide(node([STARTUP, OTHER], "True"), RULES, T0)
    assert taints(d) == [OTHER]


def test_true_lifts_the_unhealthy_taint_too() -> None:
    assert taints(decide(node([UNHEALTHY], "True"), RULES, T0)) == []


def test_false_within_grace_waits_and_asks_to_be_woken() -> None:
    d = decide(node([STARTUP], "False"), RULES, T0 + 10)
    assert d.taints is None
    assert d.wake_at == pytest.approx(T0 + 60)


def test_false_past_grace_adds_the_unhealthy_taint_once() -> None:
    d = decide(node([STARTUP], "False"), RULES, T0 + 61)
    assert taints(d) == [STARTUP, UNHEALTHY]
    again = decide(node([STARTUP, UNHEALTHY], "False"), RULES, T0 + 120)
    assert again.taints is None and again.wake_at is None


@pytest.mark.parametrize("status", [None, "Unknown"])
def test_unknown_or_missing_condition_changes_nothing(status: Optional[str]) -> None:
    d = decide(node([STARTUP], status), RULES, T0 + 1000)
    assert d.taints is None and d.wake_at is None


def test_the_patch_replaces_the_list_under_a_resource_version_precondition() -> None:
    n = node([STARTUP, OTHER], "True")
    assert taint_patch(n, n.taints[1:]) == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"taints": [OTHER]},
    }
    assert taint_patch(n, [])["spec"] == {"taints": None}  # no taints: the field goes


def test_deploy_rbac_grants_nodes_get_list_watch_patch_and_nothing_else() -> None:
    docs = list(
        yaml.safe_load_all((Path(__file__).parents[1] / "deploy" / "controller.yaml").read_text())
    )
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 1
    assert roles[0]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}
    ]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    tolerated = {t["key"] for t in pod["tolerations"]}
    assert {RULES.startup_taint_key, RULES.unhealthy_taint_key} <= tolerated
    assert deployment["spec"]["replicas"] == 1


# --- the loop, on a fake clock ----------------------------------------------------------


class FakeAPI:
    """The part of :class:`KubeAPI` the controller calls, over one Node in memory. The
    watch stays open with no events until :meth:`close`; ``failing_patches`` patches fail
    (as after the client's own retries) before one goes through."""

    def __init__(self, doc: dict[str, Any], failing_patches: int = 0) -> None:
        self.doc = copy.deepcopy(doc)
        self.failing_patches = failing_patches
        self.lists = 0
        self.patch_calls = 0
        self.watching = threading.Event()
        self._closed = threading.Event()

    def list_nodes(self) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [copy.deepcopy(self.doc)], self.doc["metadata"]["resourceVersion"]

    def watch_nodes(self, rv: str, timeout_s: int) -> Iterator[tuple[str, dict[str, Any]]]:
        self.watching.set()
        self._closed.wait(60)
        yield from ()

    def get_named_node(self, name: str) -> Optional[dict[str, Any]]:
        return copy.deepcopy(self.doc)

    def patch_named_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patch_calls += 1
        if self.failing_patches:
            self.failing_patches -= 1
            raise StepFailed(f"patch node {name}: gave up after 1 s: 503")
        meta = self.doc["metadata"]
        if patch["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise Conflict("the object has been modified")
        self.doc["spec"]["taints"] = patch["spec"]["taints"] or []
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.doc)

    def taint_keys(self) -> list[str]:
        return [t["key"] for t in self.doc["spec"]["taints"]]

    def close(self) -> None:
        self._closed.set()


@pytest.fixture
def started() -> Iterator[Any]:
    """``started(api, clock)``: the controller's loop in a thread named "controller", back
    asleep once it has read the list; stopped afterwards."""
    running: list[tuple[Controller, FakeAPI, threading.Thread]] = []

    def start(api: FakeAPI, clock: FakeClock) -> Controller:
        ctl = Controller(cast(KubeAPI, api), RULES, rng=lambda: 0.5, clock=clock)
        t = threading.Thread(target=ctl.run, name="controller", daemon=True)
        running.append((ctl, api, t))
        t.start()
        assert api.watching.wait(10), "the controller listed and watches"
        clock.settle("controller")
        return ctl

    yield start
    for ctl, api, t in running:
        ctl.stop()
        api.close()
        t.join(10)


def test_the_unhealthy_taint_waits_out_the_grace_period_on_the_clock(started: Any) -> None:
    api = FakeAPI(node_doc([STARTUP], "False"))  # False since T0
    clock = FakeClock(wall=T0 + 10)
    started(api, clock)
    assert api.patch_calls == 0  # 10 s into a 60 s grace period
    clock.run_for(49.5, 5, "controller")
    assert api.patch_calls == 0 and api.taint_keys() == [RULES.startup_taint_key]
    clock.run_for(1, 1, "controller")  # T0 + 60.5: the timer fired
    assert api.taint_keys() == [RULES.startup_taint_key, RULES.unhealthy_taint_key]
    assert api.patch_calls == 1
    assert api.lists == 1  # one list, then the watch and a timer: no polling


def test_a_failing_patch_is_retried_on_the_backoff_never_in_a_spin(started: Any) -> None:
    api = FakeAPI(node_doc([STARTUP], "True"), failing_patches=2)
    clock = FakeClock(wall=T0 + 10)
    started(api, clock)
    assert api.patch_calls == 1  # failed; rng 0.5: the next try 0.25 s later, then 0.5 s
    clock.run_for(0.2, 0.2, "controller")
    assert api.patch_calls == 1
    clock.run_for(0.1, 0.1, "controller")
    assert api.patch_calls == 2
    clock.run_for(0.45, 0.45, "controller")
    assert api.patch_calls == 2
    clock.run_for(0.1, 0.1, "controller")
    assert api.patch_calls == 3
    assert api.taint_keys() == []  # GPUReady=True: the startup taint is lifted
