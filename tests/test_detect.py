"""GPU detection: the real pynvml over the simulated libnvidia-ml.so.1.

Every expected value comes from the profile file itself (values read off real hardware),
never from a copy typed here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pynvml
import pytest

from nodeagent.gpu.arch import arch_family
from nodeagent.gpu.inventory import (
    GPU,
    GPU_ERROR,
    GPU_LOST,
    GPU_OK,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
    FabricHealth,
    FabricState,
    Inventory,
    RecoveryAction,
    Signal,
    clock_events,
)
from nodeagent.gpu.nvml import cuda_version, detect, mig_profile
from nodeagent.host.paths import HostRoot
from tests.fakenvml.build import PROFILES

REPO = Path(__file__).resolve().parents[1]
ALL_PROFILES = sorted(p.stem for p in PROFILES.glob("*.json"))
REQUIRED = {
    "v100x8", "t4", "a100x8-mig", "h100x8", "mixed", "rtx4090", "titan-x-pascal",
    "no-permission", "driver-not-loaded", "gpu-lost", "zero-gpus",
    "h100x8-fabric-boot", "h100x8-fabric-failed", "h100x8-remap-pending", "h100x8-remap-failure",
    "h100x8-recovery-node-reboot", "h100x8-recovery-gpu-reset", "v100x8-retired-pages-pending",
    "h100x8-ecc-uncorrectable", "gb10",
}  # fmt: skip

# The NVML entry point that reads each signal: a profile's "call_errors" makes it fail.
NVML_FUNCTION = {
    Signal.MEMORY: "nvmlDeviceGetMemoryInfo",
    Signal.FABRIC: "nvmlDeviceGetGpuFabricInfoV",
    Signal.REMAPPED_ROWS: "nvmlDeviceGetRemappedRows",
    Signal.RECOVERY_ACTION: "nvmlDeviceGetFieldValues",
    Signal.RETIRED_PAGES_PENDING: "nvmlDeviceGetRetiredPagesPendingStatus",
    Signal.ECC_VOLATILE_UNCORRECTABLE: "nvmlDeviceGetTotalEccErrors",
    Signal.PERSISTENCE_MODE: "nvmlDeviceGetPersistenceMode",
    Signal.UTILIZATION: "nvmlDeviceGetUtilizationRates",
    Signal.TEMPERATURE: "nvmlDeviceGetTemperatureV",
    Signal.POWER_USAGE: "nvmlDeviceGetPowerUsage",
    Signal.CLOCKS_EVENT_REASONS: "nvmlDeviceGetCurrentClocksEventReasons",
}


def test_required_profiles_exist_and_cite_sources() -> None:
    assert not REQUIRED - set(ALL_PROFILES), "missing profiles"
    for name in ALL_PROFILES:
        data = json.loads((PROFILES / f"{name}.json").read_text())
        assert data.get("_source"), f"{name}: every profile says where its values come from"
        uuids = [g["uuid"] for g in data.get("gpus", [])]
        uuids += [m["uuid"] for g in data.get("gpus", []) for m in g.get("mig_devices", [])]
        buses = [g["pci_bus_id"] for g in data.get("gpus", [])]
        assert len(set(uuids)) == len(uuids), f"{name}: UUIDs must be distinct"
        assert len(set(buses)) == len(buses), f"{name}: bus ids must be distinct"


def fabric_at(data: dict[str, Any], index: int, up_ms: float) -> Optional[dict[str, str]]:
    """GPU ``index``'s fabric state and status ``up_ms`` after the node booted: its
    ``fabric``, changed by the latest ``fabric_events`` entry for it that is due."""
    fabric = data["gpus"][index].get("fabric")
    if fabric is None:
        return None
    now = {"state": fabric["state"], "status": fabric.get("status", "NVML_SUCCESS")}
    due = [
        e
        for e in data.get("fabric_events", [])
        if e.get("gpu", index) == index and e["after_ms"] <= up_ms
    ]
    for e in sorted(due, key=lambda e: e["after_ms"]):
        now.update({k: e[k] for k in ("state", "status") if k in e})
    return now


def expect_signals(g: GPU, want: dict[str, Any], fabric: Optional[dict[str, str]]) -> None:
    """Every health signal and measurement of ``g`` is what the profile's GPU ``want``
    says; an absent key (NVML: NOT_SUPPORTED) is None, and no signal failed."""
    assert g.signal_errors == ()
    if fabric is None:
        assert g.fabric is None
    else:
        assert g.fabric is not None
        assert (g.fabric.state.value, g.fabric.status) == (fabric["state"], fabric["status"])
    rows = g.remapped_rows
    assert (rows and dataclasses.asdict(rows)) == want.get("remapped_rows")
    assert (g.recovery_action and g.recovery_action.value) == want.get("recovery_action")
    assert g.retired_pages_pending == want.get("retired_pages_pending")
    assert g.ecc_volatile_uncorrectable == want.get("ecc_volatile_uncorrectable")
    assert g.persistence_mode == want.get("persistence_mode")
    assert g.utilization_gpu_pct == want.get("utilization_gpu_pct")
    assert g.temperature_c == want.get("temperature_c")
    power = want.get("power_usage_mw")
    assert g.power_usage_w == (power / 1000 if power is not None else None)
    reasons = want.get("clocks_event_reasons")
    got = None if g.clocks_event_reasons is None else clock_events(g.clocks_event_reasons)
    assert (got and {r.value for r in got}) == (reasons and set(reasons))
    # Memory info is one NVML call: a profile without memory_total_mib has neither value.
    has_memory = "memory_total_mib" in want
    assert g.memory_used_mib == (want.get("memory_used_mib", 0) if has_memory else None)


def expect_matches_profile(
    inv: Inventory, data: dict[str, Any], up_ms: float = float("inf")
) -> None:
    """``inv`` is exactly what NVML would report for the node ``data`` describes,
    ``up_ms`` after that node booted."""
    if data.get("init_error"):
        assert inv.state == STATE_NVML_ERROR
        assert inv.error == data["init_error"]
        assert inv.message is not None and data["init_error"] in inv.message
        assert inv.gpus == ()
        return
    assert inv.state == (STATE_OK if data["gpus"] else STATE_NO_GPU)
    assert inv.driver_version == data["driver_version"]
    cuda = data["cuda_driver_version"]
    assert inv.cuda_driver_version == f"{cuda // 1000}.{cuda % 1000 // 10}"
    assert inv.nvml_version == data["nvml_version"]
    assert len(inv.gpus) == len(data["gpus"])
    for i, (g, want) in enumerate(zip(inv.gpus, data["gpus"])):
        assert g.index == i
        if want.get("error"):
            lost = want["error"] == "NVML_ERROR_GPU_IS_LOST"
            assert g.state == (GPU_LOST if lost else GPU_ERROR)
            assert g.error == want["error"]
            assert not g.usable
            continue
        assert (g.state, g.error) == (GPU_OK, None)
        assert g.name == want["name"]
        assert g.uuid == want["uuid"]
        assert g.pci_bus_id == want["pci_bus_id"]
        assert g.pci_device_id == f"0x{int(want['pci_device_id'], 16):08X}"
        assert g.memory_total_mib == want.get("memory_total_mib")
        assert g.compute_capability == want["compute_capability"]
        assert g.architecture == want["architecture"]
        assert g.architecture == arch_family(g.compute_major, g.compute_minor)
        power = want.get("power_limit_mw")
        assert g.power_limit_w == (power / 1000 if power is not None else None)
        mig = want.get("mig_mode")
        assert g.mig_capable is (mig is not None)
        assert g.mig_mode_current == (mig["current"] if mig else None)
        assert g.mig_mode_pending == (mig["pending"] if mig else None)
        expected = want.get("mig_devices", []) if mig and mig["current"] == "enabled" else []
        assert len(g.mig_devices) == len(expected)
        for j, (m, w) in enumerate(zip(g.mig_devices, expected)):
            assert m.index == j
            assert m.name == w["name"]
            assert m.uuid == w["uuid"]
            assert m.profile == w["name"].rsplit(" MIG ", 1)[1]
            assert m.gpu_instance_id == w["gpu_instance_id"]
            assert m.compute_instance_id == w["compute_instance_id"]
            assert m.memory_total_mib == w["memory_total_mib"]
            assert m.multiprocessor_count == w["multiprocessor_count"]
            assert m.gpu_instance_slices == w["gpu_instance_slices"]
            assert m.compute_instance_slices == w["compute_instance_slices"]
        expect_signals(g, want, fabric_at(data, i, up_ms))


def up_ms(profile: Path) -> float:
    """How long ago the simulated node booted: its profile file was written."""
    return (time.time() - profile.stat().st_mtime) * 1000


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_every_profile_detected_with_its_values(name: str, fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile(name))
    expect_matches_profile(inv, fake_nvml.data(name), up_ms(fake_nvml.profile(name)))


def test_mig_profiles_of_the_a100_node(fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile("a100x8-mig"))
    found = {m.profile for g in inv.gpus for m in g.mig_devices}
    # The real A100 80GB profile names (real-gpus.json), parsed from NVML's device names.
    assert {"1g.10gb", "3g.40gb", "7g.80gb"} <= found
    data = fake_nvml.data("a100x8-mig")["gpus"]
    pending = [g.index for g in inv.gpus if g.mig_mode_current != g.mig_mode_pending]
    assert pending == [
        i for i, g in enumerate(data) if g["mig_mode"]["current"] != g["mig_mode"]["pending"]
    ]


def test_one_lost_gpu_others_still_reported(fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile("gpu-lost"))
    want = fake_nvml.data("gpu-lost")["gpus"]
    assert inv.state == STATE_OK
    assert [g.index for g in inv.gpus if g.state == GPU_LOST] == [
        i for i, w in enumerate(want) if w.get("error") == "NVML_ERROR_GPU_IS_LOST"
    ]
    assert [g.uuid for g in inv.healthy_gpus] == [w["uuid"] for w in want if not w.get("error")]


@pytest.mark.parametrize("error", ["NVML_ERROR_UNKNOWN", "NVML_ERROR_CORRUPTED_INFOROM"])
def test_other_gpu_errors_are_state_error(error: str, tmp_path, fake_nvml, use_profile) -> None:
    data = fake_nvml.data("mixed")
    data["gpus"][1]["error"] = error
    node = tmp_path / "node.json"
    node.write_text(json.dumps(data))
    inv = detect(library=use_profile(node))
    assert [(g.state, g.error) for g in inv.gpus] == [
        (GPU_OK, None),
        (GPU_ERROR, error),
        (GPU_OK, None),
    ]
    expect_matches_profile(inv, data)


def test_nonexistent_library_is_no_driver(tmp_path: Path) -> None:
    missing = tmp_path / "libnvidia-ml.so.1"
    saved = pynvml.nvmlLib
    inv = detect(library=str(missing))
    assert inv.state == STATE_NO_DRIVER
    assert inv.error == "NVML_ERROR_LIBRARY_NOT_FOUND"
    assert inv.message == f"no NVIDIA driver: {missing} not found"
    assert pynvml.nvmlLib is saved  # nothing of the failed attempt stays behind


def test_configured_library_does_not_leak_into_later_detections(fake_nvml, use_profile) -> None:
    saved = pynvml.nvmlLib
    assert detect(library=use_profile("t4")).state == STATE_OK
    assert pynvml.nvmlLib is saved
    assert detect(library=use_profile("driver-not-loaded")).state == STATE_NVML_ERROR
    assert pynvml.nvmlLib is saved


def test_unloadable_file_is_no_driver(tmp_path: Path) -> None:
    junk = tmp_path / "libnvidia-ml.so.1"
    junk.write_text("not an ELF file\n")
    assert detect(library=str(junk)).state == STATE_NO_DRIVER


def _detect_in_subprocess(env: dict[str, str]) -> dict[str, Any]:
    """detect() with the default loader search: LD_LIBRARY_PATH is read at process start."""
    code = (
        "import json; from nodeagent.gpu.nvml import detect; print(json.dumps(detect().to_dict()))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_default_search_finds_the_library_on_ld_library_path(fake_nvml) -> None:
    out = _detect_in_subprocess(fake_nvml.env("h100x8"))
    want = fake_nvml.data("h100x8")
    assert out["state"] == STATE_OK
    assert out["driver"]["version"] == want["driver_version"]
    assert [g["uuid"] for g in out["gpus"]] == [g["uuid"] for g in want["gpus"]]


def test_no_library_on_the_search_path_is_no_driver(fake_nvml, tmp_path: Path) -> None:
    env = fake_nvml.env("h100x8", LD_LIBRARY_PATH=str(tmp_path))
    # A real driver on this machine would be found whatever LD_LIBRARY_PATH says. (Checked
    # in a fresh process: here the fake is loaded, and the loader matches it by soname.)
    probe = "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0:
        pytest.skip("this machine has a real libnvidia-ml.so.1")
    out = _detect_in_subprocess(env)
    assert out["state"] == STATE_NO_DRIVER
    assert out["message"] == "no NVIDIA driver: libnvidia-ml.so.1 not found"


def test_profile_reread_between_detections(tmp_path: Path, fake_nvml, use_profile) -> None:
    node = tmp_path / "node.json"
    shutil.copy(fake_nvml.profile("h100x8"), node)
    lib = use_profile(node)
    before = detect(library=lib)
    expect_matches_profile(before, fake_nvml.data("h100x8"))
    data = json.loads(node.read_text())
    data["gpus"][5]["error"] = "NVML_ERROR_GPU_IS_LOST"
    node.write_text(json.dumps(data))
    after = detect(library=lib)
    expect_matches_profile(after, data)
    assert after.gpus[5].state == GPU_LOST
    assert len(after.healthy_gpus) == len(before.healthy_gpus) - 1


def test_machine_from_dmi_under_root(tmp_path: Path, use_profile) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("PowerEdge XE9680\n")
    inv = detect(library=use_profile("h100x8"), root=HostRoot(tmp_path))
    assert inv.machine == "PowerEdge XE9680"
    assert detect(library=use_profile("h100x8"), root=HostRoot(tmp_path / "x")).machine is None
    missing = detect(library=str(tmp_path / "none.so"), root=HostRoot(tmp_path))
    assert (missing.state, missing.machine) == (STATE_NO_DRIVER, "PowerEdge XE9680")


@pytest.mark.parametrize("absent", ["power_limit_mw", "compute_capability"])
def test_unsupported_field_is_none(absent: str, tmp_path: Path, fake_nvml, use_profile) -> None:
    data = fake_nvml.data("rtx4090")
    del data["gpus"][0][absent]
    node = tmp_path / "p.json"
    node.write_text(json.dumps(data))
    g = detect(library=use_profile(node)).gpus[0]
    assert g.state == GPU_OK
    if absent == "power_limit_mw":
        assert g.power_limit_w is None
    else:
        assert (g.compute_capability, g.architecture) == (None, None)
    assert g.name == data["gpus"][0]["name"]


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "1g.10gb"),
        ("NVIDIA A100-SXM4-80GB MIG 1g.10gb+me", "1g.10gb+me"),
        ("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb", "1c.3g.20gb"),
        ("NVIDIA H200 MIG 7g.141gb", "7g.141gb"),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_mig_profile_from_name(name: str, profile: str | None) -> None:
    assert mig_profile(name) == profile


@pytest.mark.parametrize(("raw", "text"), [(12040, "12.4"), (13000, "13.0"), (11080, "11.8")])
def test_cuda_version(raw: int, text: str) -> None:
    assert cuda_version(raw) == text
    assert cuda_version(None) is None


# --------------------------------------------------------------------------- health signals


def node_file(tmp_path: Path, data: dict[str, Any], name: str = "node.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_every_signal_has_a_failure_seam() -> None:
    assert set(NVML_FUNCTION) == set(Signal)


# Each failure profile: how detection shows the failure, and how its profile says it.
FAILURES = {
    "h100x8-remap-pending": (
        lambda g: g.remapped_rows.pending,
        lambda w: w["remapped_rows"]["pending"],
    ),
    "h100x8-remap-failure": (
        lambda g: g.remapped_rows.failure,
        lambda w: w["remapped_rows"]["failure"],
    ),
    "h100x8-recovery-node-reboot": (
        lambda g: g.recovery_action == RecoveryAction.NODE_REBOOT,
        lambda w: w["recovery_action"] == "node_reboot",
    ),
    "h100x8-recovery-gpu-reset": (
        lambda g: g.recovery_action == RecoveryAction.GPU_RESET,
        lambda w: w["recovery_action"] == "gpu_reset",
    ),
    "v100x8-retired-pages-pending": (
        lambda g: g.retired_pages_pending,
        lambda w: w["retired_pages_pending"],
    ),
    "h100x8-ecc-uncorrectable": (
        lambda g: g.ecc_volatile_uncorrectable > 0,
        lambda w: w["ecc_volatile_uncorrectable"] > 0,
    ),
    "h100x8-fabric-failed": (
        lambda g: g.fabric.status != "NVML_SUCCESS",
        lambda w: w["fabric"]["status"] != "NVML_SUCCESS",
    ),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_each_failure_profile_fails_one_gpu(name: str, fake_nvml, use_profile) -> None:
    """The failing GPU is found from NVML's answers; it stays a usable GPU (whether it is
    *ready* is readiness's business, not detection's) and no reading failed."""
    read, said = FAILURES[name]
    inv = detect(library=use_profile(name))
    failing = [g.index for g in inv.gpus if read(g)]
    assert len(failing) == 1
    assert failing == [i for i, w in enumerate(fake_nvml.data(name)["gpus"]) if said(w)]
    assert all(g.usable and not g.signal_errors for g in inv.gpus)


def test_fabric_in_progress_after_boot_then_completed(
    tmp_path: Path, fake_nvml, use_profile
) -> None:
    """The HGX node's fabric trains for the first seconds after boot (the profile file's
    mtime) and is completed afterwards, without the profile changing."""
    node = tmp_path / "hgx.json"
    shutil.copy(fake_nvml.profile("h100x8-fabric-boot"), node)  # booted just now
    data = fake_nvml.data("h100x8-fabric-boot")
    done = min(e["after_ms"] for e in data["fabric_events"])
    lib = use_profile(node)
    booting = detect(library=lib)
    assert up_ms(node) < done, "the test machine took too long to detect"
    assert {g.fabric.state for g in booting.gpus if g.fabric} == {FabricState.IN_PROGRESS}
    assert len([g for g in booting.gpus if g.fabric]) == len(data["gpus"])
    expect_matches_profile(booting, data, up_ms=0)
    booted = time.time() - (done + 1000) / 1000  # as if it booted a second after completion
    os.utime(node, (booted, booted))
    trained = detect(library=lib)
    assert {g.fabric.state for g in trained.gpus if g.fabric} == {FabricState.COMPLETED}
    assert {g.fabric.status for g in trained.gpus if g.fabric} == {"NVML_SUCCESS"}
    expect_matches_profile(trained, data, up_ms=up_ms(node))


def test_gb10_memory_not_supported_is_a_usable_gpu(fake_nvml, use_profile) -> None:
    """DGX Spark: memory info answers NOT_SUPPORTED; the GPU stays usable with memory
    unknown and the node still gets its labels, all but gpu.memory (as GFD)."""
    from nodeagent.config import LabelsConfig
    from nodeagent.labels.registry import node_labels

    inv = detect(library=use_profile("gb10"))
    expect_matches_profile(inv, fake_nvml.data("gb10"))
    (g,) = inv.gpus
    assert g.usable and g.memory_total_mib is None and g.memory_used_mib is None
    assert g.signal_errors == ()
    assert g.architecture == "blackwell"
    labels = node_labels(inv, LabelsConfig())
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-GB10"
    assert labels["nvidia.com/gpu.count"] == "1"
    assert labels["nvidia.com/gpu.family"] == "blackwell"
    assert "nvidia.com/gpu.memory" not in labels


# The GPU fields each signal fills.
SIGNAL_FIELDS = {
    Signal.MEMORY: {"memory_total_mib", "memory_used_mib"},
    Signal.FABRIC: {"fabric"},
    Signal.REMAPPED_ROWS: {"remapped_rows"},
    Signal.RECOVERY_ACTION: {"recovery_action"},
    Signal.RETIRED_PAGES_PENDING: {"retired_pages_pending"},
    Signal.ECC_VOLATILE_UNCORRECTABLE: {"ecc_volatile_uncorrectable"},
    Signal.PERSISTENCE_MODE: {"persistence_mode"},
    Signal.UTILIZATION: {"utilization_gpu_pct"},
    Signal.TEMPERATURE: {"temperature_c"},
    Signal.POWER_USAGE: {"power_usage_w"},
    Signal.CLOCKS_EVENT_REASONS: {"clocks_event_reasons"},
}


@pytest.mark.parametrize("signal", list(Signal))
def test_a_failing_signal_is_recorded_and_the_gpu_kept(
    signal: Signal, tmp_path: Path, fake_nvml, use_profile
) -> None:
    data = fake_nvml.data("h100x8")
    data["gpus"][1]["retired_pages_pending"] = False  # H100 has none: every signal answers
    whole = detect(library=use_profile(node_file(tmp_path, data, "whole.json")))
    assert all(getattr(whole.gpus[1], f) is not None for f in SIGNAL_FIELDS[signal])
    data["gpus"][1]["call_errors"] = {NVML_FUNCTION[signal]: "NVML_ERROR_UNKNOWN"}
    inv = detect(library=use_profile(node_file(tmp_path, data)))
    g = inv.gpus[1]
    assert (g.state, g.usable) == (GPU_OK, True)
    assert g.signal_error(signal) == "NVML_ERROR_UNKNOWN"
    assert [e.signal for e in g.signal_errors] == [signal]
    assert inv.to_dict()["gpus"][1]["signal_errors"] == {signal.value: "NVML_ERROR_UNKNOWN"}
    # Only that signal's readings are gone; every other GPU is read as before.
    differs = {
        f.name
        for f in dataclasses.fields(GPU)
        if getattr(g, f.name) != getattr(whole.gpus[1], f.name)
    }
    assert differs == {"signal_errors", *SIGNAL_FIELDS[signal]}
    assert all(getattr(g, f) is None for f in SIGNAL_FIELDS[signal])
    assert inv.gpus[:1] + inv.gpus[2:] == whole.gpus[:1] + whole.gpus[2:]


def test_a_signal_saying_gpu_is_lost_loses_the_gpu(tmp_path: Path, fake_nvml, use_profile) -> None:
    data = fake_nvml.data("h100x8")
    data["gpus"][6]["call_errors"] = {"nvmlDeviceGetRemappedRows": "NVML_ERROR_GPU_IS_LOST"}
    inv = detect(library=use_profile(node_file(tmp_path, data)))
    assert [(g.index, g.state) for g in inv.gpus if not g.usable] == [(6, GPU_LOST)]
    assert inv.gpus[6].error == "NVML_ERROR_GPU_IS_LOST"


def test_an_unknown_recovery_action_field_error_is_recorded(
    tmp_path: Path, fake_nvml, use_profile
) -> None:
    """NVML reports a field's own failure in the value, not as the call's return."""
    data = fake_nvml.data("h100x8")
    data["gpus"][0]["recovery_action"] = "no_such_action"  # the fake answers UNKNOWN for it
    g = detect(library=use_profile(node_file(tmp_path, data))).gpus[0]
    assert g.usable and g.recovery_action is None
    assert g.signal_error(Signal.RECOVERY_ACTION) == "NVML_ERROR_UNKNOWN"


@pytest.mark.parametrize(
    ("version", "health", "mask"),
    [(3, FabricHealth.HEALTHY, 0x1A), (2, None, 0x1A), (1, None, None)],
)
def test_fabric_from_every_struct_version(
    version: int,
    health: Optional[FabricHealth],
    mask: Optional[int],
    tmp_path: Path,
    fake_nvml,
    use_profile,
) -> None:
    """v3 (health summary), an older driver's v2 (mask only), and the unversioned call of a
    driver without nvmlDeviceGetGpuFabricInfoV: the same state, status, clique, cluster."""
    data = fake_nvml.data("h100x8")
    data["fabric_info_version"] = version
    data["gpus"][0]["fabric"] = {
        "state": "completed",
        "status": "NVML_SUCCESS",
        "clique_id": 4026,
        "cluster_uuid": "9c6f5af3-53bf-49b5-a436-b66766c413c3",
        "health_mask": 0x1A,
        "health_summary": "healthy",
    }
    f = detect(library=use_profile(node_file(tmp_path, data))).gpus[0].fabric
    assert f is not None
    assert (f.state, f.status, f.clique_id) == (FabricState.COMPLETED, "NVML_SUCCESS", 4026)
    assert f.cluster_uuid == "9c6f5af3-53bf-49b5-a436-b66766c413c3"
    assert (f.health, f.health_mask) == (health, mask)


@pytest.mark.parametrize(
    ("newer", "signal"),
    [
        ("nvmlDeviceGetTemperatureV", Signal.TEMPERATURE),
        ("nvmlDeviceGetCurrentClocksEventReasons", Signal.CLOCKS_EVENT_REASONS),
    ],
)
def test_older_driver_without_the_newer_call(
    newer: str, signal: Signal, tmp_path: Path, fake_nvml, use_profile
) -> None:
    """A driver without the newer entry point (pynvml: FUNCTION_NOT_FOUND) is read through
    the deprecated one, with the same value."""
    data = fake_nvml.data("h100x8")
    data["gpus"][2]["call_errors"] = {newer: "NVML_ERROR_FUNCTION_NOT_FOUND"}
    inv = detect(library=use_profile(node_file(tmp_path, data)))
    expect_matches_profile(inv, data)
    assert inv.gpus[2].signal_error(signal) is None


def test_detect_json_shows_every_signal(tmp_path: Path, fake_nvml) -> None:
    """The CLI's documented JSON carries each signal; NOT_SUPPORTED is null."""
    node = tmp_path / "node.json"
    data = fake_nvml.data("h100x8-remap-pending")
    data["gpus"][7]["call_errors"] = {"nvmlDeviceGetPowerUsage": "NVML_ERROR_UNKNOWN"}
    node.write_text(json.dumps(data))
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "detect", "-o", "json"],
        cwd=REPO,
        env=fake_nvml.env(node),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for got, want in zip(doc["gpus"], data["gpus"]):
        health, measured = got["health"], got["measurements"]
        assert health["fabric"]["state"] == want["fabric"]["state"]
        assert health["fabric"]["status"] == want["fabric"]["status"]
        assert health["remapped_rows"] == want["remapped_rows"]
        assert health["recovery_action"] == want["recovery_action"]
        assert health["retired_pages_pending"] is None  # H100: not applicable
        assert health["ecc_volatile_uncorrectable"] == want["ecc_volatile_uncorrectable"]
        assert health["persistence_mode"] == want["persistence_mode"]
        assert measured["utilization_gpu_pct"] == want["utilization_gpu_pct"]
        assert measured["memory_used_mib"] == want["memory_used_mib"]
        assert measured["temperature_c"] == want["temperature_c"]
        assert measured["clocks_event_reasons"] == want["clocks_event_reasons"]
    assert [g["measurements"]["power_usage_w"] for g in doc["gpus"]] == [
        g["power_usage_mw"] / 1000 for g in data["gpus"][:7]
    ] + [None]
    assert [g["signal_errors"] for g in doc["gpus"]] == [{}] * 7 + [
        {"power_usage": "NVML_ERROR_UNKNOWN"}
    ]
    assert [g["state"] for g in doc["gpus"]] == ["ok"] * 8


def test_detect_json_gb10_memory_null_and_labels(tmp_path: Path, fake_nvml) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "detect", "-o", "json"],
        cwd=REPO,
        env=fake_nvml.env("gb10"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (g,) = doc["gpus"]
    assert (g["state"], g["memory_total_mib"], g["measurements"]["memory_used_mib"]) == (
        "ok",
        None,
        None,
    )
    assert g["signal_errors"] == {}
    assert doc["labels"]["nvidia.com/gpu.count"] == "1"
    assert "nvidia.com/gpu.memory" not in doc["labels"]
