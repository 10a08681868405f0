"""The controller's decision: which taints a node should carry given its GPUReady condition."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from nodeagent.kube.controller import Rules, decide, taint_patch

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


def node(taints: list[dict[str, Any]], status: Optional[str], since: str = T0_STAMP) -> dict:
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


def test_true_lifts_the_startup_taint_and_keeps_others() -> None:
    d = decide(node([STARTUP, OTHER], "True"), RULES, T0)
    assert d.taints == [OTHER]


def test_true_lifts_the_unhealthy_taint_too() -> None:
    assert decide(node([UNHEALTHY], "True"), RULES, T0).taints == []


def test_false_within_grace_waits_and_asks_to_be_woken() -> None:
    d = decide(node([STARTUP], "False"), RULES, T0 + 10)
    assert d.taints is None
    assert d.wake_at == pytest.approx(T0 + 60)


def test_false_past_grace_adds_the_unhealthy_taint_once() -> None:
    d = decide(node([STARTUP], "False"), RULES, T0 + 61)
    assert d.taints == [STARTUP, UNHEALTHY]
    again = decide(node([STARTUP, UNHEALTHY], "False"), RULES, T0 + 120)
    assert again.taints is None and again.wake_at is None


@pytest.mark.parametrize("status", [None, "Unknown"])
def test_unknown_or_missing_condition_changes_nothing(status: Optional[str]) -> None:
    d = decide(node([STARTUP], status), RULES, T0 + 1000)
    assert d.taints is None and d.wake_at is None


def test_the_patch_replaces_the_list_under_a_resource_version_precondition() -> None:
    n = node([STARTUP, OTHER], "True")
    assert taint_patch(n, [OTHER]) == {
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
