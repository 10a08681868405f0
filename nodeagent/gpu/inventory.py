"""What the node has: the GPU inventory as plain, immutable data.

Detection (:mod:`nodeagent.gpu.nvml`) produces an :class:`Inventory`; everything after
it (labels, readiness, ``detect -o json``) is a pure function of it. Failure modes are
states, not exceptions: a node with no driver is an ``Inventory`` whose ``state`` says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from nodeagent import StrEnum

#: Bump only with a documented, backwards-incompatible change (docs/detect-schema.md).
SCHEMA_VERSION = 1

# Inventory.state values
STATE_OK = "ok"  # NVML answered and at least one GPU was found
STATE_NO_DRIVER = "no-driver"  # libnvidia-ml.so.1 could not be loaded
STATE_NVML_ERROR = "nvml-error"  # library loaded but init/queries failed (error names why)
STATE_NO_GPU = "no-gpu"  # NVML works and reports zero GPUs

# GPU.state values
GPU_OK = "ok"
GPU_LOST = "lost"  # NVML_ERROR_GPU_IS_LOST: fell off the bus
GPU_ERROR = "error"  # any other NVML error while reading this GPU


class FabricState(StrEnum):
    """``nvmlGpuFabricState_t``: how far the GPU's registration with the NVLink fabric got."""

    NOT_SUPPORTED = "not_supported"  # NVML answered: this GPU has no fabric to join
    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"  # fabric manager still training: CUDA calls fail meanwhile
    COMPLETED = "completed"  # done; ``Fabric.status`` says whether it succeeded
    UNKNOWN = "unknown"  # a state newer than this agent: never taken as completed


class FabricHealth(StrEnum):
    """``NVML_GPU_FABRIC_HEALTH_SUMMARY_*`` (nvmlGpuFabricInfo_v3_t.healthSummary)."""

    NOT_SUPPORTED = "not_supported"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    LIMITED_CAPACITY = "limited_capacity"


class RecoveryAction(StrEnum):
    """``nvmlDeviceGpuRecoveryAction_t``, read through ``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION``:
    what NVIDIA says must happen before this GPU is usable again."""

    NONE = "none"
    GPU_RESET = "gpu_reset"
    NODE_REBOOT = "node_reboot"
    DRAIN_P2P = "drain_p2p"
    DRAIN_AND_RESET = "drain_and_reset"
    RECOVER_IMEX_DOMAIN = "recover_imex_domain"
    BUS_RESET = "bus_reset"
    SYSTEM_REBOOT = "system_reboot"
    UNKNOWN = "unknown"  # a value newer than this agent: not "none", so never healthy


class ClockEvent(StrEnum):
    """One bit of ``nvmlDeviceGetCurrentClocksEventReasons`` (``nvmlClocksEventReason*``)."""

    GPU_IDLE = "gpu_idle"
    APPLICATIONS_CLOCKS = "applications_clocks"
    SW_POWER_CAP = "sw_power_cap"
    HW_SLOWDOWN = "hw_slowdown"
    SYNC_BOOST = "sync_boost"
    SW_THERMAL = "sw_thermal"
    HW_THERMAL = "hw_thermal"
    HW_POWER_BRAKE = "hw_power_brake"
    DISPLAY_CLOCKS = "display_clocks"


#: Bit of each reason in the NVML mask (nvml.h ``nvmlClocksEventReason*``).
CLOCK_EVENT_BITS: dict[ClockEvent, int] = {
    ClockEvent.GPU_IDLE: 0x1,
    ClockEvent.APPLICATIONS_CLOCKS: 0x2,
    ClockEvent.SW_POWER_CAP: 0x4,
    ClockEvent.HW_SLOWDOWN: 0x8,
    ClockEvent.SYNC_BOOST: 0x10,
    ClockEvent.SW_THERMAL: 0x20,
    ClockEvent.HW_THERMAL: 0x40,
    ClockEvent.HW_POWER_BRAKE: 0x80,
    ClockEvent.DISPLAY_CLOCKS: 0x100,
}


def clock_events(mask: int) -> tuple[ClockEvent, ...]:
    """The known reasons set in an NVML clocks-event mask, in bit order."""
    return tuple(r for r, bit in CLOCK_EVENT_BITS.items() if mask & bit)


class VirtualizationMode(StrEnum):
    """``nvmlDeviceGetVirtualizationMode``: how this GPU is virtualised, seen from here."""

    NONE = "none"  # bare metal
    PASSTHROUGH = "passthrough"  # a whole GPU passed through to this VM
    VGPU = "vgpu"  # a vGPU: this is a guest of NVIDIA vGPU software
    HOST_VGPU = "host_vgpu"  # the hypervisor host of vGPUs
    HOST_VSGA = "host_vsga"  # the hypervisor host in vSGA mode
    UNKNOWN = "unknown"  # a value newer than this agent


