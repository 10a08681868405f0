"""XID classification and the NVML XID watcher, over the real pynvml and the simulated
libnvidia-ml.so.1 (tests/fakenvml). Expected UUIDs and events come from the profile files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pynvml
import pytest

from nodeagent.gpu import xid
from nodeagent.gpu.events import RecoveryActionEvent, XidEvent, XidWatcher
from nodeagent.gpu.inventory import STATE_OK, RecoveryAction
from nodeagent.gpu.nvml import detect

WAIT_S = 5.0  # bound for anything that should take well under a second


# -- xid.py ---------------------------------------------------------------------------------


def test_issue_xids_are_critical() -> None:
    for code in (48, 63, 64, 74, 79, 92, 94, 95, 119, 120):
        assert code in xid.CRITICAL_XIDS, code
        assert xid.is_critical(code), code


def test_application_xids_are_the_device_plugin_list_and_never_critical() -> None:
    assert frozenset({13, 31, 43, 45, 68, 109}) == xid.APPLICATION_XIDS
    assert not xid.APPLICATION_XIDS & xid.CRITICAL_XIDS
    for code in xid.APPLICATION_XIDS:
        assert not xid.is_critical(code), code


def test_every_listed_xid_has_a_description() -> None:
    for code in xid.CRITICAL_XIDS | xid.APPLICATION_XIDS:
        text = xid.describe(code)
        assert text and not text.startswith("XID "), code
    assert xid.describe(79) == "GPU has fallen off the bus"
    assert xid.describe(48) == "Double bit ECC error"


def test_describe_unknown_xid() -> None:
    assert xid.describe(9999) == "XID 9999"
    assert xid.describe(0) == "XID 0"


def test_is_critical_extra_and_ignore() -> None:
    assert not xid.is_critical(109)
    assert xid.is_critical(109, extra=[109])
    assert not xid.is_critical(79, ignore=[79])
    assert xid.is_critical(79, ignore=[48])  # ignoring another XID changes nothing
    assert not xid.is_critical(1234)
    assert xid.is_critical(1234, extra=(1234,))
    # both: ignore wins
    assert not xid.is_critical(109, extra=[109], ignore=[109])
    # generators are fine (consumed once each)
    assert xid.is_critical(7, extra=(x for x in [7]))


def test_doc_lists_every_critical_xid() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "xid.md").read_text()
    for code in sorted(xid.CRITICAL_XIDS | xid.APPLICATION_XIDS):
        assert f"| {code} |" in doc, f"docs/xid.md has no row for XID {code}"


# -- the watcher ----------------------------------------------------------------------------


class Collector:
    """Thread-safe record of what the watcher reported."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[XidEvent] = []
        self.errors: list[str] = []

    def on_event(self, event: XidEvent) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def on_error(self, message: str) -> None:
        with self.cond:
            self.errors.append(message)
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def event(self, code: int, gpu: Optional[int] = None) -> Optional[XidEvent]:
        with self.cond:
            for e in self.events:
                if e.xid == code and (gpu is None or e.gpu_index == gpu):
                    return e
        return None


def wait_until(pred: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll a property of the watcher (it has no callback for it) with a bounded wait."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        done.wait(0.01)
    return pred()


@pytest.fixture
def events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "xid-events"
    path.write_text("")
    monkeypatch.setenv("FAKE_NVML_EVENTS", str(path))
    return path


def inject(path: Path, gpu: int, code: int) -> None:
    with path.open("a") as f:
        f.write(f"{gpu} {code}\n")


@pytest.fixture
def watchers() -> Iterator[list[XidWatcher]]:
    """Watchers made by a test; all stopped afterwards, whatever happened."""
    made: list[XidWatcher] = []
    yield made
    for w in made:
        w.stop()


def make(watchers: list[XidWatcher], c: Collector, lib: str, **kw: object) -> XidWatcher:
    w = XidWatcher(c.on_event, library=lib, on_error=c.on_error, **kw)  # type: ignore[arg-type]
    watchers.append(w)
    return w


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nodeagent-xid-watch"]


def test_injected_xid79_reaches_on_event(fake_nvml, use_profile, events_file, watchers) -> None:
    lib = use_profile("h100x8")
    uuids = [g["uuid"] for g in fake_nvml.data("h100x8")["gpus"]]
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, 2, 79)
    assert c.wait_for(lambda: c.event(79) is not None, timeout=2.0)
    e = c.event(79)
    assert e == XidEvent(
        gpu_index=2,
        uuid=uuids[2],
        xid=79,
        critical=True,
        description="GPU has fallen off the bus",
    )
    assert c.errors == []
    assert w.last_error is None


