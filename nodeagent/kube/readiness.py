"""GPU readiness as a Node condition: a pure function of what the agent knows.

The condition interoperates with the upstream readiness pattern (NVIDIA GPU Operator PR
#2573 with the kubernetes-sigs Node Readiness Controller): condition type
``nvidia.com/GPUReady``, True when the node can run GPU work; the startup taint
``readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule`` is registered by the kubelet and lifted
by a controller when the condition turns True (a node may not touch its own taints). The
type and the taint key are configuration (``kube.condition_type``, ``kube.startup_taint_key``).

Pure: no I/O. May import the GPU inventory and the Node view; never the client or the walk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

from nodeagent.gpu.inventory import (
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    Inventory,
)
from nodeagent.gpu.xid import describe
from nodeagent.kube.node import ConditionStatus

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

_NVML_REASONS = {
    "NVML_ERROR_DRIVER_NOT_LOADED": "DriverNotLoaded",
    "NVML_ERROR_NO_PERMISSION": "NVMLNoPermission",
    "NVML_ERROR_LIBRARY_NOT_FOUND": "DriverNotLoaded",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": "DriverVersionMismatch",
}


@dataclasses.dataclass(frozen=True)
class Readiness:
    """The condition the node should carry."""

    status: ConditionStatus
    reason: str  # CamelCase
    message: str


@dataclasses.dataclass(frozen=True)
class Facts:
    """What readiness depends on. ``runtime_ok`` None means "not checked" (e.g. engine none)."""

    inventory: Inventory
    runtime_ok: Optional[bool] = None
    runtime_message: str = ""
    # Node status.capacity when known; None skips the device-plugin check.
    capacity: Optional[Mapping[str, str]] = None
    require_device_plugin: bool = True
    xid: Optional[int] = None  # a critical XID seen and not yet recovered from
    xid_gpu: Optional[int] = None  # the GPU it was reported on, when NVML said


def assess(f: Facts) -> Readiness:
    """The condition the node should carry. Checks in the order an operator fixes them."""
    inv = f.inventory
    if inv.state == STATE_NO_DRIVER:
        return Readiness(
            ConditionStatus.FALSE, "DriverNotLoaded", inv.message or "no NVIDIA driver"
        )
    if inv.state == STATE_NVML_ERROR:
        reason = _NVML_REASONS.get(inv.error or "", "NVMLError")
        return Readiness(ConditionStatus.FALSE, reason, inv.message or f"NVML failed: {inv.error}")
    if inv.state == STATE_NO_GPU:
        return Readiness(ConditionStatus.FALSE, "NoGPU", inv.message or "NVML reports no GPU")
    lost = [g for g in inv.gpus if g.state == GPU_LOST]
    if lost:
        idx = ", ".join(str(g.index) for g in lost)
        return Readiness(
            ConditionStatus.FALSE, "GPULost", f"GPU {idx} fell off the bus (NVML_ERROR_GPU_IS_LOST)"
        )
    failing = [g for g in inv.gpus if not g.usable]
    if failing:
        g = failing[0]
        return Readiness(
            ConditionStatus.FALSE, "GPUError", f"GPU {g.index} cannot be read: {g.error}"
        )
    if f.xid is not None:
        on = f" on GPU {f.xid_gpu}" if f.xid_gpu is not None else ""
        uuid = next((g.uuid for g in inv.gpus if g.index == f.xid_gpu and g.uuid), None)
        on += f" ({uuid})" if uuid else ""
        return Readiness(
            ConditionStatus.FALSE,
            f"XID{f.xid}",
            f"critical XID {f.xid}{on}: {describe(f.xid)} (docs/xid.md)",
        )
    if f.runtime_ok is False:
        return Readiness(
            ConditionStatus.FALSE,
            "RuntimeNotConfigured",
            f.runtime_message or "nvidia runtime not configured",
        )
    if f.require_device_plugin:
        if f.capacity is None:
            return Readiness(
                ConditionStatus.UNKNOWN, "DevicePluginUnknown", "node capacity not read yet"
            )
        want = expected_devices(inv)
        have = advertised_gpus(f.capacity)
        if have < want:
            return Readiness(
                ConditionStatus.FALSE,
                "DevicePluginNotReady",
                f"node advertises {have} of {want} GPUs (nvidia.com/gpu or MIG resources)",
            )
    n = len(inv.gpus)
    return Readiness(
        ConditionStatus.TRUE, "GPUReady", f"{n} GPU{'s' if n != 1 else ''} healthy, runtime ready"
    )


def expected_devices(inv: Inventory) -> int:
    """Devices the device plugin should advertise: one per GPU, or one per MIG device on
    a GPU with MIG devices (both MIG strategies advertise each MIG device once)."""
    return sum(len(g.mig_devices) or 1 for g in inv.gpus)


def advertised_gpus(capacity: Mapping[str, str]) -> int:
    """Devices the device plugin advertises: ``nvidia.com/gpu`` plus every
    ``nvidia.com/mig-*`` resource (mixed strategy)."""

    def as_int(v: str) -> int:
        try:
            return int(v)
        except ValueError:
            return 0

    whole = as_int(capacity.get(GPU_RESOURCE, "0"))
    mig = sum(as_int(v) for k, v in capacity.items() if k.startswith(MIG_RESOURCE_PREFIX))
    return whole + mig
