"""The simulated NVML itself, through the real pynvml: events, timeouts, errors, reloads.

Detection is tested in test_detect.py; this covers the library's own contract (what the
health watch and every other NVML user here rely on) and its build.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest

from tests.fakenvml.build import LIBNAME, build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nvml(fake_nvml, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Start pynvml on the fake library with a profile (name or path); yields the events file."""
    events = tmp_path / "events"
    events.write_text("")
    monkeypatch.setenv("FAKE_NVML_EVENTS", str(events))
    saved = pynvml.nvmlLib

    def start(profile: str | Path) -> Path:
        path = profile if isinstance(profile, Path) else fake_nvml.profile(profile)
        monkeypatch.setenv("FAKE_NVML_PROFILE", str(path))
        pynvml.nvmlLib = ctypes.CDLL(str(fake_nvml.lib))
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlInit()
        return events

    yield start
    # Shut down however many initialisations a test left open.
    with contextlib.suppress(pynvml.NVMLError):
        for _ in range(10):
            pynvml.nvmlShutdown()
    pynvml.nvmlLib = saved
    pynvml._nvmlGetFunctionPointer_cache.clear()


def register_all(types: int = pynvml.nvmlEventTypeXidCriticalError):
    es = pynvml.nvmlEventSetCreate()
    for i in range(pynvml.nvmlDeviceGetCount()):
        pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(i), types, es)
    return es


def _value(v) -> int:
    """pynvml returns some integers as ctypes objects (nvmlDeviceIsMigDeviceHandle)."""
    return int(getattr(v, "value", v))


def index_of(handle) -> int:
    return int(pynvml.nvmlDeviceGetIndex(handle))


# --------------------------------------------------------------------------- XID events


def test_profile_xid_events_arrive_in_order_after_their_delay(nvml, fake_nvml) -> None:
    nvml("h100x8-xid79")
    es = register_all()
    want = fake_nvml.data("h100x8-xid79")["xid_events"]
    assert want, "the profile must define events"
    t0 = time.monotonic()
    got = []
    for _ in want:
        data = pynvml.nvmlEventSetWait(es, 2000)
        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
        got.append((index_of(data.device), data.eventData, time.monotonic() - t0))
    assert [(g, x) for g, x, _ in got] == [(e["gpu"], e["xid"]) for e in want]
    for (_, _, at), e in zip(got, want):
        assert at >= e["after_ms"] / 1000
    # The event's device is the same handle as the one by index: its UUID matches.
    data_uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(want[-1]["gpu"]))
    assert data_uuid == fake_nvml.data("h100x8-xid79")["gpus"][want[-1]["gpu"]]["uuid"]
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 100)  # each event is delivered once
    pynvml.nvmlEventSetFree(es)


def test_events_appended_at_run_time(nvml) -> None:
    events = nvml("h100x8")
    with events.open("a") as f:
        f.write("1 48\n")  # before the event set exists: not delivered
    es = register_all()

    def inject() -> None:
        time.sleep(0.2)
        with events.open("a") as f:
            f.write("6 79\n")
            f.flush()
            f.write("3 ")  # half a line: delivered only once complete
            f.flush()
            time.sleep(0.1)
            f.write("94\n")

    t = threading.Thread(target=inject)
    t.start()
    try:
        first = pynvml.nvmlEventSetWait(es, 3000)
        second = pynvml.nvmlEventSetWait(es, 3000)
    finally:
        t.join()
    assert (index_of(first.device), first.eventData) == (6, 79)
    assert (index_of(second.device), second.eventData) == (3, 94)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 50)
    pynvml.nvmlEventSetFree(es)


def test_only_registered_gpus_get_events(nvml, fake_nvml) -> None:
    nvml("h100x8-xid79")
    want = fake_nvml.data("h100x8-xid79")["xid_events"]
    only = want[-1]["gpu"]
    es = pynvml.nvmlEventSetCreate()
    handle = pynvml.nvmlDeviceGetHandleByIndex(only)
    supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
    assert supported & pynvml.nvmlEventTypeXidCriticalError
    pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, es)
    data = pynvml.nvmlEventSetWait(es, 2000)
    assert (index_of(data.device), data.eventData) == (only, want[-1]["xid"])
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 50)
    pynvml.nvmlEventSetFree(es)


@pytest.mark.parametrize("timeout_ms", [0, 35, 500])
def test_wait_honours_timeout_without_spinning(nvml, timeout_ms: int) -> None:
    nvml("h100x8")
    es = register_all()
    cpu0, t0 = time.process_time(), time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, timeout_ms)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert timeout_ms / 1000 <= wall < timeout_ms / 1000 + 0.5
    assert cpu < 0.25 * wall + 0.01
    pynvml.nvmlEventSetFree(es)