def test_application_xid_is_not_critical(fake_nvml, use_profile, events_file, watchers) -> None:
    lib = use_profile("h100x8")
    uuids = [g["uuid"] for g in fake_nvml.data("h100x8")["gpus"]]
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, 0, 13)
    assert c.wait_for(lambda: c.event(13) is not None)
    e = c.event(13)
    assert e is not None
    assert (e.gpu_index, e.uuid, e.critical) == (0, uuids[0], False)
    assert e.description == "Graphics engine exception"


def test_profile_events_are_delivered(fake_nvml, use_profile, watchers, monkeypatch) -> None:
    monkeypatch.delenv("FAKE_NVML_EVENTS", raising=False)
    data = fake_nvml.data("h100x8-xid79")
    expected = [(e["gpu"], e["xid"]) for e in data["xid_events"]]
    assert (2, 79) in expected and (5, 13) in expected  # what the profile promises
    lib = use_profile("h100x8-xid79")
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    assert c.wait_for(lambda: len(c.events) >= len(expected))
    got = [(e.gpu_index, e.xid) for e in c.events[: len(expected)]]
    assert sorted(got) == sorted(expected)
    by_xid = {e.xid: e for e in c.events}
    assert by_xid[79].critical and by_xid[79].uuid == data["gpus"][2]["uuid"]
    assert not by_xid[13].critical and by_xid[13].uuid == data["gpus"][5]["uuid"]


def recovery_profile(fake_nvml, tmp_path: Path, after_ms: int) -> tuple[Path, dict[str, Any]]:
    """h100x8 whose GPU 1's recovery action turns node_reboot ``after_ms`` after boot (the
    copy's write), with an XID on GPU 0 at the same time."""
    doc = fake_nvml.data("h100x8")
    doc["recovery_events"] = [{"gpu": 1, "after_ms": after_ms, "action": "node_reboot"}]
    path = tmp_path / "recovery.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_a_recovery_action_event_reaches_on_recovery_and_detection_reads_the_action(
    fake_nvml, use_profile, watchers, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("FAKE_NVML_EVENTS", raising=False)
    path, doc = recovery_profile(fake_nvml, tmp_path, after_ms=1000)
    lib = use_profile(path)
    c = Collector()
    got: list[RecoveryActionEvent] = []

    def on_recovery(ev: RecoveryActionEvent) -> None:
        with c.cond:
            got.append(ev)
            c.cond.notify_all()

    w = make(watchers, c, lib, on_recovery=on_recovery)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    assert detect(library=lib).gpus[1].recovery_action is RecoveryAction.NONE
    assert c.wait_for(lambda: bool(got), timeout=3.0)
    assert got == [RecoveryActionEvent(gpu_index=1, uuid=doc["gpus"][1]["uuid"])]
    assert detect(library=lib).gpus[1].recovery_action is RecoveryAction.NODE_REBOOT
    assert c.events == [] and c.errors == []  # not an XID


def test_without_on_recovery_the_event_is_not_registered(
    fake_nvml, use_profile, events_file, watchers, tmp_path
) -> None:
    path, _ = recovery_profile(fake_nvml, tmp_path, after_ms=300)
    lib = use_profile(path)
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    time.sleep(0.6)  # past the change: nothing may arrive for it
    inject(events_file, 0, 79)  # ... while XIDs still do
    assert c.wait_for(lambda: c.event(79) is not None)
    assert [e.xid for e in c.events] == [79]


