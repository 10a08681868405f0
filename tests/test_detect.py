"""GPU detection: the real pynvml over the simulated libnvidia-ml.so.1.

Every expected value comes from the profile file itself (values read off real hardware),
never from a copy typed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nodeagent.gpu.arch import arch_family
from nodeagent.gpu.inventory import (
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_NO_GPU,
    STATE_NVML_ERROR,
    STATE_OK,
)
from nodeagent.gpu.nvml import detect
from nodeagent.paths import HostRoot

GPU_PROFILES = ["v100x8", "t4", "a100x8-mig", "h100x8", "mixed", "rtx4090", "titan-x-pascal"]


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_profile_detected_with_its_real_values(name: str, fake_nvml, use_profile) -> None:
    lib = use_profile(name)
    data = fake_nvml.data(name)
    inv = detect(library=lib)
    assert inv.state == STATE_OK
    assert inv.driver_version == data["driver_version"]
    cuda = data["cuda_driver_version"]
    assert inv.cuda_driver_version == f"{cuda // 1000}.{cuda % 1000 // 10}"
    assert inv.nvml_version == data["nvml_version"]
    assert len(inv.gpus) == len(data["gpus"])
    for g, want in zip(inv.gpus, data["gpus"]):
        assert g.state == "ok"
        assert g.name == want["name"]
        assert g.uuid == want["uuid"]
        assert g.pci_bus_id == want["pci_bus_id"]
        assert g.pci_device_id == f"0x{int(want['pci_device_id'], 16):08X}"
        assert g.memory_total_mib == want["memory_total_mib"]
        assert g.compute_capability == want["compute_capability"]
        assert g.architecture == want["architecture"]
        assert g.architecture == arch_family(g.compute_major, g.compute_minor)
        assert g.power_limit_w == want["power_limit_mw"] / 1000
        assert g.mig_capable is ("mig_mode" in want)
        if "mig_mode" in want:
            assert g.mig_mode_current == want["mig_mode"]["current"]
            assert g.mig_mode_pending == want["mig_mode"]["pending"]
        else:
            assert (g.mig_mode_current, g.mig_mode_pending) == (None, None)


def test_mig_devices(fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile("a100x8-mig"))
    data = fake_nvml.data("a100x8-mig")
    for g, want in zip(inv.gpus, data["gpus"]):
        expected = want.get("mig_devices", []) if want["mig_mode"]["current"] == "enabled" else []
        assert len(g.mig_devices) == len(expected)
        for m, w in zip(g.mig_devices, expected):
            assert m.name == w["name"]
            assert m.uuid == w["uuid"]
            assert m.profile == w["name"].rsplit(" ", 1)[1]
            assert m.gpu_instance_id == w["gpu_instance_id"]
            assert m.compute_instance_id == w["compute_instance_id"]
            assert m.memory_total_mib == w["memory_total_mib"]
            assert m.multiprocessor_count == w["multiprocessor_count"]
            assert m.gpu_instance_slices == w["gpu_instance_slices"]
    profiles = sorted({m.profile for g in inv.gpus for m in g.mig_devices if m.profile})
    assert profiles == ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]


def test_one_lost_gpu_others_still_reported(fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile("gpu-lost"))
    assert inv.state == STATE_OK
    lost = [g for g in inv.gpus if g.state == GPU_LOST]
    assert [g.index for g in lost] == [3]
    assert lost[0].error == "NVML_ERROR_GPU_IS_LOST"
    assert len(inv.healthy_gpus) == 7
    want = fake_nvml.data("gpu-lost")["gpus"]
    assert [g.uuid for g in inv.healthy_gpus] == [w["uuid"] for w in want if "error" not in w]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("driver-not-loaded", "NVML_ERROR_DRIVER_NOT_LOADED"),
        ("no-permission", "NVML_ERROR_NO_PERMISSION"),
    ],
)
def test_init_failures_are_states(name: str, error: str, use_profile) -> None:
    inv = detect(library=use_profile(name))
    assert inv.state == STATE_NVML_ERROR
    assert inv.error == error
    assert inv.message is not None
    assert error in inv.message
    assert inv.gpus == ()


def test_no_library_is_no_driver(tmp_path: Path) -> None:
    inv = detect(library=str(tmp_path / "libnvidia-ml.so.1"))
    assert inv.state == STATE_NO_DRIVER
    assert inv.message == f"no NVIDIA driver: {tmp_path / 'libnvidia-ml.so.1'} not found"


def test_zero_gpus(use_profile) -> None:
    inv = detect(library=use_profile("zero-gpus"))
    assert inv.state == STATE_NO_GPU
    assert inv.driver_version == "550.90.12"


def test_profile_reread_between_detections(tmp_path: Path, fake_nvml, use_profile) -> None:
    node = tmp_path / "node.json"
    shutil.copy(fake_nvml.profile("h100x8"), node)
    lib = use_profile(node)
    assert detect(library=lib).healthy_gpus[5].state == "ok"
    data = json.loads(node.read_text())
    data["gpus"][5]["error"] = "NVML_ERROR_GPU_IS_LOST"
    node.write_text(json.dumps(data))
    after = detect(library=lib)
    assert after.gpus[5].state == GPU_LOST
    assert len(after.healthy_gpus) == 7


def test_machine_from_dmi_under_root(tmp_path: Path, use_profile) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("PowerEdge XE9680\n")
    inv = detect(library=use_profile("h100x8"), root=HostRoot(tmp_path))
    assert inv.machine == "PowerEdge XE9680"
    assert detect(library=use_profile("h100x8"), root=HostRoot(tmp_path / "x")).machine is None


def test_unsupported_power_limit_is_none(tmp_path: Path, fake_nvml, use_profile) -> None:
    data = fake_nvml.data("rtx4090")
    del data["gpus"][0]["power_limit_mw"]
    node = tmp_path / "p.json"
    node.write_text(json.dumps(data))
    g = detect(library=use_profile(node)).gpus[0]
    assert g.state == "ok"
    assert g.power_limit_w is None
