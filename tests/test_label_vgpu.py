"""vGPU guests: detection through the real pynvml over the simulated libnvidia-ml.so.1
(profile ``grid-t4-16q``), the host driver read from PCI config space as GPU Feature
Discovery reads it (with GFD's own config spaces and expected values), the labels, and the
command line end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.config import LabelsConfig
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory, VirtualizationMode
from nodeagent.gpu.nvml import detect
from nodeagent.gpu.vgpu import host_driver, sysfs_address, vendor_capability
from nodeagent.host.paths import HostRoot
from nodeagent.labels.registry import node_labels
from nodeagent.labels.vgpu import profile

REPO = Path(__file__).resolve().parents[1]

# NVIDIA/k8s-device-plugin@1b826acc internal/vgpu/pciutil.go NewMockNvidiaPCI: the PCI
# config space of a T4 vGPU (10de:1eb8, subsystem 0x130f) and of a passed-through GPU.
# internal/vgpu/vgpu_test.go expects host driver "460.16", branch "r460_00", a 27-byte
# vendor capability (id 9) for the vGPU and a 20-byte one without the "VF" signature for
# the passed-through GPU.
GFD_VGPU_CONFIG = bytes.fromhex(
    "de10b81e0205ff06a100000300000000000000fc0c0000d000000000040000fa"
    "000000000000000000000000de100f1300000000d0000000000000000a010000"
    "000000000000000000000000000000000100000001000000ced6230000000000"
    "0000000000000000050081000000e0fe000000004e4000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000009681b564600163436302e3136000000"
    "00723436305f3030000000000000000000000000000000000000000000000000"
)
GFD_PASSTHROUGH_CONFIG = bytes.fromhex(
    "de108a1107041000a100000300f80000000000ec0c0000e0000000000c0000ea"
    "0000000001c1000000000000de101410000000ee600000000000000005010000"
    "de1014100000000000000000000000000100000001000000ced6230000000000"
    "0168030008000000057881000070e6fe000000000043000010b40200e18d6400"
    "10290000033d4510000001110000000000000000000000000000000013000000"
    "000000000e00000003003e000000000000000000090014010000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)


def test_gfd_vgpu_config_space_gives_gfds_host_driver() -> None:
    cap = vendor_capability(GFD_VGPU_CONFIG)
    assert cap is not None and len(cap) == 27 and cap[0] == 9
    assert host_driver(GFD_VGPU_CONFIG) == ("460.16", "r460_00")


def test_gfd_passthrough_config_space_is_no_vgpu() -> None:
    cap = vendor_capability(GFD_PASSTHROUGH_CONFIG)
    assert cap is not None and len(cap) == 20
    assert host_driver(GFD_PASSTHROUGH_CONFIG) is None


def patch(at: int, data: bytes) -> bytes:
    return GFD_VGPU_CONFIG[:at] + data + GFD_VGPU_CONFIG[at + len(data) :]


@pytest.mark.parametrize(
    "config",
    [
        GFD_VGPU_CONFIG[:64],  # what an unprivileged reader of sysfs gets
        b"",
        bytes(256),  # no capability list
        # The vGPU capability sits at 0xD0: id 9, next, length 27, "VF", then record 0.
        patch(0xD0, b"\x10\xd0"),  # not vendor-specific, and pointing at itself: a loop
        patch(0xD5, b"\x01\x00"),  # a record other than 0 with length 0
        patch(0xD2, b"\x10"),  # a capability too short for the record it holds
        patch(0xD3, b"VG"),  # no vGPU signature
    ],
)
def test_a_short_or_broken_config_space_gives_nothing(config: bytes) -> None:
    assert host_driver(config) is None


@pytest.mark.parametrize(
    ("bus_id", "address"),
    [("00000000:00:07.0", "0000:00:07.0"), ("00000001:1E:00.0", "0001:1e:00.0"), ("x", None)],
)
def test_sysfs_address(bus_id: str, address: str | None) -> None:
    assert sysfs_address(bus_id) == address


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("GRID T4-16Q", "16Q"),
        ("GRID P4-4Q", "4Q"),
        ("GRID T4-2B4", "2B4"),
        ("NVIDIA A10-24Q", "24Q"),
        ("NVIDIA A100-4-20C", "4-20C"),
        ("GRID RTX6000-24Q", "24Q"),
        ("Tesla T4", None),
        ("Tesla V100-SXM2-16GB", None),
        (None, None),
    ],
)
def test_vgpu_profile_in_a_name(name: str | None, want: str | None) -> None:
    assert profile(name) == want


def with_config_space(root: Path, bus: str, config: bytes) -> None:
    d = root / "sys/bus/pci/devices" / bus
    d.mkdir(parents=True)
    (d / "config").write_bytes(config)


def test_detect_a_vgpu_guest_through_pynvml(tmp_path: Path, fake_nvml, use_profile) -> None:
    data = fake_nvml.data("grid-t4-16q")
    with_config_space(tmp_path, "0000:00:07.0", GFD_VGPU_CONFIG)
    inv = detect(library=use_profile("grid-t4-16q"), root=HostRoot(tmp_path))
    (g,) = inv.gpus
    assert g.name == data["gpus"][0]["name"] == "GRID T4-16Q"
    assert g.virtualization_mode == VirtualizationMode.VGPU
    assert (g.vgpu_host_driver_version, g.vgpu_host_driver_branch) == ("460.16", "r460_00")
    assert g.power_limit_w is None  # a guest has no power readings
    labels = node_labels(inv, LabelsConfig(conventions=("ack", "gke")))
    assert labels["gpu-type"] == "T4"
    assert labels["nvidia.com/gpu.product"] == "GRID-T4-16Q"  # GFD's value for the name
    assert labels["nvidia.com/gpu.memory"] == "16384"
    assert labels["nvidia.com/vgpu.present"] == "true"
    assert labels["nvidia.com/vgpu.host-driver-version"] == "460.16"
    assert labels["nvidia.com/vgpu.host-driver-branch"] == "r460_00"
    assert labels["nodeagent.io/vgpu.profile"] == "16Q"
    assert labels["aliyun.accelerator/nvidia_name"] == "GRID-T4-16Q"  # ACK: nvidia-smi's name
    assert "cloud.google.com/gke-accelerator" not in labels  # a 16Q slice is no GKE T4


def test_a_guest_without_readable_config_space_still_says_vgpu(fake_nvml, use_profile) -> None:
    inv = detect(library=use_profile("grid-t4-16q"), root=HostRoot(Path("/nonexistent")))
    (g,) = inv.gpus
    assert g.vgpu_host_driver_version is None
    labels = node_labels(inv, LabelsConfig())
    assert labels["nvidia.com/vgpu.present"] == "true"
    assert "nvidia.com/vgpu.host-driver-version" not in labels


def test_bare_metal_is_no_vgpu_and_its_config_space_is_not_read(
    tmp_path: Path, fake_nvml, use_profile
) -> None:
    data = fake_nvml.data("t4")
    data["gpus"][0]["virtualization_mode"] = "none"
    node = tmp_path / "t4-bare.json"
    node.write_text(json.dumps(data))
    bus = sysfs_address(data["gpus"][0]["pci_bus_id"])
    assert bus
    with_config_space(tmp_path, bus, GFD_VGPU_CONFIG)  # would say vGPU if it were read
    inv = detect(library=use_profile(node), root=HostRoot(tmp_path))
    (g,) = inv.gpus
    assert g.virtualization_mode == VirtualizationMode.NONE
    assert g.vgpu_host_driver_version is None
    labels = node_labels(inv, LabelsConfig())
    assert labels["nvidia.com/vgpu.present"] == "false"
    assert not any(k.startswith("nodeagent.io/vgpu") for k in labels)


def test_no_answer_no_vgpu_label(fake_nvml, use_profile) -> None:
    # The t4 profile has no virtualization_mode: NVML answers NOT_SUPPORTED.
    inv = detect(library=use_profile("t4"))
    assert inv.gpus[0].virtualization_mode is None
    assert not any("vgpu" in k for k in node_labels(inv, LabelsConfig()))


def test_a_failing_virtualization_query_fails_like_any_identity_query(
    tmp_path: Path, fake_nvml, use_profile
) -> None:
    data = fake_nvml.data("grid-t4-16q")
    data["gpus"][0]["call_errors"] = {"nvmlDeviceGetVirtualizationMode": "NVML_ERROR_UNKNOWN"}
    node = tmp_path / "broken.json"
    node.write_text(json.dumps(data))
    (g,) = detect(library=use_profile(node)).gpus
    assert (g.state, g.error) == ("error", "NVML_ERROR_UNKNOWN")


def guest(index: int, name: str, version: str | None = "460.16") -> GPU:
    return GPU(index=index, name=name, memory_total_mib=16384, compute_major=7, compute_minor=5,
               virtualization_mode=VirtualizationMode.VGPU, vgpu_host_driver_version=version,
               vgpu_host_driver_branch="r460_00")  # fmt: skip


def test_mixed_vgpu_profiles_follow_the_mixed_node_rule() -> None:
    inv = Inventory(
        state=STATE_OK, gpus=(guest(0, "GRID T4-16Q"), guest(1, "GRID T4-8Q", "460.32"))
    )
    labels = node_labels(inv, LabelsConfig())
    assert labels["gpu-type"] == "T4"  # both are T4s
    assert labels["nodeagent.io/vgpu.profile"] == "mixed"
    assert labels["nvidia.com/vgpu.present"] == "true"
    assert "nvidia.com/vgpu.host-driver-version" not in labels  # not one value
    assert labels["nvidia.com/vgpu.host-driver-branch"] == "r460_00"


def test_detect_command_shows_the_vgpu(tmp_path: Path, fake_nvml) -> None:
    with_config_space(tmp_path, "0000:00:07.0", GFD_VGPU_CONFIG)
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    (tmp_path / "etc/nodeagent/config.yaml").write_text(
        "labels:\n  conventions: [ack, aks]\n  mig_strategy: single\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(tmp_path), "detect", "-o", "json"],
        capture_output=True, text=True, cwd=REPO, env=fake_nvml.env("grid-t4-16q"), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["gpus"][0]["virtualization"] == {
        "mode": "vgpu", "host_driver_version": "460.16", "host_driver_branch": "r460_00",
    }  # fmt: skip
    labels = doc["labels"]
    assert labels["kubernetes.azure.com/accelerator"] == "nvidia"
    assert labels["aliyun.accelerator/nvidia_count"] == "1"
    assert labels["nvidia.com/mig.strategy"] == "single"
    assert labels["nvidia.com/vgpu.present"] == "true"