def test_a_change_before_the_watch_started_is_no_event(
    fake_nvml, use_profile, events_file, watchers, tmp_path
) -> None:
    path, _ = recovery_profile(fake_nvml, tmp_path, after_ms=0)
    lib = use_profile(path)
    c = Collector()
    got: list[RecoveryActionEvent] = []
    w = make(watchers, c, lib, on_recovery=got.append)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, 0, 79)  # an event after it: the wait loop has looked past the change
    assert c.wait_for(lambda: c.event(79) is not None)
    assert got == []


def test_extra_and_ignore(use_profile, events_file, watchers) -> None:
    lib = use_profile("h100x8")
    c = Collector()
    w = make(watchers, c, lib, extra_critical=[109], ignore=[79])
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    for gpu, code in ((1, 109), (2, 79), (3, 48)):
        inject(events_file, gpu, code)
    assert c.wait_for(lambda: len(c.events) >= 3)
    crit = {e.xid: e.critical for e in c.events}
    assert crit == {109: True, 79: False, 48: True}


def test_on_event_exception_does_not_kill_the_watcher(use_profile, events_file, watchers) -> None:
    lib = use_profile("h100x8")
    c = Collector()

    def flaky(event: XidEvent) -> None:
        c.on_event(event)
        if event.xid == 79:
            raise RuntimeError("callback bug")

    w = XidWatcher(flaky, library=lib, on_error=c.on_error)
    watchers.append(w)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, 2, 79)
    assert c.wait_for(lambda: c.event(79) is not None)
    inject(events_file, 4, 48)
    assert c.wait_for(lambda: c.event(48, gpu=4) is not None)
    assert w.watching
    assert c.errors == []


def test_stop_returns_promptly_while_waiting(use_profile, events_file, watchers) -> None:
    lib = use_profile("h100x8")
    c = Collector()
    w = make(watchers, c, lib)  # default wait_ms=500
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 1.0
    assert not w.watching
    assert watcher_threads() == []


def test_stop_returns_promptly_during_backoff(use_profile, watchers) -> None:
    lib = use_profile("driver-not-loaded")
    c = Collector()
    w = make(watchers, c, lib, retry_max_s=30.0)
    w.start()
    assert c.wait_for(lambda: len(c.errors) >= 1)
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 1.0
    assert watcher_threads() == []


def test_start_twice_is_an_error(use_profile, watchers) -> None:
    lib = use_profile("h100x8")
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    with pytest.raises(RuntimeError):
        w.start()


def test_driver_not_loaded_then_recovers(
    fake_nvml, use_profile, events_file, tmp_path, watchers
) -> None:
    node = tmp_path / "node.json"
    node.write_text(fake_nvml.profile("driver-not-loaded").read_text())
    lib = use_profile(node)
    c = Collector()
    w = make(watchers, c, lib, retry_max_s=0.2)
    w.start()
    assert c.wait_for(lambda: len(c.errors) >= 2)  # it failed, and tried again
    assert all("NVML_ERROR_DRIVER_NOT_LOADED" in m for m in c.errors)
    assert all("\n" not in m for m in c.errors)
    assert not w.watching
    assert w.last_error is not None and "NVML_ERROR_DRIVER_NOT_LOADED" in w.last_error

    # The driver comes up: the fake re-reads the profile at every nvmlInit.
    tmp = tmp_path / "node.json.tmp"
    tmp.write_text(fake_nvml.profile("h100x8").read_text())
    os.replace(tmp, node)
    assert wait_until(lambda: w.watching), w.last_error
    assert w.last_error is None
    inject(events_file, 6, 79)
    assert c.wait_for(lambda: c.event(79, gpu=6) is not None)
    e = c.event(79, gpu=6)
    assert e is not None and e.critical
    assert e.uuid == fake_nvml.data("h100x8")["gpus"][6]["uuid"]