class Signal(StrEnum):
    """One per-GPU NVML reading that can fail on its own without dropping the GPU."""

    MEMORY = "memory"
    FABRIC = "fabric"
    REMAPPED_ROWS = "remapped_rows"
    RECOVERY_ACTION = "recovery_action"
    RETIRED_PAGES_PENDING = "retired_pages_pending"
    ECC_VOLATILE_UNCORRECTABLE = "ecc_volatile_uncorrectable"
    PERSISTENCE_MODE = "persistence_mode"
    UTILIZATION = "utilization"
    TEMPERATURE = "temperature"
    POWER_USAGE = "power_usage"
    CLOCKS_EVENT_REASONS = "clocks_event_reasons"


@dataclasses.dataclass(frozen=True)
class SignalError:
    """A reading NVML refused with an error other than NOT_SUPPORTED (which is "not
    applicable" and leaves the reading None without an error)."""

    signal: Signal
    error: str  # NVML error name, e.g. "NVML_ERROR_UNKNOWN"


@dataclasses.dataclass(frozen=True)
class Fabric:
    """``nvmlDeviceGetGpuFabricInfoV``: the GPU's place in an NVLink (NVSwitch) fabric."""

    state: FabricState
    status: Optional[str]  # NVML error name of the registration; meaningful once COMPLETED
    clique_id: Optional[int] = None
    cluster_uuid: Optional[str] = None  # None when NVML reports all zeroes
    health_mask: Optional[int] = None  # NVML_GPU_FABRIC_HEALTH_MASK_* bits (struct v2 and later)
    health: Optional[FabricHealth] = None  # the summary (struct v3 and later)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "status": self.status,
            "clique_id": self.clique_id,
            "cluster_uuid": self.cluster_uuid,
            "health_mask": self.health_mask,
            "health": self.health.value if self.health else None,
        }


@dataclasses.dataclass(frozen=True)
class RemappedRows:
    """``nvmlDeviceGetRemappedRows`` (Ampere and later HBM GPUs)."""

    correctable: int  # rows remapped for correctable errors
    uncorrectable: int  # rows remapped for uncorrectable errors
    pending: bool  # a remap waits for a GPU reset
    failure: bool  # a remap failed: the GPU needs replacing


@dataclasses.dataclass(frozen=True)
class MigDevice:
    """One MIG device (a GPU instance + compute instance) on a MIG-enabled GPU."""

    index: int
    uuid: str
    name: str
    profile: Optional[str]  # e.g. "1g.10gb", parsed from the name; None if unknown
    gpu_instance_id: int
    compute_instance_id: int
    memory_total_mib: int
    multiprocessor_count: Optional[int] = None
    gpu_instance_slices: Optional[int] = None
    compute_instance_slices: Optional[int] = None
    # nvmlDeviceGetAttributes: memorySizeMB and the shared engines (GFD's MIG labels).
    memory_size_mb: Optional[int] = None
    shared_copy_engines: Optional[int] = None
    shared_decoders: Optional[int] = None
    shared_encoders: Optional[int] = None
    shared_jpegs: Optional[int] = None
    shared_ofas: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class GPU:
    """One physical GPU as NVML reports it. Fields are None when NVML could not say."""

    index: int
    state: str = GPU_OK
    error: Optional[str] = None  # NVML error name, e.g. "NVML_ERROR_GPU_IS_LOST"
    name: Optional[str] = None  # NVML product name, e.g. "NVIDIA H100 80GB HBM3"
    uuid: Optional[str] = None
    pci_bus_id: Optional[str] = None  # "00000000:18:00.0"
    pci_device_id: Optional[str] = None  # "0x233010DE" (device << 16 | vendor)
    memory_total_mib: Optional[int] = None  # None: NOT_SUPPORTED (GB10's unified memory)
    compute_major: Optional[int] = None
    compute_minor: Optional[int] = None
    architecture: Optional[str] = None  # family: pascal, volta, ..., see gpu.arch
    mig_capable: bool = False
    mig_mode_current: Optional[str] = None  # "enabled" | "disabled" | None (not supported)
    mig_mode_pending: Optional[str] = None
    mig_devices: tuple[MigDevice, ...] = ()
    power_limit_w: Optional[float] = None
    virtualization_mode: Optional[VirtualizationMode] = None  # None: NVML did not say
    # A vGPU guest's hypervisor driver, from the GPU's PCI vendor capability (gpu.vgpu).
    vgpu_host_driver_version: Optional[str] = None  # "460.16"
    vgpu_host_driver_branch: Optional[str] = None  # "r460_00"
    # Health signals and measurements: None when NVML answers NOT_SUPPORTED ("not
    # applicable") or when the reading failed, which signal_errors then names.
    fabric: Optional[Fabric] = None
    remapped_rows: Optional[RemappedRows] = None
    recovery_action: Optional[RecoveryAction] = None
    retired_pages_pending: Optional[bool] = None
    ecc_volatile_uncorrectable: Optional[int] = None
    persistence_mode: Optional[bool] = None
    utilization_gpu_pct: Optional[int] = None
    memory_used_mib: Optional[int] = None
    temperature_c: Optional[int] = None
    power_usage_w: Optional[float] = None
    clocks_event_reasons: Optional[int] = None  # the NVML mask; see clock_events()
    signal_errors: tuple[SignalError, ...] = ()

    def signal_error(self, signal: Signal) -> Optional[str]:
        """The NVML error name that reading ``signal`` failed with; None when it did not."""
        return next((e.error for e in self.signal_errors if e.signal == signal), None)

    @property
    def compute_capability(self) -> Optional[str]:
        if self.compute_major is None or self.compute_minor is None:
            return None
        return f"{self.compute_major}.{self.compute_minor}"

    @property
    def usable(self) -> bool:
        return self.state == GPU_OK


