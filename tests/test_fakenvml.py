"""The simulated NVML itself, through pynvml: XID events, timeouts, error strings.

Detection is tested in test_detect.py; this covers what the health watch will rely on.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from pathlib import Path

import pynvml
import pytest


@pytest.fixture
def nvml(fake_nvml, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    events = tmp_path / "events"
    events.write_text("")
    monkeypatch.setenv("FAKE_NVML_EVENTS", str(events))

    def start(profile: str):
        monkeypatch.setenv("FAKE_NVML_PROFILE", str(fake_nvml.profile(profile)))
        pynvml.nvmlLib = ctypes.CDLL(str(fake_nvml.lib))
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlInit()
        return events

    yield start
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()
    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()


def register_all():
    es = pynvml.nvmlEventSetCreate()
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    return es


def index_of(handle) -> int:
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    for i in range(pynvml.nvmlDeviceGetCount()):
        if pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) == uuid:
            return i
    raise AssertionError(uuid)


def test_profile_xid_events_arrive_in_order_after_their_delay(nvml, fake_nvml) -> None:
    nvml("h100x8-xid79")
    es = register_all()
    want = fake_nvml.data("h100x8-xid79")["xid_events"]
    t0 = time.monotonic()
    got = []
    for _ in want:
        data = pynvml.nvmlEventSetWait(es, 2000)
        got.append((index_of(data.device), data.eventData, time.monotonic() - t0))
        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
    assert [(g, x) for g, x, _ in got] == [(e["gpu"], e["xid"]) for e in want]
    for (_, _, at), e in zip(got, want):
        assert at >= e["after_ms"] / 1000
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

    threading.Thread(target=inject).start()
    data = pynvml.nvmlEventSetWait(es, 3000)
    assert (index_of(data.device), data.eventData) == (6, 79)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 50)


def test_wait_honours_timeout_without_spinning(nvml) -> None:
    nvml("h100x8")
    es = register_all()
    cpu0, t0 = time.process_time(), time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 500)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert 0.5 <= wall < 1.5
    assert cpu < 0.25 * wall


def test_lost_gpu_fails_every_query_with_its_error(nvml) -> None:
    nvml("gpu-lost")
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetUUID(h)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMemoryInfo(h)
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(2)) == "NVIDIA H100 80GB HBM3"


def test_mig_not_supported_on_volta(nvml) -> None:
    nvml("v100x8")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(h)


def test_uninitialised_calls_fail_like_nvml(nvml) -> None:
    nvml("t4")
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()  # the fixture shuts down again
