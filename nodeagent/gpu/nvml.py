"""GPU detection through NVML (pynvml from nvidia-ml-py): facts in, an Inventory out.

Failure modes are states, never tracebacks: no library is ``no-driver``; a failing
``nvmlInit`` is ``nvml-error`` with the NVML error's name; one GPU that fell off the bus is
listed as ``lost`` while the others are still reported. A query a GPU does not support
(power limit on some boards, MIG on pre-Ampere, memory on GB10, the fabric outside NVSwitch
systems) leaves that field None: "not applicable", never a failure. Any other error of a
health signal or measurement is recorded in ``GPU.signal_errors`` and the GPU is kept;
only ``NVML_ERROR_GPU_IS_LOST`` turns the whole GPU ``lost``.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any, Callable, Optional, TypeVar

from nodeagent.gpu.arch import arch_family
from nodeagent.gpu.inventory import (
    GPU,
    GPU_ERROR,
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
    Fabric,
    FabricHealth,
    FabricState,
    Inventory,
    MigDevice,
    RecoveryAction,
    RemappedRows,
    Signal,
    SignalError,
    VirtualizationMode,
)
from nodeagent.gpu.vgpu import with_host_driver
from nodeagent.host.paths import HostRoot
from nodeagent.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024

# pynvml keeps the loaded library in a module global; detection swaps it when a
# specific library is configured, so two detections must not interleave (see bound()).
_lock = threading.Lock()

# "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "... MIG 1g.10gb+me", and "... MIG 1c.3g.40gb" for a
# compute instance smaller than its GPU instance (the names nvidia-smi -L shows).
_MIG_PROFILE_RE = re.compile(r"\bMIG\s+((?:\d+c\.)?\d+g\.\d+gb(?:\+[a-z]+)*)(?:\s|$)")


def error_name(err: BaseException) -> str:
    """The NVML_ERROR_* name of a pynvml NVMLError (e.g. ``NVML_ERROR_GPU_IS_LOST``)."""
    import pynvml

    value = getattr(err, "value", None)
    for name in dir(pynvml):
        if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == value:
            return name
    return f"NVML_ERROR_{value}"


def _not_applicable(e: BaseException) -> bool:
    """NVML's "this GPU or driver does not have that": not a failure."""
    import pynvml

    return getattr(e, "value", None) in (
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NOT_FOUND,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    )


def _query(fn: Callable[..., T], *args: Any) -> Optional[T]:
    """Call ``fn``; None for NOT_SUPPORTED / NOT_FOUND, re-raise any other NVML error."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError as e:
        if _not_applicable(e):
            return None
        raise


class _Readings:
    """Reads one GPU's signals: NOT_SUPPORTED is None, any other error is recorded (and
    None), GPU_IS_LOST propagates so the whole GPU becomes ``lost``."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.errors: list[SignalError] = []

    def read(self, signal: Signal, fn: Callable[..., T], *args: Any) -> Optional[T]:
        import pynvml

        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            if _not_applicable(e):
                return None
            if e.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            name = error_name(e)
            log.warning("nvml.signal_unreadable", index=self.index, signal=signal.value, error=name)
            self.errors.append(SignalError(signal, name))
            return None


def _newer_or_older(newer: str, older: str) -> Callable[..., Any]:
    """pynvml's ``newer`` function, falling back to the deprecated ``older`` one when the
    driver (or pynvml) lacks the newer entry point; FUNCTION_NOT_FOUND when neither is."""
    import pynvml

    def call(*args: Any) -> Any:
        for name in (newer, older):
            fn = getattr(pynvml, name, None)
            if fn is None:  # this pynvml predates (or dropped) it
                continue
            try:
                return fn(*args)
            except pynvml.NVMLError as e:
                if e.value != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND or name == older:
                    raise
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    return call