def test_library_missing_names_the_error(tmp_path, watchers) -> None:
    c = Collector()
    w = make(watchers, c, str(tmp_path / "no" / "libnvidia-ml.so.1"), retry_max_s=0.2)
    w.start()
    assert c.wait_for(lambda: len(c.errors) >= 1)
    assert "NVML_ERROR_LIBRARY_NOT_FOUND" in c.errors[0]


def test_no_gpu_is_an_error(use_profile, watchers) -> None:
    lib = use_profile("zero-gpus")
    c = Collector()
    w = make(watchers, c, lib, retry_max_s=0.2)
    w.start()
    assert c.wait_for(lambda: len(c.errors) >= 1)
    assert "no GPU" in c.errors[0]
    assert not w.watching


def test_lost_gpu_is_skipped_others_watched(fake_nvml, use_profile, events_file, watchers) -> None:
    data = fake_nvml.data("gpu-lost")
    lost = [i for i, g in enumerate(data["gpus"]) if g.get("error") == "NVML_ERROR_GPU_IS_LOST"]
    assert lost, "the profile has a lost GPU"
    healthy = next(i for i in range(len(data["gpus"])) if i not in lost)
    lib = use_profile("gpu-lost")
    c = Collector()
    w = make(watchers, c, lib)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, lost[0], 79)  # not registered: never delivered
    inject(events_file, healthy, 48)
    assert c.wait_for(lambda: c.event(48, gpu=healthy) is not None)
    assert c.event(79) is None
    assert c.errors == []


def test_concurrent_detect_does_not_break_the_watch(
    fake_nvml, use_profile, events_file, watchers
) -> None:
    lib = use_profile("h100x8")
    data = fake_nvml.data("h100x8")
    before = pynvml.nvmlLib
    c = Collector()
    w = make(watchers, c, lib, wait_ms=50)  # many waits overlap the detections
    w.start()
    assert wait_until(lambda: w.watching), w.last_error

    for i in range(6):
        inv = detect(library=lib)
        assert inv.state == STATE_OK, inv.message
        assert [g.uuid for g in inv.gpus] == [g["uuid"] for g in data["gpus"]]
        inject(events_file, i, 79)
        assert c.wait_for(lambda i=i: c.event(79, gpu=i) is not None), f"event {i}"  # type: ignore[misc]

    assert w.watching and c.errors == []
    # The watcher's library binding never leaks into pynvml's global.
    assert pynvml.nvmlLib is before
    w.stop()
    # The watcher gave back its nvmlInit: detection still works on its own afterwards.
    assert detect(library=lib).state == STATE_OK


def test_watch_recovers_after_nvml_reinit_failure(
    fake_nvml, use_profile, events_file, tmp_path, watchers
) -> None:
    """A failing nvmlInit elsewhere voids NVML's state (as the fake models it); the wait
    fails, on_error is called, and the watcher comes back once NVML works again."""
    node = tmp_path / "node.json"
    node.write_text(fake_nvml.profile("h100x8").read_text())
    lib = use_profile(node)
    c = Collector()
    w = make(watchers, c, lib, wait_ms=50, retry_max_s=0.2)
    w.start()
    assert wait_until(lambda: w.watching), w.last_error

    tmp = tmp_path / "node.json.tmp"
    tmp.write_text(fake_nvml.profile("driver-not-loaded").read_text())
    os.replace(tmp, node)
    assert detect(library=lib).error == "NVML_ERROR_DRIVER_NOT_LOADED"
    assert c.wait_for(lambda: len(c.errors) >= 1)
    assert "NVML_ERROR" in c.errors[0]

    tmp.write_text(fake_nvml.profile("h100x8").read_text())
    os.replace(tmp, node)
    assert wait_until(lambda: w.watching), w.last_error
    inject(events_file, 1, 95)
    assert c.wait_for(lambda: c.event(95, gpu=1) is not None)
