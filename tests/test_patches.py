"""API write builders: minimal patches, ownership respected, none when nothing changed;
the typed Node view they read, parsed once (a malformed field is one line)."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.config import KubeConfig
from nodeagent.errors import StepFailed
from nodeagent.kube.node import Condition, ConditionStatus, MalformedNode, Node, Taint, epoch
from nodeagent.kube.patches import (
    OWNED_LABELS_ANNOTATION,
    condition_patch,
    label_patch,
    readiness_event,
)
from nodeagent.kube.readiness import Readiness

CONDITION_TYPE = KubeConfig().condition_type
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
T0 = "2026-11-24T03:00:00Z"
T1 = "2026-11-24T03:05:00Z"
READY = Readiness(TRUE, "GPUReady", "8 GPUs healthy, runtime ready")
LOST = Readiness(FALSE, "GPULost", "GPU 3 fell off the bus (NVML_ERROR_GPU_IS_LOST)")


def test_first_label_patch_sets_labels_and_ownership() -> None:
    patch = label_patch({"kubernetes.io/hostname": "n1"}, {}, {"gpu": "true", "gpu-type": "T4"})
    assert patch == {
        "metadata": {
            "labels": {"gpu": "true", "gpu-type": "T4"},
            "annotations": {OWNED_LABELS_ANNOTATION: "gpu,gpu-type"},
        }
    }


def test_no_patch_when_current() -> None:
    labels = {"gpu": "true", "gpu-type": "T4", "team": "ml"}
    ann = {OWNED_LABELS_ANNOTATION: "gpu,gpu-type"}
    assert label_patch(labels, ann, {"gpu": "true", "gpu-type": "T4"}) is None


def test_stale_owned_label_removed_foreign_label_untouched() -> None:
    labels = {"gpu": "true", "gpu-type": "T4", "team": "ml", "nodeagent.io/gpu.unhealthy": "1"}
    ann = {OWNED_LABELS_ANNOTATION: "gpu,gpu-type,nodeagent.io/gpu.unhealthy"}
    patch = label_patch(labels, ann, {"gpu": "true", "gpu-type": "T4"})
    assert patch == {
        "metadata": {
            "labels": {"nodeagent.io/gpu.unhealthy": None},
            "annotations": {OWNED_LABELS_ANNOTATION: "gpu,gpu-type"},
        }
    }


def test_only_labels_recorded_as_ours_are_removed() -> None:
    # Recorded as ours: removed. Not recorded (second case): never removed.
    patch = label_patch({"team": "ml"}, {OWNED_LABELS_ANNOTATION: "team"}, {})
    assert patch == {
        "metadata": {"labels": {"team": None}, "annotations": {OWNED_LABELS_ANNOTATION: ""}}
    }
    assert label_patch({"team": "ml"}, {}, {}) is None


def ours(cond: dict[str, Any]) -> Condition:
    """``cond`` as the Node view reads it back from the API."""
    node = Node.from_api({"metadata": {"name": "n1"}, "status": {"conditions": [cond]}})
    found = node.condition(CONDITION_TYPE)
    assert found is not None
    return found


def test_condition_first_time_and_transition_kept_on_heartbeat() -> None:
    first = condition_patch(None, READY, CONDITION_TYPE, T0)
    assert first is not None
    cond = first["status"]["conditions"][0]
    assert cond == {
        "type": CONDITION_TYPE,
        "status": "True",
        "reason": "GPUReady",
        "message": READY.message,
        "lastHeartbeatTime": T0,
        "lastTransitionTime": T0,
    }
    assert condition_patch(ours(cond), READY, CONDITION_TYPE, T1) is None
    beat = condition_patch(ours(cond), READY, CONDITION_TYPE, T1, heartbeat=True)
    assert beat is not None
    c2 = beat["status"]["conditions"][0]
    assert (c2["lastHeartbeatTime"], c2["lastTransitionTime"]) == (T1, T0)


def test_condition_status_change_moves_transition_time() -> None:
    cond = {"type": CONDITION_TYPE, "status": "True", "reason": "GPUReady", "message": "m",
            "lastTransitionTime": T0, "lastHeartbeatTime": T0}  # fmt: skip
    patch = condition_patch(ours(cond), LOST, CONDITION_TYPE, T1)
    assert patch is not None
    (c,) = patch["status"]["conditions"]  # only our condition is sent
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("False", "GPULost", T1)


def test_event_shape() -> None:
    ev = readiness_event("gpu-1", "uid-1", LOST, T0, host="gpu-1")
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-1",
                                    "uid": "uid-1"}  # fmt: skip
    assert (ev["type"], ev["reason"], ev["source"]["component"]) == (
        "Warning",
        "GPULost",
        "nodeagent",
    )
    assert ev["metadata"]["name"].startswith("gpu-1.")
    assert readiness_event("gpu-1", None, READY, T0, host="h")["type"] == "Normal"


# --- the Node view ---------------------------------------------------------------------------


def test_the_node_view_reads_every_field_the_agent_uses() -> None:
    node = Node.from_api(
        {
            "metadata": {
                "name": "gpu-1",
                "uid": "u1",
                "resourceVersion": "7",
                "labels": {"gpu": "true"},
                "annotations": {"a": "b"},
            },
            "spec": {
                "taints": [{"key": "k", "value": "v", "effect": "NoExecute", "timeAdded": T0}]
            },
            "status": {
                "capacity": {"nvidia.com/gpu": "8"},
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {
                        "type": CONDITION_TYPE,
                        "status": "False",
                        "reason": "GPULost",
                        "message": "m",
                        "lastHeartbeatTime": T1,
                        "lastTransitionTime": T0,
                    },
                ],
            },
        }
    )
    assert (node.name, node.uid, node.resource_version) == ("gpu-1", "u1", "7")
    assert dict(node.labels) == {"gpu": "true"} and dict(node.annotations) == {"a": "b"}
    assert node.taints == (Taint("k", "v", "NoExecute", T0),) and node.has_taint("k")
    assert node.taints[0].to_api() == {"key": "k", "value": "v", "effect": "NoExecute",
                                       "timeAdded": T0}  # fmt: skip
    assert node.capacity == {"nvidia.com/gpu": "8"}
    assert node.condition(CONDITION_TYPE) == Condition(
        CONDITION_TYPE, FALSE, "GPULost", "m", epoch(T1), epoch(T0)
    )
    assert node.condition("Absent") is None


def test_a_bare_node_has_no_capacity_and_no_conditions() -> None:
    node = Node.from_api({"metadata": {"name": "n"}})
    assert (node.capacity, node.conditions, node.taints, dict(node.labels)) == (None, (), (), {})


N = {"name": "n"}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "the Node: Node: expected an object, not []"),
        ({"metadata": {**N, "labels": ["a"]}}, "Node n: metadata.labels: expected an object"),
        ({"metadata": {**N, "labels": {"a": 1}}}, "Node n: metadata.labels['a']"),
        ({"metadata": N, "status": {"conditions": {}}}, "status.conditions: expected a list"),
        (
            {"metadata": N, "status": {"conditions": [{"type": "X", "status": "Maybe"}]}},
            "status.conditions[0].status: expected True, False or Unknown, not 'Maybe'",
        ),
        ({"metadata": N, "spec": {"taints": [5]}}, "spec.taints[0]: expected an object"),
    ],
)
def test_a_malformed_node_is_one_line_never_a_key_error(doc: object, says: str) -> None:
    with pytest.raises(MalformedNode) as e:
        Node.from_api(doc)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, StepFailed)  # a failed step, exit 1


def test_times_round_trip_and_garbage_is_none() -> None:
    t = epoch(T0)
    assert t is not None
    assert epoch("yesterday") is None and epoch(None) is None and epoch(5) is None
