"""GPU Feature Discovery's ``nvidia.com/*`` labels, with the values GFD gives the same GPU
(NVIDIA/k8s-device-plugin internal/lm), except where GFD emits a value the API server rejects
(k8s-device-plugin#514): every value here is valid, or the label is left out. On a mixed
node a per-GPU label gets only a value true of every healthy GPU (docs/labels.md). Where
NVML gives nothing (no memory, compute capability 0) the key is left out, as GFD does. The
MIG strategy labels are :mod:`nodeagent.labels.mig`'s, the vGPU ones
:mod:`nodeagent.labels.vgpu`'s. Pure.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from nodeagent.gpu.arch import arch_family
from nodeagent.gpu.inventory import GPU, Inventory
from nodeagent.labels import mig, vgpu
from nodeagent.labels.values import MIXED, NVIDIA, sanitize_value


def products(gpus: tuple[GPU, ...]) -> Counter[str]:
    """How many GPUs of each product (its label value) the node has."""
    return Counter(p for p in (sanitize_value(g.name) for g in gpus) if p)


def _min_compute(gpus: tuple[GPU, ...]) -> Optional[tuple[int, int]]:
    # GFD leaves the compute and family labels out for a major version of 0 (no answer).
    ccs = [
        (g.compute_major, g.compute_minor)
        for g in gpus
        if g.compute_major and g.compute_minor is not None
    ]
    if len(ccs) != len(gpus):
        return None  # some GPU did not say: no value is true of all of them
    return min(ccs) if ccs else None


def labels(
    inv: Inventory, gpus: tuple[GPU, ...], mig_strategy: str = mig.NONE, mps_sharing: bool = False
) -> dict[str, str]:
    """GFD's labels for these GPUs; ``mig_strategy`` and ``mps_sharing`` are the device
    plugin's settings (``labels.mig_strategy``, ``labels.mps_sharing``)."""
    out: dict[str, str] = {f"{NVIDIA}/gpu.present": "true", f"{NVIDIA}/gpu.count": str(len(gpus))}
    counts = products(gpus)
    if len(counts) == 1 and sum(counts.values()) == len(gpus):
        out[f"{NVIDIA}/gpu.product"] = next(iter(counts))
    elif counts:
        out[f"{NVIDIA}/gpu.product"] = MIXED
    mems = [g.memory_total_mib for g in gpus]
    if all(mems):  # None (NOT_SUPPORTED) or 0: NVML said nothing, and GFD leaves it out
        out[f"{NVIDIA}/gpu.memory"] = str(min(m for m in mems if m))
    cc = _min_compute(gpus)
    if cc is not None:
        out[f"{NVIDIA}/gpu.compute.major"] = str(cc[0])
        out[f"{NVIDIA}/gpu.compute.minor"] = str(cc[1])
        out[f"{NVIDIA}/gpu.family"] = arch_family(*cc) or "undefined"
    out.update(_driver_labels(inv.driver_version))
    out.update(_cuda_labels(inv.cuda_driver_version))
    out[f"{NVIDIA}/mig.capable"] = "true" if any(g.mig_capable for g in gpus) else "false"
    # GFD: true only when the device plugin shares by MPS and no GPU has MIG enabled.
    mps = mps_sharing and not any(g.mig_mode_current == "enabled" for g in gpus)
    out[f"{NVIDIA}/mps.capable"] = "true" if mps else "false"
    out[f"{NVIDIA}/gpu.machine"] = sanitize_value(inv.machine) or "unknown"
    out.update(mig.labels(gpus, mig_strategy))
    out.update(vgpu.gfd_labels(gpus))
    return out


def _driver_labels(version: Optional[str]) -> dict[str, str]:
    # GFD splits the NVML driver version "MAJOR.MINOR[.REV]" keeping leading zeros ("02").
    if not version:
        return {}
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return {}
    major, minor = parts[0], parts[1]
    rev = parts[2] if len(parts) == 3 else ""
    return {
        f"{NVIDIA}/cuda.driver-version.major": major,
        f"{NVIDIA}/cuda.driver-version.minor": minor,
        f"{NVIDIA}/cuda.driver-version.revision": rev,
        f"{NVIDIA}/cuda.driver-version.full": version,
        f"{NVIDIA}/cuda.driver.major": major,
        f"{NVIDIA}/cuda.driver.minor": minor,
        f"{NVIDIA}/cuda.driver.rev": rev,
    }


def _cuda_labels(version: Optional[str]) -> dict[str, str]:
    # The CUDA version the driver supports (nvmlSystemGetCudaDriverVersion), "12.4".
    if not version:
        return {}
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        return {}
    return {
        f"{NVIDIA}/cuda.runtime-version.major": major,
        f"{NVIDIA}/cuda.runtime-version.minor": minor,
        f"{NVIDIA}/cuda.runtime-version.full": version,
        f"{NVIDIA}/cuda.runtime.major": major,
        f"{NVIDIA}/cuda.runtime.minor": minor,
    }
