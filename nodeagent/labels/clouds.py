"""The GPU node labels clouds put on their own GPU nodes (``labels.conventions``), so that a
self-managed node on that cloud is selected by the vendors' manifests and autoscalers like a
managed one. Pure: a function of the healthy GPUs; it may not read the host or the API.

Each table row is a value a cloud really uses, with its source (docs/labels.md has the
table and who else sets each key). A GPU no row knows gets no label: never a guess. On a
mixed node a per-model label is set only when every healthy GPU gives the same value (the
mixed-node rule); ``mixed`` is not a value any cloud uses, so it is never written here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

from nodeagent import StrEnum
from nodeagent.gpu.inventory import GPU
from nodeagent.labels.values import sanitize_value


class Convention(StrEnum):
    """A cloud whose GPU node labels the agent can set (``labels.conventions`` entries)."""

    ACK = "ack"  # Alibaba Cloud Container Service for Kubernetes
    GKE = "gke"  # Google Kubernetes Engine
    EKS = "eks"  # Amazon EKS (the key cluster-autoscaler's AWS provider reads)
    JDCLOUD = "jdcloud"  # JD Cloud JCS for Kubernetes (JKE)
    AKS = "aks"  # Azure Kubernetes Service


@dataclasses.dataclass(frozen=True)
class Row:
    """One value of a cloud's table and the NVML product names it stands for (a regular
    expression matched against the whole name without its ``NVIDIA ``/``Tesla `` prefix:
    drivers older than R450 drop ``NVIDIA `` from ``NVIDIA A100-SXM4-40GB``)."""

    models: str
    value: str

    def matches(self, model: str) -> bool:
        return re.fullmatch(self.models, model) is not None


# GKE accelerator types (cloud.google.com/gke-accelerator). Sources: GKE "Run GPUs in
# Standard node pools" (cloud.google.com/kubernetes-engine/docs/how-to/gpus: nvidia-b200,
# nvidia-h200-141gb, nvidia-h100-80gb, nvidia-tesla-a100, nvidia-a100-80gb, nvidia-l4,
# nvidia-rtx-pro-6000, nvidia-tesla-p100, nvidia-tesla-t4) and Compute Engine's accelerator
# types (nvidia-tesla-k80, nvidia-tesla-p4, nvidia-tesla-v100). nvidia-h100-mega-80gb is the
# same GPU as nvidia-h100-80gb on another machine (A3 Mega): NVML cannot tell, so never set.
GKE_ROWS: tuple[Row, ...] = (
    Row(r"K80", "nvidia-tesla-k80"),
    Row(r"P4", "nvidia-tesla-p4"),
    Row(r"P100-(?:PCIE|SXM2)-(?:12|16)GB", "nvidia-tesla-p100"),
    Row(r"V100-(?:SXM2|PCIE)-(?:16|32)GB", "nvidia-tesla-v100"),
    Row(r"T4", "nvidia-tesla-t4"),
    Row(r"A100-(?:SXM4|PCIE)-40GB", "nvidia-tesla-a100"),
    Row(r"A100-SXM4-80GB|A100 80GB PCIe", "nvidia-a100-80gb"),
    Row(r"L4", "nvidia-l4"),
    Row(r"H100 80GB HBM3", "nvidia-h100-80gb"),
    Row(r"H200", "nvidia-h200-141gb"),
    Row(r"B200", "nvidia-b200"),
    Row(r"RTX PRO 6000 Blackwell Server Edition", "nvidia-rtx-pro-6000"),
)

# k8s.amazonaws.com/accelerator: cluster-autoscaler's AWS provider (cloudprovider/aws
# README, "Special note on GPU instances") only tests that the key is there; its one example
# value, nvidia-tesla-k80 on P2, is GKE's name, and before CA 1.15 the key itself was GKE's.
# So the same names as GKE; AWS-only GPUs (A10G, L40S) have none and get no label.
EKS_ROWS = GKE_ROWS

# jdcloud.com/jke-accelerator: JD Cloud's "Add GPU working node group" (docs.jdcloud.com,
# jcs-for-kubernetes): p.n1p40 -> nvidia-tesla-p40, p.n1v100 -> nvidia-tesla-v100. T4 is the
# value seen on the seeds' JD Cloud nodes (issue 14); it is not in JD Cloud's public table.
JDCLOUD_ROWS: tuple[Row, ...] = (
    Row(r"P40", "nvidia-tesla-p40"),
    Row(r"V100-(?:SXM2|PCIE)-(?:16|32)GB", "nvidia-tesla-v100"),
    Row(r"T4", "nvidia-tesla-t4"),
)

_PREFIX_RE = re.compile(r"^(?:(?:NVIDIA|Tesla)\s+)+")


def model_of(name: Optional[str]) -> Optional[str]:
    """The NVML product name without its vendor/brand prefix: "Tesla T4" -> "T4",
    "NVIDIA H100 80GB HBM3" -> "H100 80GB HBM3"; None for no name."""
    if not name:
        return None
    return _PREFIX_RE.sub("", " ".join(name.split())) or None


def table_value(rows: tuple[Row, ...], gpus: tuple[GPU, ...]) -> Optional[str]:
    """The table's value for the node: every healthy GPU must map to the same row's value."""
    values: set[Optional[str]] = set()
    for g in gpus:
        model = model_of(g.name)
        values.add(next((r.value for r in rows if model and r.matches(model)), None))
    if len(values) != 1:
        return None
    return values.pop()


def ack(gpus: tuple[GPU, ...]) -> dict[str, str]:
    """ACK's ``aliyun.accelerator/nvidia_{name,count,mem}``: what ACK's node setup writes
    from ``nvidia-smi`` (the product name with spaces as ``-``, ``Tesla-P4``; the GPU count;
    the framebuffer total with its unit, ``7611MiB``)."""
    out = {"aliyun.accelerator/nvidia_count": str(len(gpus))}
    names = {sanitize_value(g.name) for g in gpus}
    if len(names) == 1 and None not in names:
        out["aliyun.accelerator/nvidia_name"] = str(names.pop())
    mems = [g.memory_total_mib for g in gpus]
    known = [m for m in mems if m]
    if known and len(known) == len(mems):
        # Mixed node: the smallest, a lower bound true of every GPU (the gpu.memory rule).
        out["aliyun.accelerator/nvidia_mem"] = f"{min(known)}MiB"
    return out


def gke(gpus: tuple[GPU, ...]) -> dict[str, str]:
    value = table_value(GKE_ROWS, gpus)
    return {"cloud.google.com/gke-accelerator": value} if value else {}


def eks(gpus: tuple[GPU, ...]) -> dict[str, str]:
    value = table_value(EKS_ROWS, gpus)
    return {"k8s.amazonaws.com/accelerator": value} if value else {}


def jdcloud(gpus: tuple[GPU, ...]) -> dict[str, str]:
    value = table_value(JDCLOUD_ROWS, gpus)
    return {"jdcloud.com/jke-accelerator": value} if value else {}


def aks(gpus: tuple[GPU, ...]) -> dict[str, str]:
    # AKS "Use labels" (learn.microsoft.com/azure/aks/use-labels): one value, "nvidia", for
    # every NVIDIA GPU node pool; true of a mixed node too.
    return {"kubernetes.azure.com/accelerator": "nvidia"} if gpus else {}


CONVENTIONS: dict[Convention, Callable[[tuple[GPU, ...]], dict[str, str]]] = {
    Convention.ACK: ack,
    Convention.GKE: gke,
    Convention.EKS: eks,
    Convention.JDCLOUD: jdcloud,
    Convention.AKS: aks,
}


def labels(gpus: tuple[GPU, ...], conventions: tuple[str, ...]) -> dict[str, str]:
    """The labels of every configured convention, in the configured order."""
    out: dict[str, str] = {}
    for name in conventions:
        out.update(CONVENTIONS[Convention(name)](gpus))
    return out
