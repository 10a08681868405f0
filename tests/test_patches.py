"""API write builders: minimal patches, ownership respected, none when nothing changed."""

from __future__ import annotations

from nodeagent.kube.patches import (
    OWNED_LABELS_ANNOTATION,
    condition_patch,
    label_patch,
    readiness_event,
)
from nodeagent.kube.readiness import CONDITION_TYPE, FALSE, TRUE, Readiness

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


def test_condition_first_time_and_transition_kept_on_heartbeat() -> None:
    first = condition_patch([], READY, CONDITION_TYPE, T0)
    assert first is not None
    cond = first["status"]["conditions"][0]
    assert cond == {
        "type": CONDITION_TYPE,
        "status": TRUE,
        "reason": "GPUReady",
        "message": READY.message,
        "lastHeartbeatTime": T0,
        "lastTransitionTime": T0,
    }
    assert condition_patch([cond], READY, CONDITION_TYPE, T1) is None
    beat = condition_patch([cond], READY, CONDITION_TYPE, T1, heartbeat=True)
    assert beat is not None
    c2 = beat["status"]["conditions"][0]
    assert (c2["lastHeartbeatTime"], c2["lastTransitionTime"]) == (T1, T0)


def test_condition_status_change_moves_transition_time() -> None:
    cond = {"type": CONDITION_TYPE, "status": TRUE, "reason": "GPUReady", "message": "m",
            "lastTransitionTime": T0, "lastHeartbeatTime": T0}  # fmt: skip
    patch = condition_patch([{"type": "Ready", "status": TRUE}, cond], LOST, CONDITION_TYPE, T1)
    assert patch is not None
    (c,) = patch["status"]["conditions"]  # only our condition is sent
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == (FALSE, "GPULost", T1)


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
