"""Cloud label conventions (``labels.conventions``): the issue's examples, each cloud's
table, no label for a model a table does not know, the mixed-node rule, valid values.

Inventories are built from real hardware values (tests/data/real-gpus.json); the NVML path
that produces them is tested in test_detect.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.config import LABEL_CONVENTIONS, FieldError, LabelsConfig
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory
from nodeagent.kube.keys import is_valid_value, key_problem, label_key_problem
from nodeagent.labels import clouds
from nodeagent.labels.registry import node_labels

REAL = {
    g["name"]: g
    for g in json.loads((Path(__file__).parent / "data" / "real-gpus.json").read_text())
}
ALL = LabelsConfig(conventions=LABEL_CONVENTIONS)


def gpu(name: str, index: int = 0, **kw: object) -> GPU:
    r = REAL.get(name)
    fields: dict = {"index": index, "name": name}
    if r:
        major, minor = (int(x) for x in r["compute_capability"].split("."))
        fields.update(
            memory_total_mib=r["memory_total_mib"], compute_major=major, compute_minor=minor
        )
    fields.update(kw)
    return GPU(**fields)  # type: ignore[arg-type]


def node(*gpus: GPU) -> Inventory:
    return Inventory(state=STATE_OK, driver_version="580.126.09", cuda_driver_version="13.0",
                     gpus=gpus)  # fmt: skip


def cloud_labels(inv: Inventory, *conventions: str) -> dict[str, str]:
    """Only what the conventions add to the node's labels."""
    base = node_labels(inv, LabelsConfig())
    with_clouds = node_labels(inv, LabelsConfig(conventions=conventions))
    return {k: v for k, v in with_clouds.items() if k not in base}


def test_the_issue_t4_examples() -> None:
    t4 = node(gpu("Tesla T4"))
    assert cloud_labels(t4, "ack", "jdcloud", "gke", "eks") == {
        "aliyun.accelerator/nvidia_name": "Tesla-T4",
        "aliyun.accelerator/nvidia_count": "1",
        "aliyun.accelerator/nvidia_mem": f"{REAL['Tesla T4']['memory_total_mib']}MiB",
        "jdcloud.com/jke-accelerator": "nvidia-tesla-t4",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
        "k8s.amazonaws.com/accelerator": "nvidia-tesla-t4",
    }


