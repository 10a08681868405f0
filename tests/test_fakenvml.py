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