def test_watcher_survives_detections_in_another_thread(nvml, fake_nvml) -> None:
    """A health watch waits for XIDs while detection inits and shuts NVML down again:
    NVML's init refcount keeps the watcher's session alive and no call crashes."""
    from nodeagent.gpu.nvml import detect

    events = nvml("h100x8")
    es = register_all()
    result: dict[str, object] = {}

    def watch() -> None:
        try:
            data = pynvml.nvmlEventSetWait(es, 5000)
            result["event"] = (index_of(data.device), data.eventData)
        except pynvml.NVMLError as e:  # pragma: no cover - reported by the assert below
            result["error"] = e

    t = threading.Thread(target=watch)
    t.start()
    try:
        for _ in range(20):
            assert detect(library=str(fake_nvml.lib)).state == "ok"
        with events.open("a") as f:
            f.write("4 79\n")
    finally:
        t.join(10)
    assert result == {"event": (4, 79)}
    pynvml.nvmlEventSetFree(es)


# --------------------------------------------------------------------------- errors and reloads


def test_lost_gpu_fails_from_the_handle_on(nvml, fake_nvml) -> None:
    nvml("gpu-lost")
    gpus = fake_nvml.data("gpu-lost")["gpus"]
    lost = [i for i, g in enumerate(gpus) if g.get("error") == "NVML_ERROR_GPU_IS_LOST"]
    assert lost
    for i, g in enumerate(gpus):
        if i in lost:
            with pytest.raises(pynvml.NVMLError_GpuIsLost):
                pynvml.nvmlDeviceGetHandleByIndex(i)
        else:
            assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) == g["name"]


def test_reinit_rereads_the_profile_and_old_handles_see_it(nvml, fake_nvml, tmp_path) -> None:
    node = tmp_path / "node.json"
    shutil.copy(fake_nvml.profile("h100x8"), node)
    nvml(node)
    handle = pynvml.nvmlDeviceGetHandleByIndex(4)
    assert pynvml.nvmlDeviceGetUUID(handle) == fake_nvml.data("h100x8")["gpus"][4]["uuid"]
    data = json.loads(node.read_text())
    data["gpus"][4]["error"] = "NVML_ERROR_GPU_IS_LOST"
    node.write_text(json.dumps(data))
    pynvml.nvmlInit()  # a second user (refcount 2) re-reads the node
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetUUID(handle)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMemoryInfo(handle)


def test_init_is_reference_counted(nvml) -> None:
    nvml("t4")
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1  # one initialisation still open
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


@pytest.mark.parametrize("name", ["driver-not-loaded", "no-permission"])
def test_init_error_from_profile(nvml, fake_nvml, name: str) -> None:
    want = fake_nvml.data(name)["init_error"]
    with pytest.raises(pynvml.NVMLError) as e:
        nvml(name)
    assert e.value.value == getattr(pynvml, want)


def test_no_profile_is_driver_not_loaded(nvml, monkeypatch, tmp_path) -> None:
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nvml(tmp_path / "absent.json")


def test_invalid_profile_is_unknown_error(nvml, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"gpus": [}')
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml(bad)
    bad.write_text('{"gpus": []} trailing')
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml(bad)


def test_error_strings_are_nvmls(fake_nvml) -> None:
    # pynvml's table holds the real library's strings; the fake must say the same.
    lib = ctypes.CDLL(str(fake_nvml.lib))
    lib.nvmlErrorString.restype = ctypes.c_char_p
    for code, text in pynvml.NVMLError._errcode_to_string.items():
        assert lib.nvmlErrorString(code).decode() == text


def test_mig_not_supported_on_volta(nvml) -> None:
    nvml("v100x8")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(h)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMaxMigDeviceCount(h)


def test_mig_handles(nvml, fake_nvml) -> None:
    nvml("a100x8-mig")
    want = fake_nvml.data("a100x8-mig")["gpus"][0]
    gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert _value(pynvml.nvmlDeviceIsMigDeviceHandle(gpu)) == 0
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert _value(pynvml.nvmlDeviceIsMigDeviceHandle(mig)) == 1
    assert pynvml.nvmlDeviceGetUUID(mig) == want["mig_devices"][0]["uuid"]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, len(want["mig_devices"]))