def as_text(v: object) -> Optional[str]:
    """An NVML string result as ``str`` (pynvml returns bytes or str by version)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def detect(library: Optional[str] = None, root: HostRoot = HostRoot()) -> Inventory:  # noqa: B008
    """Read the node's GPUs through NVML.

    ``library`` is the path of a libnvidia-ml.so.1 to load instead of the dynamic loader's
    search (config key ``nvml_library``); ``root`` is where ``/sys/class/dmi/id/product_name``
    is read for :attr:`Inventory.machine` (and a vGPU guest's PCI config space, gpu.vgpu).
    Never raises for NVML failures: they are states.
    """
    machine = _machine(root)
    import pynvml

    lib = None
    if library is not None:
        try:
            lib = ctypes.CDLL(library)
        except OSError:
            return _init_failed(
                pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), library, machine
            )
    with bound(lib):
        inv = _detect(library, machine)
    return with_host_driver(inv, root)


@contextlib.contextmanager
def bound(lib: Optional[ctypes.CDLL]) -> Iterator[None]:
    """Hold the NVML lock with pynvml using ``lib`` (None: whatever it has or finds), and
    give the previous library back afterwards.

    pynvml keeps its library in a module global: a configured library (``nvml_library``)
    must never leak into a later default detection, and detection and the XID watcher
    (:mod:`nodeagent.gpu.events`) must never see each other's library.
    """
    import pynvml

    with _lock:
        saved = pynvml.nvmlLib
        if lib is not None and saved is not lib:
            pynvml.nvmlLib = lib
            pynvml._nvmlGetFunctionPointer_cache.clear()
        try:
            yield
        finally:
            if lib is not None and pynvml.nvmlLib is not saved:
                pynvml.nvmlLib = saved
                pynvml._nvmlGetFunctionPointer_cache.clear()


def _detect(library: Optional[str], machine: Optional[str]) -> Inventory:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return _init_failed(e, library, machine)
    try:
        return _read(machine)
    except pynvml.NVMLError as e:
        return Inventory(
            state=STATE_NVML_ERROR,
            error=error_name(e),
            message=f"NVML query failed: {error_text(e)}",
            machine=machine,
        )
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as e:
            log.debug("nvml.shutdown_failed", error=error_name(e))


def _init_failed(e: Exception, library: Optional[str], machine: Optional[str]) -> Inventory:
    name = error_name(e)
    if name == "NVML_ERROR_LIBRARY_NOT_FOUND":
        return Inventory(
            state=STATE_NO_DRIVER,
            error=name,
            message=f"no NVIDIA driver: {library or 'libnvidia-ml.so.1'} not found",
            machine=machine,
        )
    return Inventory(
        state=STATE_NVML_ERROR,
        error=name,
        message=f"NVML init failed: {error_text(e)}",
        machine=machine,
    )


def error_text(e: BaseException) -> str:
    """``NVML_ERROR_X (NVML's own text)``; call with the library still loaded (pynvml's
    ``str()`` asks it for the text)."""
    try:
        text = str(e)
    except Exception:  # pynvml's __str__ calls back into the library
        text = repr(e)
    return f"{error_name(e)} ({text})"


def _read(machine: Optional[str]) -> Inventory:
    import pynvml

    driver = as_text(pynvml.nvmlSystemGetDriverVersion())
    nvml_version = as_text(_query(pynvml.nvmlSystemGetNVMLVersion))
    cuda = cuda_version(_query(pynvml.nvmlSystemGetCudaDriverVersion))
    gpus = tuple(_gpu(i) for i in range(pynvml.nvmlDeviceGetCount()))
    return Inventory(
        state=STATE_OK if gpus else STATE_NO_GPU,
        message=None if gpus else "NVML reports no GPU",
        driver_version=driver,
        cuda_driver_version=cuda,
        nvml_version=nvml_version,
        gpus=gpus,
        machine=machine,
    )


def cuda_version(raw: Optional[int]) -> Optional[str]:
    """NVML's CUDA driver version integer as "major.minor": 12040 -> "12.4", 13000 -> "13.0"."""
    if not raw or raw < 0:
        return None
    return f"{raw // 1000}.{raw % 1000 // 10}"


# nvmlGpuVirtualizationMode_t: NVML_GPU_VIRTUALIZATION_MODE_{NONE,PASSTHROUGH,VGPU,...}.
_VIRTUALIZATION = {
    0: VirtualizationMode.NONE,
    1: VirtualizationMode.PASSTHROUGH,
    2: VirtualizationMode.VGPU,
    3: VirtualizationMode.HOST_VGPU,
    4: VirtualizationMode.HOST_VSGA,
}
_VIRT_NEW = VirtualizationMode.UNKNOWN  # a mode newer than this agent


def mig_profile(name: str) -> Optional[str]:
    """The MIG profile in an NVML MIG device name: "NVIDIA A100-SXM4-80GB MIG 1g.10gb" ->
    "1g.10gb" (also "1g.10gb+me", "1c.3g.40gb"); None when the name has none."""
    m = _MIG_PROFILE_RE.search(name)
    return m.group(1) if m else None


def _gpu(index: int) -> GPU:
    import pynvml

    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = as_text(pynvml.nvmlDeviceGetName(handle))
    except pynvml.NVMLError as e:
        err = error_name(e)
        state = GPU_LOST if e.value == pynvml.NVML_ERROR_GPU_IS_LOST else GPU_ERROR
        log.warning("nvml.gpu_unreadable", index=index, error=err)
        return GPU(index=index, state=state, error=err)
    try:
        return _read_gpu(index, handle, name)
    except pynvml.NVMLError as e:
        err = error_name(e)
        state = GPU_LOST if e.value == pynvml.NVML_ERROR_GPU_IS_LOST else GPU_ERROR
        log.warning("nvml.gpu_unreadable", index=index, error=err)
        return GPU(index=index, state=state, error=err, name=name)


def _read_gpu(index: int, handle: Any, name: Optional[str]) -> GPU:
    import pynvml

    uuid = as_text(pynvml.nvmlDeviceGetUUID(handle))
    pci = pynvml.nvmlDeviceGetPciInfo(handle)
    r = _Readings(index)
    memory = r.read(Signal.MEMORY, pynvml.nvmlDeviceGetMemoryInfo, handle)
    cc = _query(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    major, minor = (int(cc[0]), int(cc[1])) if cc else (None, None)
    mig = _query(pynvml.nvmlDeviceGetMigMode, handle)
    current = pending = None
    mig_devices: tuple[MigDevice, ...] = ()
    if mig is not None:
        current = "enabled" if mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
        pending = "enabled" if mig[1] == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
        if current == "enabled":
            mig_devices = _mig_devices(handle)
    power_mw = _query(pynvml.nvmlDeviceGetPowerManagementLimit, handle)
    virt = _query(pynvml.nvmlDeviceGetVirtualizationMode, handle)
    fabric = r.read(Signal.FABRIC, _fabric, handle)
    rows = r.read(Signal.REMAPPED_ROWS, pynvml.nvmlDeviceGetRemappedRows, handle)
    recovery = r.read(Signal.RECOVERY_ACTION, _recovery_action, handle)
    pages = r.read(
        Signal.RETIRED_PAGES_PENDING, pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle
    )
    ecc = r.read(
        Signal.ECC_VOLATILE_UNCORRECTABLE,
        pynvml.nvmlDeviceGetTotalEccErrors,
        handle,
        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        pynvml.NVML_VOLATILE_ECC,
    )
    persistence = r.read(Signal.PERSISTENCE_MODE, pynvml.nvmlDeviceGetPersistenceMode, handle)
    util = r.read(Signal.UTILIZATION, pynvml.nvmlDeviceGetUtilizationRates, handle)
    temperature = r.read(Signal.TEMPERATURE, _temperature, handle)
    power_usage_mw = r.read(Signal.POWER_USAGE, pynvml.nvmlDeviceGetPowerUsage, handle)
    clocks = r.read(
        Signal.CLOCKS_EVENT_REASONS,
        _newer_or_older(
            "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"
        ),
        handle,
    )
    return GPU(
        index=index,
        name=name,
        uuid=uuid,
        pci_bus_id=as_text(pci.busId),
        pci_device_id=f"0x{pci.pciDeviceId:08X}",
        memory_total_mib=int(memory.total) // MIB if memory is not None else None,
        compute_major=major,
        compute_minor=minor,
        architecture=arch_family(major, minor),
        mig_capable=mig is not None,
        mig_mode_current=current,
        mig_mode_pending=pending,
        mig_devices=mig_devices,
        power_limit_w=power_mw / 1000.0 if power_mw is not None else None,
        virtualization_mode=None if virt is None else _VIRTUALIZATION.get(int(virt), _VIRT_NEW),
        fabric=fabric,
        remapped_rows=RemappedRows(
            correctable=int(rows[0]),
            uncorrectable=int(rows[1]),
            pending=bool(rows[2]),
            failure=bool(rows[3]),
        )
        if rows is not None
        else None,
        recovery_action=recovery,
        retired_pages_pending=bool(pages) if pages is not None else None,
        ecc_volatile_uncorrectable=int(ecc) if ecc is not None else None,
        persistence_mode=(
            persistence == pynvml.NVML_FEATURE_ENABLED if persistence is not None else None
        ),
        utilization_gpu_pct=int(util.gpu) if util is not None else None,
        memory_used_mib=int(memory.used) // MIB if memory is not None else None,
        temperature_c=int(temperature) if temperature is not None else None,
        power_usage_w=power_usage_mw / 1000.0 if power_usage_mw is not None else None,
        clocks_event_reasons=int(clocks) if clocks is not None else None,
        signal_errors=tuple(r.errors),
    )


# nvml.h (the nvidia-nvml-dev wheel): #define NVML_FI_DEV_GET_GPU_RECOVERY_ACTION 230. The
# installed pynvml defines it too; this covers an older pynvml that does not.
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = 230

# nvmlDeviceGpuRecoveryAction_t values (nvml.h) in order.
_RECOVERY_ACTIONS = (
    RecoveryAction.NONE,
    RecoveryAction.GPU_RESET,
    RecoveryAction.NODE_REBOOT,
    RecoveryAction.DRAIN_P2P,
    RecoveryAction.DRAIN_AND_RESET,
    RecoveryAction.RECOVER_IMEX_DOMAIN,
    RecoveryAction.BUS_RESET,
    RecoveryAction.SYSTEM_REBOOT,
)

_FABRIC_STATES = (
    FabricState.NOT_SUPPORTED,
    FabricState.NOT_STARTED,
    FabricState.IN_PROGRESS,
    FabricState.COMPLETED,
)

_FABRIC_HEALTH = (
    FabricHealth.NOT_SUPPORTED,
    FabricHealth.HEALTHY,
    FabricHealth.UNHEALTHY,
    FabricHealth.LIMITED_CAPACITY,
)


def _temperature(handle: Any) -> int:
    """The GPU core temperature in °C: ``nvmlDeviceGetTemperatureV`` (NVML 12.5xx+), the
    deprecated ``nvmlDeviceGetTemperature`` on older drivers."""
    import pynvml

    read = _newer_or_older("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")
    return int(read(handle, pynvml.NVML_TEMPERATURE_GPU))


def _recovery_action(handle: Any) -> RecoveryAction:
    """The field ``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION``; a field NVML does not have is
    reported in the value's own ``nvmlReturn`` and raised like any NVML error."""
    import pynvml

    field = getattr(
        pynvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
    )
    value = pynvml.nvmlDeviceGetFieldValues(handle, [field])[0]
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    raw = _field_int(value)
    return _RECOVERY_ACTIONS[raw] if 0 <= raw < len(_RECOVERY_ACTIONS) else RecoveryAction.UNKNOWN


def _field_int(value: Any) -> int:
    """An integer field value by its ``valueType`` (``nvmlValueType_t``)."""
    import pynvml

    member = {
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }.get(value.valueType)
    if member is None:  # a double: not what an enum field is
        return int(value.value.dVal)
    return int(getattr(value.value, member))


def _fabric(handle: Any) -> Fabric:
    """``nvmlDeviceGetGpuFabricInfoV`` with the newest struct pynvml and the driver share
    (v3: health summary; v2: health mask), else the deprecated unversioned call."""
    import pynvml

    for struct in ("c_nvmlGpuFabricInfo_v3_t", "c_nvmlGpuFabricInfo_v2_t"):
        cls = getattr(pynvml, struct, None)
        if cls is None:
            continue
        info = cls()  # its __init__ sets the version field
        try:
            pynvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
        except pynvml.NVMLError as e:
            if e.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
                continue  # an older driver: try the older struct
            if e.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                break
            raise
        health = getattr(info, "healthSummary", None)
        return _fabric_of(info, int(info.healthMask), health)
    legacy = getattr(pynvml, "c_nvmlGpuFabricInfo_t", None)
    if legacy is None:  # a pynvml older than the fabric API
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    info = legacy()
    pynvml.nvmlDeviceGetGpuFabricInfo(handle, ctypes.byref(info))
    return _fabric_of(info, None, None)


def _fabric_of(info: Any, mask: Optional[int], health: Optional[int]) -> Fabric:
    import pynvml

    # nvml.h's state is an unsigned char; pynvml reads 4 bytes: keep the low byte.
    state = int(info.state) & 0xFF
    uuid = bytes(info.clusterUuid)
    status = int(info.status)
    return Fabric(
        state=_FABRIC_STATES[state] if state < len(_FABRIC_STATES) else FabricState.UNKNOWN,
        status="NVML_SUCCESS"
        if status == pynvml.NVML_SUCCESS
        else error_name(pynvml.NVMLError(status)),
        clique_id=int(info.cliqueId),
        cluster_uuid=str(uuidlib.UUID(bytes=uuid)) if any(uuid) else None,
        health_mask=mask,
        health=_FABRIC_HEALTH[health]
        if health is not None and health < len(_FABRIC_HEALTH)
        else None,
    )


def _mig_devices(handle: Any) -> tuple[MigDevice, ...]:
    import pynvml

    found: list[MigDevice] = []
    slots = _query(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    for slot in range(slots):
        mig = _query(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
        if mig is None:
            continue  # an empty slot
        name = as_text(pynvml.nvmlDeviceGetName(mig)) or ""
        attrs = _query(pynvml.nvmlDeviceGetAttributes, mig)
        found.append(
            MigDevice(
                index=len(found),
                uuid=as_text(pynvml.nvmlDeviceGetUUID(mig)) or "",
                name=name,
                profile=mig_profile(name),
                gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                memory_total_mib=int(pynvml.nvmlDeviceGetMemoryInfo(mig).total) // MIB,
                multiprocessor_count=int(attrs.multiprocessorCount) if attrs else None,
                gpu_instance_slices=int(attrs.gpuInstanceSliceCount) if attrs else None,
                compute_instance_slices=int(attrs.computeInstanceSliceCount) if attrs else None,
                memory_size_mb=int(attrs.memorySizeMB) if attrs else None,
                shared_copy_engines=int(attrs.sharedCopyEngineCount) if attrs else None,
                shared_decoders=int(attrs.sharedDecoderCount) if attrs else None,
                shared_encoders=int(attrs.sharedEncoderCount) if attrs else None,
                shared_jpegs=int(attrs.sharedJpegCount) if attrs else None,
                shared_ofas=int(attrs.sharedOfaCount) if attrs else None,
            )
        )
    return tuple(found)


def _machine(root: HostRoot) -> Optional[str]:
    from nodeagent.host.reader import read_optional

    text = (read_optional(root.path("/sys/class/dmi/id/product_name")) or "").strip()
    return text or None
