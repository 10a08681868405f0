"""GPU detection: the real pynvml over the simulated libnvidia-ml.so.1.

Every expected value comes from the profile file itself (values read off real hardware),
never from a copy typed here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pynvml
import pytest

from nodeagent.gpu.arch import arch_family
from nodeagent.gpu.inventory import (
    GPU_ERROR,
    GPU_LOST,
    GPU_OK,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
    Inventory,
)
from nodeagent.gpu.nvml import cuda_version, detect, mig_profile
from nodeagent.paths import HostRoot
from tests.fakenvml.build import PROFILES

REPO = Path(__file__).resolve().parents[1]
ALL_PROFILES = sorted(p.stem for p in PROFILES.glob("*.json"))
REQUIRED = {
    "v100x8", "t4", "a100x8-mig", "h100x8", "mixed", "rtx4090", "titan-x-pascal",
    "no-permission", "driver-not-loaded", "gpu-lost", "zero-gpus",
}  # fmt: skip


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


def expect_matches_profile(inv: Inventory, data: dict[str, Any]) -> None:
    """``inv`` is exactly what NVML would report for the node ``data`` describes."""
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
        assert g.memory_total_mib == want["memory_total_mib"]
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


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_every_profile_detected_with_its_values(name: str, fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile(name))
    expect_matches_profile(inv, fake_nvml.data(name))


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
