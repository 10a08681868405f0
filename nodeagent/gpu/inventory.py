"""What the node has: the GPU inventory as plain, immutable data.

Detection (:mod:`nodeagent.gpu.nvml`) produces an :class:`Inventory`; everything after
it (labels, readiness, ``detect -o json``) is a pure function of it. Failure modes are
states, not exceptions: a node with no driver is an ``Inventory`` whose ``state`` says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

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
    memory_total_mib: Optional[int] = None
    compute_major: Optional[int] = None
    compute_minor: Optional[int] = None
    architecture: Optional[str] = None  # family: pascal, volta, ..., see gpu.arch
    mig_capable: bool = False
    mig_mode_current: Optional[str] = None  # "enabled" | "disabled" | None (not supported)
    mig_mode_pending: Optional[str] = None
    mig_devices: tuple[MigDevice, ...] = ()
    power_limit_w: Optional[float] = None

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
    }
