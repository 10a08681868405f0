"""GPU Feature Discovery parity, case by case: GFD's own test cases (NVIDIA/k8s-device-plugin
at 1b826acc, ``internal/lm/mig-strategy_test.go``, ``resource_test.go``, ``nvml_test.go``,
``docs/gpu-feature-discovery/README.md``) rebuilt as inventories, with GFD's expected values.

GFD's mocks (``internal/resource/testing``): a full GPU "MOCKMODEL" with 300 MiB and compute
capability 8.0; a MIG-enabled GPU reports compute capability 0.0; a MIG device
``NewMigDevice(gi, ci, gb)`` is profile ``<gi>g.<gb>gb`` with memory ``gb`` and 0 for every
other attribute unless given. Keys nodeagent does not set (``gpu.replicas``,
``gpu.sharing-strategy``: the device plugin's sharing config) are dropped from GFD's
expectations; every other difference is named where it occurs (docs/labels.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.config import MIG_STRATEGIES, LabelsConfig
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory, MigDevice
from nodeagent.kube.keys import is_valid_value, key_problem
from nodeagent.labels.registry import node_labels

NOT_OURS = {"nvidia.com/gpu.replicas", "nvidia.com/gpu.sharing-strategy"}
# GFD's resource labeller's keys (NewResourceLabeler's output, which its tests compare).
RESOURCE_RE = re.compile(
    r"nvidia\.com/(gpu\.(count|product|memory|family|compute\.(major|minor)|multiprocessors"
    r"|slices\.(gi|ci)|engines\.\w+)|mig\.strategy|mig-.+)"
)


def full_gpu(index: int = 0) -> GPU:
    return GPU(index=index, name="MOCKMODEL", memory_total_mib=300, compute_major=8,
               compute_minor=0, mig_capable=False)  # fmt: skip


def mig_device(gi: int, ci: int, gb: int, index: int = 0, **attrs: int) -> MigDevice:
    values: dict[str, Any] = dict(
        multiprocessor_count=0, shared_copy_engines=0, shared_decoders=0, shared_encoders=0,
        shared_jpegs=0, shared_ofas=0,
    )  # fmt: skip
    values.update(attrs)
    return MigDevice(index=index, uuid=f"MIG-{index}", name=f"MOCKMODEL MIG {gi}g.{gb}gb",
                     profile=f"{gi}g.{gb}gb", gpu_instance_id=index, compute_instance_id=0,
                     memory_total_mib=gb, memory_size_mb=gb, gpu_instance_slices=gi,
                     compute_instance_slices=ci, **values)  # fmt: skip


def mig_enabled_gpu(*migs: MigDevice, index: int = 0) -> GPU:
    return GPU(index=index, name="MOCKMODEL", memory_total_mib=300, compute_major=0,
               compute_minor=0, mig_capable=True, mig_mode_current="enabled",
               mig_mode_pending="enabled", mig_devices=migs)  # fmt: skip


def resource_labels(strategy: str, *gpus: GPU) -> dict[str, str]:
    inv = Inventory(state=STATE_OK, driver_version="400.300", cuda_driver_version="8.0",
                    gpus=gpus)  # fmt: skip
    labels = node_labels(inv, LabelsConfig(mig_strategy=strategy, simple=False))
    return {k: v for k, v in labels.items() if RESOURCE_RE.fullmatch(k)}


def gfd(expected: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in expected.items() if k not in NOT_OURS}


BASE = {
    "nvidia.com/gpu.compute.major": "8",
    "nvidia.com/gpu.compute.minor": "0",
    "nvidia.com/gpu.family": "ampere",
    "nvidia.com/gpu.replicas": "1",
    "nvidia.com/gpu.sharing-strategy": "none",
    "nvidia.com/gpu.memory": "300",
    "nvidia.com/gpu.product": "MOCKMODEL",
}
INVALID = {
    "nvidia.com/gpu.count": "0",
    "nvidia.com/gpu.replicas": "0",
    "nvidia.com/gpu.sharing-strategy": "",
    "nvidia.com/gpu.memory": "0",
    "nvidia.com/gpu.product": "MOCKMODEL-MIG-INVALID",
    "nvidia.com/mig.strategy": "single",
}
# GFD's full-GPU labels of the mock with compute capability 8.0; nodeagent leaves them out
# when another GPU (the MIG-enabled mock, 0.0) gave none (the mixed-node rule).
ARCH = ("nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor", "nvidia.com/gpu.family")


# --- TestMigStrategyNoneLabels ---------------------------------------------------------------


def test_none_no_devices_no_labels() -> None:
    inv = Inventory(state=STATE_OK, driver_version="400.300", gpus=())
    assert node_labels(inv, LabelsConfig(mig_strategy="none")) == {}


def test_none_single_full_gpu() -> None:
    assert resource_labels("none", full_gpu()) == gfd({**BASE, "nvidia.com/gpu.count": "1"})


def test_none_single_mig_device_no_sharing() -> None:
    # GFD: count 1, replicas 0, memory 300, product MOCKMODEL; no arch labels (CC 0.0).
    assert resource_labels("none", mig_enabled_gpu()) == gfd(
        {
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.replicas": "0",
            "nvidia.com/gpu.sharing-strategy": "none",
            "nvidia.com/gpu.memory": "300",
            "nvidia.com/gpu.product": "MOCKMODEL",
        }
    )


def test_none_multiple_mig_devices() -> None:
    got = resource_labels("none", mig_enabled_gpu(index=0), mig_enabled_gpu(index=1))
    assert got == gfd(
        {
            "nvidia.com/gpu.count": "2",
            "nvidia.com/gpu.memory": "300",
            "nvidia.com/gpu.product": "MOCKMODEL",
        }
    )


# --- TestMigStrategySingleLabels -------------------------------------------------------------


def test_single_non_mig_device() -> None:
    assert resource_labels("single", full_gpu()) == gfd(
        {**BASE, "nvidia.com/gpu.count": "1", "nvidia.com/mig.strategy": "single"}
    )


def test_single_multiple_non_mig_devices() -> None:
    assert resource_labels("single", full_gpu(0), full_gpu(1)) == gfd(
        {**BASE, "nvidia.com/gpu.count": "2", "nvidia.com/mig.strategy": "single"}
    )


MIG_100 = {
    "nvidia.com/gpu.sharing-strategy": "none",
    "nvidia.com/gpu.memory": "100",
    "nvidia.com/gpu.product": "MOCKMODEL-MIG-1g.100gb",
    "nvidia.com/mig.strategy": "single",
    "nvidia.com/gpu.slices.gi": "1",
    "nvidia.com/gpu.slices.ci": "2",
}


def test_single_one_mig_enabled_device() -> None:
    got = resource_labels("single", mig_enabled_gpu(mig_device(1, 2, 100)))
    assert got == gfd(
        {
            **MIG_100,
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.replicas": "1",
            "nvidia.com/gpu.multiprocessors": "0",
            "nvidia.com/gpu.engines.copy": "0",
            "nvidia.com/gpu.engines.decoder": "0",
            "nvidia.com/gpu.engines.encoder": "0",
            "nvidia.com/gpu.engines.jpeg": "0",
            "nvidia.com/gpu.engines.ofa": "0",
        }
    )


def test_single_multiple_mig_enabled_devices_with_attributes() -> None:
    attrs = dict(multiprocessor_count=12, shared_copy_engines=13, shared_decoders=14,
                 shared_encoders=15, shared_jpegs=16, shared_ofas=17)  # fmt: skip
    got = resource_labels(
        "single",
        mig_enabled_gpu(mig_device(1, 2, 100, **attrs), index=0),
        mig_enabled_gpu(mig_device(1, 2, 100, index=1, **attrs), index=1),
    )
    assert got == gfd(
        {
            **MIG_100,
            "nvidia.com/gpu.count": "2",
            "nvidia.com/gpu.multiprocessors": "12",
            "nvidia.com/gpu.engines.copy": "13",
            "nvidia.com/gpu.engines.decoder": "14",
            "nvidia.com/gpu.engines.encoder": "15",
            "nvidia.com/gpu.engines.jpeg": "16",
            "nvidia.com/gpu.engines.ofa": "17",
        }
    )


def test_single_empty_mig_device_is_invalid() -> None:
    assert resource_labels("single", mig_enabled_gpu()) == gfd(INVALID)


def test_single_two_profiles_is_invalid() -> None:
    gpu = mig_enabled_gpu(mig_device(1, 2, 100, index=0), mig_device(3, 4, 100, index=1))
    assert resource_labels("single", gpu) == gfd(INVALID)


def test_single_mig_enabled_and_disabled_is_invalid() -> None:
    got = resource_labels("single", mig_enabled_gpu(mig_device(1, 2, 100)), full_gpu(1))
    expected = gfd({**INVALID, **{k: BASE[k] for k in ARCH}})
    # Deviation: GFD keeps the full GPU's compute labels; the MIG-enabled mock gave 0.0, so
    # nodeagent has no value true of both GPUs (on real GPUs both give 8.0 and they agree).
    assert got == {k: v for k, v in expected.items() if k not in ARCH}


def test_single_enabled_disabled_and_empty_is_invalid() -> None:
    got = resource_labels(
        "single",
        mig_enabled_gpu(mig_device(1, 2, 100), index=0),
        full_gpu(1),
        mig_enabled_gpu(index=2),
    )
    expected = gfd({**INVALID, **{k: BASE[k] for k in ARCH}})
    assert got == {k: v for k, v in expected.items() if k not in ARCH}  # as above


def test_single_readme_example_eight_a100_in_7_slices() -> None:
    # docs/gpu-feature-discovery/README.md, "MIG 'single' strategy": 8 A100-SXM4-40GB each
    # in 7 x 1g.5gb: product A100-SXM4-40GB-MIG-1g.5gb, count 56, memory 5120,
    # multiprocessors 14, engines copy 1, decoder 1, encoder 1, jpeg 0, ofa 0.
    attrs = dict(multiprocessor_count=14, shared_copy_engines=1, shared_decoders=1,
                 shared_encoders=1, shared_jpegs=0, shared_ofas=0)  # fmt: skip
    gpus = tuple(
        GPU(index=i, name="A100-SXM4-40GB", memory_total_mib=40960, compute_major=8,
            compute_minor=0, mig_capable=True, mig_mode_current="enabled",
            mig_devices=tuple(
                MigDevice(index=j, uuid=f"MIG-{i}-{j}", name="A100-SXM4-40GB MIG 1g.5gb",
                          profile="1g.5gb", gpu_instance_id=j, compute_instance_id=0,
                          memory_total_mib=4864, memory_size_mb=5120, gpu_instance_slices=1,
                          compute_instance_slices=1, **attrs)
                for j in range(7)))
        for i in range(8)
    )  # fmt: skip
    got = resource_labels("single", *gpus)
    assert got["nvidia.com/gpu.product"] == "A100-SXM4-40GB-MIG-1g.5gb"
    assert got["nvidia.com/gpu.count"] == "56"
    assert got["nvidia.com/gpu.memory"] == "5120"  # GFD's memorySizeMB, not memory info
    assert got["nvidia.com/gpu.multiprocessors"] == "14"
    engines = ("copy", "decoder", "encoder", "jpeg", "ofa")
    assert [got[f"nvidia.com/gpu.engines.{e}"] for e in engines] == ["1", "1", "1", "0", "0"]


# --- mixed (TestMigResourceLabeler's "mig mixed" without sharing; GFD's naming) -----------


def test_mixed_per_profile_labels() -> None:
    got = resource_labels("mixed", mig_enabled_gpu(mig_device(1, 2, 300)))
    mig = {
        "nvidia.com/mig-1g.300gb.count": "1",
        "nvidia.com/mig-1g.300gb.memory": "300",
        "nvidia.com/mig-1g.300gb.product": "MOCKMODEL-MIG-1g.300gb",
        "nvidia.com/mig-1g.300gb.multiprocessors": "0",
        "nvidia.com/mig-1g.300gb.slices.gi": "1",
        "nvidia.com/mig-1g.300gb.slices.ci": "2",
        "nvidia.com/mig-1g.300gb.engines.copy": "0",
        "nvidia.com/mig-1g.300gb.engines.decoder": "0",
        "nvidia.com/mig-1g.300gb.engines.encoder": "0",
        "nvidia.com/mig-1g.300gb.engines.jpeg": "0",
        "nvidia.com/mig-1g.300gb.engines.ofa": "0",
    }
    # The full GPU labels stay (GFD counts a MIG-enabled GPU as one of its product).
    full = {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "300",
            "nvidia.com/gpu.product": "MOCKMODEL"}  # fmt: skip
    assert got == {**full, **mig, "nvidia.com/mig.strategy": "mixed"}


def test_mixed_counts_each_profile_and_names_me_profiles_like_gfd() -> None:
    def dev(j: int, profile: str, mem: int) -> MigDevice:
        return MigDevice(index=j, uuid=f"MIG-{j}", name=f"NVIDIA A100-SXM4-80GB MIG {profile}",
                         profile=profile, gpu_instance_id=j, compute_instance_id=0,
                         memory_total_mib=mem, memory_size_mb=mem)  # fmt: skip

    g0 = GPU(index=0, name="NVIDIA A100-SXM4-80GB", memory_total_mib=81920, compute_major=8,
             compute_minor=0, mig_capable=True, mig_mode_current="enabled",
             mig_devices=(dev(0, "3g.40gb", 40192), dev(1, "1g.10gb", 9856),
                          dev(2, "1g.10gb", 9856), dev(3, "1g.10gb+me", 9856)))  # fmt: skip
    g1 = GPU(index=1, name="NVIDIA A100-SXM4-80GB", memory_total_mib=81920, compute_major=8,
             compute_minor=0, mig_capable=True, mig_mode_current="enabled")  # fmt: skip
    got = resource_labels("mixed", g0, g1)
    assert got["nvidia.com/mig-1g.10gb.count"] == "2"
    assert got["nvidia.com/mig-3g.40gb.count"] == "1"
    assert got["nvidia.com/mig-1g.10gb.me.count"] == "1"  # GFD: "+" becomes "."
    assert got["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb.me"
    assert got["nvidia.com/mig-3g.40gb.memory"] == "40192"
    # Attributes NVML did not give are left out, never written as 0.
    assert "nvidia.com/mig-3g.40gb.engines.copy" not in got
    assert got["nvidia.com/gpu.count"] == "2"  # the empty MIG GPU is ignored, still counted


def test_mig_strategy_none_adds_no_mig_keys() -> None:
    got = resource_labels("none", mig_enabled_gpu(mig_device(1, 2, 100)))
    assert not any(k.startswith(("nvidia.com/mig.", "nvidia.com/mig-")) for k in got)


# --- TestSharingLabeler: mps.capable ---------------------------------------------------------


def mps(cfg: LabelsConfig, *gpus: GPU) -> str:
    inv = Inventory(state=STATE_OK, gpus=gpus)
    return node_labels(inv, cfg)["nvidia.com/mps.capable"]


def test_mps_capable_false_without_mps_sharing() -> None:
    # GFD: nil config, empty config, time-slicing, mps with 1 replica -> "false".
    assert mps(LabelsConfig(), full_gpu()) == "false"


def test_mps_capable_true_with_mps_sharing_and_no_mig() -> None:
    assert mps(LabelsConfig(mps_sharing=True), full_gpu()) == "true"


def test_mps_capable_false_with_mig_enabled() -> None:
    # GFD fails its labelling here (errMPSSharingNotSupported); nodeagent says false.
    assert mps(LabelsConfig(mps_sharing=True), mig_enabled_gpu(mig_device(1, 1, 10))) == "false"


# --- newMigCapabilityLabeler ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "capable"),
    [
        ((full_gpu(),), "false"),
        ((full_gpu(0), full_gpu(1)), "false"),
        ((mig_enabled_gpu(),), "true"),
        ((full_gpu(0), mig_enabled_gpu(index=1)), "true"),
    ],
)
def test_mig_capable(gpus: tuple[GPU, ...], capable: str) -> None:
    inv = Inventory(state=STATE_OK, gpus=gpus)
    assert node_labels(inv, LabelsConfig())["nvidia.com/mig.capable"] == capable


# --- no placeholders where NVML gives nothing (newArchitectureLabels, GetTotalMemoryMiB) ---


def test_compute_capability_zero_and_memory_zero_leave_the_keys_out() -> None:
    g = GPU(index=0, name="MOCKMODEL", memory_total_mib=0, compute_major=0, compute_minor=0)
    labels = node_labels(Inventory(state=STATE_OK, gpus=(g,)), LabelsConfig())
    for key in ("gpu.memory", "gpu.family", "gpu.compute.major", "gpu.compute.minor"):
        assert f"nvidia.com/{key}" not in labels, key
    assert labels["nvidia.com/gpu.product"] == "MOCKMODEL"


def test_unknown_family_is_undefined_like_gfd() -> None:
    # getArchFamily: a major version it does not know (not 0) is "undefined".
    g = GPU(index=0, name="MOCKMODEL", memory_total_mib=300, compute_major=11, compute_minor=0)
    labels = node_labels(Inventory(state=STATE_OK, gpus=(g,)), LabelsConfig())
    assert labels["nvidia.com/gpu.family"] == "undefined"


def test_rtx_pro_6000_blackwell() -> None:
    g = GPU(index=0, name="NVIDIA RTX PRO 6000 Blackwell Server Edition",
            compute_major=12, compute_minor=0)  # fmt: skip
    labels = node_labels(Inventory(state=STATE_OK, gpus=(g,)), LabelsConfig())
    assert labels["gpu-type"] == "RTX-PRO-6000"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"
    assert labels["nvidia.com/gpu.family"] == "blackwell"


# --- every strategy, any MIG layout: valid keys and values --------------------------------

_profiles = st.sampled_from(
    ["1g.10gb", "1g.10gb+me", "2g.20gb", "3g.40gb", "1c.3g.40gb", "7g.80gb"]
)


@given(
    layout=st.lists(
        st.tuples(
            st.booleans(),
            st.lists(_profiles, max_size=4),
            st.one_of(st.none(), st.text(max_size=70)),
        ),
        min_size=1,
        max_size=4,
    ),
    strategy=st.sampled_from(MIG_STRATEGIES),
    attr=st.one_of(st.none(), st.integers(0, 200)),
)
@settings(max_examples=300)
def test_every_mig_label_is_valid(layout, strategy, attr) -> None:
    gpus = tuple(
        GPU(index=i, name=name, memory_total_mib=81920, compute_major=8, compute_minor=0,
            mig_capable=True, mig_mode_current="enabled" if on else "disabled",
            mig_devices=tuple(
                MigDevice(index=j, uuid="MIG-x", name=f"x MIG {p}", profile=p,
                          gpu_instance_id=j, compute_instance_id=0, memory_total_mib=9856,
                          memory_size_mb=attr, multiprocessor_count=attr, shared_ofas=attr)
                for j, p in enumerate(profiles)) if on else ())
        for i, (on, profiles, name) in enumerate(layout)
    )  # fmt: skip
    labels = node_labels(Inventory(state=STATE_OK, gpus=gpus), LabelsConfig(mig_strategy=strategy))
    for k, v in labels.items():
        assert key_problem(k) is None, k
        assert is_valid_value(v), (k, v)
    if strategy == "none":
        assert "nvidia.com/mig.strategy" not in labels
    else:
        assert labels["nvidia.com/mig.strategy"] == strategy


# --- through the real pynvml over the simulated NVML (tests/fakenvml) ----------------------


def test_mig_strategies_on_the_simulated_a100_node(tmp_path, fake_nvml, use_profile) -> None:
    from nodeagent.gpu.nvml import detect

    data = fake_nvml.data("a100x8-mig")
    # Engine counts are inputs of this test (the profile leaves them to the default 0).
    for g in data["gpus"]:
        for m in g.get("mig_devices", []):
            m.update(shared_copy_engines=1, shared_decoders=0, shared_jpegs=0, shared_ofas=0)
    node = tmp_path / "a100-engines.json"
    node.write_text(json.dumps(data))
    inv = detect(library=use_profile(node))
    want: dict[str, list[dict[str, Any]]] = {}
    for g in data["gpus"]:
        if g["mig_mode"]["current"] == "enabled":
            for m in g["mig_devices"]:
                want.setdefault(m["name"].rsplit(" MIG ", 1)[1], []).append(m)

    mixed = resource_labels("mixed", *inv.gpus)
    assert mixed["nvidia.com/mig.strategy"] == "mixed"
    assert mixed["nvidia.com/gpu.count"] == "8"  # MIG-enabled GPUs still count, as in GFD
    for profile, devices in want.items():
        key = f"nvidia.com/mig-{profile}"
        assert mixed[f"{key}.count"] == str(len(devices))
        assert mixed[f"{key}.memory"] == str(devices[0]["memory_total_mib"])
        assert mixed[f"{key}.multiprocessors"] == str(devices[0]["multiprocessor_count"])
        assert mixed[f"{key}.slices.gi"] == str(devices[0]["gpu_instance_slices"])
        assert mixed[f"{key}.slices.ci"] == str(devices[0]["compute_instance_slices"])
        assert mixed[f"{key}.engines.copy"] == "1"
        assert mixed[f"{key}.product"] == f"NVIDIA-A100-SXM4-80GB-MIG-{profile}"

    # Half the GPUs in MIG, several profiles: "single" cannot describe it, GFD's guard.
    single = resource_labels("single", *inv.gpus)
    assert single["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB-MIG-INVALID"
    assert (single["nvidia.com/gpu.count"], single["nvidia.com/gpu.memory"]) == ("0", "0")