def test_json_strings_with_escapes(nvml, fake_nvml, tmp_path) -> None:
    data = fake_nvml.data("t4")
    data["gpus"][0]["name"] = 'Tesla "T4" \\ caf\u00e9 \u2603'
    node = tmp_path / "esc.json"
    node.write_text(json.dumps(data))  # ensure_ascii: \" \\ \u00e9 \u2603 escapes
    nvml(node)
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert name == data["gpus"][0]["name"]


def test_uninitialised_calls_fail_like_nvml(nvml) -> None:
    nvml("t4")
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlSystemGetDriverVersion()


# --------------------------------------------------------------------------- health signals


def node(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data))
    return path


def fabric_v(handle, struct, version: int):
    info = struct()
    info.version = version
    pynvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    return info


def test_fabric_structs_match_pynvmls_layouts(nvml, fake_nvml, tmp_path) -> None:
    """nvml.h's versioned structs (the fake is compiled against them) and pynvml's ctypes
    copies agree: the version word pynvml sets is accepted, every member lands where
    pynvml reads it, and a v2 caller's memory past its struct is never written."""
    data = fake_nvml.data("h100x8")
    cluster = "9c6f5af3-53bf-49b5-a436-b66766c413c3"
    fabric: dict[str, object] = {
        "state": "completed",
        "status": "NVML_ERROR_UNKNOWN",
        "clique_id": 4026,
        "cluster_uuid": cluster,
        "health_mask": 0x5A5,
        "health_summary": "limited_capacity",
    }
    data["gpus"][0]["fabric"] = fabric
    nvml(node(tmp_path, data))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    # NVML_STRUCT_VERSION: the size in the low bits, the version in the top byte.
    for struct, version, n in [
        (pynvml.c_nvmlGpuFabricInfo_v2_t, pynvml.nvmlGpuFabricInfo_v2, 2),
        (pynvml.c_nvmlGpuFabricInfo_v3_t, pynvml.nvmlGpuFabricInfo_v3, 3),
    ]:
        assert version == ctypes.sizeof(struct) | n << 24
        info = fabric_v(h, struct, version)
        assert info.version == version
        assert info.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
        assert info.status == pynvml.NVML_ERROR_UNKNOWN
        assert info.cliqueId == fabric["clique_id"]
        assert bytes(info.clusterUuid).hex() == cluster.replace("-", "")
        assert info.healthMask == fabric["health_mask"]
    assert info.healthSummary == pynvml.NVML_GPU_FABRIC_HEALTH_SUMMARY_LIMITED_CAPACITY
    # A v2 struct followed by canary bytes: only the v2 struct's bytes change.
    v2 = ctypes.sizeof(pynvml.c_nvmlGpuFabricInfo_v2_t)
    buf = (ctypes.c_ubyte * (v2 + 8))(*([0xAB] * (v2 + 8)))
    ctypes.c_uint.from_buffer(buf).value = pynvml.nvmlGpuFabricInfo_v2
    pynvml.nvmlDeviceGetGpuFabricInfoV(h, ctypes.byref(buf))
    assert bytes(buf[v2:]) == b"\xab" * 8
    legacy = pynvml.c_nvmlGpuFabricInfo_t()
    pynvml.nvmlDeviceGetGpuFabricInfo(h, ctypes.byref(legacy))
    assert (legacy.state, legacy.cliqueId) == (pynvml.NVML_GPU_FABRIC_STATE_COMPLETED, 4026)


def test_fabric_version_checks(nvml, fake_nvml, tmp_path, monkeypatch) -> None:
    nvml("h100x8")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError) as e:
        fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v3_t, pynvml.nvmlGpuFabricInfo_v3 + 1)
    assert e.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    data = fake_nvml.data("h100x8")
    data["fabric_info_version"] = 2  # an older driver: v3 unknown, v2 fine
    monkeypatch.setenv("FAKE_NVML_PROFILE", str(node(tmp_path, data)))
    pynvml.nvmlInit()  # a second user: the node is re-read
    with pytest.raises(pynvml.NVMLError) as e:
        fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v3_t, pynvml.nvmlGpuFabricInfo_v3)
    assert e.value.value == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    info = fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v2_t, pynvml.nvmlGpuFabricInfo_v2)
    assert info.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
    data["fabric_info_version"] = 1  # a driver without nvmlDeviceGetGpuFabricInfoV
    monkeypatch.setenv("FAKE_NVML_PROFILE", str(node(tmp_path, data)))
    pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v2_t, pynvml.nvmlGpuFabricInfo_v2)
    legacy = pynvml.c_nvmlGpuFabricInfo_t()
    pynvml.nvmlDeviceGetGpuFabricInfo(h, ctypes.byref(legacy))
    assert legacy.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED


def test_fabric_not_supported_and_not_supported_state(nvml, fake_nvml, tmp_path) -> None:
    """No "fabric" key: the call is NOT_SUPPORTED (PCIe GPUs, older GPUs); state
    "not_supported": the call succeeds and says so (a single-GPU HGX board, per gpud)."""
    data = fake_nvml.data("h100x8")
    del data["gpus"][0]["fabric"]
    data["gpus"][1]["fabric"] = {"state": "not_supported", "status": "NVML_SUCCESS"}
    nvml(node(tmp_path, data))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fabric_v(
            pynvml.nvmlDeviceGetHandleByIndex(0),
            pynvml.c_nvmlGpuFabricInfo_v3_t,
            pynvml.nvmlGpuFabricInfo_v3,
        )
    info = fabric_v(
        pynvml.nvmlDeviceGetHandleByIndex(1),
        pynvml.c_nvmlGpuFabricInfo_v3_t,
        pynvml.nvmlGpuFabricInfo_v3,
    )
    assert info.state == pynvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED


def test_fabric_events_change_one_gpu_with_time_since_boot(nvml, fake_nvml, tmp_path) -> None:
    data = fake_nvml.data("h100x8")
    for g in data["gpus"]:
        g["fabric"] = {"state": "not_started"}
    data["fabric_events"] = [
        {"gpu": 2, "after_ms": 1000, "state": "in_progress"},
        {"gpu": 2, "after_ms": 60000, "state": "completed", "status": "NVML_ERROR_UNKNOWN"},
    ]
    path = node(tmp_path, data)
    nvml(path)

    def states() -> list[tuple[int, int]]:
        out = []
        for i in range(len(data["gpus"])):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            f = fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v3_t, pynvml.nvmlGpuFabricInfo_v3)
            out.append((f.state, f.status))
        return out

    not_started = (pynvml.NVML_GPU_FABRIC_STATE_NOT_STARTED, pynvml.NVML_SUCCESS)
    assert states() == [not_started] * 8  # just booted
    for ago, want in [
        (5, (pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS, pynvml.NVML_SUCCESS)),
        (120, (pynvml.NVML_GPU_FABRIC_STATE_COMPLETED, pynvml.NVML_ERROR_UNKNOWN)),
    ]:
        booted = time.time() - ago
        os.utime(path, (booted, booted))
        pynvml.nvmlInit()  # the boot time is read with the profile
        assert states() == [not_started] * 2 + [want] + [not_started] * 5


def test_remapped_rows_recovery_action_and_pages(nvml, fake_nvml) -> None:
    nvml("h100x8-remap-pending")
    gpus = fake_nvml.data("h100x8-remap-pending")["gpus"]
    for i, want in enumerate(gpus):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        rows = want["remapped_rows"]
        assert pynvml.nvmlDeviceGetRemappedRows(h) == (
            rows["correctable"],
            rows["uncorrectable"],
            int(rows["pending"]),
            int(rows["failure"]),
        )
        field = pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
        values = pynvml.nvmlDeviceGetFieldValues(h, [field, pynvml.NVML_FI_DEV_RESET_STATUS])
        assert (values[0].fieldId, values[0].nvmlReturn) == (field, pynvml.NVML_SUCCESS)
        assert values[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        assert values[0].value.uiVal == pynvml.NVML_GPU_RECOVERY_ACTION_NONE
        assert values[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # a field it lacks
        with pytest.raises(pynvml.NVMLError_NotSupported):  # H100: no page retirement
            pynvml.nvmlDeviceGetRetiredPagesPendingStatus(h)


def test_measurements_and_their_deprecated_twins(nvml, fake_nvml) -> None:
    nvml("h100x8")
    for i, want in enumerate(fake_nvml.data("h100x8")["gpus"]):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        assert pynvml.nvmlDeviceGetUtilizationRates(h).gpu == want["utilization_gpu_pct"]
        assert pynvml.nvmlDeviceGetMemoryInfo(h).used == want["memory_used_mib"] * 1024 * 1024
        t = want["temperature_c"]
        assert pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU) == t
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == t
        with pytest.raises(pynvml.NVMLError_NotSupported):  # only the GPU core sensor
            pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU_MAX)
        assert pynvml.nvmlDeviceGetPowerUsage(h) == want["power_usage_mw"]
        assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_ENABLED
        mask = pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
        assert mask == pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        assert mask == pynvml.nvmlClocksEventReasonGpuIdle  # the profile: ["gpu_idle"]
        ecc = pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        )
        assert ecc == want["ecc_volatile_uncorrectable"]
        with pytest.raises(pynvml.NVMLError_NotSupported):  # a counter the profile lacks
            pynvml.nvmlDeviceGetTotalEccErrors(
                h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC
            )
    wrong = pynvml.c_nvmlTemperature_v1_t()
    wrong.version = pynvml.nvmlTemperature_v1 + 1
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetTemperatureV")
    assert fn(pynvml.nvmlDeviceGetHandleByIndex(0), ctypes.byref(wrong)) == (
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    )


