"""The label set: GFD-compatible values, the operators' conventions, validity, mixed nodes.

labels.node_labels is a pure function of an Inventory, so these tests build inventories
directly from real hardware values (tests/data/real-gpus.json, from ../shared/); the NVML path
that produces inventories is tested in test_detect.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.config import FieldError, LabelsConfig
from nodeagent.gpu.inventory import (
    GPU,
    GPU_LOST,
    STATE_NO_DRIVER,
    STATE_OK,
    Inventory,
    MigDevice,
)
from nodeagent.kube.keys import is_valid_value, key_problem, label_key_problem, value_problem
from nodeagent.labels.registry import node_labels
from nodeagent.labels.values import sanitize_value

# Real values read off hardware, with their sources (tests/data/real-gpus.README.md).
REAL_GPUS = Path(__file__).parent / "data" / "real-gpus.json"
REAL = {g["name"]: g for g in json.loads(REAL_GPUS.read_text())}


def real(name: str) -> dict:
    return REAL[name]


def gpu(name: str, index: int = 0, **kw: object) -> GPU:
    r = real(name)
    major, minor = (int(x) for x in r["compute_capability"].split("."))
    fields: dict = dict(
        index=index,
        name=name,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        memory_total_mib=r["memory_total_mib"],
        compute_major=major,
        compute_minor=minor,
        mig_capable=bool(r["mig_capable"]),
    )
    fields.update(kw)
    return GPU(**fields)  # type: ignore[arg-type]


def node(*gpus: GPU, driver: str = "550.127.05", cuda: str = "12.4", machine: str | None = None):
    return Inventory(
        state=STATE_OK,
        driver_version=driver,
        cuda_driver_version=cuda,
        nvml_version=f"12.{driver}",
        gpus=gpus,
        machine=machine,
    )


DEFAULT = LabelsConfig()


def test_v100_node_has_gfd_values() -> None:
    inv = node(
        *(gpu("Tesla V100-SXM2-16GB", i) for i in range(8)),
        machine="PowerEdge C4140",
    )
    labels = node_labels(inv, DEFAULT)
    assert labels == {
        "gpu": "true",
        "gpu-type": "V100",
        "nvidia.com/cuda.driver-version.full": "550.127.05",
        "nvidia.com/cuda.driver-version.major": "550",
        "nvidia.com/cuda.driver-version.minor": "127",
        "nvidia.com/cuda.driver-version.revision": "05",
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.driver.minor": "127",
        "nvidia.com/cuda.driver.rev": "05",
        "nvidia.com/cuda.runtime-version.full": "12.4",
        "nvidia.com/cuda.runtime-version.major": "12",
        "nvidia.com/cuda.runtime-version.minor": "4",
        "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/cuda.runtime.minor": "4",
        "nvidia.com/gpu.compute.major": "7",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.family": "volta",
        "nvidia.com/gpu.machine": "PowerEdge-C4140",
        "nvidia.com/gpu.memory": "16384",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB",
        "nvidia.com/mig.capable": "false",
        "nvidia.com/mps.capable": "false",
    }


@pytest.mark.parametrize(
    ("name", "product", "gpu_type", "family"),
    [
        ("Tesla T4", "Tesla-T4", "T4", "turing"),
        ("NVIDIA A10", "NVIDIA-A10", "A10", "ampere"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB", "A100", "ampere"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3", "H100", "hopper"),
        ("NVIDIA H200", "NVIDIA-H200", "H200", "hopper"),
        ("NVIDIA L40S", "NVIDIA-L40S", "L40S", "ada-lovelace"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA-GeForce-RTX-4090", "RTX-4090", "ada-lovelace"),
        ("Tesla P40", "Tesla-P40", "P40", "pascal"),
        ("NVIDIA GeForce RTX 3090", "NVIDIA-GeForce-RTX-3090", "RTX-3090", "ampere"),
    ],
)
def test_product_type_and_family(name: str, product: str, gpu_type: str, family: str) -> None:
    labels = node_labels(node(gpu(name)), DEFAULT)
    assert labels["nvidia.com/gpu.product"] == product
    assert labels["gpu-type"] == gpu_type
    assert labels["nvidia.com/gpu.family"] == family
    assert labels["nvidia.com/gpu.memory"] == str(real(name)["memory_total_mib"])


def test_titan_x_pascal_gets_a_valid_product_unlike_gfd() -> None:
    # k8s-device-plugin#514: GFD produced "NVIDIA-TITAN-X-(Pascal)", which the API rejects.
    g = GPU(index=0, name="NVIDIA TITAN X (Pascal)", memory_total_mib=12196,
            compute_major=6, compute_minor=1)  # fmt: skip
    labels = node_labels(node(g), DEFAULT)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-TITAN-X-Pascal"
    assert labels["gpu-type"] == "TITAN-X"


def test_mixed_node_only_says_what_is_true_of_every_gpu() -> None:
    inv = node(gpu("Tesla T4", 0), gpu("Tesla T4", 1), gpu("NVIDIA A10", 2))
    labels = node_labels(inv, DEFAULT)
    assert labels["nvidia.com/gpu.product"] == "mixed"
    assert labels["gpu-type"] == "mixed"
    assert labels["nvidia.com/gpu.count"] == "3"
    assert labels["nvidia.com/gpu.memory"] == "15360"  # the T4's: every GPU has at least this
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (
        "7",
        "5",
    )
    assert labels["nvidia.com/gpu.family"] == "turing"
    assert labels["nodeagent.io/gpu.mixed"] == "true"
    assert labels["nodeagent.io/gpu.count.Tesla-T4"] == "2"
    assert labels["nodeagent.io/gpu.count.NVIDIA-A10"] == "1"


def test_mixed_rule_is_deterministic_whatever_the_gpu_order() -> None:
    a = node(gpu("Tesla T4", 0), gpu("NVIDIA A10", 1), gpu("Tesla T4", 2))
    b = node(gpu("NVIDIA A10", 0), gpu("Tesla T4", 1), gpu("Tesla T4", 2))
    assert node_labels(a, DEFAULT) == node_labels(b, DEFAULT)
    assert list(node_labels(a, DEFAULT)) == sorted(node_labels(a, DEFAULT))


def test_lost_gpu_is_not_counted_and_is_reported() -> None:
    gpus = [gpu("NVIDIA H100 80GB HBM3", i) for i in range(8)]
    gpus[3] = GPU(index=3, state=GPU_LOST, error="NVML_ERROR_GPU_IS_LOST")
    labels = node_labels(node(*gpus), DEFAULT)
    assert labels["nvidia.com/gpu.count"] == "7"
    assert labels["nodeagent.io/gpu.unhealthy"] == "1"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"


def test_all_gpus_lost_gives_no_gpu_labels() -> None:
    inv = node(GPU(index=0, state=GPU_LOST, error="NVML_ERROR_GPU_IS_LOST"))
    cfg = LabelsConfig(static={"train": "true"})
    assert node_labels(inv, cfg) == {"train": "true"}


def test_no_driver_keeps_only_static_labels() -> None:
    inv = Inventory(state=STATE_NO_DRIVER, message="no NVIDIA driver")
    assert node_labels(inv, LabelsConfig(static={"notebook": "true"})) == {"notebook": "true"}


def test_mig_devices_are_counted_per_profile() -> None:
    def mig(i: int, profile: str, mem: int) -> MigDevice:
        return MigDevice(
            index=i,
            uuid=f"MIG-{i}",
            name=f"NVIDIA A100-SXM4-80GB MIG {profile}",
            profile=profile,
            gpu_instance_id=i,
            compute_instance_id=0,
            memory_total_mib=mem,
        )

    g0 = gpu(
        "NVIDIA A100-SXM4-80GB",
        0,
        mig_mode_current="enabled",
        mig_mode_pending="enabled",
        mig_devices=(mig(0, "3g.40gb", 40192), mig(1, "1g.10gb", 9856), mig(2, "1g.10gb", 9856)),
    )
    g1 = gpu("NVIDIA A100-SXM4-80GB", 1, mig_mode_current="disabled", mig_mode_pending="disabled")
    labels = node_labels(node(g0, g1), DEFAULT)
    assert labels["nvidia.com/mig.capable"] == "true"
    assert labels["nodeagent.io/mig.enabled"] == "true"
    assert labels["nodeagent.io/mig-1g.10gb.count"] == "2"
    assert labels["nodeagent.io/mig-3g.40gb.count"] == "1"


def test_config_switches_families_and_skip_and_static() -> None:
    inv = node(gpu("Tesla T4"))
    only_simple = node_labels(inv, LabelsConfig(gfd=False, static={"service": "true"}))
    assert only_simple == {"gpu": "true", "gpu-type": "T4", "service": "true"}
    only_gfd = node_labels(inv, LabelsConfig(simple=False, skip=("nvidia.com/gpu.machine",)))
    assert "gpu" not in only_gfd
    assert "nvidia.com/gpu.machine" not in only_gfd
    assert only_gfd["nvidia.com/gpu.product"] == "Tesla-T4"


def test_static_labels_are_set_as_given_and_win_over_derived_ones() -> None:
    inv = node(gpu("Tesla T4"))
    static = {"nvidia.com/gpu.product": "custom-T4", "empty": "", "example.com/pool": "a"}
    labels = node_labels(inv, LabelsConfig(static=static))
    assert {k: labels[k] for k in static} == static


@pytest.mark.parametrize("value", ["not valid!", "-x", "x-", "a b", "x" * 64, "ünï"])
def test_an_invalid_static_value_never_reaches_node_labels(value: str) -> None:
    # The config refuses it (with its line when loaded from the file) instead of
    # node_labels dropping it silently.
    with pytest.raises(FieldError) as e:
        LabelsConfig(static={"pool": value})
    assert (e.value.field, e.value.at) == ("static", "pool")


def test_own_labels_use_the_configured_prefix() -> None:
    inv = node(gpu("Tesla T4", 0), gpu("NVIDIA A100-SXM4-80GB", 1))
    labels = node_labels(inv, LabelsConfig(prefix="gpu.example.com"))
    assert labels["gpu.example.com/gpu.mixed"] == "true"
    assert not any(k.startswith("nodeagent.io/") for k in labels)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", None),
        ("true", None),
        ("a.b_c-d", None),
        ("x" * 63, None),
        ("x" * 64, "a label value must be at most 63 characters"),
        ("-a", "a label value must be empty or alphanumeric at both ends"),
        ("a b", "a label value must be empty or alphanumeric at both ends"),
        ("a/b", "a label value must be empty or alphanumeric at both ends"),
        ("true\n", "a label value must be empty or alphanumeric at both ends"),
    ],
)
def test_value_problem(value: str, problem: str | None) -> None:
    got = value_problem(value)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith(problem)
    assert is_valid_value(value) is (problem is None)


def test_machine_unknown_like_gfd_when_dmi_unreadable() -> None:
    assert node_labels(node(gpu("Tesla T4")), DEFAULT)["nvidia.com/gpu.machine"] == "unknown"


def test_two_part_driver_version_has_empty_revision_like_gfd() -> None:
    labels = node_labels(node(gpu("Tesla P40"), driver="375.26", cuda=""), DEFAULT)
    assert labels["nvidia.com/cuda.driver-version.revision"] == ""
    assert labels["nvidia.com/cuda.driver.rev"] == ""
    assert "nvidia.com/cuda.runtime-version.full" not in labels


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tesla V100-SXM2-16GB", "Tesla-V100-SXM2-16GB"),
        ("NVIDIA TITAN X (Pascal)", "NVIDIA-TITAN-X-Pascal"),
        ("  spaced   out  ", "spaced-out"),
        ("a/b\\c", "abc"),
        ("GPU ünïcødé", "GPU-ncd"),
        ("", None),
        ("()", None),
        ("---", None),
        ("x" * 200, "x" * 63),
        ("a" * 62 + "--b", "a" * 62),
    ],
)
def test_sanitize_value(raw: str, expected: str | None) -> None:
    assert sanitize_value(raw) == expected


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_sanitize_never_gives_an_invalid_value(raw: str) -> None:
    v = sanitize_value(raw)
    assert v is None or (v != "" and is_valid_value(v))


@given(
    names=st.lists(st.one_of(st.none(), st.text(max_size=120)), min_size=1, max_size=8),
    machine=st.one_of(st.none(), st.text(max_size=300)),
    driver=st.one_of(st.none(), st.text(max_size=30), st.just("550.127.05")),
    mem=st.one_of(st.none(), st.integers(0, 10**6)),
)
@settings(max_examples=300)
def test_every_label_is_valid_for_the_api_server(names, machine, driver, mem) -> None:
    gpus = tuple(
        GPU(index=i, name=n, memory_total_mib=mem, compute_major=8, compute_minor=0)
        for i, n in enumerate(names)
    )
    inv = Inventory(state=STATE_OK, driver_version=driver, cuda_driver_version="12.4",
                    gpus=gpus, machine=machine)  # fmt: skip
    for k, v in node_labels(inv, DEFAULT).items():
        assert key_problem(k) is None, k
        assert is_valid_value(v), (k, v)
        assert label_key_problem(k) is None, k


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("nvidia.com/gpu.product", True),
        ("gpu", True),
        ("example.com/pool", True),
        ("node.kubernetes.io/gpu", True),
        ("kubelet.kubernetes.io/x", True),
        ("topology.kubernetes.io/zone", True),
        ("kubernetes.io/hostname", True),
        ("kubernetes.io/gpu", False),
        ("node-role.kubernetes.io/gpu", False),
        ("k8s.io/x", False),
        ("foo.k8s.io/x", False),
        ("node-restriction.kubernetes.io/gpu", False),
        ("a.node-restriction.kubernetes.io/gpu", False),
        ("Bad_Domain/x", False),
        ("x/", False),
        ("/x", False),
        ("-x", False),
        ("a" * 64, False),
        ("gpu\n", False),
        ("example.com\n/x", False),
    ],
)
def test_label_key_problem(key: str, allowed: bool) -> None:
    assert (label_key_problem(key) is None) is allowed


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("Quadro RTX 8000", "RTX-8000"),
        ("NVIDIA TITAN X (Pascal)", "TITAN-X"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000"),
        ("GRID T4-16Q", "T4"),
        ("GRID P4-4Q", "P4"),
        ("NVIDIA A10-24Q", "A10"),
        ("", None),
        (None, None),
    ],
)
def test_short_model(name: str | None, model: str | None) -> None:
    from nodeagent.gpu.arch import short_model

    assert short_model(name) == model
