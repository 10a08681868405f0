"""GPU readiness: the condition a node should carry, from facts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from nodeagent.gpu.inventory import (
    CLOCK_EVENT_BITS,
    GPU,
    GPU_ERROR,
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
    ClockEvent,
    Fabric,
    FabricHealth,
    FabricState,
    Inventory,
    MigDevice,
    RecoveryAction,
    RemappedRows,
    Signal,
    SignalError,
)
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.readiness import (
    Facts,
    HealthReason,
    HealthWarning,
    assess,
    gpu_problems,
    gpu_warnings,
)

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


# -- the NVML health signals (issue 12) ---------------------------------------------------

OK_FABRIC = Fabric(FabricState.COMPLETED, "NVML_SUCCESS")
CAP8 = {"nvidia.com/gpu": "8"}


def hgx(**changes: dict[str, Any]) -> Inventory:
    """8 healthy HGX GPUs (fabric completed, no remap, action none); ``changes`` maps
    "gpuN" to the fields that GPU has instead."""
    gpus = []
    for i in range(8):
        base: dict[str, Any] = {
            "index": i,
            "uuid": f"GPU-{i:08x}",
            "fabric": OK_FABRIC,
            "remapped_rows": RemappedRows(0, 0, pending=False, failure=False),
            "recovery_action": RecoveryAction.NONE,
            "retired_pages_pending": False,
            "ecc_volatile_uncorrectable": 0,
            "persistence_mode": True,
            "clocks_event_reasons": CLOCK_EVENT_BITS[ClockEvent.GPU_IDLE],
        }
        gpus.append(GPU(**{**base, **changes.get(f"gpu{i}", {})}))
    return Inventory(state=STATE_OK, gpus=tuple(gpus))


def judge(inventory: Inventory, **kw: Any) -> tuple[ConditionStatus, str, str]:
    r = assess(Facts(inventory, runtime_ok=True, capacity=CAP8, **kw))
    return r.status, r.reason, r.message


PENDING = RemappedRows(1, 0, pending=True, failure=False)
FAILED = RemappedRows(0, 3, pending=False, failure=True)


@pytest.mark.parametrize(
    ("gpu3", "reason", "words"),
    [
        (
            {"fabric": Fabric(FabricState.IN_PROGRESS, "NVML_SUCCESS")},
            "FabricNotReady",
            "in_progress",
        ),
        (
            {"fabric": Fabric(FabricState.NOT_STARTED, "NVML_SUCCESS")},
            "FabricNotReady",
            "not_started",
        ),
        ({"fabric": Fabric(FabricState.UNKNOWN, None)}, "FabricNotReady", "unknown"),
        (
            {"fabric": Fabric(FabricState.COMPLETED, "NVML_ERROR_UNKNOWN")},
            "FabricFailure",
            "NVML_ERROR_UNKNOWN",
        ),
        ({"remapped_rows": PENDING}, "GPUResetRequired", "row remap is pending"),
        ({"remapped_rows": FAILED}, "RowRemapFailure", "needs replacing"),
        ({"recovery_action": RecoveryAction.GPU_RESET}, "RecoveryActionGPUReset", "gpu_reset"),
        ({"recovery_action": RecoveryAction.NODE_REBOOT}, "RecoveryActionNodeReboot", "reboot"),
        ({"recovery_action": RecoveryAction.DRAIN_P2P}, "RecoveryActionDrainP2P", "drain_p2p"),
        (
            {"recovery_action": RecoveryAction.DRAIN_AND_RESET},
            "RecoveryActionDrainAndReset",
            "drain_and_reset",
        ),
        ({"recovery_action": RecoveryAction.UNKNOWN}, "RecoveryActionUnknown", "unknown"),
        ({"retired_pages_pending": True}, "RetiredPagesPending", "retired pages"),
        ({"ecc_volatile_uncorrectable": 2}, "UncorrectableECC", "2 uncorrectable ECC errors"),
    ],
)
def test_each_health_signal_makes_gpuready_false_naming_the_gpu(
    gpu3: dict[str, Any], reason: str, words: str
) -> None:
    status, got, message = judge(hgx(gpu3=gpu3))
    assert (status, got) == (FALSE, reason)
    assert message.startswith("GPU 3 (GPU-00000003): ") and words in message, message
    assert "other GPU" not in message


def test_the_message_counts_the_other_gpus_with_the_same_problem() -> None:
    boot = {"fabric": Fabric(FabricState.IN_PROGRESS, "NVML_SUCCESS")}
    _, reason, message = judge(hgx(**{f"gpu{i}": boot for i in range(8)}))
    assert reason == "FabricNotReady"
    assert message.startswith("GPU 0 (GPU-00000000): NVLink fabric in_progress")
    assert message.endswith("; also 7 other GPUs: 1, 2, 3, 4, 5, 6, 7")


@pytest.mark.parametrize(
    "gpu",
    [
        {"fabric": None},  # NVML: NOT_SUPPORTED (a PCIe GPU)
        {"fabric": Fabric(FabricState.NOT_SUPPORTED, "NVML_SUCCESS")},  # no fabric to join
        {"fabric": Fabric(FabricState.NOT_SUPPORTED, "NVML_ERROR_NOT_SUPPORTED")},
        {"remapped_rows": None, "recovery_action": None, "retired_pages_pending": None},
        {"ecc_volatile_uncorrectable": None, "persistence_mode": None},  # GeForce
        {"remapped_rows": RemappedRows(5, 2, pending=False, failure=False)},  # remapped: fine
    ],
)
def test_not_applicable_signals_are_healthy(gpu: dict[str, Any]) -> None:
    assert judge(hgx(gpu2=gpu)) == (TRUE, "GPUReady", "8 GPUs healthy, runtime ready")


def test_precedence_replace_reboot_reset_then_xid_then_fabric_then_runtime() -> None:
    """The most drastic remedy wins (it covers the smaller ones); a critical XID keeps its
    place after the GPU reads and before the runtime; the fabric comes after it."""
    fabric = {"fabric": Fabric(FabricState.IN_PROGRESS, "NVML_SUCCESS")}
    node = hgx(
        gpu1={"recovery_action": RecoveryAction.GPU_RESET},
        gpu2={"recovery_action": RecoveryAction.NODE_REBOOT, "ecc_volatile_uncorrectable": 1},
        gpu5={"remapped_rows": FAILED},
        gpu6={"remapped_rows": PENDING, **fabric},
    )
    order = []
    reason = ""
    while reason != "XID79":  # repair each problem in turn: the next one shows
        reason = judge(node, xid=79, xid_gpu=4)[1]
        order.append(reason)
        node = _fix(node, reason) if reason != "XID79" else node
    assert order == [
        "RowRemapFailure",
        "RecoveryActionNodeReboot",
        "RecoveryActionGPUReset",
        "GPUResetRequired",
        "UncorrectableECC",
        "XID79",
    ]
    assert judge(node)[1] == "FabricNotReady"  # the XID recovered: the fabric is left
    r = assess(Facts(hgx(gpu6=fabric), runtime_ok=False, capacity=CAP8))
    assert r.reason == "FabricNotReady"  # before the runtime
    lost = hgx(gpu5={"remapped_rows": FAILED, "state": GPU_LOST})
    assert judge(lost)[1] == "GPULost"  # a GPU NVML cannot read comes first


def _fix(node: Inventory, reason: str) -> Inventory:
    """``node`` with the problem ``reason`` repaired on every GPU (the XID stays)."""
    healthy = hgx().gpus[0]
    field = {
        "RowRemapFailure": "remapped_rows",
        "GPUResetRequired": "remapped_rows",
        "RecoveryActionNodeReboot": "recovery_action",
        "RecoveryActionGPUReset": "recovery_action",
        "UncorrectableECC": "ecc_volatile_uncorrectable",
    }[reason]
    bad = {
        "RowRemapFailure": lambda g: g.remapped_rows == FAILED,
        "GPUResetRequired": lambda g: g.remapped_rows == PENDING,
        "RecoveryActionNodeReboot": lambda g: g.recovery_action is RecoveryAction.NODE_REBOOT,
        "RecoveryActionGPUReset": lambda g: g.recovery_action is RecoveryAction.GPU_RESET,
        "UncorrectableECC": lambda g: bool(g.ecc_volatile_uncorrectable),
    }[reason]
    gpus = tuple(
        dataclasses.replace(g, **{field: getattr(healthy, field)}) if bad(g) else g
        for g in node.gpus
    )
    return dataclasses.replace(node, gpus=gpus)


def test_warnings_never_make_it_false_and_are_stated_while_true() -> None:
    slow = CLOCK_EVENT_BITS[ClockEvent.HW_SLOWDOWN] | CLOCK_EVENT_BITS[ClockEvent.HW_THERMAL]
    node = hgx(
        gpu0={"persistence_mode": False},
        gpu4={"clocks_event_reasons": slow},
        gpu6={
            "fabric": Fabric(
                FabricState.COMPLETED, "NVML_SUCCESS", health=FabricHealth.LIMITED_CAPACITY
            )
        },
        gpu7={"signal_errors": (SignalError(Signal.REMAPPED_ROWS, "NVML_ERROR_UNKNOWN"),)},
    )
    status, reason, message = judge(node)
    assert (status, reason) == (TRUE, "GPUReady")
    kinds = [w.kind for w in gpu_warnings(node)]
    assert kinds == [
        HealthWarning.SIGNAL_UNREADABLE,
        HealthWarning.FABRIC_DEGRADED,
        HealthWarning.HW_SLOWDOWN,
        HealthWarning.HW_THERMAL_SLOWDOWN,
        HealthWarning.PERSISTENCE_MODE_OFF,
    ]
    assert message == (
        "8 GPUs healthy, runtime ready; warning: GPU 7 (GPU-00000007): NVML could not read "
        "remapped_rows (NVML_ERROR_UNKNOWN) (+4 more: nodeagent check)"
    )
    assert gpu_problems(node) == ()
    # software clock reasons (idle, power cap, sw thermal) are not warnings
    calm = CLOCK_EVENT_BITS[ClockEvent.SW_POWER_CAP] | CLOCK_EVENT_BITS[ClockEvent.SW_THERMAL]
    assert gpu_warnings(hgx(gpu1={"clocks_event_reasons": calm})) == ()


def test_a_problem_hides_no_warning_from_check() -> None:
    node = hgx(gpu1={"recovery_action": RecoveryAction.GPU_RESET, "persistence_mode": False})
    assert judge(node)[1] == "RecoveryActionGPUReset"
    assert [w.kind for w in gpu_warnings(node)] == [HealthWarning.PERSISTENCE_MODE_OFF]
    assert [p.kind for p in gpu_problems(node)] == [HealthReason.RECOVERY_GPU_RESET]