def test_the_issue_h100_examples() -> None:
    h100 = node(*(gpu("NVIDIA H100 80GB HBM3", i) for i in range(8)))
    labels = cloud_labels(h100, "ack", "gke")
    assert labels["aliyun.accelerator/nvidia_name"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["aliyun.accelerator/nvidia_count"] == "8"
    assert labels["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"


def test_the_issue_v100_examples() -> None:
    v100 = node(*(gpu("Tesla V100-SXM2-16GB", i) for i in range(8)))
    labels = cloud_labels(v100, "jdcloud", "gke")
    assert labels == {
        "jdcloud.com/jke-accelerator": "nvidia-tesla-v100",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-v100",
    }


def test_ack_values_as_seen_on_ack_nodes() -> None:
    # Real ACK node labels: nvidia_name=NVIDIA-A10 (gn7i), Tesla-P4 with nvidia_mem=7611MiB.
    a10 = cloud_labels(node(gpu("NVIDIA A10")), "ack")
    assert a10["aliyun.accelerator/nvidia_name"] == "NVIDIA-A10"
    p4 = cloud_labels(node(gpu("Tesla P4", memory_total_mib=7611)), "ack")
    assert p4 == {
        "aliyun.accelerator/nvidia_name": "Tesla-P4",
        "aliyun.accelerator/nvidia_count": "1",
        "aliyun.accelerator/nvidia_mem": "7611MiB",
    }


@pytest.mark.parametrize(
    ("name", "gke"),
    [
        ("Tesla K80", "nvidia-tesla-k80"),
        ("Tesla P4", "nvidia-tesla-p4"),
        ("Tesla P100-PCIE-16GB", "nvidia-tesla-p100"),
        ("Tesla V100-SXM2-16GB", "nvidia-tesla-v100"),
        ("Tesla V100-SXM2-32GB", "nvidia-tesla-v100"),
        ("Tesla T4", "nvidia-tesla-t4"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-tesla-a100"),
        ("A100-SXM4-40GB", "nvidia-tesla-a100"),  # drivers before R450 drop "NVIDIA "
        ("NVIDIA A100-SXM4-80GB", "nvidia-a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "nvidia-a100-80gb"),
        ("NVIDIA L4", "nvidia-l4"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb"),
        ("NVIDIA H200", "nvidia-h200-141gb"),
        ("NVIDIA B200", "nvidia-b200"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "nvidia-rtx-pro-6000"),
    ],
)
def test_gke_and_eks_tables(name: str, gke: str) -> None:
    labels = cloud_labels(node(gpu(name)), "gke", "eks")
    assert labels == {"cloud.google.com/gke-accelerator": gke, "k8s.amazonaws.com/accelerator": gke}


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA A10",  # no GKE type; on AWS it is the A10G, which no table names either
        "NVIDIA A10G",
        "NVIDIA L40S",
        "NVIDIA H100 PCIe",  # GKE offers only the SXM H100
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GB10",
        "GRID T4-16Q",  # a vGPU slice is not the GPU a cloud's T4 node pool gives
        "Tesla T4 (custom)",
    ],
)
def test_a_model_no_table_knows_gets_no_label(name: str) -> None:
    labels = cloud_labels(node(gpu(name, memory_total_mib=1)), "gke", "eks", "jdcloud")
    assert labels == {}


def test_jdcloud_table() -> None:
    assert cloud_labels(node(gpu("Tesla P40")), "jdcloud") == {
        "jdcloud.com/jke-accelerator": "nvidia-tesla-p40"
    }
    assert cloud_labels(node(gpu("NVIDIA A100-SXM4-80GB")), "jdcloud") == {}


def test_aks_says_nvidia_for_any_nvidia_gpu_even_mixed() -> None:
    assert cloud_labels(node(gpu("Tesla T4"), gpu("NVIDIA A10", 1)), "aks") == {
        "kubernetes.azure.com/accelerator": "nvidia"
    }


def test_mixed_node_gets_no_model_label_but_counts_and_lower_bound_memory() -> None:
    mixed = node(gpu("Tesla T4", 0), gpu("Tesla T4", 1), gpu("NVIDIA A10", 2))
    labels = cloud_labels(mixed, *LABEL_CONVENTIONS)
    assert labels == {
        "aliyun.accelerator/nvidia_count": "3",
        "aliyun.accelerator/nvidia_mem": f"{REAL['Tesla T4']['memory_total_mib']}MiB",
        "kubernetes.azure.com/accelerator": "nvidia",
    }


def test_mixed_node_rule_does_not_depend_on_gpu_order() -> None:
    a = node(gpu("Tesla T4", 0), gpu("NVIDIA A10", 1))
    b = node(gpu("NVIDIA A10", 0), gpu("Tesla T4", 1))
    assert node_labels(a, ALL) == node_labels(b, ALL)


def test_two_names_one_gke_type_is_not_mixed() -> None:
    # Both are V100s to GKE: the label is true of every GPU.
    inv = node(gpu("Tesla V100-SXM2-16GB", 0), gpu("Tesla V100-SXM2-32GB", 1))
    labels = cloud_labels(inv, "gke", "ack")
    assert labels["cloud.google.com/gke-accelerator"] == "nvidia-tesla-v100"
    assert "aliyun.accelerator/nvidia_name" not in labels  # ACK's name is per product


def test_memory_unknown_leaves_ack_mem_out() -> None:
    labels = cloud_labels(node(gpu("NVIDIA GB10", memory_total_mib=None)), "ack")
    assert labels == {"aliyun.accelerator/nvidia_name": "NVIDIA-GB10",
                      "aliyun.accelerator/nvidia_count": "1"}  # fmt: skip


def test_default_is_no_convention_and_skip_wins() -> None:
    inv = node(gpu("Tesla T4"))
    assert not any("aliyun" in k or "google" in k for k in node_labels(inv, LabelsConfig()))
    cfg = LabelsConfig(conventions=("gke",), skip=("cloud.google.com/gke-accelerator",))
    assert "cloud.google.com/gke-accelerator" not in node_labels(inv, cfg)


def test_no_healthy_gpu_no_cloud_label() -> None:
    inv = Inventory(state=STATE_OK, gpus=(GPU(index=0, state="lost"),))
    assert node_labels(inv, ALL) == {}


def test_config_knows_every_convention_and_refuses_others() -> None:
    assert set(LABEL_CONVENTIONS) == {c.value for c in clouds.Convention}
    with pytest.raises(FieldError) as e:
        LabelsConfig(conventions=("gke", "azure"))
    assert (e.value.field, e.value.at) == ("conventions", 1)


def test_every_table_value_is_a_valid_label_value() -> None:
    for rows in (clouds.GKE_ROWS, clouds.EKS_ROWS, clouds.JDCLOUD_ROWS):
        for row in rows:
            assert is_valid_value(row.value), row


def test_every_cloud_key_is_one_a_node_may_set() -> None:
    inv = node(gpu("Tesla T4"))
    for key in cloud_labels(inv, *LABEL_CONVENTIONS):
        assert label_key_problem(key) is None, key


@given(
    names=st.lists(st.one_of(st.none(), st.text(max_size=80)), min_size=1, max_size=4),
    mem=st.one_of(st.none(), st.integers(0, 10**6)),
)
@settings(max_examples=200)
def test_every_cloud_label_is_valid_whatever_nvml_says(names, mem) -> None:
    gpus = tuple(GPU(index=i, name=n, memory_total_mib=mem) for i, n in enumerate(names))
    for k, v in node_labels(node(*gpus), ALL).items():
        assert key_problem(k) is None, k
        assert is_valid_value(v), (k, v)