@dataclasses.dataclass(frozen=True)
class Inventory:
    """Everything detection learned about the node's GPUs and driver."""

    state: str
    error: Optional[str] = None  # NVML error name when state is not ok
    message: Optional[str] = None  # one human line explaining the state
    driver_version: Optional[str] = None  # "550.127.05"
    cuda_driver_version: Optional[str] = None  # "12.4" (from nvmlSystemGetCudaDriverVersion)
    nvml_version: Optional[str] = None  # "12.550.127.05"
    gpus: tuple[GPU, ...] = ()
    machine: Optional[str] = None  # /sys/class/dmi/id/product_name, stripped

    @property
    def healthy_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.usable)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form documented in docs/detect-schema.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "state": self.state,
            "error": self.error,
            "message": self.message,
            "driver": {
                "version": self.driver_version,
                "cuda_driver_version": self.cuda_driver_version,
                "nvml_version": self.nvml_version,
            },
            "machine": self.machine,
            "gpus": [_gpu_dict(g) for g in self.gpus],
        }


def _gpu_dict(g: GPU) -> dict[str, Any]:
    return {
        "index": g.index,
        "state": g.state,
        "error": g.error,
        "name": g.name,
        "uuid": g.uuid,
        "pci_bus_id": g.pci_bus_id,
        "pci_device_id": g.pci_device_id,
        "memory_total_mib": g.memory_total_mib,
        "compute_capability": g.compute_capability,
        "architecture": g.architecture,
        "mig": {
            "capable": g.mig_capable,
            "mode_current": g.mig_mode_current,
            "mode_pending": g.mig_mode_pending,
            "devices": [dataclasses.asdict(m) for m in g.mig_devices],
        },
        "power_limit_w": g.power_limit_w,
        "virtualization": {
            "mode": g.virtualization_mode.value if g.virtualization_mode else None,
            "host_driver_version": g.vgpu_host_driver_version,
            "host_driver_branch": g.vgpu_host_driver_branch,
        },
        "health": {
            "fabric": g.fabric.to_dict() if g.fabric else None,
            "remapped_rows": dataclasses.asdict(g.remapped_rows) if g.remapped_rows else None,
            "recovery_action": g.recovery_action.value if g.recovery_action else None,
            "retired_pages_pending": g.retired_pages_pending,
            "ecc_volatile_uncorrectable": g.ecc_volatile_uncorrectable,
            "persistence_mode": g.persistence_mode,
        },
        "measurements": {
            "utilization_gpu_pct": g.utilization_gpu_pct,
            "memory_used_mib": g.memory_used_mib,
            "temperature_c": g.temperature_c,
            "power_usage_w": g.power_usage_w,
            "clocks_event_reasons": (
                None
                if g.clocks_event_reasons is None
                else [r.value for r in clock_events(g.clocks_event_reasons)]
            ),
            "clocks_event_reasons_mask": g.clocks_event_reasons,
        },
        "signal_errors": {e.signal.value: e.error for e in g.signal_errors},
    }
