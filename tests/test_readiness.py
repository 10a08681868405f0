"""GPU readiness: the condition a node should carry, from facts."""

from __future__ import annotations

import pytest

from nodeagent.gpu.inventory import (
    GPU,
    GPU_ERROR,
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
    Inventory,
    MigDevice,
)
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.readiness import Facts, assess

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def inv(n: int = 2, **kw: object) -> Inventory:
    gpus = tuple(GPU(index=i, name="Tesla T4") for i in range(n))
    return Inventory(state=STATE_OK, gpus=gpus, **kw)  # type: ignore[arg-type]


def test_ready_when_everything_holds() -> None:
    r = assess(Facts(inv(2), runtime_ok=True, capacity={"nvidia.com/gpu": "2"}))
    assert (r.status, r.reason) == (TRUE, "GPUReady")
    assert r.message == "2 GPUs healthy, runtime ready"


@pytest.mark.parametrize(
    ("inventory", "reason"),
    [
        (Inventory(state=STATE_NO_DRIVER, message="no NVIDIA driver"), "DriverNotLoaded"),
        (
            Inventory(state=STATE_NVML_ERROR, error="NVML_ERROR_DRIVER_NOT_LOADED"),
            "DriverNotLoaded",
        ),
        (Inventory(state=STATE_NVML_ERROR, error="NVML_ERROR_NO_PERMISSION"), "NVMLNoPermission"),
        (Inventory(state=STATE_NVML_ERROR, error="NVML_ERROR_UNKNOWN"), "NVMLError"),
        (Inventory(state=STATE_NO_GPU), "NoGPU"),
        (
            Inventory(
                state=STATE_OK,
                gpus=(GPU(index=0), GPU(index=1, state=GPU_LOST, error="NVML_ERROR_GPU_IS_LOST")),
            ),
            "GPULost",
        ),
        (
            Inventory(state=STATE_OK, gpus=(GPU(index=0, state=GPU_ERROR, error="NVML_ERROR_X"),)),
            "GPUError",
        ),
    ],
)
def test_not_ready_reasons(inventory: Inventory, reason: str) -> None:
    r = assess(Facts(inventory, runtime_ok=True, capacity={"nvidia.com/gpu": "8"}))
    assert (r.status, r.reason) == (FALSE, reason)
    assert r.message


def test_lost_gpu_message_names_it() -> None:
    gpus = (GPU(index=0), GPU(index=5, state=GPU_LOST, error="NVML_ERROR_GPU_IS_LOST"))
    r = assess(Facts(Inventory(state=STATE_OK, gpus=gpus), runtime_ok=True))
    assert r.message == "GPU 5 fell off the bus (NVML_ERROR_GPU_IS_LOST)"


def test_xid_reason() -> None:
    r = assess(Facts(inv(), runtime_ok=True, capacity={"nvidia.com/gpu": "2"}, xid=79))
    assert (r.status, r.reason) == (FALSE, "XID79")


def test_runtime_not_configured() -> None:
    r = assess(Facts(inv(), runtime_ok=False, runtime_message="docker: nvidia runtime missing"))
    assert (r.status, r.reason, r.message) == (
        FALSE,
        "RuntimeNotConfigured",
        "docker: nvidia runtime missing",
    )


def test_device_plugin_must_advertise_every_gpu() -> None:
    r = assess(Facts(inv(4), runtime_ok=True, capacity={"nvidia.com/gpu": "3", "cpu": "64"}))
    assert (r.status, r.reason) == (FALSE, "DevicePluginNotReady")
    assert "3 of 4" in r.message
    assert assess(Facts(inv(4), runtime_ok=True, capacity=None)).status == UNKNOWN
    off = assess(Facts(inv(4), runtime_ok=True, require_device_plugin=False))
    assert off.status == TRUE


def test_mig_devices_count_through_mig_resources() -> None:
    migs = tuple(
        MigDevice(
            index=i,
            uuid=f"MIG-{i}",
            name="x",
            profile="1g.10gb",
            gpu_instance_id=i,
            compute_instance_id=0,
            memory_total_mib=9856,
        )
        for i in range(7)
    )
    inventory = Inventory(state=STATE_OK, gpus=(GPU(index=0, mig_devices=migs), GPU(index=1)))
    ok = {"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "7"}
    assert assess(Facts(inventory, runtime_ok=True, capacity=ok)).status == TRUE
    short = {"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "6"}
    assert assess(Facts(inventory, runtime_ok=True, capacity=short)).status == FALSE
