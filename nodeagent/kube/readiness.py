"""GPU readiness as a Node condition: a pure function of what the agent knows.

The condition interoperates with the upstream readiness pattern (NVIDIA GPU Operator PR
#2573 with the kubernetes-sigs Node Readiness Controller): condition type
``nvidia.com/GPUReady``, True when the node can run GPU work; the startup taint
``readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule`` is registered by the kubelet and lifted
by a controller when the condition turns True (a node may not touch its own taints). The
type and the taint key are configuration (``kube.condition_type``, ``kube.startup_taint_key``).

GPUReady means "CUDA work will run here": besides NVML answering, no critical XID, the
runtime and the device plugin, the NVML health signals of :mod:`nodeagent.gpu.inventory`
count (:func:`gpu_problems`: the NVLink fabric, row remapping, NVIDIA's recovery action,
retired pages, uncorrectable ECC); :func:`gpu_warnings` are the signals that never make it
False (persistence mode off, hardware clock slowdowns, a degraded fabric, an unreadable
signal). When the runtime consumes CDI, its ``nvidia.com/gpu`` spec counts too (the
verdict of :func:`nodeagent.runtime.cdi.judge`: ``CDISpecMissing``, ``CDISpecInvalid``,
``CDISpecStale``). The precedence is :func:`assess`'s order, documented in docs/operations.md.

Pure: no I/O. May import the GPU inventory and the Node view; never the client or the walk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable, Optional, Union

from nodeagent import StrEnum
from nodeagent.gpu.inventory import (
    GPU,
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    ClockEvent,
    FabricHealth,
    FabricState,
    Inventory,
    RecoveryAction,
    Signal,
    clock_events,
)
from nodeagent.gpu.xid import describe
from nodeagent.kube.node import ConditionStatus
from nodeagent.runtime.cdi import Verdict

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

_NVML_REASONS = {
    "NVML_ERROR_DRIVER_NOT_LOADED": "DriverNotLoaded",
    "NVML_ERROR_NO_PERMISSION": "NVMLNoPermission",
    "NVML_ERROR_LIBRARY_NOT_FOUND": "DriverNotLoaded",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": "DriverVersionMismatch",
}

FABRIC_OK = "NVML_SUCCESS"  # Fabric.status of a registration that succeeded


class HealthReason(StrEnum):
    """Why a GPU's NVML health signals make GPUReady False (the condition's reason)."""

    ROW_REMAP_FAILURE = "RowRemapFailure"
    RECOVERY_SYSTEM_REBOOT = "RecoveryActionSystemReboot"
    RECOVERY_NODE_REBOOT = "RecoveryActionNodeReboot"
    RECOVERY_BUS_RESET = "RecoveryActionBusReset"
    RECOVERY_DRAIN_AND_RESET = "RecoveryActionDrainAndReset"
    RECOVERY_GPU_RESET = "RecoveryActionGPUReset"
    RECOVERY_DRAIN_P2P = "RecoveryActionDrainP2P"
    RECOVERY_IMEX_DOMAIN = "RecoveryActionRecoverIMEXDomain"
    RECOVERY_UNKNOWN = "RecoveryActionUnknown"
    GPU_RESET_REQUIRED = "GPUResetRequired"
    RETIRED_PAGES_PENDING = "RetiredPagesPending"
    UNCORRECTABLE_ECC = "UncorrectableECC"
    FABRIC_FAILURE = "FabricFailure"
    FABRIC_NOT_READY = "FabricNotReady"


class HealthWarning(StrEnum):
    """A GPU signal worth an operator's look that never makes GPUReady False."""

    PERSISTENCE_MODE_OFF = "PersistenceModeOff"
    HW_SLOWDOWN = "HWSlowdown"
    HW_THERMAL_SLOWDOWN = "HWThermalSlowdown"
    HW_POWER_BRAKE = "HWPowerBrakeSlowdown"
    FABRIC_DEGRADED = "FabricDegraded"
    SIGNAL_UNREADABLE = "SignalUnreadable"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem (or warning) and every GPU that has it; ``gpu`` is the first of them."""

    kind: Union[HealthReason, HealthWarning]
    gpu: GPU
    what: str  # the first GPU's problem, e.g. "NVIDIA's recovery action is node_reboot"
    others: tuple[int, ...] = ()  # indices of the other GPUs with the same kind

    @property
    def message(self) -> str:
        uuid = f" ({self.gpu.uuid})" if self.gpu.uuid else ""
        more = ""
        if self.others:
            n = len(self.others)
            more = (
                f"; also {n} other GPU{'s' if n != 1 else ''}: {', '.join(map(str, self.others))}"
            )
        return f"GPU {self.gpu.index}{uuid}: {self.what}{more}"


# A rule: the GPU's problem in words, or None when the GPU does not have it.
_Rule = Callable[[GPU], Optional[str]]


def _has_fabric(g: GPU) -> bool:
    """The GPU is part of an NVLink fabric (an HGX / NVSwitch system): NVML answered the
    fabric query with a state other than NOT_SUPPORTED."""
    return g.fabric is not None and g.fabric.state is not FabricState.NOT_SUPPORTED


def _fabric_not_ready(g: GPU) -> Optional[str]:
    if not _has_fabric(g) or g.fabric is None or g.fabric.state is FabricState.COMPLETED:
        return None
    return (
        f"NVLink fabric {g.fabric.state.value}: the fabric manager has not finished "
        "(CUDA fails until it has)"
    )


def _fabric_failed(g: GPU) -> Optional[str]:
    f = g.fabric
    if f is None or f.state is not FabricState.COMPLETED or f.status == FABRIC_OK:
        return None
    return f"NVLink fabric registration completed with {f.status}"


def _recovery(action: RecoveryAction) -> _Rule:
    def rule(g: GPU) -> Optional[str]:
        if g.recovery_action is not action:
            return None
        return f"NVIDIA's recovery action is {action.value}"

    return rule


def _remap_failure(g: GPU) -> Optional[str]:
    r = g.remapped_rows
    return "a row remapping failed: the GPU needs replacing" if r and r.failure else None


def _remap_pending(g: GPU) -> Optional[str]:
    r = g.remapped_rows
    if r is None or not r.pending:
        return None
    return "a row remap is pending: it takes effect at the next GPU reset"


def _pages_pending(g: GPU) -> Optional[str]:
    if not g.retired_pages_pending:
        return None
    return "retired pages are pending: they take effect at the next GPU reset"


def _ecc(g: GPU) -> Optional[str]:
    n = g.ecc_volatile_uncorrectable
    if not n:
        return None
    return f"{n} uncorrectable ECC error{'s' if n != 1 else ''} since the last reset"


# The problems before a critical XID, most drastic remedy first: replace the GPU, reboot,
# reset, drain (NVIDIA's recovery action says which), then memory waiting for a reset.
# A bigger remedy covers the smaller ones, so the operator acts on the first.
HARDWARE_RULES: tuple[tuple[HealthReason, _Rule], ...] = (
    (HealthReason.ROW_REMAP_FAILURE, _remap_failure),
    (HealthReason.RECOVERY_SYSTEM_REBOOT, _recovery(RecoveryAction.SYSTEM_REBOOT)),
    (HealthReason.RECOVERY_NODE_REBOOT, _recovery(RecoveryAction.NODE_REBOOT)),
    (HealthReason.RECOVERY_BUS_RESET, _recovery(RecoveryAction.BUS_RESET)),
    (HealthReason.RECOVERY_DRAIN_AND_RESET, _recovery(RecoveryAction.DRAIN_AND_RESET)),
    (HealthReason.RECOVERY_GPU_RESET, _recovery(RecoveryAction.GPU_RESET)),
    (HealthReason.RECOVERY_DRAIN_P2P, _recovery(RecoveryAction.DRAIN_P2P)),
    (HealthReason.RECOVERY_IMEX_DOMAIN, _recovery(RecoveryAction.RECOVER_IMEX_DOMAIN)),
    (HealthReason.RECOVERY_UNKNOWN, _recovery(RecoveryAction.UNKNOWN)),
    (HealthReason.GPU_RESET_REQUIRED, _remap_pending),
    (HealthReason.RETIRED_PAGES_PENDING, _pages_pending),
    (HealthReason.UNCORRECTABLE_ECC, _ecc),
)

# After a critical XID: the fabric. A failed registration needs the fabric manager looked
# at; one still training needs only time.
FABRIC_RULES: tuple[tuple[HealthReason, _Rule], ...] = (
    (HealthReason.FABRIC_FAILURE, _fabric_failed),
    (HealthReason.FABRIC_NOT_READY, _fabric_not_ready),
)

_HW_CLOCK_EVENTS = {
    ClockEvent.HW_SLOWDOWN: HealthWarning.HW_SLOWDOWN,
    ClockEvent.HW_THERMAL: HealthWarning.HW_THERMAL_SLOWDOWN,
    ClockEvent.HW_POWER_BRAKE: HealthWarning.HW_POWER_BRAKE,
}

# The signals whose reading failing leaves a problem above unknown.
_GATING_SIGNALS = (
    Signal.FABRIC,
    Signal.REMAPPED_ROWS,
    Signal.RECOVERY_ACTION,
    Signal.RETIRED_PAGES_PENDING,
    Signal.ECC_VOLATILE_UNCORRECTABLE,
)


def _clock_rule(event: ClockEvent) -> _Rule:
    def rule(g: GPU) -> Optional[str]:
        if g.clocks_event_reasons is None or event not in clock_events(g.clocks_event_reasons):
            return None
        return f"clocks lowered by the hardware ({event.value})"

    return rule


def _persistence_off(g: GPU) -> Optional[str]:
    if g.persistence_mode is not False:
        return None
    return "persistence mode is off (each CUDA start re-initialises the GPU)"


def _fabric_degraded(g: GPU) -> Optional[str]:
    f = g.fabric
    if f is None or f.health not in (FabricHealth.UNHEALTHY, FabricHealth.LIMITED_CAPACITY):
        return None
    return f"NVLink fabric health is {f.health.value}"


def _unreadable(g: GPU) -> Optional[str]:
    failed = [
        f"{e.signal.value} ({e.error})" for e in g.signal_errors if e.signal in _GATING_SIGNALS
    ]
    return f"NVML could not read {', '.join(failed)}" if failed else None


WARNING_RULES: tuple[tuple[HealthWarning, _Rule], ...] = (
    (HealthWarning.SIGNAL_UNREADABLE, _unreadable),
    (HealthWarning.FABRIC_DEGRADED, _fabric_degraded),
    *((w, _clock_rule(e)) for e, w in _HW_CLOCK_EVENTS.items()),
    (HealthWarning.PERSISTENCE_MODE_OFF, _persistence_off),
)


def _findings(
    gpus: tuple[GPU, ...], rules: tuple[tuple[Union[HealthReason, HealthWarning], _Rule], ...]
) -> tuple[Finding, ...]:
    out: list[Finding] = []
    for kind, rule in rules:
        hits = [(g, what) for g in gpus if g.usable and (what := rule(g)) is not None]
        if hits:
            (first, what), rest = hits[0], hits[1:]
            out.append(Finding(kind, first, what, tuple(g.index for g, _ in rest)))
    return tuple(out)


def gpu_problems(inv: Inventory) -> tuple[Finding, ...]:
    """Every health problem of the readable GPUs, in :func:`assess`'s precedence (the
    hardware first, then the fabric)."""
    return _findings(inv.gpus, (*HARDWARE_RULES, *FABRIC_RULES))


def gpu_warnings(inv: Inventory) -> tuple[Finding, ...]:
    """The warnings of the readable GPUs; none of them makes GPUReady False."""
    return _findings(inv.gpus, WARNING_RULES)


@dataclasses.dataclass(frozen=True)
class Readiness:
    """The condition the node should carry."""

    status: ConditionStatus
    reason: str  # CamelCase
    message: str


class NodeReason(StrEnum):
    """Why GPUReady is not True when only the Node itself can change it: the device plugin
    has not advertised every GPU in ``status.capacity`` yet. The daemon watches its Node
    while one of these holds (:func:`waits_on_node`)."""

    DEVICE_PLUGIN_UNKNOWN = "DevicePluginUnknown"
    DEVICE_PLUGIN_NOT_READY = "DevicePluginNotReady"


_NODE_REASONS = frozenset(r.value for r in NodeReason)


def waits_on_node(r: Readiness) -> bool:
    """Whether ``r`` can turn True by a change to the Node alone (its capacity)."""
    return r.status is not ConditionStatus.TRUE and r.reason in _NODE_REASONS


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
    cdi: Optional[Verdict] = None  # the CDI spec's verdict; None: not judged


def _problem(f: Finding) -> Readiness:
    return Readiness(ConditionStatus.FALSE, f.kind.value, f.message)


def assess(f: Facts) -> Readiness:
    """The condition the node should carry. Checks in the order an operator fixes them:
    the driver, a GPU NVML cannot read, the GPUs' hardware health (replace > reboot > reset
    > drain), a critical XID, the NVLink fabric, the runtime, its CDI spec, the device
    plugin."""
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
    hardware = _findings(inv.gpus, HARDWARE_RULES)
    if hardware:
        return _problem(hardware[0])
    if f.xid is not None:
        on = f" on GPU {f.xid_gpu}" if f.xid_gpu is not None else ""
        uuid = next((g.uuid for g in inv.gpus if g.index == f.xid_gpu and g.uuid), None)
        on += f" ({uuid})" if uuid else ""
        return Readiness(
            ConditionStatus.FALSE,
            f"XID{f.xid}",
            f"critical XID {f.xid}{on}: {describe(f.xid)} (docs/xid.md)",
        )
    fabric = _findings(inv.gpus, FABRIC_RULES)
    if fabric:
        return _problem(fabric[0])
    if f.runtime_ok is False:
        return Readiness(
            ConditionStatus.FALSE,
            "RuntimeNotConfigured",
            f.runtime_message or "nvidia runtime not configured",
        )
    if f.cdi is not None and f.cdi.reason is not None:
        return Readiness(ConditionStatus.FALSE, f.cdi.reason.value, f.cdi.message)
    if f.require_device_plugin:
        if f.capacity is None:
            return Readiness(
                ConditionStatus.UNKNOWN,
                NodeReason.DEVICE_PLUGIN_UNKNOWN.value,
                "node capacity not read yet",
            )
        want = expected_devices(inv)
        have = advertised_gpus(f.capacity)
        if have < want:
            return Readiness(
                ConditionStatus.FALSE,
                NodeReason.DEVICE_PLUGIN_NOT_READY.value,
                f"node advertises {have} of {want} GPUs (nvidia.com/gpu or MIG resources)",
            )
    n = len(inv.gpus)
    message = f"{n} GPU{'s' if n != 1 else ''} healthy, runtime ready"
    warnings = gpu_warnings(inv)
    if warnings:  # stated while True; `nodeagent check` says how to fix each
        message += f"; warning: {warnings[0].message}"
        if len(warnings) > 1:
            message += f" (+{len(warnings) - 1} more: nodeagent check)"
    return Readiness(ConditionStatus.TRUE, "GPUReady", message)


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