def test_clock_event_names_are_nvmls_bits(nvml, fake_nvml, tmp_path) -> None:
    names = {
        "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
        "applications_clocks": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
        "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
        "sw_thermal": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        "hw_thermal": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        "hw_power_brake": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
        "display_clocks": pynvml.nvmlClocksEventReasonDisplayClockSetting,
    }
    data = fake_nvml.data("h100x8")
    listed = list(names)
    for i, g in enumerate(data["gpus"]):  # GPU 7 gets the last two
        g["clocks_event_reasons"] = listed[i : i + 1] if i < 7 else listed[7:]
    data["gpus"][0]["clocks_event_reasons"].append("no_such_reason")
    nvml(node(tmp_path, data))
    for i, g in enumerate(data["gpus"][1:], start=1):
        mask = pynvml.nvmlDeviceGetCurrentClocksEventReasons(pynvml.nvmlDeviceGetHandleByIndex(i))
        want = 0
        for name in g["clocks_event_reasons"]:
            want |= names[name]
        assert mask == want
    with pytest.raises(pynvml.NVMLError_Unknown):  # a name NVML has no bit for
        pynvml.nvmlDeviceGetCurrentClocksEventReasons(pynvml.nvmlDeviceGetHandleByIndex(0))


def test_gb10_memory_not_supported(nvml) -> None:
    nvml("gb10")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMemoryInfo(h)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA GB10"


@pytest.mark.parametrize("key", ["fabric", "remapped_rows", "recovery_action", "persistence_mode",
                                 "utilization_gpu_pct", "temperature_c", "power_usage_mw",
                                 "clocks_event_reasons", "ecc_volatile_uncorrectable"])  # fmt: skip
def test_absent_key_is_not_supported(key: str, nvml, fake_nvml, tmp_path) -> None:
    data = fake_nvml.data("h100x8")
    del data["gpus"][0][key]
    nvml(node(tmp_path, data))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    calls = {
        "fabric": lambda: fabric_v(h, pynvml.c_nvmlGpuFabricInfo_v3_t, pynvml.nvmlGpuFabricInfo_v3),
        "remapped_rows": lambda: pynvml.nvmlDeviceGetRemappedRows(h),
        "persistence_mode": lambda: pynvml.nvmlDeviceGetPersistenceMode(h),
        "utilization_gpu_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU),
        "power_usage_mw": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        "clocks_event_reasons": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        "ecc_volatile_uncorrectable": lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
    }
    if key == "recovery_action":  # a field answers in its value, not the call's return
        field = pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
        value = pynvml.nvmlDeviceGetFieldValues(h, [field])[0]
        assert value.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
        return
    with pytest.raises(pynvml.NVMLError_NotSupported):
        calls[key]()
    # The other GPUs still answer.
    assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(1)) > 0


def test_call_errors_fail_one_function_of_one_gpu(nvml, fake_nvml, tmp_path) -> None:
    data = fake_nvml.data("h100x8")
    data["gpus"][3]["call_errors"] = {"nvmlDeviceGetPowerUsage": "NVML_ERROR_GPU_IS_LOST"}
    nvml(node(tmp_path, data))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(3))
    h3 = pynvml.nvmlDeviceGetHandleByIndex(3)
    assert pynvml.nvmlDeviceGetTemperatureV(h3, pynvml.NVML_TEMPERATURE_GPU) > 0
    assert pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(2)) > 0


# --------------------------------------------------------------------------- the build


def test_build_cli_prints_only_the_path(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tests.fakenvml.build", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert r.stdout == f"{tmp_path / 'out' / LIBNAME}\n"
    assert (tmp_path / "out" / LIBNAME).is_file()


def test_build_is_skipped_when_up_to_date_and_redone_when_stale(fake_nvml, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lib = out / LIBNAME
    shutil.copy2(fake_nvml.lib, lib)
    mtime = lib.stat().st_mtime_ns
    assert build(out) == lib
    assert lib.stat().st_mtime_ns == mtime  # up to date: untouched
    os.utime(lib, (0, 0))  # older than the sources
    assert build(out) == lib
    assert lib.stat().st_mtime_ns > 0
    assert list(out.iterdir()) == [lib]  # no temporary left behind
