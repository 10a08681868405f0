"""The agent's own labels under ``labels.prefix`` (default ``nodeagent.io``): per-product
counts on a mixed node, unhealthy GPUs, MIG devices by profile, a vGPU guest's profile. Pure."""

from __future__ import annotations

from collections import Counter

from nodeagent.gpu.inventory import GPU, Inventory
from nodeagent.labels import vgpu
from nodeagent.labels.gfd import products
from nodeagent.labels.values import sanitize_value


def labels(inv: Inventory, gpus: tuple[GPU, ...], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    counts = products(gpus)
    if len(counts) > 1:
        out[f"{prefix}/gpu.mixed"] = "true"
        for product, count in counts.items():
            name = sanitize_value(f"gpu.count.{product}"[:63])
            if name:
                out[f"{prefix}/{name}"] = str(count)
    unhealthy = len(inv.gpus) - len(gpus)
    if unhealthy:
        out[f"{prefix}/gpu.unhealthy"] = str(unhealthy)
    mig = Counter(
        m.profile for g in gpus for m in g.mig_devices if m.profile and sanitize_value(m.profile)
    )
    if mig:
        out[f"{prefix}/mig.enabled"] = "true"
        for profile, count in mig.items():
            out[f"{prefix}/mig-{sanitize_value(profile)}.count"] = str(count)
    out.update(vgpu.own_labels(gpus, prefix))
    return out
